"""Every input is checked where it enters: bad values fail at config resolution or CLI parsing, before any work,
with a message (never a traceback, never a secret), and every source of a value follows one precedence."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from kr.cli import app
from kr.cli.options import build_request
from kr.config import ConfigError, RunConfig, resolve_config
from kr.run.request import RunRequest, resolve_request

SECRET = "Sup3rS3cretValue"


def _float_paths(model: type[BaseModel], prefix: str = "") -> list[tuple[str, bool]]:
    """(dotted key, is a list) of every float field in the config tree."""
    paths = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        args = typing.get_args(annotation)
        classes = [a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        if classes:
            paths += _float_paths(classes[0], f"{key}.")
        elif annotation is float or float in args:
            paths.append((key, False))
        elif typing.get_origin(annotation) is list and float in args:
            paths.append((key, True))
    return paths


FLOAT_PATHS = _float_paths(RunConfig)


def test_the_sweep_finds_the_float_fields() -> None:
    keys = {k for k, _ in FLOAT_PATHS}
    assert {"gkd.guidance_scale", "selection.guidance_scales", "teacher.lr", "gkd.student.lr"} <= keys
    assert "privacy.reference.lr" in keys and "gates.privacy.max_auc" in keys


@pytest.mark.parametrize("bad", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize(("key", "is_list"), FLOAT_PATHS, ids=[k for k, _ in FLOAT_PATHS])
def test_non_finite_floats_are_refused_everywhere(key: str, is_list: bool, bad: str) -> None:
    value = f"[{bad}]" if is_list else bad
    with pytest.raises(ConfigError) as exc:
        resolve_config("smoke", overrides=[f"{key}={value}"])
    assert key in str(exc.value)


def test_no_default_is_non_finite() -> None:
    for profile in ("smoke", "laptop", "cpu", "gpu"):
        resolve_config(profile)  # allow_inf_nan=False would refuse an infinite default


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("gkd.guidance_scale=.nan", ["gkd.guidance_scale", "finite"]),
        ("gkd.guidance_scale=-2", ["gkd.guidance_scale", "greater than or equal to 1"]),
        ("gkd.guidance_scale=0.5", ["gkd.guidance_scale"]),
        ("selection.guidance_scales=[1, .nan]", ["selection.guidance_scales", "finite"]),
        ("selection.guidance_scales=[]", ["selection.guidance_scales"]),
        ("privacy.attacks=[]", ["privacy.attacks", "at least 1"]),
        ("privacy.nonmember_splits=[]", ["privacy.nonmember_splits", "at least 1"]),
        ("privacy.attacks=[loss, loss]", ["privacy.attacks", "twice"]),
        ("privacy.nonmember_splits=[val, val]", ["privacy.nonmember_splits", "twice"]),
        ("generator.block_out_channels=[]", ["generator.block_out_channels", "at least one level"]),
        ("generator.block_out_channels=[-16, 16, 16]", ["generator.block_out_channels", ">= 1 channel"]),
    ],
)
def test_values_that_would_fail_after_training_fail_first(item: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve_config("smoke", overrides=[item])
    for word in words:
        assert word in str(exc.value)


def test_a_valid_guidance_scale_resolves() -> None:
    assert resolve_config("smoke", overrides=["gkd.guidance_scale=1.5"]).gkd.guidance_scale == 1.5
    assert resolve_config("smoke", overrides=["gkd.guidance_scale=null"]).gkd.guidance_scale is None


# --- the audit trail's location ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("ftp://example.org/trail", ["unsupported scheme 'ftp'"]),
        ("https://example.org/trail", ["unsupported scheme 'https'"]),
        ("s3://", ["names no bucket"]),
        ("s3://Bad_Bucket/trail", ["not a valid S3 bucket name"]),
        ("s3://kr-audit/trail?versionId=3", ["no query or fragment"]),
        ("s3://kr-audit/trail#x", ["no query or fragment"]),
        ("file://elsewhere/trail", ["must be local"]),
        ("  ", ["empty"]),
    ],
)
def test_bad_audit_uris_are_refused_at_resolution(uri: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve_config("smoke", overrides=[f"audit.uri='{uri}'"])
    assert "audit.uri" in str(exc.value)
    for word in words:
        assert word in str(exc.value)


@pytest.mark.parametrize(
    "uri",
    [
        "runs/audit",
        "/tmp/kr-trail",
        "~/trail",
        "file:///tmp/trail",
        "file://localhost/tmp/t",
        "s3://kr-audit",
        "s3://kr-audit/a/b",
    ],
)
def test_good_audit_uris_resolve(uri: str) -> None:
    assert resolve_config("smoke", overrides=[f"audit.uri={uri}"]).audit.uri == uri


def test_kr_run_refuses_a_bad_audit_uri_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--audit-uri", "ftp://example.org/trail", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "audit.uri" in result.output and "ftp" in result.output and "Traceback" not in result.output
    assert not out.exists()


# --- credentials in URIs ------------------------------------------------------------------------------------------

CREDENTIAL_URIS = [
    (f"http://mlflow.example.org/?token={SECRET}", "http://mlflow.example.org/?token=***"),
    (f"http://mlflow.example.org/?x=1&access_token={SECRET}", "access_token=***"),
    (f"https://b.s3.amazonaws.com/p?X-Amz-Signature={SECRET}", "X-Amz-Signature=***"),
    (f"http://mlflow.example.org/?password={SECRET}", "password=***"),
    (f"https://acct.blob.core.windows.net/c?sv=1&sig={SECRET}", "sig=***"),
    (f"https://mlflow.example.org/?API_KEY={SECRET}", "API_KEY=***"),
    (f"https://mlflow.example.org/#access_token={SECRET}", "access_token=***"),
    (f"https://alice:{SECRET}@mlflow.example.org", "https://***@mlflow.example.org"),
    (f"s3://AKIAEXAMPLE:{SECRET}@kr-audit/trail", "s3://***@kr-audit/trail"),
    (f"s3://{SECRET}@kr-audit/trail", "s3://***@kr-audit/trail"),
]


@pytest.mark.parametrize("key", ["tracking.uri", "tracking.artifact_location", "audit.uri", "data.data_root"])
@pytest.mark.parametrize(("uri", "redacted"), CREDENTIAL_URIS)
def test_credentials_in_uris_are_refused_without_echoing_them(key: str, uri: str, redacted: str) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve_config("smoke", overrides=[f"{key}='{uri}'"])
    message = str(exc.value)
    assert key in message and "credential" in message
    assert SECRET not in message and redacted in message


@pytest.mark.parametrize(
    "args",
    [
        ["--audit-uri", f"s3://AKIAEXAMPLE:{SECRET}@kr-audit/trail"],
        ["--tracking-uri", f"http://mlflow.example.org:5000/?token={SECRET}"],
        ["--set", f"tracking.uri=http://mlflow.example.org/?X-Amz-Signature={SECRET}"],
        ["--set", f"tracking.artifact_location=s3://u:{SECRET}@bucket/mlartifacts"],
    ],
)
def test_the_cli_never_prints_a_secret(args: list[str], tmp_path: Path) -> None:
    for command in (["config"], ["run", "--out", str(tmp_path / "run")]):
        result = CliRunner().invoke(app, [*command, *args])
        assert result.exit_code == 2, result.output
        assert "credential" in result.output and SECRET not in result.output
        assert "***" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_request_parameters_with_credentials_are_refused_without_echoing_them() -> None:
    req = RunRequest(
        profile="smoke", audit_uri=f"s3://K:{SECRET}@kr-audit/x", run_dir="/tmp/kr-inputs", kfp_run_id="inputs-test"
    )
    with pytest.raises(ConfigError) as exc:
        resolve_request(req)
    assert "audit.uri" in str(exc.value) and SECRET not in str(exc.value)


def test_uris_without_credentials_pass() -> None:
    cfg = resolve_config("smoke", overrides=["tracking.uri=http://mlflow.example.org:5000/?experiment=3"])
    assert cfg.tracking.uri == "http://mlflow.example.org:5000/?experiment=3"
    assert resolve_config("smoke", overrides=["data.data_root=/data/medmnist"]).data.data_root == "/data/medmnist"


# --- model names --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bad' OR name LIKE '%", "two words", "-leading-dash", "a" * 129, "kr/student", "''"])
def test_bad_model_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="tracking.model_name"):
        resolve_config("smoke", overrides=[f"tracking.model_name={json.dumps(name)}"])


@pytest.mark.parametrize("name", ["my-model", "kr.v2_student", "A" * 128])
def test_good_model_names_resolve(name: str) -> None:
    assert resolve_config("smoke", overrides=[f"tracking.model_name={name}"]).model_name == name


def test_a_dataset_file_whose_name_makes_no_model_name_needs_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tracking.model_name") as exc:
        resolve_config("smoke", overrides=["data.dataset=/data/it's here.npz"])
    assert "kr-it's here-student-dev" in str(exc.value)
    cfg = resolve_config("smoke", overrides=["data.dataset=/data/it's here.npz", "tracking.model_name=scans"])
    assert cfg.model_name == "scans"
    req = RunRequest(dataset="/data/it's here.npz", profile="smoke", run_dir=str(tmp_path), kfp_run_id="inputs-test")
    with pytest.raises(ConfigError, match="tracking.model_name"):
        resolve_request(req)


# --- tracebacks -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["config", "run"])
def test_a_binary_config_file_is_a_clear_error(command: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\x00\xff\xfe\x80binary")
    out = tmp_path / "run"
    args = [command, "--config", str(path)] + (["--out", str(out)] if command == "run" else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert str(path) in result.output.replace("\n", "") and "UTF-8" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not out.exists()


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n"])
def test_a_config_file_that_is_no_mapping_is_a_clear_error(text: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["config", "--config", str(path)])
    assert result.exit_code == 2 and "mapping" in result.output, result.output
    with pytest.raises(ConfigError, match="mapping"):
        resolve_request(
            RunRequest(profile="smoke", config_yaml=text, run_dir="/tmp/kr-inputs", kfp_run_id="inputs-test")
        )


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["config", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "not found" in result.output, result.output


@pytest.mark.parametrize("where", ["file", "inside-a-file"])
def test_kr_run_out_must_be_a_folder(where: str, tmp_path: Path) -> None:
    path = tmp_path / "taken"
    path.write_text("not a folder")
    out = path if where == "file" else path / "run"
    result = CliRunner().invoke(app, ["run", "--profile", "smoke", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "--out" in result.output and "not a folder" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert path.read_text() == "not a folder"


def test_kr_run_into_a_busy_run_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kr.pipelines import local

    def never(*args: object) -> dict:
        raise AssertionError("the pipeline must not start")

    monkeypatch.setattr(local, "_run_locked", never)
    out = tmp_path / "run"
    with local.run_folder_lock(out):
        result = CliRunner().invoke(app, ["run", "--profile", "smoke", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "another run" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# --- inert settings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("privacy.enabled=false", ["privacy.enabled", "cannot be disabled"]),
        ("privacy.enabled=true", ["privacy.enabled", "cannot be disabled"]),
        ("naive.enabled=false", ["naive.enabled", "always"]),
    ],
)
def test_switches_that_nothing_reads_are_refused(item: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve_config("smoke", overrides=[item])
    for word in words:
        assert word in str(exc.value)
    assert "enabled" not in RunConfig().privacy.model_dump() and "enabled" not in RunConfig().naive.model_dump()


# --- one precedence for every source --------------------------------------------------------------------------

# key: (dotted config key, CLI flag, value, the resolved value's path in the config)
CLI_KEYS = {
    "dataset": ("data.dataset", "--dataset", "s3://kr-inputs/breast"),  # a URI: checked as one, never read here
    "data_root": ("data.data_root", "--data-root", "DATA"),
    "tracking_uri": ("tracking.uri", "--tracking-uri", "http://mlflow.example.org:5000"),
    "model_name": ("tracking.model_name", "--model-name", "my-model"),
    "audit_uri": ("audit.uri", "--audit-uri", "TRAIL"),
    "download": ("data.download", "--download", True),
}


def _value(key: str, tmp_path: Path) -> object:
    value = CLI_KEYS[key][2]
    return {"DATA": str(tmp_path / "data"), "TRAIL": str(tmp_path / "trail")}.get(value, value)


def _nested(dotted: str, value: object) -> dict:
    section, name = dotted.split(".")
    return {section: {name: value}}


def _lookup(values: dict, dotted: str) -> object:
    section, name = dotted.split(".")
    return values[section][name]


def _source_args(key: str, source: str, tmp_path: Path) -> list[str]:
    dotted, flag, _ = CLI_KEYS[key]
    value = _value(key, tmp_path)
    if source == "file":
        path = tmp_path / "config.yaml"
        path.write_text(json.dumps(_nested(dotted, value)))
        return ["--config", str(path)]
    if source == "set":
        return ["--set", f"{dotted}={json.dumps(value) if isinstance(value, bool) else value}"]
    return [flag] if isinstance(value, bool) else [flag, str(value)]


def _options(args: list[str]) -> dict:
    """build_request's keyword arguments for CLI args (the subset these tests use)."""
    opts: dict = {
        "dataset": None,
        "profile": "smoke",
        "config": None,
        "overrides": [],
        "tracking_uri": None,
        "model_name": None,
        "audit_uri": None,
        "data_root": None,
        "gate_policy": None,
        "download": None,
    }
    names = {"--config": "config", **{flag: key for key, (_, flag, _) in CLI_KEYS.items()}}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--set":
            opts["overrides"].append(args[i + 1])
            i += 2
        elif arg == "--download":
            opts["download"] = True
            i += 1
        else:
            value = args[i + 1]
            opts[names[arg]] = Path(value) if names[arg] == "config" else value
            i += 2
    return opts


