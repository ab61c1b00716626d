"""Start and stop a local Label Studio server in its own virtualenv.

The server binds to 127.0.0.1, keeps its SQLite database and uploads under
`<home>/labelstudio/` (readable by its owner only), and gets its admin user and API
token through the environment (never on the command line, where `ps` would show them).
Nobody can sign up without an invite link, and local-files serving is off unless
`POSEOPS_LABEL_STUDIO_LOCAL_FILES` names a folder to serve.

On the server profile (POSEOPS_PROFILE=server) its database is `poseops_labelstudio` on the
PostgreSQL of POSEOPS_DATABASE_URL (`poseops.postgres`), created when missing as it starts;
uploads stay in the data folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from poseops import postgres
from poseops.processes import ManagedServer, ServerError, ServerStatus
from poseops.settings import Settings, secure_home

LabelStudioServerError = ServerError
LOCAL_FILES_KEY = "POSEOPS_LABEL_STUDIO_LOCAL_FILES"  # a folder to serve as local-files storage; unset: none
# Label Studio refuses webhooks and ML backends at reserved addresses (SSRF protection). The poseops ML backend
# listens on 127.0.0.1 beside it, so loopback alone is let through: its default list less 127.0.0.0/8.
BANNED_SUBNETS = ("0.0.0.0/8,10.0.0.0/8,100.64.0.0/10,169.254.0.0/16,172.16.0.0/12,192.0.0.0/24,192.0.2.0/24,"
                  "192.88.99.0/24,192.168.0.0/16,198.18.0.0/15,198.51.100.0/24,203.0.113.0/24,224.0.0.0/4,"
                  "233.252.0.0/24,240.0.0.0/4,255.255.255.255/32,::/128,::1/128,::ffff:0:0/96,::ffff:0:0:0/96,"
                  "64:ff9b::/96,64:ff9b:1::/48,100::/64,2001:0000::/32,2001:20::/28,2001:db8::/32,2002::/16,"
                  "fc00::/7,fe80::/10,ff00::/8")
__all__ = ["LabelStudioServerError", "ServerStatus", "answers", "down", "log_file", "server", "status", "up"]


def server(settings: Settings) -> ManagedServer:
    data_dir = (secure_home(settings.home) / "labelstudio").resolve()
    env = {
        "LABEL_STUDIO_USERNAME": settings.label_studio_username,
        "LABEL_STUDIO_PASSWORD": settings.label_studio_password,
        "LABEL_STUDIO_USER_TOKEN": settings.label_studio_token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        # least privilege: accounts only through an invite link, and no folder of this machine served to them
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "USE_DEFAULT_BANNED_SUBNETS": "false",
        "USER_ADDITIONAL_BANNED_SUBNETS": BANNED_SUBNETS,
        **local_files_env(),
        **database_env(settings),
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false",
        # Label Studio's own virtualenv, not the caller's
        "VIRTUAL_ENV": "",
        "PYTHONPATH": "",
    }
    command = [
        str(settings.label_studio_bin.resolve()), "start", "--no-browser",
        "--internal-host", "127.0.0.1",
        "--port", str(settings.label_studio_port),
        "--data-dir", str(data_dir),
    ]
    managed = ManagedServer("Label Studio", data_dir, settings.label_studio_url, f"{settings.label_studio_url}/health",
                            command, env, cwd=data_dir,
                            hint="If the port is taken, set LABEL_STUDIO_URL to another port. The first start "
                                 "migrates the database for about 90 s.")
    return postgres.on_database(managed, settings, "labelstudio") if settings.server_profile else managed


def database_env(settings: Settings) -> dict[str, str]:
    """Label Studio's database: its SQLite file in the data folder, or on the server profile `poseops_labelstudio`
    on PostgreSQL (Django's settings, read by Label Studio from these variables)."""
    if not settings.server_profile or not settings.database_url:  # unset on the server profile: `up` says so
        return {}
    server = postgres.database_server(settings)
    return {"DJANGO_DB": "default", "POSTGRE_NAME": postgres.database_name("labelstudio"), "POSTGRE_USER": server.user,
            "POSTGRE_PASSWORD": server.password, "POSTGRE_HOST": server.host, "POSTGRE_PORT": str(server.port)}


def local_files_env() -> dict[str, str]:
    """Local-files serving: off (poseops uploads files), unless POSEOPS_LABEL_STUDIO_LOCAL_FILES names the folder to serve.

    Set explicitly either way: left unset, Label Studio turns it on by itself where it finds a data folder.
    """
    root = os.environ.get(LOCAL_FILES_KEY, "").strip()
    if not root:
        return {"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "false", "LOCAL_FILES_SERVING_ENABLED": "false"}
    return {"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(Path(root).resolve())}


def log_file(settings: Settings) -> Path:
    return settings.label_studio_dir / "server.log"


def answers(url: str, timeout: float = 2.0) -> bool:
    """True when a Label Studio server answers its health check at `url`."""
    return ManagedServer("Label Studio", Path("."), url, f"{url}/health").answers(timeout)


def status(settings: Settings) -> ServerStatus:
    return server(settings).status()


def up(settings: Settings, timeout: float = 600.0) -> ServerStatus:
    """Start Label Studio unless one already answers at the configured URL; wait until it answers."""
    if not status(settings).running:
        if not settings.label_studio_bin.exists():
            raise ServerError(
                f"Label Studio is not installed at {settings.label_studio_bin}. Run `make install` (it creates that "
                "virtualenv), or set POSEOPS_LABEL_STUDIO_BIN to the `label-studio` command of your own installation."
            )
        if not settings.label_studio_password or not settings.label_studio_token:
            raise ServerError("LABEL_STUDIO_PASSWORD and LABEL_STUDIO_USER_TOKEN must be set (environment or .env) "
                              "to start Label Studio.")
    return server(settings).up(timeout)


def down(settings: Settings, timeout: float = 30.0) -> bool:
    """Stop the Label Studio this project started (and only that one). True if one was stopped."""
    return server(settings).down(timeout)
