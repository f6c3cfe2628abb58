"""Real server processes for tests: a moto S3 server and an MLflow tracking server, on 127.0.0.1 and free ports.

Each server runs in its own process group, so stopping it also stops whatever it forked (MLflow's uvicorn worker).
Nothing here sets global environment variables: callers get the endpoint and a dummy-credential env dict and pass
them on explicitly (`monkeypatch.setenv`, `subprocess` env, or `client()` below).

    from servers import moto_server, mlflow_server, moto_fixture  # the last registers the `moto` fixture

    with moto_server() as s3, mlflow_server(tmp_path, f"s3://{s3.create_bucket()}/mlflow", s3.env) as mlf:
        MlflowClient(tracking_uri=mlf.uri) ...
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
# moto accepts any credentials; these only have to exist so botocore can sign requests
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A port nothing listens on right now (the server binds it a moment later; a clash makes start() fail loudly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The current environment without any AWS_*/MLFLOW_* settings, plus `extra`.

    A developer's real profile, session token or tracking URI must never leak into a test server.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(extra)
    return env


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _answers(url: str) -> bool:
    """True once anything answers HTTP at `url` (an HTTP error status still means the server is up)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@dataclass
class ServerProcess:
    """A server started in its own session (process group), with stdout and stderr in one log file."""

    name: str
    proc: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, name: str, cmd: list[str], env: dict[str, str], log: Path) -> ServerProcess:
        with log.open("wb") as out:
            # start_new_session: a process group of its own, so stop() reaches its children and a Ctrl-C in the
            # terminal running pytest does not hit it before the fixture's teardown does
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return cls(name, proc, log)

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.leader_exited():
                self.stop()
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{_tail(self.log)}")
            if ready():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready within {timeout:.0f} s:\n{_tail(self.log)}")

    def leader_exited(self) -> bool:
        """Whether the server's main process has exited, WITHOUT reaping it.

        An unreaped (zombie) leader keeps its pid, so the process group id cannot be reused by some other process
        while stop() still signals it.
        """
        if self.proc.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, wait for the leader, SIGKILL what is left of the group (forked workers), reap."""
        if self.proc.returncode is not None:
            return  # reaped already: its group id may belong to someone else by now, so signal nothing
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not self.leader_exited() and time.monotonic() < deadline:
            time.sleep(0.1)
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout)

    def _signal_group(self, sig: int) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)  # the leader's pid is the group id (start_new_session)


@dataclass
class MotoServer:
    endpoint: str
    process: ServerProcess
    _client: Any = field(default=None, init=False, repr=False)

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs to reach this server: endpoint variables and dummy credentials."""
        return {
            **DUMMY_AWS,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self) -> Any:
        """A boto3 S3 client for this server (test-side only: explicit dummy credentials, no global state)."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=DUMMY_AWS["AWS_DEFAULT_REGION"],
            aws_access_key_id=DUMMY_AWS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_AWS["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique one by default, so tests sharing the server stay apart)."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def launch(
    name: str,
    command: Callable[[int], list[str]],
    env: dict[str, str],
    log: Path,
    ready: Callable[[str], bool],
    timeout: float,
) -> tuple[ServerProcess, str]:
    """Start `command(port)` on a free port and wait until `ready(base_url)`; returns the process and base URL.

    free_port() cannot reserve the port, so another process may take it first: then try again on a new one.
    """
    for attempt in range(3):
        port = free_port()
        base = f"http://{HOST}:{port}"
        process = ServerProcess.start(name, command(port), env, log)
        try:
            process.wait_until(lambda base=base: ready(base), timeout)
            return process, base
        except RuntimeError as exc:
            if "address already in use" not in str(exc).lower() or attempt == 2:
                raise
    raise AssertionError("unreachable")


@contextmanager
def moto_server(log_dir: Path | None = None, timeout: float = 30.0) -> Iterator[MotoServer]:
    """A moto S3 server process (`moto_server -H 127.0.0.1 -p PORT`), stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="moto-") as tmp:
        process, endpoint = launch(
            "moto_server",
            lambda port: [str(BIN / "moto_server"), "-H", HOST, "-p", str(port)],
            clean_env(DUMMY_AWS),
            Path(log_dir or tmp) / "moto.log",
            lambda base: _answers(f"{base}/moto-api/"),
            timeout,
        )
        try:
            yield MotoServer(endpoint, process)
        finally:
            process.stop()


@dataclass
class MlflowServer:
    uri: str
    process: ServerProcess


