"""PostgreSQL for the server profile: one cluster, a database each for Label Studio, MLflow and Prefect.

One setting says where it is: `POSEOPS_DATABASE_URL=postgresql://USER:PASSWORD@HOST:PORT` (a secret; no
database name: each part gets its own).

- HOST on this machine (127.0.0.1 or localhost): poseops runs the cluster itself, with its state in
  `<home>/postgres` (`poseops postgres up`, or `poseops stack up --profile server`). The first `up` runs
  `initdb` into `<home>/postgres/data` with USER as its superuser and PASSWORD as that user's password;
  every start listens on 127.0.0.1:PORT only, with no Unix socket, and `pg_hba.conf` lets in password
  logins (scram-sha-256) from 127.0.0.1 alone. So the one setting both describes the cluster and, locally,
  creates it. PostgreSQL refuses to run as root: under root poseops runs it as the `postgres` OS user (the
  Debian package creates it), which owns the data folder, and `<home>` and `<home>/postgres` let that user
  pass (mode 0711: pass, not list). Without POSEOPS_DATABASE_URL, `ensure_database_url` (what those
  commands call) writes a local one with a random password into `.env`. When a cluster poseops did not
  start already answers at that port (the system's own), poseops uses it as it would another machine's.
- Any other HOST: the cluster is yours; poseops starts nothing and only creates its databases when missing
  (USER needs CREATEDB, or create them yourself).

`database_url(settings, part)` gives a part its database (`poseops_labelstudio`, `poseops_mlflow`,
`poseops_prefect`; created if missing) as a URL with the driver that part speaks: Django's `postgresql://`
for Label Studio, `postgresql+psycopg://` for MLflow (SQLAlchemy), `postgresql+asyncpg://` for Prefect.
`part_url` is the same URL without touching the server.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from poseops.errors import PoseopsError
from poseops.processes import ManagedServer, ServerStatus, alive, signal_group
from poseops.settings import ENV_FILE, Settings, load_settings, remember_secret, secure_home

PARTS = {"labelstudio": "postgresql", "mlflow": "postgresql+psycopg", "prefect": "postgresql+asyncpg"}  # its driver
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")  # a local cluster listens on 127.0.0.1 (IPv4 only)
DEFAULT_PORT = 5432
DEFAULT_USER = "poseops"
DEBIAN_BIN_ROOT = Path("/usr/lib/postgresql")  # Debian keeps initdb and postgres off PATH, in N/bin
CLUSTER_OS_USER = "postgres"  # who runs a local cluster when poseops runs as root
INSTALL_HINT = "install PostgreSQL: `make install-system` (Debian/Ubuntu: apt-get install postgresql)"


class PostgresError(PoseopsError, RuntimeError):
    """PostgreSQL cannot be used as configured; the message says what to do."""


@dataclass(frozen=True)
class DatabaseServer:
    """Where the cluster is and who poseops is on it: POSEOPS_DATABASE_URL, parsed."""

    user: str
    password: str
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS

    @property
    def address(self) -> str:
        """HOST:PORT, for messages (no credentials)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, database: str = "postgres", scheme: str = "postgresql") -> str:
        return f"{scheme}://{quote(self.user, safe='')}:{quote(self.password, safe='')}@{self.address}/{database}"


def parse_database_url(url: str) -> DatabaseServer:
    """POSEOPS_DATABASE_URL as a DatabaseServer; a PostgresError naming what is wrong with it."""
    form = "write it as postgresql://USER:PASSWORD@HOST:PORT"
    try:
        parts = urlsplit(url.strip())
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise PostgresError(f"POSEOPS_DATABASE_URL has a port that is not a number from 1 to 65535: {form}") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise PostgresError(f"POSEOPS_DATABASE_URL is not a PostgreSQL URL: {form}")
    if not parts.hostname or not parts.username or not parts.password:
        missing = [name for name, value in (("HOST", parts.hostname), ("USER", parts.username),
                                            ("PASSWORD", parts.password)) if not value]
        raise PostgresError(f"POSEOPS_DATABASE_URL lacks its {', '.join(missing)}: {form}")
    if parts.path not in ("", "/") or parts.query:
        raise PostgresError(f"POSEOPS_DATABASE_URL names a database or options ({parts.path}{parts.query and '?'}"
                            f"{parts.query}): leave them out, poseops makes a database for each part; {form}")
    remember_secret(unquote(parts.password))  # out of every message, as written and as sent
    return DatabaseServer(unquote(parts.username), unquote(parts.password), parts.hostname, port)


