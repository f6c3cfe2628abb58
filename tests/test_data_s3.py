"""kr.data from object storage: s3:// datasets and data roots, read from a real moto S3 server process."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from datagen import REAL_ROOT, needs_real, write_npz
from servers import MotoServer, free_port, moto_fixture  # noqa: F401  (registers the `moto` fixture)

from kr import data
from kr.config import ConfigError, resolve_config
from kr.data import DataError, NpzLimits, file_md5, load_dataset, load_saved_dataset, save_dataset

SECRET = "wJalrXUtnFEMI-not-a-real-secret-0123456789"  # must never appear in a message


@pytest.fixture
def s3(moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MotoServer:
    """The environment points at moto (endpoint and dummy credentials, as on a cluster pod), temporary files go to
    tmp_path/tmp (so a test can see that the fetched copy is gone)."""
    for key, value in moto.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # moto accepts any
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return moto


def leftovers(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "tmp").iterdir())


def upload(s3: MotoServer, bucket: str, key: str, path: Path) -> None:
    s3.client().put_object(Bucket=bucket, Key=key, Body=path.read_bytes())


def refused(*args, **kwargs) -> str:
    with pytest.raises(DataError) as exc:
        load_dataset(*args, **kwargs)
    msg = str(exc.value)
    assert SECRET not in msg
    return msg


@needs_real
def test_an_official_flag_under_an_s3_data_root_loads_as_the_local_file(s3: MotoServer, tmp_path: Path) -> None:
    bucket = s3.create_bucket()
    upload(s3, bucket, "medmnist/breastmnist.npz", REAL_ROOT / "breastmnist.npz")
    local = load_dataset("breastmnist", REAL_ROOT)
    start = time.perf_counter()
    remote = load_dataset("breastmnist", f"s3://{bucket}/medmnist")
    print(f"breastmnist (547 KB) fetched from moto and loaded in {time.perf_counter() - start:.3f} s")
    assert remote.info.path == f"s3://{bucket}/medmnist/breastmnist.npz"
    assert remote.info.md5 == local.info.md5 == file_md5(REAL_ROOT / "breastmnist.npz")
    assert (remote.info.source, remote.info.name) == ("medmnist", "breastmnist")  # the official MD5 was checked
    assert remote.info.class_names == local.info.class_names
    for split in data.SPLITS:
        for a, b in zip(remote.split(split), local.split(split), strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    assert leftovers(tmp_path) == []  # the fetched copy is deleted once read
    # a file under the official name that is not the official file is refused by its MD5, before it is unpacked
    write_npz(tmp_path / "fake.npz", channels=1, n_classes=2)
    upload(s3, bucket, "fake/breastmnist.npz", tmp_path / "fake.npz")
    msg = refused("breastmnist", f"s3://{bucket}/fake")
    assert f"s3://{bucket}/fake/breastmnist.npz: MD5 mismatch for breastmnist" in msg and "upload" in msg
    assert leftovers(tmp_path) == []


def test_a_custom_npz_by_its_s3_uri(s3: MotoServer, tmp_path: Path) -> None:
    bucket = s3.create_bucket()
    path = write_npz(tmp_path / "mine.npz", channels=3, n_classes=4)
    upload(s3, bucket, "sets/v2/mine.npz", path)
    ds = load_dataset(f"s3://{bucket}/sets/v2/mine.npz")
    assert (ds.info.name, ds.info.source, ds.info.path) == ("mine", "file", f"s3://{bucket}/sets/v2/mine.npz")
    assert ds.info.md5 == file_md5(path) and ds.x_train.shape == (60, 3, 28, 28) and ds.info.n_classes == 4
    local = load_dataset(str(path))
    assert np.array_equal(ds.x_test, local.x_test) and np.array_equal(ds.y_val, local.y_val)
    # a bad file is named by its URI, never by the temporary copy
    write_npz(tmp_path / "bad.npz", train_labels=None)
    upload(s3, bucket, "bad.npz", tmp_path / "bad.npz")
    msg = refused(f"s3://{bucket}/bad.npz")
    assert msg.startswith(f"s3://{bucket}/bad.npz: missing keys train_labels") and str(tmp_path) not in msg
    assert leftovers(tmp_path) == []


def test_the_saved_reference_fetches_again_and_refuses_a_changed_or_deleted_object(
    s3: MotoServer, tmp_path: Path
) -> None:
    bucket = s3.create_bucket()
    uri = f"s3://{bucket}/data/set.npz"
    upload(s3, bucket, "data/set.npz", write_npz(tmp_path / "set.npz", channels=1, n_classes=3))
    limits = NpzLimits(max_file_mb=8, max_array_mb=8, max_total_mb=16, max_compression_ratio=100)
    ds = load_dataset(uri, limits=limits)
    folder = save_dataset(ds, tmp_path / "artifact")
    assert [p.name for p in folder.iterdir()] == ["info.json"] and uri in (folder / "info.json").read_text()
    again = load_saved_dataset(folder)
    assert again.info == ds.info and again.limits == limits and np.array_equal(again.x_train, ds.x_train)
    # replaced after validation (same key, other bytes): refused on its MD5 before anything is unpacked
    upload(s3, bucket, "data/set.npz", write_npz(tmp_path / "other.npz", channels=1, n_classes=3, seed=1))
    with pytest.raises(DataError, match=f"{uri}: the file changed after validation"):
        load_saved_dataset(folder)
    s3.client().delete_object(Bucket=bucket, Key="data/set.npz")
    with pytest.raises(DataError, match=f"{uri}: the validated data file is gone .*no object 'data/set.npz'"):
        load_saved_dataset(folder)
    assert leftovers(tmp_path) == []


def test_a_missing_object_or_bucket_says_which(s3: MotoServer) -> None:
    bucket = s3.create_bucket()
    msg = refused(f"s3://{bucket}/nothing/here.npz")
    assert f"s3://{bucket}/nothing/here.npz: no object 'nothing/here.npz' in the bucket '{bucket}'" in msg
    msg = refused("breastmnist", f"s3://{bucket}/medmnist", download=True)
    assert "no object 'medmnist/breastmnist.npz'" in msg and "upload breastmnist.npz there" in msg
    msg = refused("s3://kr-no-such-bucket-3f2c9a/x.npz")
    assert "the bucket 'kr-no-such-bucket-3f2c9a' does not exist" in msg


def test_an_unreachable_endpoint_is_a_data_error(s3: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for var in data.S3_ENDPOINT_VARS:
        monkeypatch.setenv(var, closed)
    start = time.perf_counter()
    msg = refused("s3://some-bucket/x.npz")
    print(f"closed endpoint refused in {time.perf_counter() - start:.1f} s (5 attempts)")
    assert f"s3://some-bucket/x.npz: cannot reach the S3 endpoint {closed}" in msg
    assert "EndpointConnectionError" in msg
    # user information in the endpoint variable stays out of the message
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://minio:{SECRET}@127.0.0.1:{free_port()}")
    msg = refused("s3://some-bucket/x.npz")
    assert "cannot reach the S3 endpoint http://***@127.0.0.1" in msg


def test_an_object_over_max_file_mb_is_refused_before_it_is_downloaded(
    s3: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bucket = s3.create_bucket()
    s3.client().put_object(Bucket=bucket, Key="big.npz", Body=b"\0" * (2 * data.MB))
    calls: list[str] = []
    make = data.s3_data_client

    def recording():
        client = make()
        client.meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
        return client

    monkeypatch.setattr(data, "s3_data_client", recording)
    limits = NpzLimits(max_file_mb=1.5, max_array_mb=8, max_total_mb=8, max_compression_ratio=100)
    msg = refused(f"s3://{bucket}/big.npz", limits=limits)
    assert "the object, as S3 reports it, is 2.0 MB, over the 1.5 MB limit (data.max_file_mb)" in msg
    assert calls == ["HeadObject"] and leftovers(tmp_path) == []


def test_access_denied_and_missing_credentials_are_data_errors(
    s3: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from botocore.stub import Stubber

    client = data.s3_data_client()
    stub = Stubber(client)
    stub.add_client_error("head_object", "403", "Forbidden", http_status_code=403)
    monkeypatch.setattr(data, "s3_data_client", lambda: client)
    with stub:
        msg = refused("s3://locked/x.npz")
    assert "s3://locked/x.npz: access denied to read it (403: Forbidden)" in msg and "kr-data-s3" in msg

    monkeypatch.undo()  # the real client factory, no credentials anywhere
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    msg = refused("s3://any-bucket/x.npz")
    assert "no S3 credentials to read it (NoCredentialsError)" in msg and "AWS_ACCESS_KEY_ID" in msg


def test_the_client_takes_the_endpoint_and_either_region_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from kr.governance.trail.stores import ENDPOINT_VARS

    assert data.S3_ENDPOINT_VARS == ENDPOINT_VARS  # one set of endpoint variables for the trail and the data
    for var in (*data.S3_ENDPOINT_VARS, *data.S3_REGION_VARS):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://minio.example:9000")
    client = data.s3_data_client()
    assert client.meta.region_name == "eu-west-1" and client.meta.endpoint_url == "http://minio.example:9000"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://other.example:9000")  # the trail's order: this one first
    client = data.s3_data_client()
    assert client.meta.region_name == "eu-central-1" and client.meta.endpoint_url == "http://other.example:9000"


@pytest.mark.parametrize(
    ("dataset", "data_root", "words"),
    [
        ("ftp://host/set.npz", None, "data.dataset 'ftp://host/set.npz': unsupported scheme 'ftp'"),
        ("breastmnist", "https://host/medmnist", "data.data_root 'https://host/medmnist': unsupported scheme 'https'"),
        ("s3://Bad_Bucket/set.npz", None, "'Bad_Bucket' is not a valid S3 bucket name"),
        ("s3://bucket/folder/", None, "names no object"),
        ("s3://bucket/set.npz?versionId=3", None, "an S3 location takes no query or fragment"),
    ],
)
def test_load_dataset_refuses_a_uri_that_is_not_an_s3_object(dataset: str, data_root: str | None, words: str) -> None:
    assert words in refused(dataset, data_root)


def test_config_takes_s3_locations_and_refuses_other_schemes_and_credentials() -> None:
    cfg = resolve_config("smoke", overrides=["data.dataset=s3://kr-data/sets/mine.npz"])
    assert cfg.data.dataset == "s3://kr-data/sets/mine.npz" and cfg.model_name.startswith("kr-mine-student")
    cfg = resolve_config("smoke", overrides=["data.data_root=s3://kr-data/medmnist", "data.dataset=breastmnist"])
    assert cfg.data.data_root == "s3://kr-data/medmnist"
    for override, words in [
        ("data.dataset=ftp://files.example/set.npz", "data.dataset 'ftp://files.example/set.npz': unsupported scheme"),
        ("data.data_root=http://files.example/medmnist", "data.data_root 'http://files.example/medmnist': unsupported"),
        ("data.data_root=s3://Not_A_Bucket/medmnist", "'Not_A_Bucket' is not a valid S3 bucket name"),
        ("data.dataset=s3://kr-data", "data.dataset 's3://kr-data' names no object"),
        (
            f"data.dataset=s3://AKIAEXAMPLE:{SECRET}@kr-data/set.npz",
            "data.dataset s3://***@kr-data/set.npz: credentials",
        ),
        (f"data.data_root=s3://kr-data/m?X-Amz-Signature={SECRET}", "credentials in a URI are refused"),
    ]:
        with pytest.raises(ConfigError) as exc:
            resolve_config("smoke", overrides=[override])
        assert words in str(exc.value), (override, str(exc.value))
        assert SECRET not in str(exc.value) and "AKIAEXAMPLE" not in str(exc.value)


def test_a_fetched_copy_is_written_in_a_private_folder(s3: MotoServer, tmp_path: Path, monkeypatch) -> None:
    bucket = s3.create_bucket()
    upload(s3, bucket, "set.npz", write_npz(tmp_path / "set.npz"))
    seen = []
    read = data.read_npz

    def spying(path, *args, **kwargs):
        seen.append((Path(path), oct(Path(path).parent.stat().st_mode & 0o777), kwargs.get("source")))
        return read(path, *args, **kwargs)

    monkeypatch.setattr(data, "read_npz", spying)
    load_dataset(f"s3://{bucket}/set.npz")
    ((path, mode, source),) = seen
    assert path.parent.parent == tmp_path / "tmp" and mode == "0o700" and source == f"s3://{bucket}/set.npz"
    assert not path.exists() and leftovers(tmp_path) == []
