"""finalize-run: the exit handler; a failed run still gets its trail record, summary and report."""

from kfp import dsl


def finalize_run(request: dict, overrides: list, gates: dict, runner: str, status: dsl.PipelineTaskFinalStatus) -> None:
    """Inputs: the run request (scalars, `overrides`, `gates`; an exit task may not depend on resolve-config, so it
    resolves the same request again), the runner's name, and KFP's final status of the run. On failure: the trail
    record (outcome `failed`), summary.json and report.md saying which step failed and why; on success nothing
    (summarize wrote them)."""
    from kr import steps

    steps.finalize_run(
        request, overrides, gates, runner, failed=status.state != "SUCCEEDED", error=status.error_message or None
    )