@pytest.mark.parametrize("source", ["file", "set", "flag"])
@pytest.mark.parametrize("key", list(CLI_KEYS))
def test_every_source_of_a_cli_key_reaches_the_config(key: str, source: str, tmp_path: Path) -> None:
    """`kr config` and the request `kr run` hands the pipeline resolve every key from every source the same way."""
    dotted = CLI_KEYS[key][0]
    expected = _value(key, tmp_path)
    args = _source_args(key, source, tmp_path)
    result = CliRunner().invoke(app, ["config", "--profile", "smoke", "--json", *args])
    assert result.exit_code == 0, result.output
    assert _lookup(json.loads(result.output), dotted) == expected
    cfg = resolve_request(build_request(**_options(args)))  # what the pipeline resolves again from the request
    assert _lookup(cfg.model_dump(mode="json"), dotted) == expected


@pytest.mark.parametrize("key", [k for k in CLI_KEYS if k != "download"])
def test_flag_beats_set_beats_file(key: str, tmp_path: Path) -> None:
    dotted, flag, _ = CLI_KEYS[key]
    value = _value(key, tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(_nested(dotted, f"{value}-file")))
    file_only = ["--config", str(path)]
    with_set = [*file_only, "--set", f"{dotted}={value}-set"]
    with_flag = [*with_set, flag, f"{value}-flag"]
    for args, winner in ((file_only, "file"), (with_set, "set"), (with_flag, "flag")):
        result = CliRunner().invoke(app, ["config", "--profile", "smoke", "--json", *args])
        assert result.exit_code == 0, result.output
        assert _lookup(json.loads(result.output), dotted) == f"{value}-{winner}"
        cfg = resolve_request(build_request(**_options(args)))
        assert _lookup(cfg.model_dump(mode="json"), dotted) == f"{value}-{winner}"


