"""The registered student, logged without pickle and served only after its files are matched to the audit trail.

Logging (`log_student_model`): the student is an MLflow pyfunc in the "models from code" form. The model folder holds
`MLmodel`, the code file `serving_model.py` (its `StudentModel` reads the weights with `load_classifier`, i.e.
torch.load(weights_only=True)), the student's own `save_classifier` file under `artifacts/` (byte for byte the file
whose SHA-256 the trail record keeps as outputs.model_sha256), environment files and the input example. No file is a
pickle, and nothing is loaded with MLflow's PyTorch flavour (which pickles the whole nn.Module and unpickles it with
torch.load(weights_only=False): whoever could write the artifact store could run code in the server).

The folder's `artifact_digest` (SHA-256 over every file's path and SHA-256) is computed from what the store holds
after logging, kept in the run's trail record (outputs.registry.artifact_sha256), and recomputed by `fetch_verified`
on a fresh download before anything is loaded: what `kr serve` serves is the verified local copy.

Logging never starts or ends an MLflow run: the pipeline's run keeps the status it had (a `with mlflow.start_run(...)`
block would end it as FINISHED on exit).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from kr.method.classifier import load_classifier

CODE_FILE = Path(__file__).with_name("serving_model.py")  # the "models from code" file logged with every student
LOGGED_NAME = "student"  # the logged model's name in its run
WEIGHTS_ARTIFACT = "weights"  # the pyfunc artifact key of the `save_classifier` file
AUDIT_RECORD_TAG = "kr.audit_record_id"  # model version tags set by promotion (registry.tag_trail_record)
AUDIT_HASH_TAG = "kr.audit_record_hash"
PYFUNC_FROM_CODE_LOADER = "mlflow.pyfunc.loaders.code_model"  # the python_function loader of PythonModel-based models
HEX64 = re.compile(r"^[0-9a-f]{64}$")
# pickle streams start with PROTO (0x80) and a protocol number; torch's zip format starts with "PK"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pth", ".joblib", ".cloudpickle")


class ServingError(RuntimeError):
    """A model version that must not be served: no audit record, a record that does not describe it, files that
    differ from the recorded digest, or a pickle-based format."""


class NoSuchModel(ServingError):
    """The registry has no model of that name."""


class NoChampion(ServingError):
    """The model exists but no version holds the alias (e.g. every run so far was rejected). `versions`: (version,
    its tags) per version, newest first; `kr.governance.registry.why_not_promoted` says from the tags why each was
    not promoted."""

    def __init__(self, message: str, versions: list[tuple[str, dict[str, str]]]) -> None:
        super().__init__(message)
        self.versions = versions


def _missing_alias(client, model_name: str, alias: str, tracking_uri: str, exc: Exception) -> ServingError:
    """Why `model_name@alias` cannot be read: no such model, no version with the alias (with every version's
    reason), or the registry's own error."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(model_name)
    except MlflowException as missing:
        if missing.error_code == "RESOURCE_DOES_NOT_EXIST":
            return NoSuchModel(f"no registered model {model_name!r} in {tracking_uri}")
        raise
    if alias in (model.aliases or {}):  # the alias exists: the registry failed otherwise
        return ServingError(f"no model version {model_name}@{alias} in {tracking_uri}: {exc}")
    # kr's names never hold a quote (registry.checked_name); another's would break the filter: list nothing then
    found = client.search_model_versions(f"name = '{model_name}'") if "'" not in model_name else []
    versions = sorted(found, key=lambda v: -int(v.version))
    return NoChampion(
        f"no {alias} for {model_name}: no version has been promoted ({len(versions)} registered)",
        [(str(v.version), dict(v.tags or {})) for v in versions],
    )


