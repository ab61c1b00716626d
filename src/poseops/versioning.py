"""A pulled dataset's version: `dvc add` + `dvc push` to the configured remote, and a git commit
of its .dvc file and pull record. DVC and git are run as the user would run them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

from poseops.dvc import DvcError, run_dvc
from poseops.pull_results import DvcPushError, PullError, PullRecord, pull_record_path, write_pull_record
from poseops.settings import Settings
from poseops.storage import StorageError, check_bucket, is_s3_url, wanted_dvc_remote

log = logging.getLogger(__name__)


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        lines = [line for line in (r.stderr or r.stdout).splitlines() if line.strip() and "dvc.org/support" not in line]
        raise PullError(f"{what} failed: {chr(10).join(lines)[-1500:]}")
    return r.stdout


def dvc(args: list[str], cwd: Path, what: str) -> str:
    try:
        return run_dvc(args, cwd, what).stdout
    except DvcError as e:
        raise PullError(str(e)) from None


def repo_root(path: Path) -> Path:
    r = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, text=True)
    if r.returncode != 0:
        raise PullError(f"{path.resolve()} is not inside a git repository; DVC versions datasets in git. "
                        "Run `git init` there (or pass --no-version).")
    return Path(r.stdout.strip())


def ensure_dvc(root: Path, settings: Settings) -> str | None:
    """DVC initialized in the repository, with the default remote the settings ask for.

    POSEOPS_DVC_REMOTE empty: a remote configured by hand is kept, and a repository without one gets
    the local folder `<home>/dvc-remote`. POSEOPS_DVC_REMOTE set (s3://… or a folder): it is the default
    remote, with POSEOPS_S3_ENDPOINT_URL as its endpoint, in `.dvc/config` (committed with the version;
    the credentials stay in the environment). Returns what changed in an existing setup, for the log.
    """
    if not (root / ".dvc").is_dir():
        dvc(["init", "-q"], root, "dvc init")
    try:
        wanted = wanted_dvc_remote(settings)
    except StorageError as e:
        raise PullError(str(e)) from None
    config = dict(line.partition("=")[::2] for line in dvc(["config", "--list"], root, "dvc config --list").splitlines())
    current = config.get("core.remote")
    if not settings.dvc_remote and any(key.startswith("remote.") for key in config):
        return None
    have = (current, config.get(f"remote.{current}.url"), config.get(f"remote.{current}.endpointurl"))
    if have == (wanted.name, wanted.url, wanted.endpointurl):
        return None
    if not is_s3_url(wanted.url):
        Path(wanted.url).mkdir(parents=True, exist_ok=True)
    dvc(["remote", "add", "-d", "-f", wanted.name, wanted.url], root, "dvc remote add")
    if wanted.endpointurl:
        dvc(["remote", "modify", wanted.name, "endpointurl", wanted.endpointurl], root, "dvc remote modify")
    if current is None:
        return None
    was = f"{current!r} ({have[1]}{f', endpoint {have[2]}' if have[2] else ''})"
    now = f"{wanted.name!r} ({wanted.url}{f', endpoint {wanted.endpointurl}' if wanted.endpointurl else ''})"
    return f"DVC remote: POSEOPS_DVC_REMOTE makes {now} the default remote of {root}, instead of {was}"


def remote_outdated(dataset_dir: Path, settings: Settings) -> bool:
    """Whether POSEOPS_DVC_REMOTE asks for another default remote than the repository's DVC config names
    (read from `.dvc/config` and `config.local` directly: milliseconds, for the no-change pull)."""
    from configobj import ConfigObj, ConfigObjError

    if not settings.dvc_remote:
        return False
    try:
        root = repo_root(next(p for p in dataset_dir.absolute().parents if p.is_dir()))  # data/ may not exist yet
        wanted = wanted_dvc_remote(settings)
        merged: dict[str, dict] = {}
        for path in (root / ".dvc" / "config", root / ".dvc" / "config.local"):
            for section, values in ConfigObj(str(path), file_error=False).items():
                merged.setdefault(section, {}).update(values)
    except (PullError, StorageError, ConfigObjError, OSError):
        return True  # build and version again: ensure_dvc then says what is wrong
    name = merged.get("core", {}).get("remote")
    remote = merged.get(f'remote "{name}"', {})
    return (name, remote.get("url"), remote.get("endpointurl")) != (wanted.name, wanted.url, wanted.endpointurl)


def default_remote(root: Path) -> str:
    """`'name' (url)` of the DVC remote `dvc push` uses, for messages."""
    try:
        name = dvc(["remote", "default"], root, "dvc remote default").strip()
        return f"{name!r} ({dvc(['config', f'remote.{name}.url'], root, 'dvc config').strip()})"
    except PullError:
        return "(see `dvc remote list`)"


def bucket_problem(settings: Settings) -> str | None:
    """Why the S3 bucket of POSEOPS_DVC_REMOTE cannot be used (endpoint, bucket, what to do); None if it can."""
    if not is_s3_url(settings.dvc_remote):
        return None
    try:
        check_bucket(settings, settings.dvc_remote, "POSEOPS_DVC_REMOTE")
    except StorageError as e:
        return str(e)
    return None


def dvc_md5(dvc_file: Path) -> str:
    import yaml

    outs = yaml.safe_load(dvc_file.read_text())["outs"]
    return outs[0]["md5"]


def _recorded_inputs(record_path: Path) -> str | None:
    try:
        return json.loads(record_path.read_text()).get("inputs_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def version_dataset(
    dataset_dir: Path, settings: Settings, message: str, record: PullRecord, commit: bool = True,
    say: Callable[[str], None] = log.info,
) -> tuple[str, bool, str | None]:
    """`dvc add` + `dvc push` the dataset and commit its .dvc file and pull record.

    The pull record is rewritten only when the data changed, so it always describes the
    version it sits beside. Returns (DVC hash, pushed, git commit). When the remote does not
    take the data, the version is still recorded and committed locally, then DvcPushError says so.
    """
    root = repo_root(dataset_dir.parent)
    if (change := ensure_dvc(root, settings)) is not None:
        say(change)
    rel = dataset_dir.resolve().relative_to(root)
    dvc_file = root / f"{rel}.dvc"
    before = dvc_md5(dvc_file) if dvc_file.is_file() else None
    dvc(["add", "-q", str(rel)], root, f"dvc add {rel}")
    md5 = dvc_md5(dvc_file)
    record_path = pull_record_path(dataset_dir)
    push_failure = None
    try:
        dvc(["push", str(dvc_file.relative_to(root))], root, "dvc push")  # not -q: that hides its error
    except PullError as e:
        push_failure = str(e)  # the version is in the local DVC cache: committed below, pushed later
        push_failure = bucket_problem(settings) or push_failure
    # the inputs' digest only once pushed: a later pull of the same labels skips the rebuild, so it must not skip the push
    inputs = record.inputs_sha256 if push_failure is None else None
    if md5 != before or not record_path.is_file() or _recorded_inputs(record_path) != inputs:
        write_pull_record(record_path, dataclasses.replace(record, dvc_md5=md5, inputs_sha256=inputs))
    git_commit = None
    if commit:
        paths = [str(dvc_file.relative_to(root)), str(record_path.resolve().relative_to(root)),
                 str(rel.parent / ".gitignore"), ".dvc/config", ".dvcignore", ".dvc/.gitignore"]
        paths = [p for p in paths if (root / p).exists()]
        _run(["git", "add", "--", *paths], root, "git add")
        staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", *paths], cwd=root)
        if staged.returncode != 0:
            _run(["git", "commit", "-q", "-m", message, "--", *paths], root, "git commit")
        git_commit = _run(["git", "rev-parse", "HEAD"], root, "git rev-parse").strip()
    if push_failure is not None:
        dvc_rel = dvc_file.relative_to(root)
        kept = f"committed to git ({git_commit[:12]})" if git_commit else "not committed to git (--no-commit)"
        raise DvcPushError(
            f"{rel} was built and recorded with DVC locally (version {md5}, {kept}), but the DVC remote "
            f"{default_remote(root)} did not take it: {push_failure[-600:]}\nThe dataset is usable on this machine; "
            f"nobody else can fetch it yet. Make the remote reachable, then run `dvc push {dvc_rel}` in {root} "
            "(or pull again: it pushes the same version)."
        )
    return md5, True, git_commit


