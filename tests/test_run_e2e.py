"""`kr run` end to end: the KFP DAG through kfp.local on the smoke profile, with the embedded MLflow store.

Two runs share one store and one run folder: the first passes lenient gates and becomes the champion, the second
fails an impossible gate, is registered without the alias, and leaves the champion where it was.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from datagen import REAL_ROOT, kr, needs_real, write_npz
from typer.testing import CliRunner

from kr.cli import app
from kr.governance.trail import sha256_file

# gates every smoke run passes: the smoke profile proves mechanics, not quality
LENIENT = [
    "gates.accuracy.max_gap_pp=100",
    "gates.accuracy.min_above_majority_pp=-100",
    "gates.accuracy.min_class_recall=-1",
    "gates.accuracy.teacher_min_above_majority_pp=-100",
    "gates.privacy.max_auc=1",
    "gates.privacy.max_tpr_at_1pct_fpr=1",
    "gates.privacy.max_near_copy_fraction=1",
    "gates.privacy.min_teacher_canary_auc=0",
    "gates.privacy.max_student_canary_epsilon=50",
]
IMPOSSIBLE = [*LENIENT, "gates.accuracy.min_student_accuracy=1.0"]
MODEL = "kr-breastmnist-student-dev"  # smoke runs are not for production: never the served name

SUMMARY_KEYS = {
    "schema",
    "runner",
    "dataset",
    "profile",
    "config",
    "teacher",
    "generator",
    "naive",
    "student",
    "cas_gap_pp",
    "privacy",
    "gates",
    "registry",
    "audit",
    "timings_s",
    "total_wall_s",
}


def sets(values: list[str]) -> list[str]:
    return [arg for v in values for arg in ("--set", v)]


def check_summary(out: Path, n_classes: int, runner: str = "kfp.local") -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert summary.keys() >= SUMMARY_KEYS
    assert summary["schema"] == "kr.summary/1" and summary["runner"] == runner
    assert summary["status"] == "succeeded", summary["error"]
    assert summary["dataset"]["n_classes"] == n_classes
    for model in ("teacher", "student"):
        for split in ("val", "test"):
            assert 0.0 <= summary[model][split]["accuracy"] <= 1.0
    assert 0.0 <= summary["naive"]["test"]["accuracy"] <= 1.0
    assert summary["cas_gap_pp"] == pytest.approx(
        100 * (summary["student"]["test"]["accuracy"] - summary["teacher"]["test"]["accuracy"]), abs=0.01
    )
    cfg = summary["config"]
    grid = summary["generator"]["selection"]
    assert len(grid) == cfg["selection"]["checkpoints"] * len(cfg["selection"]["guidance_scales"])
    assert summary["generator"]["checkpoint"] in {g["checkpoint"] for g in grid}
    # fidelity of every cell, of the chosen one (with per class) and of the regenerated pool
    fidelity_keys = {"teacher_agreement", "broken_fraction", "frechet_distance", "precision", "recall"}
    assert all(fidelity_keys <= g.keys() for g in grid)
    assert fidelity_keys | {"per_class"} <= summary["generator"]["fidelity"].keys()
    assert 0.0 <= summary["regeneration"]["broken_fraction"] <= 1.0
    # the pool is class-balanced (+-1 per shard), one ParallelFor task per shard
    shards = summary["regeneration"]["shards"]
    assert len(shards) == cfg["gkd"]["shards"]
    counts = [sum(s["class_counts"][c] for s in shards) for c in range(n_classes)]
    assert max(counts) - min(counts) <= len(shards)
    privacy = summary["privacy"]
    for model in ("teacher", "student"):
        assert set(privacy[model]["attacks"]) == set(cfg["privacy"]["attacks"])
        top = privacy[model]["strongest"]
        assert top["auc"] == max(a["auc"] for a in privacy[model]["attacks"].values())
    assert {"near_copy_fraction", "dcr_ratio_median"} <= privacy["memorization"].keys()
    # canaries: detection on both models with the one-run epsilon bound; no TPR below the smallest measurable FPR
    canaries = privacy["canaries"]
    assert canaries["inserted"] == cfg["canaries"]["count"] // 2
    for model in ("teacher", "student"):
        assert 0.0 <= canaries[model]["auc"] <= 1.0 and canaries[model]["epsilon_lower_bound"]["epsilon"] >= 0.0
    assert privacy["min_measurable_fpr"] == pytest.approx(1 / privacy["n_nonmembers"])
    if privacy["min_measurable_fpr"] > 0.001:
        assert all(a["tpr_at_01pct_fpr"] is None for a in privacy["student"]["attacks"].values())
    gates = summary["gates"]
    assert gates["privacy"]["state"] in ("pass", "fail", "inconclusive")
    assert gates["passed"] == all(gates[g]["passed"] for g in ("data", "accuracy", "privacy", "champion"))
    for name in ("report.md", "samples.png", "selection.png", "audit_record.json", "validation/real/index.html"):
        assert (out / name).is_file(), name
    # every picture and file the report links lies where the link points (relative to the report)
    links = re.findall(r"\]\(([^)#]+)\)", (out / "report.md").read_text())
    assert "mia_roc.png" in links and all((out / link).is_file() for link in links if "://" not in link), links
    # the models are KFP task outputs under a run folder's kfp/ (an earlier run's, when KFP reused the task)
    for model in ("teacher", "student"):
        path = Path(summary["artifacts"][model])
        assert path.is_file() and path.parent.parent.parent.parent.name == "kfp", path
    return summary


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> dict:
    """Two smoke runs into one folder and one embedded (SQLite) store: a passing one, then a failing gate."""
    if not (REAL_ROOT / "breastmnist.npz").is_file():
        pytest.skip(f"real MedMNIST files not found in {REAL_ROOT}")
    root = tmp_path_factory.mktemp("embedded")
    out, uri, trail = root / "run", f"sqlite:///{root / 'store' / 'mlflow.db'}", root / "audit"
    common = ["run", "--profile", "smoke", "--data-root", str(REAL_ROOT), "--out", str(out)]
    common += ["--tracking-uri", uri, "--audit-uri", str(trail)]
    first = kr(*common, *sets(LENIENT))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    passed = check_summary(out, n_classes=2)
    second = kr(*common, *sets(IMPOSSIBLE))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]  # a rejected run is no error
    return {"out": out, "uri": uri, "trail": trail, "passed": passed, "rejected": check_summary(out, n_classes=2)}


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.mark.e2e
@needs_real
def test_passing_run_is_tracked_registered_and_promoted(embedded) -> None:
    s = embedded["passed"]
    assert s["dataset"]["md5"] == "750601b1f35ba3300ea97c75c52ff8f6" and s["dataset"]["n_train"] == 546
    assert s["outcome"] == "promoted" and s["gates"]["passed"]
    digest = s["registry"].pop("artifact_sha256")
    assert s["registry"] == {
        "model_name": MODEL,
        "version": "1",
        "alias": "champion",
        "promoted": True,
        "previous_champion": None,
    }
    c = _client(embedded["uri"])
    version = c.get_model_version(MODEL, "1")
    # the version's files as the store holds them, and its decision as the trail holds it
    assert version.tags["kr.artifact_sha256"] == digest and version.tags["kr.decision"] == "promoted"
    # every gate's threshold, value and verdict is on the version, and the version points to its audit record
    assert version.tags["gate.accuracy.verdict"] == "pass" and version.tags["gate.privacy.verdict"] == "pass"
    assert version.tags["gate.privacy.student_attack_auc_distance_from_chance.threshold"] == "<= 0.5"
    farthest = max(abs(a["auc"] - 0.5) for a in s["privacy"]["student"]["attacks"].values())
    assert float(version.tags["gate.privacy.student_attack_auc_distance_from_chance.value"]) == pytest.approx(
        farthest, abs=1e-5
    )
    assert version.tags["kr.audit_record_id"] == s["audit"]["record_id"]
    assert version.tags["kr.audit_record_hash"] == s["audit"]["record_hash"]
    # the trail tells the same story as the registry, the privacy verdict included
    record = json.loads(sorted(embedded["trail"].glob("*.json"))[0].read_text())
    assert record["record_hash"] == s["audit"]["record_hash"]
    assert record["outputs"]["privacy"]["verdict"] == version.tags["gate.privacy.verdict"] == "pass"
    # the parent run: tags, the resolved config as params, the dataset as input, one nested run per step
    parent = c.get_run(version.run_id).data.tags["mlflow.parentRunId"]
    run = c.get_run(parent)
    assert run.data.tags["kr.dataset_md5"] == s["dataset"]["md5"] and run.data.tags["kr.image"] == "local"
    assert run.data.tags["kr.code_version"].startswith("0.1.0+")
    assert run.data.params["gkd.epochs"] == str(s["config"]["gkd"]["epochs"])
    assert run.inputs.dataset_inputs[0].dataset.digest == s["dataset"]["md5"]
    assert {"summary.json", "report.md", "audit_record.json"} <= {a.path for a in c.list_artifacts(parent)}
    nested = c.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    steps = {r.data.tags["kr.step"] for r in nested}
    assert steps >= {"validate_data", "train_teacher", "train_generator", "train_student", "audit_privacy", "promote"}
    teacher_run = next(r for r in nested if r.data.tags["kr.step"] == "train_teacher")
    curve = c.get_metric_history(teacher_run.info.run_id, "epoch.val_accuracy")
    assert len(curve) == s["config"]["teacher"]["epochs"]  # per-epoch metrics


@pytest.mark.e2e
@needs_real
def test_registered_student_predicts_from_raw_pixels(embedded) -> None:
    import mlflow.pyfunc

    from kr.data import load_dataset

    mlflow.set_tracking_uri(embedded["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    x = load_dataset("breastmnist", REAL_ROOT).x_test[:5].astype(np.float32)
    probs = np.asarray(model.predict(x, params={"output": "probabilities"}))
    assert probs.shape == (5, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    # by default each image's answer names its class and every class's probability, by name
    names = ["malignant", "normal, benign"]
    rows = model.predict(x)
    assert [r["class"] for r in rows] == [names[k] for k in probs.argmax(1)]
    assert all(list(r["probabilities"]) == names for r in rows)
    assert model.metadata.get_input_schema() is not None  # logged with a signature


def _arrays(path: Path) -> list[np.ndarray]:
    """Every numeric array a logged file holds: npy/npz members, JSON lists (an input example)."""
    if path.suffix == ".npy":
        return [np.load(path, allow_pickle=False)]
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return [z[k] for k in z.files]
    if path.suffix == ".json":

        def lists(node):
            if isinstance(node, list) and node and not isinstance(node[0], dict | str):
                yield node
            elif isinstance(node, dict):
                for v in node.values():
                    yield from lists(v)

        try:
            return [np.asarray(v, dtype=np.float64) for v in lists(json.loads(path.read_text()))]
        except (ValueError, UnicodeDecodeError):
            return []
    return []


def _real_breast_images() -> set[bytes]:
    from kr.data import load_dataset

    real = load_dataset("breastmnist", REAL_ROOT)
    return {x.tobytes() for x in np.concatenate([real.x_train, real.x_val, real.x_test])}


def _assert_no_real_image(files: list[Path], known: set[bytes]) -> None:
    """No array in `files` (npy, npz, JSON lists) holds a real image, compared by decoded pixels."""
    for path in files:
        for arr in _arrays(path):
            if arr.size % (28 * 28) or arr.size == 0:
                continue
            tiles = np.rint(arr).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
            assert not any(t.tobytes() in known for t in tiles), f"{path} holds a real image"


@pytest.mark.e2e
@needs_real
def test_no_real_image_reaches_the_mlflow_store(embedded) -> None:
    """Everything the two runs stored in MLflow (runs, logged models, registry), scanned by pixels: no array holds a
    real image; the teacher's weights stay in the run folder."""
    store = Path(embedded["uri"].removeprefix("sqlite:///")).parent
    files = [p for p in store.rglob("*") if p.is_file() and p.suffix != ".db"]
    assert any("input_example" in p.name for p in files)  # the scan reaches the registered models
    assert not [p for p in files if p.name in ("samples.png", "teacher.pt")]
    _assert_no_real_image(files, _real_breast_images())
    assert (embedded["out"] / "samples.png").is_file()  # the run folder keeps the synthetic grid


