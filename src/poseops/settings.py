"""Where things are and how to reach them: read from the environment and `.env`.

Secrets (the Label Studio password and API token) come only from here. They are
never printed: `Settings.__repr__` hides them, every secret poseops reads is remembered
so that `redact` can take it out of any text (every `PoseopsError` message goes through
it), and child processes get them only when they need them (`child_env`).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path

from poseops.errors import PoseopsError

ENV_FILE = ".env"
SECRET_FIELDS = {"label_studio_password", "label_studio_token", "webhook_secret", "database_url"}
# Environment variables holding secrets: kept out of every child process that does not need them.
SECRET_ENV_KEYS = ("LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN", "LABEL_STUDIO_API_KEY", "POSEOPS_API_KEY",
                   "POSEOPS_WEBHOOK_SECRET", "POSEOPS_DATABASE_URL", "AWS_SECRET_ACCESS_KEY")
_SECRETS: set[str] = set()
MIN_SECRET_LENGTH = 6  # shorter values are not redacted (they would blank out ordinary words)


def remember_secret(value: str | None) -> None:
    """Note a secret so that `redact` removes it from any text."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """`text` with every secret poseops knows of (remembered ones and those in the environment) replaced by ***."""
    for key in SECRET_ENV_KEYS:
        remember_secret(os.environ.get(key))
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: this one's without its secrets, plus `extra` (which may add some back)."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV_KEYS}
    return {**env, **(extra or {})}


def secure_home(home: Path) -> Path:
    """Create the poseops home readable by its owner only (0700), and tighten an existing one and its databases.

    A home holding a PostgreSQL cluster run by another OS user (`poseops.postgres`, under root) stays 0711: that
    user must pass through it to its data folder, and may not list it.
    """
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    if home.stat().st_uid == os.getuid():
        cluster = home / "postgres" / "data"
        home.chmod(0o711 if cluster.is_dir() and cluster.stat().st_uid != os.getuid() else 0o700)
        for db in (*home.glob("*.db"), *home.glob("*/*.db"), *home.glob("*/*.sqlite3")):
            if db.is_file() and not db.is_symlink():
                db.chmod(0o600)
    return home


# The tools' usage reporting: off (and offline it only fails loudly).
TELEMETRY_OFF = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1",
                 "BENTOML_DO_NOT_TRACK": "true", "MLFLOW_ENABLE_TELEMETRY": "false"}


def quiet_telemetry() -> None:
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines of a dotenv file; comments and blank lines ignored."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return values


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path(".poseops"))
    label_studio_url: str = "http://127.0.0.1:8080"
    label_studio_username: str = "admin@poseops.local"
    label_studio_password: str = ""
    label_studio_token: str = ""
    label_studio_bin: Path = field(default_factory=lambda: Path(".venv-labelstudio/bin/label-studio"))
    prefect_url: str = "http://127.0.0.1:4200"
    mlflow_ui_url: str = "http://127.0.0.1:5000"
    service_url: str = "http://127.0.0.1:3000"
    ml_backend_url: str = "http://127.0.0.1:9090"
    webhook_secret: str = ""  # what Label Studio's webhooks must send to the ML backend (generated into .env)
    # The profile: `embedded` (SQLite, local folders, file locks: one machine) or `server` (Label Studio, MLflow
    # and Prefect on PostgreSQL, artifacts and the DVC remote on S3, locks on the Prefect server). docs/scaling.md
    profile: str = "embedded"
    database_url: str = ""  # server profile: postgresql://USER:PASSWORD@HOST:PORT; empty: a cluster in <home>/postgres
    s3_endpoint_url: str = ""  # an S3-compatible endpoint (http://host:9000); empty: AWS S3 itself
    dvc_remote: str = ""  # where datasets are pushed: s3://bucket/path or a folder; empty: <home>/dvc-remote
    artifacts_url: str = ""  # where the MLflow server keeps artifacts: s3://bucket/path; empty: <home>/mlartifacts

    @property
    def server_profile(self) -> bool:
        return self.profile == "server"

    @property
    def label_studio_dir(self) -> Path:
        return self.home / "labelstudio"

    @property
    def label_studio_port(self) -> int:
        tail = self.label_studio_url.rsplit(":", 1)[-1].split("/")[0]
        return int(tail) if tail.isdigit() else 8080

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={'***' if f.name in SECRET_FIELDS and getattr(self, f.name) else repr(getattr(self, f.name))}"
            for f in fields(self)
        )
        return f"Settings({shown})"


_ENV_KEYS = {
    "home": "POSEOPS_HOME",
    "label_studio_url": "LABEL_STUDIO_URL",
    "label_studio_username": "LABEL_STUDIO_USERNAME",
    "label_studio_password": "LABEL_STUDIO_PASSWORD",
    "label_studio_token": "LABEL_STUDIO_USER_TOKEN",
    "label_studio_bin": "POSEOPS_LABEL_STUDIO_BIN",
    "prefect_url": "POSEOPS_PREFECT_URL",
    "mlflow_ui_url": "POSEOPS_MLFLOW_UI_URL",
    "service_url": "POSEOPS_SERVICE_URL",
    "ml_backend_url": "POSEOPS_ML_BACKEND_URL",
    "webhook_secret": "POSEOPS_WEBHOOK_SECRET",
    "profile": "POSEOPS_PROFILE",
    "database_url": "POSEOPS_DATABASE_URL",
    "s3_endpoint_url": "POSEOPS_S3_ENDPOINT_URL",
    "dvc_remote": "POSEOPS_DVC_REMOTE",
    "artifacts_url": "POSEOPS_ARTIFACTS_URL",
}
PROFILES = ("embedded", "server")
HTTP_FIELDS = {"label_studio_url", "prefect_url", "mlflow_ui_url", "service_url", "ml_backend_url", "s3_endpoint_url"}


class SettingsError(PoseopsError, ValueError):
    """A setting (environment or `.env`) with a value poseops cannot use; the message names it."""


def check_url(key: str, value: str) -> str:
    """`value` without a trailing slash when it is an http(s) URL with a host (and a valid port); else SettingsError."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value.strip())
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError:
        ok = False
    if not ok:
        raise SettingsError(f"{key}={value!r} is not a usable URL: write it as http://HOST:PORT, "
                            "e.g. http://127.0.0.1:8080 (an IPv6 host in brackets: http://[::1]:8080)")
    return value.strip().rstrip("/")


