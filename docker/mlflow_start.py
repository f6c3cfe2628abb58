"""Entry point of the kr MLflow server image: `mlflow server --app-name basic-auth` with its auth config rendered.

MLflow reads the basic-auth settings from an ini file (MLFLOW_AUTH_CONFIG_PATH) whose `database_uri` holds the
auth database's credentials. The non-secret part comes from a template (KR_MLFLOW_AUTH_TEMPLATE: in Kubernetes
the ConfigMap generated from infra/base/mlflow/basic_auth.ini; else MLflow's own default); the database URI comes
from the MLFLOW_AUTH_DATABASE_URI environment variable (a Secret in Kubernetes) and is written, with the rest, to a
private file under $TMPDIR, so the image works with a read-only root filesystem.

Everything else is MLflow's own environment: MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION, MLFLOW_HOST,
MLFLOW_PORT, MLFLOW_WORKERS, MLFLOW_SERVER_ALLOWED_HOSTS, MLFLOW_AUTH_ADMIN_PASSWORD and
MLFLOW_FLASK_SERVER_SECRET_KEY. Extra arguments are passed on to `mlflow server`.
"""

import configparser
import io
import os
import sys
import tempfile
from pathlib import Path


def default_template() -> Path:
    import mlflow.server.auth

    return Path(mlflow.server.auth.__file__).with_name("basic_auth.ini")


def render_auth_config(template: str, database_uri: str | None) -> str:
    """The ini MLflow reads, with `database_uri` replaced when one is given ('%' escaped for ConfigParser)."""
    config = configparser.ConfigParser(interpolation=None)
    config.read_string(template)
    if "mlflow" not in config:
        raise SystemExit("basic-auth template: no [mlflow] section")
    if database_uri:
        config["mlflow"]["database_uri"] = database_uri.replace("%", "%%")
    if not config["mlflow"].get("database_uri"):
        raise SystemExit("basic-auth: no database_uri (set MLFLOW_AUTH_DATABASE_URI)")
    out = io.StringIO()
    config.write(out)
    return out.getvalue()


SECRET_VARIABLES = (
    "MLFLOW_BACKEND_STORE_URI",
    "MLFLOW_AUTH_DATABASE_URI",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
)
PLACEHOLDER = "CHANGE_ME"


def check_secrets(env) -> None:
    """Refuse to start with the placeholders of infra/secrets/*.env.example still in place."""
    left = [name for name in SECRET_VARIABLES if PLACEHOLDER in env.get(name, "")]
    if left:
        raise SystemExit(f"{', '.join(left)} still hold the {PLACEHOLDER} placeholder: set real values in the Secret")


def write_auth_config(text: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="mlflow-auth-"))  # mode 0700
    path = folder / "basic_auth.ini"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def main(argv: list[str]) -> None:
    check_secrets(os.environ)
    template = Path(os.environ.get("KR_MLFLOW_AUTH_TEMPLATE") or default_template())
    if not template.is_file():
        raise SystemExit(f"basic-auth template not found: {template}")
    text = render_auth_config(template.read_text(encoding="utf-8"), os.environ.get("MLFLOW_AUTH_DATABASE_URI"))
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(write_auth_config(text))
    os.execvp("mlflow", ["mlflow", "server", "--app-name", "basic-auth", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