@pytest.mark.e2e
@needs_real
def test_no_real_image_reaches_the_kfp_artifact_store(embedded) -> None:
    """The pipeline's artifact store (kfp.local's pipeline root here, object storage on a cluster) is readable by
    every pipeline user: the data artifact is a reference to the validated file, not its images."""
    store = embedded["out"] / "kfp"
    files = [p for p in store.rglob("*") if p.is_file()]
    assert any(p.name == "shard.npz" for p in files)  # the scan reaches the synthetic shards
    _assert_no_real_image(files, _real_breast_images())


@pytest.mark.e2e
@needs_real
def test_failing_gate_registers_without_moving_the_champion(embedded) -> None:
    s = embedded["rejected"]
    assert s["outcome"] == "rejected" and not s["gates"]["passed"]
    assert s["gates"]["accuracy"]["passed"] is False
    assert any("student test accuracy" in r for r in s["gates"]["accuracy"]["reasons"])
    assert s["gates"]["champion"]["evaluated"] is False
    assert s["registry"]["version"] == "2" and s["registry"]["alias"] is None
    c = _client(embedded["uri"])
    assert str(c.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert c.get_model_version(MODEL, "2").tags["gate.accuracy.verdict"] == "fail"
    # the audit trail holds both runs, chained
    records = [json.loads(p.read_text()) for p in sorted(embedded["trail"].glob("*.json"))]
    assert [r["outcome"] for r in records] == ["promoted", "rejected"]
    assert records[1]["previous_hash"] == records[0]["record_hash"] == embedded["passed"]["audit"]["record_hash"]
    assert records[1]["outputs"]["registry"]["version"] == "2"  # the record points to its version
    assert records[1]["outputs"]["model_sha256"] == sha256_file(s["artifacts"]["student"])


@pytest.mark.e2e
@needs_real
def test_rerun_archives_the_first_run_and_resumes_the_generator(embedded) -> None:
    out, first, second = embedded["out"], embedded["passed"], embedded["rejected"]
    assert len(list((out / "history").glob("*/summary.json"))) == 1
    assert second["generator"]["training"]["resumed_from"] == first["config"]["generator"]["train_steps"]
    assert second["teacher"]["test"] == first["teacher"]["test"]  # seeded: the same teacher again


@pytest.mark.e2e
@needs_real
def test_conclusion_is_idempotent(embedded) -> None:
    """A retried promote/record step finds its version and its audit record instead of making new ones."""
    from kr import steps

    out, s = embedded["out"], embedded["rejected"]
    # the second run's task outputs: its step results and artifacts, as KFP handed them to record-rejection
    outputs = {task: next((out / "kfp").rglob(f"{task}/result")) for task in ("validate-data", "train-teacher")}
    outputs |= {task: next((out / "kfp").rglob(f"{task}/result")) for task in ("train-student", "evaluate-gates")}
    results = steps.load_results(dict(zip(("data", "teacher", "student", "gates"), outputs.values(), strict=True)))
    data_dir, student_dir = next((out / "kfp").rglob("validate-data/data")), next((out / "kfp").rglob("student"))
    config = json.dumps(s["config"])
    again = steps.conclude(config, out, data_dir, student_dir, results, s["started_at"], promote=False)
    assert again.registry["version"] == "2" and again.audit["record_id"] == s["audit"]["record_id"]
    assert len(_client(embedded["uri"]).search_model_versions(f"name = '{MODEL}'")) == 2
    assert len(list(embedded["trail"].glob("*.json"))) == 2


@pytest.mark.e2e
@needs_real
def test_audit_verify_names_a_record_changed_by_one_byte(embedded, tmp_path: Path) -> None:
    trail = tmp_path / "trail"
    shutil.copytree(embedded["trail"], trail)
    ok = kr("audit", "verify", "--uri", str(trail))
    assert ok.returncode == 0 and "2 record(s)" in ok.stdout + ok.stderr, ok.stdout + ok.stderr
    shown = kr("audit", "show", "--uri", str(trail))
    assert "promoted" in shown.stdout + shown.stderr and "rejected" in shown.stdout + shown.stderr
    target = trail / "000001.json"
    data = bytearray(target.read_bytes())
    data[data.index(b'"promoted"') + 1] ^= 0x01  # one bit of one byte
    target.chmod(0o644)
    target.write_bytes(bytes(data))
    bad = kr("audit", "verify", "--uri", str(trail))
    assert bad.returncode == 1 and "000001.json" in bad.stdout + bad.stderr, bad.stdout + bad.stderr


@pytest.mark.e2e
def test_generated_rgb_five_classes_and_a_cached_rerun(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "rgb5.npz", n_train=100, n_val=25, n_test=25, channels=3, n_classes=5)
    home = {"KR_HOME": str(tmp_path / "home")}
    run = ["run", "--dataset", str(data), "--profile", "smoke", "--cache", *sets(LENIENT)]
    result = kr(*run, "--out", str(tmp_path / "run"), env=home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = check_summary(tmp_path / "run", n_classes=5)
    assert summary["dataset"]["channels"] == 3 and summary["dataset"]["task"] == "multi-class"
    assert summary["dataset"]["source"] == "file"
    assert summary["registry"]["model_name"] == "kr-rgb5-student-dev"
    assert summary["reused_steps"] == []
    # a second run that changes only gkd.* reuses every task upstream of regeneration, and only those
    again = kr(*run, "--set", "gkd.temperature=4", "--out", str(tmp_path / "again"), env=home)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    second = check_summary(tmp_path / "again", n_classes=5)
    assert second["reused_steps"] == ["validate_data", "train_teacher", "train_generator", "select_generator"]
    assert second["teacher"] == summary["teacher"] and second["generator"] == summary["generator"]
    assert second["config"]["gkd"]["temperature"] == 4 and second["registry"]["version"] == "2"


@pytest.mark.e2e
def test_missing_data_stops_at_validation_with_a_failed_summary_and_record(tmp_path: Path) -> None:
    out, trail = tmp_path / "run", tmp_path / "audit"
    result = kr(
        "run",
        "--profile",
        "smoke",
        "--data-root",
        str(tmp_path / "empty"),
        "--out",
        str(out),
        "--audit-uri",
        str(trail),
    )
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "breastmnist.npz" in output and "not found" in output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "validate_data" in summary["error"]
    assert summary["outcome"] == "failed" and summary["gates"]["passed"] is False
    assert summary["teacher"] is None and set(summary["timings_s"]) == set()  # nothing after validation ran
    assert (out / "report.md").is_file()
    records = [json.loads(p.read_text()) for p in trail.glob("*.json")]
    assert [r["outcome"] for r in records] == ["failed"] and "not found" in records[0]["error"]


@pytest.mark.e2e
def test_failed_expectation_stops_before_training_with_a_readable_list(tmp_path: Path) -> None:
    from datagen import make_arrays

    arrays = make_arrays(n_train=100, n_val=25, n_test=25, channels=1, n_classes=5)
    arrays["test_images"][3] = arrays["train_images"][7]  # a test image that is also a training image
    arrays["test_images"][4] = arrays["train_images"][8]
    data = write_npz(tmp_path / "leaky.npz", **arrays)
    out = tmp_path / "run"
    result = kr("run", "--dataset", str(data), "--profile", "smoke", "--out", str(out))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "test: 2 images also appear in train" in output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "ValidationFailed" in summary["error"]
    assert set(summary["timings_s"]) == set() and not list((out / "kfp").rglob("teacher.pt"))
    assert (out / "validation" / "real" / "index.html").is_file()  # the Data Docs are kept for reading


def test_bad_override_fails_before_any_work(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--profile", "smoke", "--set", "gkd.epochz=2", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "gkd.epochz" in result.output
    assert not any(tmp_path.iterdir())


def test_credentials_in_a_tracking_uri_are_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["run", "--tracking-uri", "https://alice:s3cret@mlflow.example.org", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "credentials in a URI are refused" in result.output and "s3cret" not in result.output


def test_config_command_shows_resolved_values() -> None:
    result = CliRunner().invoke(app, ["config", "--profile", "smoke", "--set", "gkd.epochs=9", "--json"])
    assert result.exit_code == 0, result.output
    values = json.loads(result.output)
    assert values["gkd"]["epochs"] == 9
    assert values["tracking"]["uri"].startswith("sqlite:///")  # the embedded store by default