def database_server(settings: Settings) -> DatabaseServer:
    if not settings.database_url:
        raise PostgresError("POSEOPS_DATABASE_URL is not set: run `poseops postgres up` (it writes a local one into "
                            ".env) or set it to postgresql://USER:PASSWORD@HOST:PORT")
    return parse_database_url(settings.database_url)


def database_name(part: str) -> str:
    if part not in PARTS:
        raise ValueError(f"no database part {part!r}: one of {', '.join(PARTS)}")
    return f"poseops_{part}"


def part_url(settings: Settings, part: str) -> str:
    """The part's database URL with its driver, without touching the server."""
    return database_server(settings).url(database_name(part), PARTS[part])


def database_url(settings: Settings, part: str) -> str:
    """The part's database URL with its driver, creating the database first when it is missing."""
    create_database(database_server(settings), database_name(part))
    return part_url(settings, part)


def connect(server: DatabaseServer, database: str = "postgres"):
    """A psycopg connection (autocommit); the usual failures as PostgresError saying what to do."""
    import psycopg

    try:
        return psycopg.connect(server.url(database), autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as e:
        raise PostgresError(connect_problem(server, str(e))) from None


def connect_problem(server: DatabaseServer, text: str) -> str:
    """What to tell a person when connecting to `server` failed with the error `text`."""
    where = f"PostgreSQL at {server.address}"
    if "password authentication failed" in text or "no password supplied" in text:
        made = " (a local cluster keeps the user and password it was created with)" if server.loopback else ""
        return (f"{where} refused user {server.user!r} with the password in POSEOPS_DATABASE_URL{made}: "
                "put the right user and password in POSEOPS_DATABASE_URL")
    if "Connection refused" in text or "could not connect" in text or "timeout expired" in text:
        start = "start it: poseops postgres up" if server.loopback else "check that it runs and this machine may reach it"
        return f"no {where} answers: {start} (POSEOPS_DATABASE_URL says where it is)"
    if "role" in text and "does not exist" in text:
        return f"{where} has no user {server.user!r}: put a user it has in POSEOPS_DATABASE_URL"
    return f"{where} cannot be reached: {text.strip()}"


def create_database(server: DatabaseServer, name: str) -> bool:
    """Create database `name` owned by the URL's user when missing. True if it was created."""
    import psycopg
    from psycopg import sql

    with connect(server) as con:
        if con.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        try:
            con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:  # made by another process meanwhile
            return False
        except psycopg.errors.InsufficientPrivilege:
            raise PostgresError(f"user {server.user!r} may not create databases on {server.address}: create {name} "
                                f"for it (CREATE DATABASE {name} OWNER {server.user}) or grant it CREATEDB") from None
    return True


def ensure_databases(settings: Settings) -> dict[str, str]:
    """Every part's database, created when missing: {part: URL with its driver}."""
    return {part: database_url(settings, part) for part in PARTS}


def ensure_database_url(env_file: Path | None = None) -> Settings:
    """Settings with POSEOPS_DATABASE_URL, writing a local one (random password) into `.env` (mode 600) when unset."""
    env_file = env_file or Path(ENV_FILE)
    settings = load_settings(env_file)
    if settings.database_url:
        return settings
    url = DatabaseServer(DEFAULT_USER, secrets.token_urlsafe(18), "127.0.0.1", DEFAULT_PORT).url("")[:-1]
    existing = env_file.read_text(encoding="utf-8") if env_file.is_file() else ""
    lines = [existing.rstrip("\n")] if existing.strip() else ["# poseops local settings; git ignores this file"]
    env_file.write_text("\n".join([*lines, f"POSEOPS_DATABASE_URL={url}"]) + "\n", encoding="utf-8")
    env_file.chmod(0o600)
    return load_settings(env_file)


# --- the local cluster -------------------------------------------------------------------------------------


def bin_dir() -> Path:
    """The folder of PostgreSQL's `postgres` and `initdb`: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found and (Path(found).resolve().parent / "postgres").is_file():
        return Path(found).resolve().parent
    versions = sorted(DEBIAN_BIN_ROOT.glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
                      if p.parts[-3].isdigit() else 0)
    if versions:
        return versions[-1].parent
    raise PostgresError(f"PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin): {INSTALL_HINT}")


def cluster_owner() -> tuple[int, int]:
    """(uid, gid) the local cluster runs as: this user, or the `postgres` OS user when this is root."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    import pwd

    try:
        entry = pwd.getpwnam(CLUSTER_OS_USER)
    except KeyError:
        raise PostgresError(f"PostgreSQL refuses to run as root, and there is no `{CLUSTER_OS_USER}` OS user to run it "
                            f"as: {INSTALL_HINT} (the package creates that user)") from None
    return entry.pw_uid, entry.pw_gid


def as_owner(command: list[str]) -> list[str]:
    """`command` run as the cluster's owner: unchanged for this user, through setpriv (exec, no extra process) for root."""
    uid, gid = cluster_owner()
    if uid == os.getuid():
        return command
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *command]