def load_settings(env_file: Path | None = None) -> Settings:
    """Settings from the process environment, then `.env` in the working directory, then defaults."""
    file_values = read_env_file(env_file or Path(ENV_FILE))
    kwargs: dict[str, object] = {}
    for name, key in _ENV_KEYS.items():
        value = os.environ.get(key) or file_values.get(key)
        if value:
            kwargs[name] = Path(value) if name in {"home", "label_studio_bin"} else check_url(key, value) if name in HTTP_FIELDS else value
    if kwargs.get("profile", "embedded") not in PROFILES:
        raise SettingsError(f"POSEOPS_PROFILE={kwargs['profile']!r} is not a profile: use `embedded` (one machine, "
                            "the default) or `server` (PostgreSQL, S3, locks on the Prefect server; docs/scaling.md)")
    if kwargs.get("database_url") and not str(kwargs["database_url"]).startswith(("postgresql://", "postgres://")):
        raise SettingsError("POSEOPS_DATABASE_URL must be a PostgreSQL URL: postgresql://USER:PASSWORD@HOST:PORT")
    settings = Settings(**kwargs)  # type: ignore[arg-type]
    remember_secret(settings.label_studio_password)
    remember_secret(settings.label_studio_token)
    remember_secret(settings.webhook_secret)
    remember_secret(settings.database_url)
    if settings.database_url:
        from urllib.parse import urlsplit

        remember_secret(urlsplit(settings.database_url).password)
    return settings


def ensure_label_studio_credentials(env_file: Path | None = None) -> Settings:
    """Settings with a Label Studio password and token, generating missing ones into `.env` (mode 600).

    A fresh machine gets random credentials once; later runs read the same ones.
    """
    env_file = env_file or Path(ENV_FILE)
    settings = load_settings(env_file)
    missing = {}
    if not settings.label_studio_password:
        missing["LABEL_STUDIO_PASSWORD"] = secrets.token_urlsafe(18)
    if not settings.label_studio_token:
        missing["LABEL_STUDIO_USER_TOKEN"] = secrets.token_hex(20)
    if not settings.webhook_secret:
        missing["POSEOPS_WEBHOOK_SECRET"] = secrets.token_urlsafe(24)
    if missing:
        existing = env_file.read_text(encoding="utf-8") if env_file.is_file() else ""
        lines = [existing.rstrip("\n")] if existing.strip() else ["# poseops local settings; git ignores this file"]
        lines += [f"{k}={v}" for k, v in missing.items()]
        env_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        env_file.chmod(0o600)
        settings = load_settings(env_file)
    return settings


def apply_env_file(env_file: Path | None = None) -> None:
    """Put `.env`'s settings into this process's environment, below what the environment already says.

    Every command then obeys the same settings with the same precedence (environment, then
    `.env`, then defaults), including the tools that read their own variables (Ultralytics'
    YOLO_OFFLINE, POSEOPS_WEIGHTS_DIR, MLFLOW_TRACKING_URI, PREFECT_API_URL). The secrets stay
    out: `load_settings` reads them from the file, and child processes never inherit them.
    """
    secret_keys = {_ENV_KEYS[name] for name in SECRET_FIELDS}
    for key, value in read_env_file(env_file or Path(ENV_FILE)).items():
        if key not in secret_keys and value and not os.environ.get(key):
            os.environ[key] = value