def probabilities(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Class probabilities of raw images: float32 (N, C, 28, 28) pixel values in [0, 255] -> float32 (N, K), rows
    summing to 1: softmax(model(x / 127.5 - 1)). `model` is a `SmallResNet` on the CPU, in eval mode."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.no_grad():
        return torch.softmax(model(xt / 127.5 - 1.0), dim=1).numpy()


def labelled(probs: np.ndarray, class_names: Sequence[str]) -> list[dict]:
    """Probability rows (N, K) as the served model returns them: per row the most likely class's name and every
    class's probability by name, {"class": str, "probabilities": {name: float}}."""
    names = list(class_names)
    return [
        {"class": names[int(np.argmax(row))], "probabilities": dict(zip(names, map(float, row), strict=True))}
        for row in probs
    ]


def pip_requirements() -> list[str]:
    """The served model's requirements, pinned to this environment's torch and MLflow (explicit: MLflow's inference
    takes ~10 s and records the local "+cpu" tag anyway). kr itself must be installed where the model is served."""
    import mlflow

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy"]


def log_student_model(
    tracking_uri: str,
    run_id: str,
    student_path: Path,
    example: np.ndarray,
    class_names: Sequence[str] | None = None,
) -> tuple[str, str | None, str]:
    """Log the student (a `save_classifier` file) into MLflow run `run_id` as a pyfunc from code, without pickle.

    example: images (N, C, H, W) (any numeric dtype, taken as float32 pixel values 0..255) kept as the input example
    and used with the student's output to infer the signature: float32 (-1, C, H, W) in, one {"class",
    "probabilities"} row per image out (`serving_model`), and the parameter `output` ("classes", or "probabilities"
    for float32 (-1, K) rows). Pass a blank image, never a real one: the example is stored in the model.
    class_names: the K classes in index order, kept in the model's config (MLmodel); default "0".."K-1". The run's
    status is left as it was (no run is started or ended); MLflow's global tracking URI is set to `tracking_uri` (as
    any fluent MLflow call would).

    Returns (model URI `models:/<model id>`, the logged model's id, `artifact_digest` of the model's files as
    downloaded back from the store). Raises MlflowException (unknown run, store errors), OSError / RuntimeError
    from reading the student file, ValueError for class names that do not match its outputs.
    """
    from mlflow.models import Model, infer_signature

    import mlflow

    student = load_classifier(Path(student_path)).cpu().eval()
    x = np.ascontiguousarray(example, dtype=np.float32)
    y = probabilities(student, x)
    names = [str(n) for n in class_names] if class_names is not None else [str(k) for k in range(y.shape[1])]
    if len(names) != y.shape[1]:
        raise ValueError(f"{len(names)} class names for a student with {y.shape[1]} outputs: {names}")
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(run_id)
    # created here, in the run's experiment: without an active run MLflow would put it in the default experiment
    logged = mlflow.initialize_logged_model(
        name=LOGGED_NAME, source_run_id=run_id, experiment_id=run.info.experiment_id
    )
    # Model.log with run_id links the model to the run (outputs, MLmodel's run_id) with no active run: nothing is
    # started, so nothing ends the run
    info = Model.log(
        artifact_path=None,
        name=LOGGED_NAME,
        flavor=mlflow.pyfunc,
        run_id=run_id,
        model_id=logged.model_id,
        python_model=str(CODE_FILE),
        artifacts={WEIGHTS_ARTIFACT: str(student_path)},
        signature=infer_signature(x, labelled(y, names), params={"output": "classes"}),
        model_config={"class_names": names},
        input_example=x,
        pip_requirements=pip_requirements(),
    )
    # the model's own location (a models:/ URI would resolve through MLflow's global registry URI)
    location = client.get_logged_model(logged.model_id).artifact_location
    with tempfile.TemporaryDirectory(prefix="kr-logged-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp, tracking_uri=tracking_uri)
        digest = artifact_digest(Path(local))
    return info.model_uri, getattr(info, "model_id", None) or logged.model_id, digest


def artifact_digest(local_dir: Path) -> str:
    """SHA-256 (64 lowercase hex chars) of a model folder: a manifest of every file's path and SHA-256, hashed.

    The manifest has one line per regular file under `local_dir` (recursively):
    `<hex SHA-256 of the file>  <path relative to local_dir, "/"-separated>\\n` (two spaces: GNU sha256sum's line),
    ordered by the path's UTF-8 bytes; the digest is the SHA-256 of the manifest's bytes. An auditor recomputes it
    with coreutils:

        cd <model folder> && find . -type f | sed 's|^\\./||' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum

    Directories themselves (and empty ones) are not covered. Raises ServingError if the folder holds no file, a
    symbolic link, or a path with a newline or backslash (which sha256sum would escape); OSError if a file cannot
    be read.
    """
    from kr.governance.trail import sha256_file

    root = Path(local_dir)
    lines = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise ServingError(f"{root}: {rel} is a symbolic link; a model folder holds plain files only")
        if not path.is_file():
            continue
        if "\n" in rel or "\\" in rel:
            raise ServingError(f"{root}: file name {rel!r} holds a newline or backslash")
        lines.append((rel.encode("utf-8"), f"{sha256_file(path)}  {rel}\n"))
    if not lines:
        raise ServingError(f"{root} holds no files: nothing to digest")
    manifest = "".join(line for _, line in sorted(lines)).encode("utf-8")
    return hashlib.sha256(manifest).hexdigest()


def pickle_files(local_dir: Path) -> list[str]:
    """Relative paths (sorted) of files under `local_dir` that are or may be pickles: a pickle-like suffix (.pkl,
    .pickle, .pth, .joblib, .cloudpickle) or a first byte 0x80 followed by a protocol number 2..5 (a pickle stream's
    PROTO opcode). A torch `save` file in the zip format starts with "PK" and is not listed: load_classifier reads it
    with weights_only=True. Raises OSError if a file cannot be read."""
    root = Path(local_dir)
    found = []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        with open(path, "rb") as fh:
            head = fh.read(2)
        if path.suffix.lower() in PICKLE_SUFFIXES or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
            found.append(path.relative_to(root).as_posix())
    return found


def fetch_verified(
    tracking_uri: str, model_name: str, alias: str = "champion", trail_uri: str | None = None
) -> tuple[Path, dict]:
    """Download `model_name@alias` to a fresh temporary folder and check it against its audit record.

    The version must carry the tags kr.audit_record_id and kr.audit_record_hash (set at promotion); the record is
    read from the trail at `trail_uri` and must hash to its own record_hash and to the tag, name this model and
    version (outputs.registry), have outcome "promoted" and hold outputs.registry.artifact_sha256. The downloaded
    files must have that `artifact_digest`; MLmodel must declare only the python_function flavour with the
    "models from code" loader (no PyTorch flavour, no pickled PythonModel), no file may be a pickle
    (`pickle_files`), and the weights file must have the record's outputs.model_sha256 when the record gives one.

    Returns (the verified model folder, alone in a fresh temporary folder, its parent, which the caller owns and
    should delete; the record as a dict). Nothing in the folder is loaded or run here. Raises ServingError for any
    failed check (naming the version, what was expected and what was found), an unreadable trail, or no
    `trail_uri`; its subclasses NoSuchModel (no model of that name) and NoChampion (no version has the alias, with
    each version's reason); the temporary folder is removed then. Other MlflowException and OSError (a
    store that cannot be reached) propagate.
    """
    from mlflow.exceptions import MlflowException

    import mlflow
    from kr.governance.trail import TrailError, open_trail
    from mlflow import MlflowClient

    if not trail_uri:
        raise ServingError("no audit trail given: a model is served only after checking it against its record")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        raise _missing_alias(client, model_name, alias, tracking_uri, exc.message) from None
    label = f"{model_name} version {version.version} (@{alias})"
    tags = version.tags or {}
    record_id = tags.get(AUDIT_RECORD_TAG)
    if not record_id:
        raise ServingError(f"{label} has no {AUDIT_RECORD_TAG} tag: it was never recorded as promoted; not serving it")
    try:
        record = open_trail(trail_uri).get(record_id)
    except TrailError as exc:
        raise ServingError(f"{label}: its audit record {record_id} cannot be read: {exc}") from None
    expected = _check_record(record, tags, label, model_name, str(version.version))
    folder = Path(tempfile.mkdtemp(prefix="kr-serve-"))
    try:
        # the version's files by their location (a models:/ URI would resolve through MLflow's global registry URI)
        location = client.get_model_version_download_uri(model_name, version.version)
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(folder), tracking_uri=tracking_uri)
        )
        if not local.is_dir() or local.resolve().parent != folder.resolve():
            raise ServingError(f"{label}: {location} is not a model folder (downloaded to {local})")
        found = artifact_digest(local)
        if found != expected:
            raise ServingError(
                f"{label}: its files do not match audit record {record_id}: expected artifact digest {expected}, "
                f"found {found}: the stored files are not the ones logged and recorded (not serving it)"
            )
        _check_format(local, label, record)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return local, record


