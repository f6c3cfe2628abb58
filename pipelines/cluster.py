"""Kubeflow Pipelines on a cluster with `kfp.Client`: submit one run, upload the pipeline as a named, versioned
pipeline, and create, list, pause, resume and delete recurring retraining runs.

The pipeline is compiled for the given image on the fly (the same DAG `kr run` executes locally), so what runs
on the cluster is exactly what this checkout defines. Authentication is kfp.Client's own (kube context,
in-cluster service account, or a token in the environment); nothing is stored here.

Errors are ClusterError (the cluster cannot be reached, or its API refuses or fails: the CLI exits 1) or its
subclass ClusterInputError (the request itself is wrong: a bad cron, an unknown or ambiguous name, a version name
already taken; the CLI exits 2). Names are resolved to ids by listing first, so a command on an unknown or
ambiguous name changes nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kr.pipelines.compile import compile_pipeline
from kr.pipelines.settings import ClusterSettings
from kr.steps import RunRequest

CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,\-?LW#]+$")


PIPELINE_NAME = "knowledge-recycling"
PIPELINE_DESCRIPTION = (
    "Knowledge Recycling: a classifier trained only on regenerated data, gated on privacy (`kr pipelines upload`)"
)
PAGE_SIZE = 100


class ClusterError(RuntimeError):
    """A Kubeflow Pipelines API that cannot be reached, refuses the request or fails (the CLI exits 1)."""


class ClusterInputError(ClusterError):
    """The request is wrong, whatever the cluster's state: a bad cron, an unknown or ambiguous name, a version name
    already taken (the CLI exits 2)."""


# What Kubeflow Pipelines runs a cron with: its ScheduledWorkflow controller parses it with robfig/cron v1's
# `cron.Parse` (github.com/robfig/cron, parser.go; times in UTC): six space-separated fields, seconds first, each a
# comma-separated list of `*` or `?` (any), N, or N-M, optionally /STEP (N/STEP runs from N to the field's end);
# months and weekdays also by their first three letters (any case); the weekday is 0-6 with Sunday 0 (7 is refused).
# It also accepts descriptors: the fixed ones are sent as the six fields they stand for (the same times, and one
# format in `kr schedule list`); `@every <duration>` is an interval (KFP's periodic schedule), which kr does not set.
_MONTHS = {
    m: i for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)
}
_WEEKDAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
# name, lowest, highest, names for values, what to tell a user
CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int], str], ...] = (
    ("second", 0, 59, {}, "0-59"),
    ("minute", 0, 59, {}, "0-59"),
    ("hour", 0, 23, {}, "0-23"),
    ("day of month", 1, 31, {}, "1-31"),
    ("month", 1, 12, _MONTHS, "1-12 or JAN-DEC"),
    ("day of week", 0, 6, _WEEKDAYS, "0-6 or SUN-SAT (Sunday is 0)"),
)
CRON_DESCRIPTORS = {  # robfig/cron v1's parseDescriptor
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}


def check_cron(expr: str) -> str:
    """The cron to give KFP for `expr`, checked as KFP's scheduler parses it (see CRON_FIELDS): `expr` itself, or
    the six fields a descriptor (@daily, ...) stands for. Raises ClusterInputError naming the field, its value and
    its allowed range; for a 5-field Unix cron, with the 6-field one meant."""
    text = expr.strip()
    if text.startswith("@"):
        if text.split()[0] == "@every":
            raise ClusterInputError(
                f"cron {expr!r}: @every is an interval, which kr schedule does not set; give a cron, e.g. "
                "'0 0 */6 * * *' for every 6 hours"
            )
        if text.lower() not in CRON_DESCRIPTORS:
            raise ClusterInputError(f"cron {expr!r}: unknown descriptor; KFP knows {', '.join(CRON_DESCRIPTORS)}")
        return CRON_DESCRIPTORS[text.lower()]
    _six_fields(text)  # six fields (a hint for five)
    for value, (name, low, high, names, allowed) in zip(text.split(), CRON_FIELDS, strict=True):
        if problem := _cron_field_problem(value, low, high, names):
            raise ClusterInputError(f"cron {expr!r}: {name} field {value!r}: {problem}; the {name} takes {allowed}")
    return text


def _cron_field_problem(field: str, low: int, high: int, names: dict[str, int]) -> str | None:
    """What robfig/cron v1's getField would refuse in one field, or None."""

    def number(token: str) -> int | None:
        return names.get(token.lower(), int(token) if token.isdigit() else None)

    for item in field.split(","):
        what = f"{item!r} " if item != field else ""  # the item, where the field is a list
        span, _, step = item.partition("/")
        if "/" in step:
            return f"{what}has more than one '/'"
        if step and not (step.isdigit() and int(step) > 0):
            return f"step {step!r} is not a positive number"
        first, dash, last = span.partition("-")
        if span in ("*", "?"):
            continue
        if "-" in last:
            return f"{what}has more than one '-'"
        start, end = number(first), number(last) if dash else None
        if start is None or (dash and end is None):
            return f"{what}is not a number{' or name' if names else ''}, a range or '*'"
        end = end if dash else (high if step else start)
        if start < low or end > high:
            return f"{what}is out of range"
        if start > end:
            return f"{what}starts after it ends"
    return None