@dataclass
class PostgresCluster(ManagedServer):
    """The local cluster as a managed server: `up` runs initdb the first time; `down` is PostgreSQL's fast shutdown."""

    server: DatabaseServer | None = None
    postgres_bin: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    def answers(self, timeout: float = 2.0) -> bool:
        """PostgreSQL accepts connections at the port (libpq's ping: no login needed)."""
        from psycopg import pq

        info = f"host=127.0.0.1 port={self.port} connect_timeout={max(1, round(timeout))}"
        return pq.PGconn.ping(info.encode()) == pq.Ping.OK

    def _up(self, timeout: float, progress: Callable[[], None] | None) -> ServerStatus:
        if self.recorded_pid() is None and not self.answers():  # to be started here (an answering one is refused)
            port_free(self.port)
            self.let_owner_through()
            self.initdb()
        return super()._up(timeout, progress)

    def _down(self, timeout: float) -> bool:
        pid = self.recorded_pid()
        if pid is not None:
            signal_group(pid, signal.SIGINT)  # fast shutdown: clients disconnected, data written out
            deadline = time.monotonic() + timeout
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if alive(pid):
                signal_group(pid, signal.SIGQUIT)  # immediate shutdown: recovery at the next start
        return super()._down(5.0) or pid is not None

    def let_owner_through(self) -> None:
        """Under root, the `postgres` user must pass through every folder above its data folder (it opens it by path)."""
        uid, _ = cluster_owner()
        if uid == os.getuid():
            return
        for folder in (self.state_dir, self.state_dir.parent):
            if folder.stat().st_uid == os.getuid():
                folder.chmod(stat.S_IMODE(folder.stat().st_mode) | stat.S_IXOTH)
        for folder in self.state_dir.parent.parents:
            mode = folder.stat()
            if not mode.st_mode & stat.S_IXOTH and mode.st_uid != uid:
                raise PostgresError(f"PostgreSQL runs as the OS user {CLUSTER_OS_USER}, which cannot pass through "
                                    f"{folder}: let it (chmod o+x {folder}) or set POSEOPS_HOME to a folder it can reach")

    def initdb(self) -> None:
        """Create the cluster in the data folder when there is none: the URL's user and password, loopback only."""
        assert self.server is not None and self.postgres_bin is not None
        if (self.data_dir / "PG_VERSION").is_file():
            return
        if self.data_dir.is_dir() and any(self.data_dir.iterdir()):
            raise PostgresError(f"{self.data_dir} is not empty and holds no PostgreSQL cluster: move it away, then run again")
        uid, gid = cluster_owner()
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.data_dir, uid, gid)
        password_file = self.state_dir / f".initdb-password.{os.getpid()}"
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchown(fd, uid, gid)
            os.write(fd, self.server.password.encode() + b"\n")
            os.close(fd)
            done = subprocess.run(as_owner([str(self.postgres_bin.parent / "initdb"), "-D", str(self.data_dir),
                                            "-U", self.server.user, f"--pwfile={password_file}",
                                            "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-instructions"]),
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL)
        finally:
            password_file.unlink(missing_ok=True)
        if done.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise PostgresError(f"initdb failed to create the cluster in {self.data_dir}:\n{done.stdout}{done.stderr}")
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("# poseops: password logins (scram-sha-256) over TCP from 127.0.0.1 only\n"
                       "host all all 127.0.0.1/32 scram-sha-256\n", encoding="utf-8")
        os.chown(hba, uid, gid)