def _check_record(record: dict, tags: dict, label: str, model_name: str, version: str) -> str:
    """The record's artifact digest, once the record is shown to be intact, this version's, and a promotion."""
    from kr.governance.trail import record_hash

    record_id = record.get("record_id")
    try:
        actual = record_hash(record)
    except (TypeError, ValueError) as exc:
        raise ServingError(f"{label}: audit record {record_id} cannot be hashed: {exc}") from None
    if actual != record.get("record_hash"):
        raise ServingError(
            f"{label}: audit record {record_id} was altered: expected record hash {record.get('record_hash')}, "
            f"found {actual}"
        )
    if tags.get(AUDIT_HASH_TAG) != actual:
        raise ServingError(
            f"{label}: tag {AUDIT_HASH_TAG} is {tags.get(AUDIT_HASH_TAG)!r} but audit record {record_id} hashes to "
            f"{actual}"
        )
    if record.get("outcome") != "promoted":
        raise ServingError(
            f"{label}: audit record {record_id} has outcome {record.get('outcome')!r}, expected 'promoted'"
        )
    registry = (record.get("outputs") or {}).get("registry") or {}
    named = (registry.get("model_name"), str(registry.get("version")))
    if named != (model_name, version):
        raise ServingError(
            f"{label}: audit record {record_id} describes {named[0]} version {named[1]}, "
            f"expected {model_name} version {version}"
        )
    expected = registry.get("artifact_sha256")
    if not isinstance(expected, str) or not HEX64.match(expected):
        raise ServingError(
            f"{label}: audit record {record_id} holds no artifact digest (outputs.registry.artifact_sha256 is "
            f"{expected!r}): the model was logged before digests were kept, or not by kr"
        )
    return expected