def _six_fields(expr: str) -> str:
    """KFP's cron has six fields, seconds first ('0 0 3 * * 0'); a 5-field Unix cron is a common slip."""
    fields = expr.split()
    if len(fields) == 5:
        raise ClusterInputError(
            f"cron {expr!r} has 5 fields; KFP's cron has 6, seconds first: did you mean '0 {expr}'?"
        )
    if len(fields) != 6:
        raise ClusterInputError(
            f"cron {expr!r} has {len(fields)} fields; KFP's cron has 6: sec min hour day month weekday"
        )
    return expr


def cluster_arguments(req: RunRequest, cluster: ClusterSettings) -> dict:
    """The run's parameters for a cluster: the run folder comes from the run id, data from the shared volume."""
    req = req.model_copy(
        update={
            "run_dir": "",
            "runs_root": cluster.runs_mount,
            "data_root": req.data_root or f"{cluster.runs_mount}/data",
        }
    )
    return req.pipeline_arguments()


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed API call: the HTTP status and the server's message for an API error (not
    kfp_server_api's dump of headers and body), the innermost cause for a connection failure."""
    from kfp_server_api import ApiException

    if isinstance(exc, ApiException):
        message = ""
        try:
            body = json.loads(exc.body or "")
            message = (body.get("message") or body.get("error") or "") if isinstance(body, dict) else ""
        except ValueError:
            message = (exc.body or "").strip()[:300]
        status = f"HTTP {exc.status} {exc.reason or ''}".strip() if exc.status else str(exc.reason or "API error")
        return f"{status}: {message}" if message else status
    reason = getattr(exc, "reason", None)  # urllib3's MaxRetryError: the NewConnectionError behind it
    if isinstance(reason, BaseException):
        return str(reason)
    return str(exc).strip() or type(exc).__name__


HEALTHZ_TRIES = 3


def _client(host: str):
    import kfp
    from kfp_server_api import ApiException

    class Client(kfp.Client):
        def get_kfp_healthz(self, sleep_duration: int = 1):
            """kfp.Client's probe of the API at construction, without its five tries 5 s apart, each logged with a
            traceback: an HTTP error that is not the server's (4xx: not the KFP API) is final; a 5xx is tried again
            up to HEALTHZ_TRIES times, 1 s apart; the last error propagates."""
            for attempt in range(1, HEALTHZ_TRIES + 1):
                try:
                    return self.healthzs.healthz_service_get_healthz()
                except ApiException as exc:
                    if attempt == HEALTHZ_TRIES or not (exc.status and exc.status >= 500):
                        raise
                    time.sleep(sleep_duration)

    try:
        with warnings.catch_warnings():  # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later"
            warnings.simplefilter("ignore", FutureWarning)
            return Client(host=host)
    except ApiException as exc:  # something answered, but not as the KFP API does
        raise ClusterError(
            f"cannot reach Kubeflow Pipelines at {host}: {host.rstrip('/')}/apis/v2beta1/healthz answered "
            f"{describe(exc)}; is --host the KFP API endpoint (e.g. https://kfp.example.org/pipeline), and is this "
            "client authenticated (kube context, token)?"
        ) from exc
    except Exception as exc:  # kfp raises bare exceptions for unreachable or unauthenticated hosts
        raise ClusterError(f"cannot reach Kubeflow Pipelines at {host}: {describe(exc)}") from exc