def test_download_flag_beats_set_and_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("data: {download: true}\n")
    opts = _options(["--config", str(path)])
    assert resolve_request(build_request(**opts)).data.download is True
    assert resolve_request(build_request(**{**opts, "overrides": ["data.download=false"]})).data.download is False
    assert resolve_request(build_request(**{**opts, "download": False})).data.download is False
    result = CliRunner().invoke(app, ["config", "--json", "--config", str(path), "--no-download"])
    assert result.exit_code == 0 and json.loads(result.output)["data"]["download"] is False, result.output


def test_the_config_file_beats_the_profile() -> None:
    """`kr run --profile smoke --config F` used to resolve the profile's value over the file's."""
    req = RunRequest(
        profile="smoke", config_yaml="gkd: {epochs: 7}\n", run_dir="/tmp/kr-inputs", kfp_run_id="inputs-test"
    )
    assert resolve_request(req).gkd.epochs == 7
    overridden = req.model_copy(update={"overrides": ["gkd.epochs=5"]})
    assert resolve_request(overridden).gkd.epochs == 5


@pytest.mark.parametrize(
    ("env", "dotted", "value"),
    [
        ("KR_AUDIT_URI", "audit.uri", "ENVTRAIL"),
        ("MLFLOW_TRACKING_URI", "tracking.uri", "http://env-mlflow.example.org"),
        ("KR_DATA_ROOT", "data.data_root", "ENVDATA"),
    ],
)
@pytest.mark.parametrize("local_store", [True, False])
def test_environment_defaults_apply_only_where_no_source_set_the_key(
    env: str, dotted: str, value: str, local_store: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = {"ENVTRAIL": str(tmp_path / "env-trail"), "ENVDATA": str(tmp_path / "env-data")}.get(value, value)
    monkeypatch.setenv(env, value)
    opts = {k: v for k, v in _options([]).items() if local_store or k not in ("data_root", "gate_policy", "download")}
    if local_store or env != "KR_DATA_ROOT":  # a cluster run's data root is the cluster's (its shared volume)
        default = resolve_request(build_request(**opts, local_store=local_store))
        assert _lookup(default.model_dump(mode="json"), dotted) == value
    mine = str(tmp_path / "mine") if dotted != "tracking.uri" else "http://mine.example.org"
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(_nested(dotted, mine)))
    cfg = resolve_request(build_request(**{**opts, "config": path}, local_store=local_store))
    assert _lookup(cfg.model_dump(mode="json"), dotted) == mine