def _check_format(folder: Path, label: str, record: dict) -> None:
    """Only the pyfunc-from-code format, no pickles, and the audited weights."""
    from mlflow.models.model import MLMODEL_FILE_NAME, MODEL_CODE_PATH

    from kr.governance.trail import sha256_file

    path = folder / MLMODEL_FILE_NAME
    if not path.is_file():
        raise ServingError(f"{label}: no {MLMODEL_FILE_NAME} file: not an MLflow model")
    meta = yaml.safe_load(path.read_text()) or {}
    flavors = meta.get("flavors") or {}
    pyfunc = flavors.get("python_function") or {}
    if set(flavors) != {"python_function"}:
        raise ServingError(
            f"{label}: MLmodel declares the flavours {sorted(flavors)}, expected only python_function: the PyTorch "
            "flavour unpickles a whole module when loaded; only kr's pyfunc-from-code format is served"
        )
    code = pyfunc.get(MODEL_CODE_PATH)
    if pyfunc.get("loader_module") != PYFUNC_FROM_CODE_LOADER or not code or not str(code).endswith(".py"):
        raise ServingError(
            f"{label}: its python_function loader is {pyfunc.get('loader_module')!r} with model code {code!r}, "
            f"expected {PYFUNC_FROM_CODE_LOADER} with a .py model file (models from code): not serving it"
        )
    if pyfunc.get("python_model"):
        raise ServingError(f"{label}: MLmodel names a pickled python_model {pyfunc['python_model']!r}")
    pickles = pickle_files(folder)
    if pickles:
        raise ServingError(f"{label}: pickle files in the model: {', '.join(pickles)}")
    weights = ((pyfunc.get("artifacts") or {}).get(WEIGHTS_ARTIFACT) or {}).get("path")
    if not weights or not (folder / weights).is_file():
        raise ServingError(f"{label}: MLmodel names no {WEIGHTS_ARTIFACT!r} artifact file (found {weights!r})")
    audited = (record.get("outputs") or {}).get("model_sha256")
    if audited is not None and sha256_file(folder / weights) != audited:
        raise ServingError(
            f"{label}: weights {weights} have SHA-256 {sha256_file(folder / weights)}, "
            f"audit record {record.get('record_id')} expects {audited}"
        )