def submit_run(
    host: str, image: str, req: RunRequest, experiment: str, cluster: ClusterSettings | None = None
) -> tuple[str, str]:
    """Start one run: (run id, UI link)."""
    cluster = cluster or ClusterSettings()
    client = _client(host)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "pipeline.yaml", image, cluster)
        try:
            result = client.create_run_from_pipeline_package(
                str(package),
                arguments=cluster_arguments(req, cluster),
                run_name=f"kr-{Path(req.dataset).stem}-{req.profile}",
                experiment_name=experiment,
                service_account=cluster.service_account,
            )
        except Exception as exc:
            raise ClusterError(f"submitting to {host} failed: {describe(exc)}") from exc
    return result.run_id, f"{host.rstrip('/')}/#/runs/details/{result.run_id}"


def schedule_runs(
    host: str,
    image: str,
    req: RunRequest,
    experiment: str,
    name: str,
    cron: str,
    cluster: ClusterSettings | None = None,
) -> str:
    """A recurring run: at most one at a time (a slow retrain never overlaps the next), no catch-up backlog. A name
    another recurring run has is refused (ClusterInputError): pause, resume and delete find recurring runs by name."""
    cron = check_cron(cron)
    name = _check_name(name, "recurring run name")
    cluster = cluster or ClusterSettings()
    client = _client(host)
    same = [r for r in list_schedules(host, client) if (r.display_name or "") == name]
    if same:
        raise ClusterInputError(
            f"a recurring run named {name!r} exists already (id {same[0].recurring_run_id}, {same[0].status}): "
            f"pick another --name, or `kr schedule delete {name}` first"
        )
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "pipeline.yaml", image, cluster)
        try:
            exp = client.create_experiment(experiment)
            job = client.create_recurring_run(
                experiment_id=exp.experiment_id,
                job_name=name,
                cron_expression=cron,
                max_concurrency=1,
                no_catchup=True,
                params=cluster_arguments(req, cluster),
                pipeline_package_path=str(package),
                service_account=cluster.service_account,
            )
        except Exception as exc:
            raise ClusterError(f"scheduling on {host} failed: {describe(exc)}") from exc
    return job.recurring_run_id


# --- names to ids ---------------------------------------------------------------------------------------------


def _list_all(call: Callable[..., Any], field: str, **kwargs: Any) -> list:
    """Every item of a paged kfp list call (`field` of each response), following next_page_token."""
    items: list = []
    token, seen = "", set()
    while True:
        page = call(page_token=token, page_size=PAGE_SIZE, **kwargs)
        items.extend(getattr(page, field) or [])
        token = page.next_page_token or ""
        if not token or token in seen:  # a token seen before would page forever
            return items
        seen.add(token)


def resolve(items: Sequence[Any], ref: str, kind: str, id_field: str, hint: str) -> Any:
    """The item `ref` names among `items` (kfp_server_api models): the one whose id (`id_field`) is `ref`, else
    the one whose display name is `ref`. ClusterInputError for no match, or for a name that several items share
    (their ids listed: give one); `hint` tells where the names are listed."""
    ref = ref.strip()
    if not ref:
        raise ClusterInputError(f"no {kind} given")
    by_id = [i for i in items if getattr(i, id_field) == ref]
    if by_id:
        return by_id[0]
    named = [i for i in items if (i.display_name or "") == ref]
    if not named:
        raise ClusterInputError(f"no {kind} named or with id {ref!r}; {hint} lists them")
    if len(named) > 1:
        ids = ", ".join(getattr(i, id_field) for i in named)
        raise ClusterInputError(f"{len(named)} {kind}s are named {ref!r} (ids {ids}); give the id of the one you mean")
    return named[0]