def test_cluster_requests_carry_the_configs_values(tmp_path: Path) -> None:
    """`kr submit` hands the pipeline a request; the cluster's own defaults must not replace the file's values."""
    from kr.pipelines.cluster import cluster_arguments
    from kr.pipelines.settings import ClusterSettings

    path = tmp_path / "config.yaml"
    path.write_text("data: {dataset: pneumoniamnist, data_root: /mnt/kr-runs/mine}\naudit: {uri: s3://kr-audit/t}\n")
    opts = {k: v for k, v in _options(["--config", str(path)]).items() if k not in ("data_root", "gate_policy")}
    opts.pop("download")
    req = build_request(**opts, local_store=False)
    args = cluster_arguments(req, ClusterSettings())
    cfg = resolve_request(RunRequest(**{**args, "kfp_run_id": "run-1"}))
    assert cfg.data.dataset == "pneumoniamnist" and cfg.data.data_root == "/mnt/kr-runs/mine"
    assert cfg.audit.uri == "s3://kr-audit/t"


@pytest.mark.parametrize("source", ["flag", "env"])
def test_an_s3_data_root_reaches_the_config_as_written(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local run makes a folder data root absolute; an s3:// one must stay as written (it was turned into
    `<cwd>/s3:/bucket/prefix`)."""
    args = ["--data-root", "s3://kr-data/medmnist"] if source == "flag" else []
    if source == "env":
        monkeypatch.setenv("KR_DATA_ROOT", "s3://kr-data/medmnist")
    result = CliRunner().invoke(app, ["config", "--profile", "smoke", "--json", *args])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["data"]["data_root"] == "s3://kr-data/medmnist"