@contextmanager
def mlflow_server(
    tmp_path: Path,
    artifacts_destination: str,
    env: dict[str, str],
    timeout: float = 60.0,
    admin_password: str | None = None,
) -> Iterator[MlflowServer]:
    """An MLflow tracking server (sqlite backend, proxied artifacts in `artifacts_destination`), stopped on exit.

    `env` carries what the server needs to reach the artifact store (e.g. `MotoServer.env`). With `admin_password`,
    MLflow's basic auth is on as the cluster runs it: the auth config is infra/base/mlflow/basic_auth.ini (default
    permission NO_PERMISSIONS) with a SQLite auth database, and user `admin` has that password.
    """
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    auth: dict[str, str] = {}
    if admin_password is not None:
        import configparser

        ini = configparser.ConfigParser(interpolation=None)
        ini.read(Path(__file__).resolve().parents[1] / "infra" / "base" / "mlflow" / "basic_auth.ini")
        ini["mlflow"]["database_uri"] = f"sqlite:///{tmp_path / 'auth.db'}"
        with (tmp_path / "basic_auth.ini").open("w") as f:
            ini.write(f)
        auth = {
            "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
        }

    def command(port: int) -> list[str]:
        return [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            artifacts_destination,
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            "1",
            *(["--app-name", "basic-auth"] if auth else []),
        ]

    # job execution spawns a huey consumer pool: ~10 processes and 2.3 GB instead of 2 and 0.5 GB
    server_env = clean_env({**env, **auth, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    log = tmp_path / "mlflow-server.log"
    process, uri = launch("mlflow server", command, server_env, log, lambda base: _healthy(f"{base}/health"), timeout)
    try:
        yield MlflowServer(uri, process)
    finally:
        process.stop()


@pytest.fixture(scope="session", name="moto")
def moto_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """The `moto` fixture: one moto S3 server per session; each test takes its own bucket (`moto.create_bucket()`).

    Import `moto_fixture` (into conftest.py for one server shared by every module) and ask for `moto`; the distinct
    function name keeps ruff from reading the test argument as a redefinition of the import.
    """
    with moto_server(log_dir=tmp_path_factory.mktemp("moto")) as server:
        yield server


@dataclass
class PostgresServer:
    """A PostgreSQL server on 127.0.0.1 whose superuser `kr` (password `password`) owns the databases it made."""

    port: int
    process: ServerProcess

    def uri(self, database: str, driver: str = "+psycopg2") -> str:
        """SQLAlchemy's URI of `database` (the driver the MLflow image has: SQLAlchemy 2.1 alone picks psycopg 3);
        driver="" gives libpq's own form, for psql."""
        return f"postgresql{driver}://kr:password@{HOST}:{self.port}/{database}"


PG_BIN = Path("/usr/lib/postgresql")


def postgres_bin(name: str) -> Path | None:
    """Debian's binary `name` of the newest installed PostgreSQL (postgresql package), or None."""
    found = sorted(PG_BIN.glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return found[-1] if found else None


@contextmanager
def postgres_server(tmp_path: Path, databases: tuple[str, ...], timeout: float = 60.0) -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL cluster (Debian's `postgresql` package) in `tmp_path`, TCP on 127.0.0.1 only, with
    `databases` created; stopped on exit. PostgreSQL refuses to run as root: as root it runs as user `postgres`."""
    initdb, postgres = postgres_bin("initdb"), postgres_bin("postgres")
    if not (initdb and postgres):
        pytest.skip("PostgreSQL is not installed: apt-get install -y postgresql")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    # not under tmp_path: pytest's temporary folders are private to root, and the server runs as `postgres`
    home = Path(tempfile.mkdtemp(prefix="kr-postgres-"))
    data, password = home / "pgdata", home / "pgpass"
    data.mkdir()
    password.write_text("password\n")
    if as_user:
        for path in (home, data, password):
            shutil.chown(path, "postgres", "postgres")
    subprocess.run(
        [*as_user, str(initdb), "-D", str(data), "-U", "kr", "--pwfile", str(password), "--auth", "scram-sha-256"],
        check=True,
        capture_output=True,
    )

    def command(port: int) -> list[str]:
        # the socket directory is the cluster's own (/var/run/postgresql may not exist or not be writable)
        return [*as_user, str(postgres), "-D", str(data), "-h", HOST, "-p", str(port), "-k", str(data)]

    def ready(base: str) -> bool:
        port = int(base.rsplit(":", 1)[1])
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex((HOST, port)) == 0

    process, base = launch("postgres", command, clean_env({}), Path(tmp_path) / "postgres.log", ready, timeout)
    server = PostgresServer(int(base.rsplit(":", 1)[1]), process)
    try:
        deadline = time.monotonic() + timeout
        psql = str(postgres_bin("psql") or "psql")
        for name in databases:
            while True:  # the port opens a moment before the server accepts logins
                done = subprocess.run(
                    [psql, server.uri("postgres", driver=""), "-c", f'CREATE DATABASE "{name}"'],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if done.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres: cannot create {name}: {done.stderr}\n{_tail(process.log)}")
                time.sleep(0.5)
        yield server
    finally:
        process.stop()
        shutil.rmtree(home, ignore_errors=True)