# --- recurring runs -------------------------------------------------------------------------------------------


def _namespace(client) -> str | None:
    return client.get_user_namespace() or None


def list_schedules(host: str, client=None) -> list:
    """Every recurring run the client may see (kfp_server_api V2beta1RecurringRun), oldest first."""
    client = client or _client(host)
    try:
        runs = _list_all(client.list_recurring_runs, "recurring_runs", namespace=_namespace(client))
    except Exception as exc:
        raise ClusterError(f"listing recurring runs on {host} failed: {describe(exc)}") from exc
    return sorted(runs, key=lambda r: r.created_at.timestamp() if r.created_at else float("inf"))


def schedule_row(run: Any) -> dict:
    """What `kr schedule list` shows of a recurring run."""
    trigger = run.trigger
    cron = trigger.cron_schedule.cron if trigger and trigger.cron_schedule else None
    every = trigger.periodic_schedule.interval_second if trigger and trigger.periodic_schedule else None
    return {
        "name": run.display_name,
        "id": run.recurring_run_id,
        "status": run.status,
        "schedule": cron or (f"every {every} s" if every else None),
        "experiment_id": run.experiment_id,
        "max_concurrency": run.max_concurrency,
        "created_at": run.created_at.isoformat() if run.created_at else None,
    }


SCHEDULE_ACTIONS = {
    "pause": ("disable_recurring_run", "paused"),
    "resume": ("enable_recurring_run", "resumed"),
    "delete": ("delete_recurring_run", "deleted"),
}


def change_schedule(host: str, ref: str, action: str) -> Any:
    """Pause, resume or delete the recurring run `ref` names (a name or an id); returns it as it was before."""
    method = SCHEDULE_ACTIONS[action][0]
    client = _client(host)
    run = resolve(list_schedules(host, client), ref, "recurring run", "recurring_run_id", "`kr schedule list`")
    try:
        getattr(client, method)(run.recurring_run_id)
    except Exception as exc:
        raise ClusterError(
            f"{action} of recurring run {run.display_name} ({run.recurring_run_id}) on {host} failed: {describe(exc)}"
        ) from exc
    return run


# --- pipelines and versions -----------------------------------------------------------------------------------


