"""`kr submit`, `kr schedule` and `kr pipelines`: what can be checked without a Kubeflow Pipelines API server (none
runs here)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import kfp_server_api
import pytest
import yaml
from kfp_server_api import (
    V2beta1CronSchedule,
    V2beta1ListPipelinesResponse,
    V2beta1ListPipelineVersionsResponse,
    V2beta1ListRecurringRunsResponse,
    V2beta1PeriodicSchedule,
    V2beta1Pipeline,
    V2beta1PipelineVersion,
    V2beta1RecurringRun,
    V2beta1Trigger,
)
from typer.testing import CliRunner

import kr
from kr.cli import app
from kr.pipelines.cluster import (
    PIPELINE_NAME,
    ClusterError,
    ClusterInputError,
    check_cron,
    cluster_arguments,
    default_version_name,
    find_pipeline,
    image_label,
    resolve,
    schedule_row,
)
from kr.pipelines.compile import compile_pipeline
from kr.pipelines.settings import ClusterSettings
from kr.run import tracking
from kr.run.request import RunRequest, resolve_request

IMAGE = "registry.example.org/kr:0.1.0-abc"


@pytest.mark.parametrize("cron", ["0 0 3 * * 0", "0 */30 * * * *", "0 0 2 1 * ?", "0 0 4 * * MON-FRI"])
def test_six_field_cron_accepted(cron: str) -> None:
    assert check_cron(cron) == cron


def test_five_field_cron_gets_a_hint() -> None:
    with pytest.raises(ClusterError, match=r"did you mean '0 0 3 \* \* 0'"):
        check_cron("0 3 * * 0")


@pytest.mark.parametrize("cron", ["", "0 0 3 * * 0 2026 x", "0 0 3 * * $(rm)"])
def test_bad_cron_refused(cron: str) -> None:
    with pytest.raises(ClusterError):
        check_cron(cron)


def test_schedule_refuses_a_bad_cron_before_contacting_the_cluster() -> None:
    result = CliRunner().invoke(
        app, ["schedule", "--host", "http://127.0.0.1:9", "--image", IMAGE, "--cron", "0 3 * * 0"]
    )
    assert result.exit_code == 2 and "6, seconds first" in result.output


@pytest.mark.parametrize(
    ("cron", "sent"),
    [
        ("0 0 3 * * 0", "0 0 3 * * 0"),
        ("0 0 9 ? * 2-6", "0 0 9 ? * 2-6"),  # kfp's own docstring example
        ("*/15 0,30 8-18/2 1-31 jan-DEC SUN,mon", "*/15 0,30 8-18/2 1-31 jan-DEC SUN,mon"),
        ("0 5/10 * * * *", "0 5/10 * * * *"),
        ("@daily", "0 0 0 * * *"),  # robfig/cron's descriptors, sent as the six fields they stand for
        ("@weekly", "0 0 0 * * 0"),
        ("@hourly", "0 0 * * * *"),
    ],
)
def test_check_cron_accepts_what_kfps_scheduler_parses(cron: str, sent: str) -> None:
    assert check_cron(cron) == sent


@pytest.mark.parametrize(
    ("cron", "words"),
    [
        ("0 61 * * * *", ["minute field '61'", "out of range", "0-59"]),
        ("60 0 3 * * *", ["second field '60'", "0-59"]),
        ("0 0 24 * * *", ["hour field '24'", "0-23"]),
        ("0 0 3 0 * *", ["day of month field '0'", "1-31"]),
        ("0 0 3 * 13 *", ["month field '13'", "1-12 or JAN-DEC"]),
        ("0 0 3 * * 7", ["day of week field '7'", "0-6 or SUN-SAT"]),
        ("0 0 3 * FOO *", ["month field 'FOO'", "not a number or name"]),
        ("0 */0 * * * *", ["minute field '*/0'", "step '0' is not a positive number"]),
        ("0 30-10 * * * *", ["minute field '30-10'", "starts after it ends"]),
        ("0 1,2,99 * * * *", ["minute field '1,2,99'", "'99' is out of range"]),
        ("0 0 3 L * ?", ["day of month field 'L'"]),  # Quartz's L/W/# are not robfig's
        ("@every 1h", ["interval"]),
        ("@fortnightly", ["unknown descriptor"]),
    ],
)
def test_check_cron_names_the_bad_field_and_its_range(cron: str, words: list[str]) -> None:
    with pytest.raises(ClusterInputError) as err:
        check_cron(cron)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_schedule_create_refuses_an_out_of_range_cron_before_contacting_the_cluster() -> None:
    result = CliRunner().invoke(
        app, ["schedule", "create", "--host", CLOSED, "--image", IMAGE, "--cron", "0 61 * * * *"]
    )
    assert result.exit_code == 2 and "minute field '61'" in result.output and "0-59" in result.output


def test_submit_to_an_unreachable_host_fails_clearly() -> None:
    result = CliRunner().invoke(app, ["submit", "--host", "http://127.0.0.1:9", "--image", IMAGE, "--profile", "smoke"])
    assert result.exit_code == 1
    assert "127.0.0.1:9" in result.output


def test_submit_refuses_a_bad_override_first() -> None:
    result = CliRunner().invoke(
        app, ["submit", "--host", "http://127.0.0.1:9", "--image", IMAGE, "--set", "gates.privacy.max_auc=2"]
    )
    assert result.exit_code == 2 and "gates.privacy.max_auc" in result.output


def test_cluster_arguments_use_the_shared_volume_and_resolve_per_run() -> None:
    cluster = ClusterSettings()
    args = cluster_arguments(RunRequest(dataset="pneumoniamnist", gates={"privacy": {"max_auc": 0.55}}), cluster)
    assert args["run_dir"] == "" and args["runs_root"] == cluster.runs_mount
    assert args["data_root"] == f"{cluster.runs_mount}/data"
    # inside the pipeline, the run id names the run folder and keys the registry and the audit trail
    req = RunRequest(**{**args, "kfp_run_id": "3f2a-run", "image": IMAGE})
    cfg = resolve_request(req)
    assert cfg.run.run_key == "3f2a-run" and cfg.run.image == IMAGE
    assert cfg.gates.privacy.max_auc == 0.55 and cfg.model_name == "kr-pneumoniamnist-student"


# --- kr schedule list/pause/resume/delete, kr pipelines upload/list ---------------------------------------------
# No Kubeflow Pipelines API server runs here. What is checked for real: the command line (parsing, help, exit
# codes), the name-to-id resolution over the kfp client's own response models (kfp_server_api), the compiled package,
# and the real kfp client against an unreachable host and against a stand-in HTTP server (below: it answers the
# v2beta1 paths the client calls with those models serialised by kfp_server_api; it is not KFP).


CLOSED = "http://127.0.0.1:9"  # nothing listens on the discard port here
T0 = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)


def recurring(rid: str, name: str, status: str = "ENABLED", cron: str = "0 0 3 * * 0") -> V2beta1RecurringRun:
    return V2beta1RecurringRun(
        recurring_run_id=rid,
        display_name=name,
        status=status,
        trigger=V2beta1Trigger(cron_schedule=V2beta1CronSchedule(cron=cron)),
        max_concurrency="1",
        experiment_id="exp-1",
        created_at=T0,
    )


SCHEDULES = [recurring("rr-1", "kr-retrain"), recurring("rr-2", "nightly"), recurring("rr-3", "nightly", "DISABLED")]


def test_a_recurring_run_is_found_by_name_or_by_id() -> None:
    assert resolve(SCHEDULES, "kr-retrain", "recurring run", "recurring_run_id", "x").recurring_run_id == "rr-1"
    assert resolve(SCHEDULES, "rr-3", "recurring run", "recurring_run_id", "x").recurring_run_id == "rr-3"
    # an id is exact even where a name is shared
    assert resolve(SCHEDULES, " rr-2 ", "recurring run", "recurring_run_id", "x").display_name == "nightly"


def test_an_unknown_or_ambiguous_name_is_refused_naming_the_candidates() -> None:
    with pytest.raises(ClusterInputError, match=r"no recurring run named or with id 'weekly'; `kr schedule list`"):
        resolve(SCHEDULES, "weekly", "recurring run", "recurring_run_id", "`kr schedule list`")
    with pytest.raises(ClusterInputError, match=r"2 recurring runs are named 'nightly' \(ids rr-2, rr-3\)"):
        resolve(SCHEDULES, "nightly", "recurring run", "recurring_run_id", "x")
    with pytest.raises(ClusterInputError, match="no recurring run given"):
        resolve(SCHEDULES, "  ", "recurring run", "recurring_run_id", "x")
    with pytest.raises(ClusterInputError):
        resolve([], "kr-retrain", "recurring run", "recurring_run_id", "x")


def test_a_pipeline_is_found_by_its_name_and_a_shared_name_is_refused() -> None:
    pipelines = [V2beta1Pipeline(pipeline_id="p-1", display_name=PIPELINE_NAME), V2beta1Pipeline(pipeline_id="p-2")]
    assert find_pipeline(pipelines, PIPELINE_NAME).pipeline_id == "p-1"
    assert find_pipeline(pipelines, "other") is None
    with pytest.raises(ClusterInputError, match=r"2 pipelines are named 'x' \(ids p-1, p-3\)"):
        find_pipeline([V2beta1Pipeline(pipeline_id=i, display_name="x") for i in ("p-1", "p-3")], "x")


def test_schedule_rows_show_cron_or_interval() -> None:
    row = schedule_row(SCHEDULES[2])
    assert row == {
        "name": "nightly",
        "id": "rr-3",
        "status": "DISABLED",
        "schedule": "0 0 3 * * 0",
        "experiment_id": "exp-1",
        "max_concurrency": "1",
        "created_at": T0.isoformat(),
    }
    periodic = V2beta1RecurringRun(
        recurring_run_id="rr-9",
        trigger=V2beta1Trigger(periodic_schedule=V2beta1PeriodicSchedule(interval_second="3600")),
    )
    assert schedule_row(periodic)["schedule"] == "every 3600 s"
    assert schedule_row(V2beta1RecurringRun(recurring_run_id="rr-0"))["schedule"] is None


@pytest.mark.parametrize(
    ("image", "label"),
    [
        (IMAGE, "0.1.0-abc"),
        ("registry.example.org:5000/team/kr:gpu-1.2", "gpu-1.2"),  # the registry's port is not a tag
        ("registry.example.org/kr@sha256:" + "ab" * 32, "sha256-abababababab"),
        ("registry.example.org/kr:0.1.0@sha256:" + "cd" * 32, "0.1.0@sha256-cdcdcdcdcdcd"),
        ("kr", "latest"),
    ],
)
def test_image_label_names_the_build(image: str, label: str) -> None:
    assert image_label(image) == label


def test_default_version_name_is_image_and_code_and_unique_for_dirty_code() -> None:
    clean = "0.1.0+3f2a9c1d0e4b"
    assert default_version_name(IMAGE, clean) == "0.1.0-abc_0.1.0+3f2a9c1d0e4b"
    now = datetime(2026, 11, 30, 14, 5, 6, tzinfo=UTC)
    assert default_version_name(IMAGE, clean + ".dirty", now) == "0.1.0-abc_0.1.0+3f2a9c1d0e4b.dirty_20261130T140506Z"
    assert default_version_name(IMAGE, "0.1.0+unknown", now).endswith("_20261130T140506Z")


def test_help_lists_the_cluster_commands() -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["schedule", "--help"])
    assert out.exit_code == 0
    assert all(c in out.output for c in ("create", "list", "pause", "resume", "delete"))
    out = runner.invoke(app, ["pipelines", "--help"])
    assert out.exit_code == 0 and "upload" in out.output and "list" in out.output
    out = runner.invoke(app, ["pipelines", "upload", "--help"])
    assert out.exit_code == 0 and "--version" in out.output and "code version" in out.output
    assert runner.invoke(app, ["schedule", "pause", "--host", CLOSED]).exit_code == 2  # NAME_OR_ID is required


def test_schedule_create_refuses_a_bad_cron_before_contacting_the_cluster() -> None:
    result = CliRunner().invoke(
        app, ["schedule", "create", "--host", CLOSED, "--image", IMAGE, "--cron", "0 0 3 * * $(rm)"]
    )
    assert result.exit_code == 2 and "day of week field" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["schedule", "list"],
        ["schedule", "pause", "kr-retrain"],
        ["schedule", "resume", "kr-retrain"],
        ["schedule", "delete", "rr-1"],
        ["schedule", "create", "--image", IMAGE, "--cron", "0 0 3 * * 0", "--profile", "smoke"],
        ["schedule", "--image", IMAGE, "--cron", "0 0 3 * * 0", "--profile", "smoke"],  # the older form
        ["pipelines", "list"],
        ["pipelines", "upload", "--image", IMAGE],
    ],
)
def test_an_unreachable_host_fails_with_exit_1_and_no_traceback(args: list[str]) -> None:
    result = CliRunner().invoke(app, [*args, "--host", CLOSED])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an exception escaping
    assert "cannot reach Kubeflow Pipelines at http://127.0.0.1:9" in result.output
    assert "Traceback" not in result.output


def test_upload_refuses_an_empty_version_name_first() -> None:
    result = CliRunner().invoke(app, ["pipelines", "upload", "--host", CLOSED, "--image", IMAGE, "--version", " "])
    assert result.exit_code == 2 and "version name must not be empty" in result.output


def executor_images(package: Path) -> set[str]:
    spec = next(yaml.safe_load_all(package.read_text()))
    return {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}


def test_the_compiled_package_runs_every_step_in_the_image(tmp_path) -> None:
    package = compile_pipeline(tmp_path / "pipeline.yaml", IMAGE)
    spec, platform = yaml.safe_load_all(package.read_text())
    assert spec["pipelineInfo"]["name"] == PIPELINE_NAME and "platforms" in platform
    assert executor_images(package) == {IMAGE}
    assert package.stat().st_size < 32 * 2**20  # the API server's limit on an uploaded package


# --- the stand-in server ----------------------------------------------------------------------------------------


class StandIn:
    """Answers the KFP v2beta1 paths kfp.Client calls for these commands; records each request."""

    def __init__(self, schedules: list, pipelines: list, versions: dict[str, list]) -> None:
        self.schedules, self.pipelines, self.versions = schedules, pipelines, versions
        self.requests: list[tuple[str, str, dict, bytes, dict]] = []
        self.fail_with: tuple[int, dict] | None = None
        self.healthz: tuple[int, object] = (200, {"multi_user": False})

    def answer(self, method: str, path: str, query: dict, body: bytes) -> tuple[int, object]:
        ser = kfp_server_api.ApiClient().sanitize_for_serialization
        if path == "/apis/v2beta1/healthz":
            return self.healthz
        if self.fail_with:
            return self.fail_with
        if method == "GET" and path == "/apis/v2beta1/recurringruns":
            return 200, ser(
                V2beta1ListRecurringRunsResponse(recurring_runs=self.schedules, total_size=len(self.schedules))
            )
        if method == "GET" and path == "/apis/v2beta1/pipelines":
            return 200, ser(V2beta1ListPipelinesResponse(pipelines=self.pipelines, total_size=len(self.pipelines)))
        if method == "GET" and path.endswith("/versions"):
            pid = path.split("/")[-2]
            return 200, ser(V2beta1ListPipelineVersionsResponse(pipeline_versions=self.versions.get(pid, [])))
        if method == "POST" and path == "/apis/v2beta1/pipelines":
            created = V2beta1Pipeline(pipeline_id="p-new", display_name=json.loads(body)["display_name"])
            self.pipelines.append(created)
            return 200, ser(created)
        if method == "POST" and path == "/apis/v2beta1/pipelines/upload_version":
            version = V2beta1PipelineVersion(
                pipeline_id=query["pipelineid"][0], pipeline_version_id="v-new", display_name=query["name"][0]
            )
            return 200, ser(version)
        if (method == "POST" and path.endswith((":disable", ":enable"))) or method == "DELETE":
            return 200, {}
        return 404, {"error": f"no {method} {path} here", "code": 5, "message": f"no {method} {path} here"}

    def __enter__(self) -> str:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _any(self) -> None:
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                query = parse_qs(url.query)
                standin.requests.append((self.command, url.path, query, body, dict(self.headers)))
                status, payload = standin.answer(self.command, url.path, query, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self, method: str) -> list[str]:
        return [path for m, path, *_ in self.requests if m == method]


def test_pause_resume_delete_act_on_the_id_a_name_resolves_to() -> None:
    standin = StandIn(list(SCHEDULES), [], {})
    with standin as host:
        runner = CliRunner()
        out = runner.invoke(app, ["schedule", "pause", "kr-retrain", "--host", host])
        assert out.exit_code == 0, out.output
        assert "kr-retrain (rr-1, 0 0 3 * * 0) paused" in out.output
        assert runner.invoke(app, ["schedule", "resume", "rr-3", "--host", host]).exit_code == 0
        assert runner.invoke(app, ["schedule", "delete", "rr-2", "--host", host]).exit_code == 0
        assert standin.calls("POST") == [
            "/apis/v2beta1/recurringruns/rr-1:disable",
            "/apis/v2beta1/recurringruns/rr-3:enable",
        ]
        assert standin.calls("DELETE") == ["/apis/v2beta1/recurringruns/rr-2"]

        for ref, why in (("nightly", "2 recurring runs are named 'nightly'"), ("weekly", "no recurring run named")):
            out = runner.invoke(app, ["schedule", "delete", ref, "--host", host])
            assert out.exit_code == 2 and why in out.output and "Traceback" not in out.output
        assert standin.calls("DELETE") == ["/apis/v2beta1/recurringruns/rr-2"]  # nothing more was deleted

        listed = runner.invoke(app, ["schedule", "list", "--json", "--host", host])
        assert listed.exit_code == 0
        assert [(r["name"], r["status"]) for r in json.loads(listed.output)] == [
            ("kr-retrain", "ENABLED"),
            ("nightly", "ENABLED"),
            ("nightly", "DISABLED"),
        ]


def test_an_api_error_is_one_line_with_exit_1() -> None:
    standin = StandIn([], [], {})
    standin.fail_with = (403, {"error": "x", "code": 7, "message": "user is not allowed to list recurring runs"})
    with standin as host:
        out = CliRunner().invoke(app, ["schedule", "list", "--host", host])
    assert out.exit_code == 1 and isinstance(out.exception, SystemExit)
    assert "HTTP 403 Forbidden: user is not allowed to list recurring runs" in out.output
    assert "HTTP response headers" not in out.output and "Traceback" not in out.output


def test_a_host_that_is_not_the_kfp_api_fails_fast_with_a_hint() -> None:
    standin = StandIn([], [], {})
    standin.healthz = (404, {"error": "not found"})  # e.g. the UI's address without /pipeline
    with standin as host:
        started = datetime.now(UTC)
        out = CliRunner().invoke(app, ["pipelines", "list", "--host", host])
    assert out.exit_code == 1 and "healthz answered HTTP 404" in out.output and "KFP API endpoint" in out.output
    assert (datetime.now(UTC) - started).total_seconds() < 10  # kfp alone retries 5 times, 5 s apart
    assert [p for _, p, *_ in standin.requests] == ["/apis/v2beta1/healthz"]


def test_schedule_create_refuses_a_name_already_taken() -> None:
    standin = StandIn(list(SCHEDULES), [], {})
    with standin as host:
        out = CliRunner().invoke(
            app, ["schedule", "--host", host, "--image", IMAGE, "--cron", "0 0 4 * * 0", "--name", "kr-retrain"]
        )
    assert out.exit_code == 2 and "a recurring run named 'kr-retrain' exists already (id rr-1" in out.output
    assert standin.calls("POST") == []


def uploaded_package(request: tuple) -> tuple[str, bytes]:
    """The file name and content of the multipart upload the kfp client sent."""
    _, _, _, body, headers = request
    head = f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    part = next(p for p in message.iter_parts() if p.get_param("name", header="content-disposition") == "uploadfile")
    return part.get_filename(), part.get_payload(decode=True)


def test_upload_creates_the_pipeline_then_adds_versions_named_by_image_and_code(tmp_path) -> None:
    standin = StandIn([], [], {})
    code = tracking.code_version()
    with standin as host:
        runner = CliRunner()
        out = runner.invoke(app, ["pipelines", "upload", "--host", host, "--image", IMAGE, "--gpus", "0"])
        assert out.exit_code == 0, out.output
        assert f"created pipeline {PIPELINE_NAME} (p-new): uploaded version" in out.output
        assert f"{host}/#/pipelines/details/p-new/version/v-new" in out.output
        create = next(r for r in standin.requests if r[:2] == ("POST", "/apis/v2beta1/pipelines"))
        assert json.loads(create[3])["display_name"] == PIPELINE_NAME
        upload = next(r for r in standin.requests if r[1] == "/apis/v2beta1/pipelines/upload_version")
        version = upload[2]["name"][0]
        assert upload[2]["pipelineid"] == ["p-new"] and version.startswith("0.1.0-abc_")
        assert version.startswith(f"0.1.0-abc_{code}")
        # what went up is the compiled pipeline for the image, CPU-only as asked
        name, content = uploaded_package(upload)
        (tmp_path / "sent.yaml").write_bytes(content)
        assert executor_images(tmp_path / "sent.yaml") == {IMAGE}
        assert "nvidia.com/gpu" not in content.decode()

        # the same name again: refused, nothing uploaded; another name: a version of the same pipeline
        standin.versions["p-new"] = [V2beta1PipelineVersion(pipeline_version_id="v-new", display_name=version)]
        uploads = len(standin.calls("POST"))
        again = runner.invoke(app, ["pipelines", "upload", "--host", host, "--image", IMAGE, "--version", version])
        assert again.exit_code == 2 and "already has a version named" in again.output
        assert len(standin.calls("POST")) == uploads
        out = runner.invoke(app, ["pipelines", "upload", "--host", host, "--image", IMAGE, "--version", "v2"])
        assert out.exit_code == 0 and f"pipeline {PIPELINE_NAME} (p-new): uploaded version v2" in out.output
        assert standin.calls("POST")[-1] == "/apis/v2beta1/pipelines/upload_version"

        listed = runner.invoke(app, ["pipelines", "list", "--json", "--host", host])
        assert listed.exit_code == 0
        assert json.loads(listed.output)[0]["versions"][0]["name"] == version
        unknown = runner.invoke(app, ["pipelines", "list", "--name", "nope", "--host", host])
        assert unknown.exit_code == 2 and "no pipeline named 'nope'" in unknown.output


# --- the image's commit in the audit record --------------------------------------------------------------------


def test_inside_an_image_the_audit_record_names_the_commit_it_was_built_from(tmp_path, monkeypatch) -> None:
    """In the images kr is an installed wheel (no git checkout) and scripts/build-images bakes the commit into
    KR_COMMIT; the trail body's code version must carry it. Git is kept from finding this checkout above the
    package folder (GIT_CEILING_DIRECTORIES), as there is none in an image."""
    from kr.governance.promotion import trail_body
    from kr.results import RunResults

    commit = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(Path(kr.__file__).resolve().parent.parent))
    monkeypatch.delenv("KR_GIT_COMMIT", raising=False)
    monkeypatch.delenv("KR_DIRTY", raising=False)
    monkeypatch.setenv("KR_COMMIT", commit)
    cfg = resolve_request(RunRequest(dataset="breastmnist", image=IMAGE, kfp_run_id="run-1", run_dir=str(tmp_path)))
    body = trail_body(cfg, tmp_path, "not_promoted", None, None, "2026-11-30T14:00:00+00:00", RunResults())
    assert body["inputs"]["code_version"] == f"{kr.__version__}+{commit[:12]}"
    assert body["inputs"]["image"] == IMAGE
    monkeypatch.setenv("KR_DIRTY", "1")  # built from a dirty tree
    assert tracking.code_version() == f"{kr.__version__}+{commit[:12]}.dirty"
    monkeypatch.delenv("GIT_CEILING_DIRECTORIES")  # with the checkout visible, its own commit wins
    assert not tracking.code_version().startswith(f"{kr.__version__}+{commit[:12]}")
