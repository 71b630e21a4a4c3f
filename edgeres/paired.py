"""The paired latency protocol: is engine B faster than engine A on this host, and by how much, with an interval?

A shared host drifts (other tenants, clocks, caches) by more than the margins worth claiming, and two engines
measured a minute apart, or in one process whose idle thread pools keep spinning, compare the host's moods as much
as the engines. So:

- each engine runs in its own process (`python -m edgeres.paired SPEC`), loaded with the settings it ships with,
  all pinned to the same cores; a process waits on a pipe (not spinning) while the others run;
- the reference A, the candidate B and an A/A control (A again, in a third process) run in tight alternation: one
  block of single-stream queries each per pair, the order rotating through every permutation so that no engine
  always follows another;
- each pair gives ratios (median of B's block / median of A's block, and the control's likewise); the claim is the
  median of the paired ratios with a bootstrap 95% interval (edgeres.measure.bootstrap_median_ci);
- the A/A control must read 1.00 +- 0.05 (its median ratio), else the result says the host was too noisy to claim
  anything (`control_ok: false`).

`paired_latency(reference, candidate, ...)` drives it; `edgeres bench B --against A` prints it.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from edgeres.errors import StageError
from edgeres.measure import AA_TOLERANCE, paired_summary
from edgeres.runtimes.settings import RuntimeSettings

PAIRS = 30  # at least this many pairs per comparison (the protocol's minimum); rounded up to whole rotations
REPLY_TIMEOUT_S = 600.0  # longest wait for one block (or a load) before the timing process is called hung
BLOCK = 20  # single-stream queries per engine per pair
WARMUP = 10  # queries each engine runs once loaded, before the first pair


@dataclass(frozen=True)
class EngineSpec:
    """One engine to time: what `open_runner` takes."""

    runtime: str
    path: str
    fmt: str
    settings: dict[str, Any]  # RuntimeSettings.to_dict()
    label: str = ""

    def at_size(self, size: int, work: Path) -> EngineSpec:
        """This engine with its input at size x size: itself where that is its input, else a copy under `work`
        (edgeres.resize.at_size: timing only)."""
        from edgeres.resize import at_size

        path = at_size(Path(self.path), size, work)
        return self if str(path) == self.path else replace(self, path=str(path), label=f"{self.label} @{size}")


def peer_spec(path: Path, *, label: str, runtime: str | None = None) -> EngineSpec:
    """A model from elsewhere (an ONNX file or an OpenVINO IR .xml) as its users run it: on `runtime` (default: its
    format's own) with that runtime's defaults apart from the thread count."""
    from edgeres.runtimes import NATIVE

    fmt = "openvino" if path.suffix == ".xml" else "onnx"
    runtime = runtime or NATIVE[fmt]
    return EngineSpec(runtime, str(path), fmt, RuntimeSettings(runtime, runtime_defaults=True).to_dict(), label=label)


@dataclass
class _Child:
    spec: EngineSpec
    proc: subprocess.Popen[str]
    log: Any  # its stderr, a temporary file (a pipe nobody drains could fill and block it)

    configuration: dict[str, Any] | None = None  # the runtime's settings as it reports them back, once loaded

    def errors(self) -> str:
        """What it wrote to stderr (after ending it, so a hung child cannot block the read)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-2000:]

    def reply(self, what: str) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], REPLY_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            why = "ended" if ready else f"gave no answer in {REPLY_TIMEOUT_S:.0f}s"
            raise StageError(
                f"the timing process of {self.spec.label or self.spec.path} {why} ({what}): {self.errors()}"
            )
        return line

    def send(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.reply(line)


def paired_latency(
    reference: EngineSpec,
    candidate: EngineSpec,
    samples_npz: Path,
    *,
    threads: int,
    pairs: int = PAIRS,
    block: int = BLOCK,
    warmup: int = WARMUP,
    cores: list[int] | None = None,
    control: bool = True,
    seed: int = 0,
    sessions: int = 1,
) -> dict[str, Any]:
    """Candidate against reference by the protocol above. `samples_npz` holds `x` (float32 NCHW images, batch 1 is
    taken from them in turn). With `sessions` > 1 the pairs are split over that many sessions, each with fresh
    processes, and the interval is bootstrapped in two stages (sessions, then pairs), so it carries the drift between
    sessions too. Returns the candidate/reference latency ratio (median of paired ratios, 95% interval), the speed-up
    (its inverse), each engine's median latency, the A/A control and whether it held."""
    if pairs < 2 or block < 1:
        raise StageError(f"a paired comparison needs at least 2 pairs and 1 query per block (got {pairs}, {block})")
    if sessions < 1:
        raise StageError(f"a paired comparison needs at least 1 session (got {sessions})")
    rotations = 6 if control else 2  # the orders of the engines: each comes first, second (and third) equally often
    per_session = -(-pairs // (rotations * sessions)) * rotations
    pairs = per_session * sessions
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    specs = {"reference": reference, "candidate": candidate}
    if control:
        specs["control"] = reference
    blocks: dict[str, list[list[float]]] = {name: [] for name in specs}
    session_of: list[int] = []
    configuration: dict[str, Any] = {}
    t0 = time.monotonic()
    for session in range(sessions):
        children: dict[str, _Child] = {}
        try:
            for name, spec in specs.items():
                children[name] = _start(spec, samples_npz, threads=threads, cores=cores, warmup=warmup)
                configuration.setdefault(name, children[name].configuration)
            orders = list(itertools.permutations(children))
            for i in range(per_session):
                for name in orders[i % len(orders)]:
                    blocks[name].append(json.loads(children[name].send(f"run {block}")))
                session_of.append(session)
        finally:
            for child in children.values():
                _stop(child)
    seconds = time.monotonic() - t0
    ref = [_median(b) for b in blocks["reference"]]
    cand = [_median(b) for b in blocks["candidate"]]
    grouped = session_of if sessions > 1 else None
    ratio = paired_summary([c / r for c, r in zip(cand, ref, strict=True)], seed=seed, sessions=grouped)
    out: dict[str, Any] = {
        "protocol": {
            "pairs": pairs,
            "sessions": sessions,
            "block_queries": block,
            "warmup_queries": warmup,
            "cores": cores,
            "threads": threads,
            "processes": "one per engine and session, pinned to the cores above, in rotating alternation",
            "statistic": "median of paired ratios (candidate / reference latency), bootstrap 95% interval"
            + (" (two-stage: sessions, then pairs)" if sessions > 1 else ""),
        },
        "reference": {
            "label": reference.label,
            "p50_ms": _median([q for b in blocks["reference"] for q in b]),
        },
        "candidate": {
            "label": candidate.label,
            "p50_ms": _median([q for b in blocks["candidate"] for q in b]),
        },
        "configuration": configuration,  # each engine's runtime settings as read back from the runtime
        "latency_ratio": ratio,
        "speedup": {
            "median": 1.0 / ratio["median"],
            "ci95": [1.0 / ratio["ci95"][1], 1.0 / ratio["ci95"][0]],
        },
        "seconds": round(seconds, 2),
    }
    if control:
        ctl = [_median(b) for b in blocks["control"]]
        aa = paired_summary([c / r for c, r in zip(ctl, ref, strict=True)], seed=seed + 1, sessions=grouped)
        out["control"] = aa
        out["control_ok"] = abs(aa["median"] - 1.0) <= AA_TOLERANCE
    return out


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _start(spec: EngineSpec, samples_npz: Path, *, threads: int, cores: list[int], warmup: int) -> _Child:
    payload = json.dumps(
        {
            "runtime": spec.runtime,
            "path": spec.path,
            "fmt": spec.fmt,
            "settings": spec.settings,
            "threads": threads,
            "cores": cores,
            "data": str(samples_npz),
            "warmup": warmup,
        }
    )
    log = tempfile.TemporaryFile()  # noqa: SIM115 (the child's stderr for its lifetime; _stop closes it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeres.paired", payload],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        bufsize=1,
    )
    child = _Child(spec, proc, log)
    try:
        ready = child.reply("loading")
    except StageError:
        ready = ""
    if not ready.startswith("ready"):
        errors = child.errors()
        _stop(child)
        raise StageError(f"{spec.label or spec.path} on {spec.runtime} could not be loaded for timing: {errors}")
    try:
        child.configuration = json.loads(ready[len("ready") :].strip() or "null")
    except ValueError as exc:
        _stop(child)
        raise StageError(f"the timing process of {spec.label or spec.path} answered {ready!r} when loaded") from exc
    return child


def _stop(child: _Child) -> None:
    proc = child.proc
    try:
        if proc.poll() is None and proc.stdin is not None:
            proc.stdin.write("quit\n")
            proc.stdin.flush()
        proc.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()
    child.log.close()


def serve(spec: dict[str, Any], stdin: TextIO, stdout: TextIO) -> None:
    """The child: load the engine, pin to the cores, warm up, then answer `run N` with N single-query latencies
    (ms, JSON) until `quit`."""
    import numpy as np

    from edgeres.runtimes import open_runner

    if spec.get("cores"):
        os.sched_setaffinity(0, spec["cores"])
    # The protocol keeps its own copy of stdout; what native libraries print to fd 1 goes to stderr instead.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    stdout = protocol
    with np.load(spec["data"]) as data:
        x = np.asarray(data["x"], dtype=np.float32)
    samples = [x[i : i + 1] for i in range(len(x))]
    settings = RuntimeSettings.from_dict(spec["settings"])
    with open_runner(
        spec["runtime"], Path(spec["path"]), fmt=spec["fmt"], threads=spec["threads"], settings=settings
    ) as runner:
        for i in range(int(spec["warmup"])):
            runner.infer(samples[i % len(samples)])
        # the settings as the runtime reports them back (not its kernel choices, which reports record elsewhere)
        effective = {k: v for k, v in runner.effective().items() if k != "kernels"}
        configuration = {"version": runner.version(), **effective}
        stdout.write("ready " + json.dumps(configuration, default=str) + "\n")
        stdout.flush()
        i = 0
        for line in stdin:
            cmd = line.split()
            if not cmd or cmd[0] == "quit":
                break
            times = []
            for _ in range(int(cmd[1])):
                t = time.perf_counter()
                runner.infer(samples[i % len(samples)])
                times.append((time.perf_counter() - t) * 1e3)
                i += 1
            stdout.write(json.dumps(times) + "\n")
            stdout.flush()


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]), sys.stdin, sys.stdout)
