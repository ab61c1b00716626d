"""Cross-process locks (poseops.locks): a lock file on the embedded profile, a Prefect global concurrency limit
under a lease on the server profile (a real `prefect server start`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
from prefect_worker import prefect_server  # noqa: F401 - the fixture

from poseops.locks import LockBusy, LockUnavailable, exclusive, resource_name
from poseops.settings import Settings

integration = pytest.mark.integration


def test_lock_names_are_prefect_names():
    assert resource_name("pull-people_2") != resource_name("pull-people-2")
    assert resource_name("deploy") == "poseops-deploy"
    assert all(c.isalnum() or c == "-" for c in resource_name("pull-People.v2"))


def test_an_embedded_lock_fails_at_once_or_waits(tmp_path):
    settings = Settings(home=tmp_path / "home")
    busy = r"the pull: its lock .*pull-x.lock is held by pid \d+ on "
    with exclusive(settings, "pull-x", wait_s=0), pytest.raises(LockBusy, match=busy):
        with exclusive(settings, "pull-x", wait_s=0, what="the pull"):
            pass
    with exclusive(settings, "loop-../../escape"):  # a name never leads the lock file out of <home>/locks
        assert [p.parent for p in (tmp_path / "home").rglob("*.lock")] == [tmp_path / "home" / "locks"] * 2
    started = time.monotonic()
    with exclusive(settings, "deploy"), pytest.raises(LockBusy, match="for 1 s"):
        with exclusive(settings, "deploy", wait_s=1.0):
            pass
    assert time.monotonic() - started >= 1.0
    released = threading.Event()

    def hold_briefly():
        with exclusive(settings, "deploy"):
            held.set()
            time.sleep(0.5)
            released.set()  # the last thing before letting go

    held = threading.Event()
    threading.Thread(target=hold_briefly).start()
    assert held.wait(10)
    with exclusive(settings, "deploy"):  # waits for the holder, then has it
        assert released.is_set()


def test_the_server_profile_refuses_to_lock_without_a_prefect_server(tmp_path, monkeypatch):
    from conftest import free_port
    from prefect.settings import PREFECT_API_URL, temporary_settings

    settings = Settings(home=tmp_path, profile="server", prefect_url=f"http://127.0.0.1:{free_port()}")
    with temporary_settings(updates={PREFECT_API_URL: None}), \
            pytest.raises(LockUnavailable, match="none answers at http://127.0.0.1:\\d+/api.*poseops prefect up"):
        with exclusive(settings, "pull-x"):
            pass


HOLD_AND_DIE = textwrap.dedent("""
    import os, sys
    from poseops.locks import exclusive
    from poseops.settings import Settings
    with exclusive(Settings(profile="server"), sys.argv[1], lease_s=60):
        print("held", flush=True)
        os._exit(9)  # dies holding it: no release, no more renewals
""")


@integration
def test_a_server_lock_refuses_or_waits_and_a_dead_holders_lease_frees_it(prefect_server, tmp_path):  # noqa: F811
    from prefect import get_client

    settings = Settings(home=tmp_path, profile="server")
    name = f"pull-{uuid.uuid4().hex[:6]}"
    with exclusive(settings, name, wait_s=0):
        with pytest.raises(LockBusy, match=rf"a pull: its lock, the global concurrency limit "
                                           rf"'{resource_name(name)}' on .* is held by pid \d+ on .*wait for it"):
            with exclusive(settings, name, wait_s=0, what="a pull"):
                pass
        started = time.monotonic()
        with pytest.raises(LockBusy, match="for 2 s"):
            with exclusive(settings, name, wait_s=2):
                pass
        assert time.monotonic() - started >= 2
    with exclusive(settings, name, wait_s=0):  # let go after use
        pass
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(resource_name(name))
    assert limit.limit == 1 and limit.active_slots == 0

    # A holder killed while holding: its slot comes back when its lease (60 s) ends, not before.
    env = {"PREFECT_API_URL": prefect_server.api_url, "PATH": "/usr/bin:/bin"}
    dead = subprocess.run([sys.executable, "-c", HOLD_AND_DIE, name], env=env, capture_output=True, text=True,
                          timeout=120)
    assert dead.returncode == 9 and "held" in dead.stdout, dead.stderr
    died = time.monotonic()
    with pytest.raises(LockBusy):
        with exclusive(settings, name, wait_s=0):
            pass
    with exclusive(settings, name, wait_s=150):
        freed_after = time.monotonic() - died
    print(f"the dead holder's slot came back after {freed_after:.0f} s")
    assert 40 < freed_after < 150, f"the dead holder's slot came back after {freed_after:.0f} s (its lease: 60 s)"