def port_free(port: int) -> None:
    """A PostgresError when another program holds `port` on 127.0.0.1 (PostgreSQL would exit at once)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise PostgresError(f"port {port} on 127.0.0.1 is taken by another program, so PostgreSQL was not "
                                "started: stop that program, or choose another port in POSEOPS_DATABASE_URL "
                                "(postgresql://USER:PASSWORD@127.0.0.1:PORT)") from None


def cluster(settings: Settings) -> PostgresCluster:
    """The local cluster POSEOPS_DATABASE_URL describes; a PostgresError when it names another machine's."""
    server = database_server(settings)
    if not server.loopback:
        raise PostgresError(f"POSEOPS_DATABASE_URL names PostgreSQL at {server.address}, not on this machine: "
                            "poseops does not run that one (only creates its databases)")
    state = (secure_home(settings.home) / "postgres").resolve()
    state.mkdir(mode=0o700, exist_ok=True)
    postgres = bin_dir() / "postgres"
    command = as_owner([str(postgres), "-D", str(state / "data"), "-p", str(server.port),
                        "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="])
    url = f"postgresql://{server.address}"
    return PostgresCluster("PostgreSQL", state, url, url, command, cwd=state, server=server, postgres_bin=postgres,
                           hint="If the port is taken, choose another one in POSEOPS_DATABASE_URL.")


def up(settings: Settings, timeout: float = 120.0) -> ServerStatus:
    """The cluster running and every part's database present. A local cluster is started here, unless one that
    poseops did not start (the system's, another home's) already answers at the port: then, as with another
    machine's, poseops only logs in with the URL's user and password and creates the databases."""
    server = database_server(settings)
    local = cluster(settings) if server.loopback else None
    if local is not None and not local.status().foreign:
        status = local.up(timeout)
    else:
        connect(server).close()  # a clear error when it does not answer or refuses the URL's user
        status = ServerStatus(f"postgresql://{server.address}", True, None, False, foreign=True)
    ensure_databases(settings)
    return status


def down(settings: Settings) -> bool:
    """Stop the local cluster poseops started (and only that one). True if one was stopped."""
    server = database_server(settings)
    return server.loopback and cluster(settings).down()


def status(settings: Settings) -> ServerStatus:
    server = database_server(settings)
    if server.loopback:
        return cluster(settings).status()
    from psycopg import pq

    answering = pq.PGconn.ping(f"host={server.host} port={server.port} connect_timeout=5".encode()) == pq.Ping.OK
    return ServerStatus(f"postgresql://{server.address}", answering, None, False, foreign=answering)


def on_database(server: ManagedServer, settings: Settings, part: str) -> ManagedServer:
    """`server` whose `up` first creates its part's database when missing (it keeps its state there)."""
    start = server._up

    def up_on_database(timeout: float, progress: Callable[[], None] | None) -> ServerStatus:
        if server.recorded_pid() is None:
            database_url(settings, part)
        return start(timeout, progress)

    server._up = up_on_database  # type: ignore[method-assign]
    return server
