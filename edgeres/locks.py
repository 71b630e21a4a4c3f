"""File locks between builds: an exclusive flock on a lock file that holds its holder's PID.

Cache entries, the out folder and TensorRT's shared timing cache are each written under one. A waiter polls, says it
waits, and gives up after a timeout with an error that names the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

POLL_S = 0.1


def lock_holder(path: Path) -> str:
    """The PID a lock file's holder wrote into it, as text ('unknown' if it wrote none yet)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def try_lock(path: Path) -> IO[str] | None:
    """The lock file at `path` opened and exclusively locked, or None when another process holds it. The lock is on
    the file `path` names when it returns: one that was removed (cache clean) while we locked it is opened again."""
    while True:
        f = open(path, "a+")  # noqa: SIM115 (returned open)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return f
        f.close()  # closing releases the lock on the removed file


@contextlib.contextmanager
def held(
    path: Path,
    *,
    timeout_s: float,
    timed_out: Callable[[str], Exception],
    waiting: Callable[[str], None] | None = None,
    remove: bool = False,
) -> Iterator[None]:
    """Hold the lock file `path` (this process's PID written into it). While another process holds it, call
    `waiting(pid)` once and poll; after `timeout_s` seconds raise `timed_out(pid)`. With `remove`, the file is
    deleted before the lock is released."""
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    said = False
    while (f := try_lock(path)) is None:
        if not said and waiting is not None:
            waiting(lock_holder(path))
            said = True
        if time.monotonic() - start >= timeout_s:
            raise timed_out(lock_holder(path))
        time.sleep(min(POLL_S, max(0.0, timeout_s - (time.monotonic() - start))))
    with f:
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            yield
        finally:
            f.truncate(0)
            if remove:
                path.unlink(missing_ok=True)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