def image_label(image: str) -> str:
    """The part of an image reference that names the build: its tag, its digest (sha256-<12 hex>), or both; "latest"
    for a bare name (a mutable tag: the code version still tells uploads apart)."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    short = ""
    if digest:
        algo, _, hexes = digest.partition(":")
        short = f"{algo}-{hexes[:12]}" if hexes else algo
    return "@".join(p for p in (tag, short) if p) or "latest"


def default_version_name(image: str, code_version: str, now: datetime | None = None) -> str:
    """A version name that says what runs: the image's tag or digest and the code version of the checkout that
    compiled the DAG (kr.run.tracking.code_version()), e.g. "0.1.0-abc_0.1.0+3f2a9c1d0e4b". A dirty or unknown code
    version names no exact code, so the UTC time is appended to keep the name unique."""
    name = f"{image_label(image)}_{code_version}"
    if code_version.endswith((".dirty", "+unknown")):
        name += f"_{(now or datetime.now(UTC)):%Y%m%dT%H%M%SZ}"
    return name


@dataclass(frozen=True)
class Uploaded:
    pipeline_id: str
    pipeline_name: str
    version_id: str
    version_name: str
    url: str
    new_pipeline: bool


def version_url(host: str, pipeline_id: str, version_id: str) -> str:
    return f"{host.rstrip('/')}/#/pipelines/details/{pipeline_id}/version/{version_id}"


def find_pipeline(pipelines: Sequence[Any], name: str) -> Any | None:
    """The pipeline of that display name among `pipelines`, None if there is none; ClusterInputError when several
    share it (upload would not know which one to add a version to)."""
    named = [p for p in pipelines if (p.display_name or "") == name]
    if len(named) > 1:
        ids = ", ".join(p.pipeline_id for p in named)
        raise ClusterInputError(f"{len(named)} pipelines are named {name!r} (ids {ids}); rename or delete all but one")
    return named[0] if named else None


def _pipelines(host: str, client) -> list:
    try:
        return _list_all(client.list_pipelines, "pipelines", namespace=_namespace(client))
    except Exception as exc:
        raise ClusterError(f"listing pipelines on {host} failed: {describe(exc)}") from exc


def _versions(host: str, client, pipeline: Any) -> list:
    try:
        return _list_all(
            client.list_pipeline_versions,
            "pipeline_versions",
            pipeline_id=pipeline.pipeline_id,
            sort_by="created_at desc",
        )
    except Exception as exc:
        raise ClusterError(
            f"listing the versions of pipeline {pipeline.display_name} on {host} failed: {describe(exc)}"
        ) from exc


def list_pipelines(host: str, name: str | None = None) -> list[tuple[Any, list]]:
    """The pipelines the client may see (only the one named `name` if given: ClusterInputError if there is none),
    each with its versions, newest first: [(V2beta1Pipeline, [V2beta1PipelineVersion])]."""
    client = _client(host)
    pipelines = _pipelines(host, client)
    if name is not None:
        found = find_pipeline(pipelines, name)
        if found is None:
            raise ClusterInputError(f"no pipeline named {name!r}; `kr pipelines list` lists them")
        pipelines = [found]
    return [(p, _versions(host, client, p)) for p in pipelines]


def _check_name(value: str, what: str) -> str:
    if not value or value.isspace():
        raise ClusterInputError(f"{what} must not be empty")
    if len(value) > 128:  # the API server's limit on names
        raise ClusterInputError(f"{what} {value!r} is longer than 128 characters")
    return value


def upload_pipeline(
    host: str,
    image: str,
    name: str = PIPELINE_NAME,
    version: str | None = None,
    cluster: ClusterSettings | None = None,
    code_version: str | None = None,
) -> Uploaded:
    """Compile the pipeline for `image` and upload it as version `version` (default: default_version_name) of the
    pipeline `name`, creating that pipeline first if there is none. A version name the pipeline already has is
    refused (ClusterInputError) before anything is uploaded."""
    from kfp_server_api import V2beta1Pipeline

    from kr.steps import code_version as current_code_version

    code_version = code_version or current_code_version()
    name = _check_name(name, "pipeline name")
    version = _check_name(version or default_version_name(image, code_version), "version name")
    description = f"Knowledge Recycling, components in {image}, DAG compiled from kr {code_version}"
    client = _client(host)
    found = find_pipeline(_pipelines(host, client), name)
    if found is not None:
        taken = [v for v in _versions(host, client, found) if (v.display_name or "") == version]
        if taken:
            raise ClusterInputError(
                f"pipeline {name!r} already has a version named {version!r} (id {taken[0].pipeline_version_id}): "
                "this image and code were uploaded before; pass --version to upload under another name"
            )
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "pipeline.yaml", image, cluster or ClusterSettings())
        pipeline_id = found.pipeline_id if found is not None else None
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # kfp prints its own "Pipeline details" link
                if pipeline_id is None:
                    # created empty, so that its first version gets the version name too (upload_pipeline would
                    # name the first version after the pipeline)
                    pipeline_id = client.pipelines.pipeline_service_create_pipeline(
                        pipeline=V2beta1Pipeline(display_name=name, description=PIPELINE_DESCRIPTION)
                    ).pipeline_id
                uploaded = client.upload_pipeline_version(
                    str(package), pipeline_version_name=version, pipeline_id=pipeline_id, description=description
                )
        except Exception as exc:
            left = (
                f" (pipeline {name!r} was created as {pipeline_id}, with no version yet; uploading again adds one)"
                if found is None and pipeline_id is not None
                else ""
            )
            raise ClusterError(
                f"uploading pipeline {name!r} version {version!r} to {host} failed: {describe(exc)}{left}"
            ) from exc
    return Uploaded(
        pipeline_id=pipeline_id,
        pipeline_name=name,
        version_id=uploaded.pipeline_version_id,
        version_name=version,
        url=version_url(host, pipeline_id, uploaded.pipeline_version_id),
        new_pipeline=found is None,
    )
