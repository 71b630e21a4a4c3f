"""Entry locks between processes: a wait has a timeout that names the holder's PID, and `cache clean` never removes
what a running build holds. The holder is a real second process (entry_lock in a child Python)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PYTHON, committed, run_cli, run_pipeline, statuses, subprocess_env, tiny_recipe, write_recipe

from edgeres.artifact import read_artifact
from edgeres.errors import CacheError

HOLDER = """
import sys
from pathlib import Path
from edgeres.pipeline import entry_lock
from edgeres.progress import Reporter

with entry_lock(Path(sys.argv[1]), Reporter(quiet=True), timeout_s=60):
    print("locked", flush=True)
    sys.stdin.readline()  # hold until the test says so (or closes stdin)
"""


class Holder:
    """A child process holding an entry's lock until release()."""

    def __init__(self, lock: Path, tmp: Path) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-c", HOLDER, str(lock)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=subprocess_env(tmp),
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "locked\n"
        self.pid = self.proc.pid

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            assert self.proc.wait(timeout=30) == 0


@pytest.fixture
def hold(tmp_path: Path) -> Iterator[type]:
    holders: list[Holder] = []

    def start(lock: Path) -> Holder:
        holders.append(Holder(lock, tmp_path))
        return holders[-1]

    yield start  # type: ignore[misc]
    for h in holders:
        h.release()


def finetune_key(cache: Path) -> str:
    result, _ = run_pipeline(tiny_recipe(), cache, dry_run=True, until_stage="finetune")
    return str(result.records[0].key)


def test_lock_wait_times_out_naming_the_holder(tmp_path: Path, hold: type) -> None:
    cache = tmp_path / "cache"
    key = finetune_key(cache)
    lock = cache / f"finetune-{key}.lock"
    cache.mkdir()
    holder = hold(lock)
    assert lock.read_text() == f"{holder.pid}\n"
    t0 = time.monotonic()
    with pytest.raises(CacheError) as info:
        run_pipeline(tiny_recipe(), cache, until_stage="finetune", lock_timeout=0.5)
    waited = time.monotonic() - t0
    assert 0.5 <= waited < 5
    assert str(info.value) == (
        f"cache entry finetune-{key} is being written by another build (PID {holder.pid}), which still held its lock "
        f"{lock} after 0.5 s (--lock-timeout). Wait for that build to finish, stop it, or raise --lock-timeout"
    )
    assert committed(cache, "finetune") == []

    path = write_recipe(tmp_path / "r.yaml", tiny_recipe())
    args = ["build", str(path), "--cache", str(cache), "--out", str(tmp_path / "out"), "--until", "finetune"]
    res = run_cli(*args, "--quiet", "--lock-timeout", "0.2")
    assert res.code == 6
    assert res.stderr == f"edgeres: cache error: {info.value}\n".replace("0.5 s", "0.2 s")

    holder.release()
    assert lock.read_text() == ""  # a released lock names nobody
    res = run_cli(*args, "--quiet", "--lock-timeout", "0.2")
    assert res.code == 0, res.stderr
    assert len(committed(cache, "finetune")) == 1


def test_a_waiting_build_goes_on_when_the_holder_finishes(tmp_path: Path, hold: type) -> None:
    cache = tmp_path / "cache"
    key = finetune_key(cache)
    cache.mkdir()
    holder = hold(cache / f"finetune-{key}.lock")
    timer = threading.Timer(1.0, holder.release)
    timer.start()
    try:
        result, log = run_pipeline(tiny_recipe(), cache, until_stage="finetune", lock_timeout=60)
    finally:
        timer.join()
    assert statuses(result) == [("main", "finetune", "ran")]
    assert f"waiting for another build (PID {holder.pid}) that is writing finetune-{key}, at most 60 s" in log


def test_cache_clean_skips_entries_a_running_build_holds(finetune_cache_copy: Path, tmp_path: Path, hold: type) -> None:
    cache = finetune_cache_copy
    (final,) = committed(cache, "finetune")
    held_partial = final.with_name(final.name + ".partial")
    shutil.copytree(final, held_partial)
    free_partial = cache / ("export-" + "b" * 64 + ".partial")
    shutil.copytree(final, free_partial)
    lock = final.with_name(final.name + ".lock")
    holder = hold(lock)

    for partial in (True, False):
        res = run_cli("cache", "clean", "--cache", str(cache), *(["--partial"] if partial else ["--yes"]))
        assert res.code == 0, res.stderr
        assert res.stdout.splitlines()[0] == f"skipped {final.name}: a running build (PID {holder.pid}) holds it"
        assert res.stdout.splitlines()[1].endswith("; skipped 1 held by running builds")
        assert held_partial.is_dir() and lock.read_text() == f"{holder.pid}\n"
        assert read_artifact(final) is not None
        assert not free_partial.exists()
        assert not (cache / ("export-" + "b" * 64 + ".lock")).exists()  # the lock clean took is not left behind

    holder.release()
    res = run_cli("cache", "clean", "--cache", str(cache), "--yes")
    assert res.code == 0
    assert res.stdout.startswith("removed 3 entries")
    assert not final.exists() and not held_partial.exists() and not lock.exists()
