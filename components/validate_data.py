"""validate-data: load the MedMNIST file and run the Great Expectations suites over every image."""

from kfp.dsl import HTML, Artifact, Dataset, Output


def validate_data(
    config: str,
    data: Output[Dataset],
    data_docs: Output[HTML],
    data_docs_site: Output[Artifact],
    result: Output[Artifact],
) -> None:
    """Inputs: `config` (data and validation sections). Outputs: `data` (a reference to the validated file:
    info.json with its path and MD5, never the images, which stay out of the artifact store), `data_docs` (the Data
    Docs index page) and `data_docs_site` (the whole site), `result` (kr.results.DataResult, JSON). A failed
    expectation fails the task; the Data Docs are written either way."""
    import shutil
    from pathlib import Path

    from kr import steps

    site = Path(data_docs_site.path)
    try:
        r = steps.validate_data(config, Path(data.path), site)
    finally:
        if (site / "index.html").exists():  # the page most worth reading when validation fails
            shutil.copyfile(site / "index.html", data_docs.path)
    r.save(Path(result.path))
    data.metadata.update({k: r.info[k] for k in ("name", "md5", "n_classes", "channels", "n_train")})
    data_docs.metadata.update({"expectations_passed": r.expectations["passed"]})
