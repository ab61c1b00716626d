"""API keys for the detection service: stored hashed, each with a monthly request quota.

The keys file (YAML or JSON) holds only sha256 hashes; a key itself is shown once,
when `poseops api-key NAME` makes it:

    keys:
      - name: alice
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        monthly_quota: 10000      # requests per calendar month (UTC); omit for no limit

Counts live in a small SQLite file (default: beside the keys file, `<name>.usage.db`),
so they survive restarts and are shared by several workers. A request counts when it
is admitted (a known key under its quota), whatever its answer.

Changes to the keys file (`poseops api-key NAME`, `poseops api-key NAME --revoke`) are
serialized by a lock beside it and written atomically, so concurrent ones all land; a
running service rereads the file when it changes, so a revoked key stops working at
once. A usage database deleted while serving is made again (its counts start over).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

log = logging.getLogger(__name__)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
KEY_PREFIX = "po_"


class KeyRefused(Exception):
    """A request refused for its key; `status` is 401 or 403 and `code` the API error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    monthly_quota: int | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def current_month(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m")


def load_keys(path: Path) -> list[ApiKey]:
    """Read and validate a keys file; the message of any error names the file and entry."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ValueError(f"{path}: API keys file not found; make one with `poseops api-key NAME --keys-file {path}`") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML/JSON: {e}") from None
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a mapping with a 'keys' list")
    keys: list[ApiKey] = []
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or set(entry) - {"name", "sha256", "monthly_quota"}:
            raise ValueError(f"{path}: key #{n} must be a mapping of name, sha256 and monthly_quota only")
        name, digest, quota = entry.get("name"), str(entry.get("sha256", "")).lower(), entry.get("monthly_quota")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path}: key #{n} has no name")
        if not _HEX64.match(digest):
            raise ValueError(f"{path}: key {name!r} needs sha256: the 64 hex digits of the key's SHA-256 (never the key itself)")
        if quota is not None and (not isinstance(quota, int) or isinstance(quota, bool) or quota < 0):
            raise ValueError(f"{path}: key {name!r} has monthly_quota {quota!r}; use a whole number >= 0, or omit it for no limit")
        if any(k.name == name or k.sha256 == digest for k in keys):
            raise ValueError(f"{path}: key {name!r} is listed twice (same name or same hash)")
        keys.append(ApiKey(name, digest, quota))
    return keys


@contextlib.contextmanager
def _editing(path: Path) -> Iterator[list[ApiKey]]:
    """The keys of `path` (none if it is missing), to change in place; written back atomically (0600) on exit.

    Holds `<path>.lock` meanwhile: concurrent edits run one after the other, and each sees the one before.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        keys = load_keys(path) if path.is_file() else []
        yield keys
        entries = [{"name": k.name, "sha256": k.sha256, "monthly_quota": k.monthly_quota} for k in keys]
        text = json.dumps({"keys": entries}, indent=2) if path.suffix == ".json" else yaml.safe_dump({"keys": entries}, sort_keys=False)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    finally:
        os.close(fd)


def add_key(path: Path, name: str, monthly_quota: int | None) -> str:
    """Make a new key, store its hash in the keys file (created if missing) and return the key itself."""
    key = KEY_PREFIX + secrets.token_urlsafe(24)
    with _editing(path) as keys:
        if any(k.name == name for k in keys):
            raise ValueError(f"{path}: a key named {name!r} exists already; pick another name")
        keys.append(ApiKey(name, hash_key(key), monthly_quota))
    return key


def revoke_key(path: Path, name: str) -> None:
    """Remove the key named `name` from the keys file; a service using the file refuses it from its next request."""
    with _editing(path) as keys:
        if not any(k.name == name for k in keys):
            known = ", ".join(k.name for k in keys) or "none"
            raise ValueError(f"{path}: no key named {name!r} to revoke (keys: {known})")
        keys[:] = [k for k in keys if k.name != name]


class KeyStore:
    """Checks presented keys and counts their monthly use."""

    def __init__(self, keys_file: Path, usage_db: Path | None = None) -> None:
        self.keys_file = keys_file
        self._reload_lock = threading.Lock()
        self._seen = self._stamp()
        self.keys = {k.sha256: k for k in load_keys(keys_file)}
        self.usage_db = usage_db or keys_file.with_name(keys_file.stem + ".usage.db")
        with self._connect():
            pass

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.keys_file.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _current_keys(self) -> dict[str, ApiKey]:
        """The keys, reread when the file changed since the last look (a key added or revoked takes effect at once)."""
        stamp = self._stamp()
        if stamp != self._seen:
            with self._reload_lock:
                if stamp != self._seen:
                    try:
                        self.keys = {k.sha256: k for k in load_keys(self.keys_file)}
                    except ValueError as e:  # a broken or missing file: no key is admitted until it is fixed
                        log.error("API keys file unusable, refusing every key until it is fixed: %s", e)
                        self.keys = {}
                    self._seen = stamp
        return self.keys

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """The usage database, made (0600, with its table) when missing: deleted while serving, it starts over."""
        if not self.usage_db.exists():
            os.close(os.open(self.usage_db, os.O_WRONLY | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.usage_db, timeout=10, isolation_level=None)  # transactions are explicit
        try:
            db.execute("CREATE TABLE IF NOT EXISTS usage (key_name TEXT, month TEXT, count INTEGER, PRIMARY KEY (key_name, month))")
            yield db
        finally:
            db.close()

    def admit(self, presented: str | None, now: dt.datetime | None = None) -> ApiKey:
        """The key's entry, after counting this request; 401/403 `KeyRefused` when refused."""
        if not presented:
            raise KeyRefused(
                401,
                "missing_api_key",
                "this service needs an API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            )
        key = self._current_keys().get(hash_key(presented))
        if key is None:
            raise KeyRefused(401, "unknown_api_key", "the API key is not known to this service; check it or ask the operator for one")
        month = current_month(now)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT count FROM usage WHERE key_name = ? AND month = ?", (key.name, month)).fetchone()
            used = row[0] if row else 0
            if key.monthly_quota is not None and used >= key.monthly_quota:
                db.execute("ROLLBACK")
                raise KeyRefused(
                    403,
                    "quota_exceeded",
                    f"API key {key.name!r} has used its {key.monthly_quota} requests for {month}; "
                    "the count starts again on the 1st of next month (UTC), or ask the operator to raise monthly_quota",
                )
            db.execute(
                "INSERT INTO usage (key_name, month, count) VALUES (?, ?, 1) "
                "ON CONFLICT (key_name, month) DO UPDATE SET count = count + 1",
                (key.name, month),
            )
            db.execute("COMMIT")
        return key

    def used(self, name: str, now: dt.datetime | None = None) -> int:
        with self._connect() as db:
            row = db.execute("SELECT count FROM usage WHERE key_name = ? AND month = ?", (name, current_month(now))).fetchone()
        return row[0] if row else 0
