"""summarize: summary.json, the plots and the report of a finished run, from every step's result."""

from typing import List  # noqa: UP035  KFP reads the annotation and wants typing.List

from kfp.dsl import Artifact, Dataset, Input, Markdown, Output


def summarize(
    config: str,
    run_dir: str,
    profile: str,
    runner: str,
    started_at: str,
    conclusion: str,
    data: Input[Dataset],
    data_docs_site: Input[Artifact],
    shards: Input[List[Dataset]],  # noqa: UP006
    privacy: Input[Artifact],
    data_result: Input[Artifact],
    teacher_result: Input[Artifact],
    generator_result: Input[Artifact],
    selection_result: Input[Artifact],
    shard_results: Input[List[Artifact]],  # noqa: UP006
    student_result: Input[Artifact],
    naive_result: Input[Artifact],
    privacy_result: Input[Artifact],
    gates_result: Input[Artifact],
    summary: Output[Artifact],
    report: Output[Markdown],
) -> None:
    """Inputs: the full `config`, the run folder, profile, runner and start, the `conclusion` (JSON, from promote or
    record-rejection), the data, Data Docs, shards and privacy artifacts (for the plots and the run folder), and
    every step's result. Outputs: `summary` (summary.json, schema kr.summary/1) and `report` (Markdown); both also
    go to the run folder and the MLflow parent run, which this task closes."""
    import shutil
    from pathlib import Path

    from kr import steps

    files = {
        "data": data_result,
        "teacher": teacher_result,
        "generator": generator_result,
        "selection": selection_result,
        "student": student_result,
        "naive": naive_result,
        "privacy": privacy_result,
        "gates": gates_result,
    }
    results = steps.load_results(files, [s.path for s in shard_results], conclusion)
    steps.publish(Path(data_docs_site.path), "validation/real", Path(run_dir))  # when validation was reused
    s = steps.summarize(
        config,
        Path(run_dir),
        profile,
        runner,
        started_at,
        results,
        Path(data.path),
        [Path(x.path) for x in shards],
        Path(privacy.path),
    )
    shutil.copyfile(Path(run_dir) / "summary.json", summary.path)
    shutil.copyfile(Path(run_dir) / "report.md", report.path)
    summary.metadata.update({"status": s["status"], "outcome": s["outcome"], "gates_passed": s["gates"]["passed"]})
