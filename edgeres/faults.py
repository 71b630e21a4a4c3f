"""Fault injection for the crash tests: a build can be killed (SIGKILL) or made to fail a write (ENOSPC) at named
points inside every stage and every commit step, so the tests can check that a re-run completes and that nothing
half-written is ever taken for finished.

Test-only: it does nothing unless the environment variable EDGERES_FAULT is set, as `POINT[@N][:ACTION]`:

- POINT names a place in the code (`point()` calls; `edgeres.faults.POINTS` lists them), for example
  `commit:sidecar-written` or `epoch:recovery`; a stage-specific commit point adds the stage type after a slash
  (`commit:renamed/finetune`), and a point without it matches every stage.
- N fires at the N-th time this process reaches the point (default 1).
- EDGERES_FAULT_RANK, if set, limits the fault to that torchrun rank; a group torchrun restarted runs clean.
- ACTION is `kill` (default: SIGKILL, no clean-up runs, like a power cut or the OOM killer), `enospc` (an OSError
  "No space left on device" raised where the point is, like a full disk) or `crash` (an InjectedCrash, which no
  handler in edgeres catches: the in-process tests' cheaper stand-in for a kill; `finally` blocks do run).
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter

ENV = "EDGERES_FAULT"

POINTS = {
    "stage:started": "a stage's work folder is prepared, before the stage runs",
    "stage:ran": "the stage wrote its files into <entry>.partial/, before hashing",
    "commit:sidecar-written": "artifact.json is in the .partial folder, before the rename that commits it",
    "commit:swapped-out": "--force: the old entry is renamed aside, before the new one is renamed in",
    "commit:renamed": "the entry is committed, before the build goes on",
    "epoch:finetune": "after a finetune epoch's checkpoint is written",
    "epoch:recovery": "after a pruning recovery epoch's checkpoint is written",
    "epoch:qat": "after a QAT epoch's checkpoint is written",
    "prune:step": "after a pruning step (pruned and recovered) is checkpointed",
    "quantize:candidate": "after quantize judged one candidate",
    "export:written": "after export wrote the ONNX, before its checks",
    "compile:written": "after compile wrote the engine, before its manifest",
    "benchmark:variant": "after the benchmark measured one variant",
    "remote:blobs-uploaded": "a remote push uploaded the entry's files, before the signed entry that names them",
    "search:trial": "edgeres search drew a trial's values, before its first build",
    "deliver:staged": "the out folder's models/ is staged beside the old one, before the swap",
    "write": "inside an atomic file write, after part of the data is written (use with :enospc)",
}

_seen: Counter[str] = Counter()
ACTIONS = ("kill", "enospc", "crash")


class InjectedCrash(BaseException):
    """A crash injected by EDGERES_FAULT=...:crash (a BaseException, so `except Exception` does not swallow it)."""


def reset() -> None:
    """Forget how often each point was reached (tests that run several builds in one process)."""
    _seen.clear()


def _spec() -> tuple[str, int, str] | None:
    raw = os.environ.get(ENV)
    if not raw:
        return None
    where, action = raw, "kill"
    head, _, tail = raw.rpartition(":")
    if tail in ACTIONS:
        where, action = head, tail
    name, _, nth = where.partition("@")
    return name, int(nth) if nth.isdigit() else 1, action


def point(name: str, detail: str = "") -> None:
    """Fire the configured fault if this is its point (`name`, or `name/detail`) and its N-th arrival here."""
    spec = _spec()
    if spec is None:
        return
    only = os.environ.get("EDGERES_FAULT_RANK")
    if only is not None and only != os.environ.get("RANK", "0"):
        return
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    want, nth, action = spec
    if want not in (name, f"{name}/{detail}"):
        return
    _seen[want] += 1
    if _seen[want] != nth:
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device (simulated by EDGERES_FAULT)", detail or name)
    if action == "crash":
        raise InjectedCrash(f"EDGERES_FAULT crash at {want} (arrival {nth})")
    os.kill(os.getpid(), signal.SIGKILL)
