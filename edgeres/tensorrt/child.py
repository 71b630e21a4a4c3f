"""The TensorRT build's child process (`python -m edgeres.tensorrt.child`), and the one clear error a failed build is.

`build_in_subprocess` runs `engine_from_onnx` (edgeres.tensorrt.build) in `python -m edgeres.tensorrt.child`, so that
a build killed for memory (exit 137 on Jetson) or failing with TensorRT's out-of-memory symptoms becomes one clear
error naming the workspace limit and the free memory. "Could not find any implementation for node" has two causes (no
kernel fits the memory, or none exists for that precision or on DLA), and its error says both and what to try for
each. The child prints progress lines (PROGRESS_PREFIX) and writes its result as JSON; `raise_for_child` reads them.
The parent process does not import TensorRT (the child needs the memory): only the child's build does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeres.artifact import write_json_atomic
from edgeres.errors import EdgeresError, MissingDependencyError, RecipeError, StageError
from edgeres.tensorrt.build import BuildResult, EngineBuildError, Progress, engine_from_onnx
from edgeres.tensorrt.facts import DeviceFacts, probe_device_facts
from edgeres.tensorrt.manifest import EngineSettings

PROGRESS_PREFIX = "edgeres-progress\t"
OOM_PATTERNS = (
    r"out of memory",
    r"cudaErrorMemoryAllocation",
    r"Requested amount of GPU memory",
    r"std::bad_alloc",
    r"\bMemoryError\b",
)
NO_IMPLEMENTATION = r"Could not find any implementation for node"
KILLED_CODES = (137, -9)


@dataclass(frozen=True)
class ChildResult:
    """What a build child left: its exit code, the last lines it printed, and its JSON result (None if none)."""

    returncode: int
    output_tail: list[str]
    payload: dict[str, Any] | None
    timed_out: bool = False


def out_of_memory_evidence(lines: Iterable[str]) -> str | None:
    """The first line that shows a build ran out of memory, or None."""
    for line in lines:
        if any(re.search(p, line, re.IGNORECASE) for p in OOM_PATTERNS):
            return line.strip()[:300]
    return None


def _mib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**20:.0f} MiB"


def out_of_memory_error(evidence: str, *, onnx_path: Path, settings: EngineSettings, facts: DeviceFacts) -> StageError:
    memory = "shared CPU/GPU memory" if facts.is_jetson else "GPU memory"
    jetson = (
        " (on a Jetson also the desktop: `sudo systemctl isolate multi-user.target`; or add swap)"
        if facts.is_jetson
        else ""
    )
    return EngineBuildError(
        f"the TensorRT engine build of {onnx_path} ran out of memory: {evidence}. "
        f"Workspace limit: {settings.workspace_mb} MiB; free {memory} before the build: "
        f"{_mib(facts.free_memory_bytes)} of {_mib(facts.total_memory_bytes)}. "
        f"Fix: lower workspace_mb (now {settings.workspace_mb}) and max_batch (now {settings.max_batch}) and stop "
        f"other processes using the GPU{jetson}. Then rebuild.",
        log=[evidence],
    )


def no_implementation_error(
    evidence: str, *, onnx_path: Path, settings: EngineSettings, facts: DeviceFacts
) -> StageError:
    """TensorRT's "Could not find any implementation for node": either no kernel fits in the memory the build may
    use, or none exists for that node in the precision, or on the DLA, asked for. The message says both."""
    memory = "shared CPU/GPU memory" if facts.is_jetson else "GPU memory"
    if settings.dla_core is None:
        where = "on the GPU"
        dla_fix = ""
    else:
        fallback = "with" if settings.gpu_fallback else "without"
        where = f"on DLA core {settings.dla_core} {fallback} GPU fallback"
        dla_fix = (
            "turn GPU fallback on (gpu_fallback), or build for the GPU (dla_core: null)"
            if not settings.gpu_fallback
            else "build for the GPU (dla_core: null)"
        ) + ", or "
    other = "fp16" if settings.precision == "fp32" else "fp32"
    return EngineBuildError(
        f"the TensorRT engine build of {onnx_path} failed: TensorRT reported: {evidence}. TensorRT says this in two "
        f"cases. (1) Memory: no kernel for that node fits in the workspace (limit {settings.workspace_mb} MiB) or in "
        f"the free {memory} ({_mib(facts.free_memory_bytes)} of {_mib(facts.total_memory_bytes)} before the build): "
        f"raise workspace_mb if memory is free, else free memory (stop other GPU processes) or lower max_batch (now "
        f"{settings.max_batch}). (2) Precision or device: no kernel exists for that node in {settings.precision} "
        f"{where}: {dla_fix}try precision {other}"
        + (", or check the Q/DQ nodes around that node" if settings.precision == "int8" else "")
        + ". TensorRT's messages before it name the layer; then rebuild.",
        log=[evidence],
    )


_ERROR_TYPES: dict[str, type[EdgeresError]] = {
    "MissingDependencyError": MissingDependencyError,
    "RecipeError": RecipeError,
}


def raise_for_child(
    child: ChildResult, *, onnx_path: Path, settings: EngineSettings, facts: DeviceFacts, timeout_s: float | None = None
) -> dict[str, Any]:
    """The child's result on success; otherwise the one clear error it amounts to."""
    payload = child.payload or {}
    if child.timed_out:
        raise EngineBuildError(
            f"the TensorRT engine build of {onnx_path} did not finish within {timeout_s} s and was stopped. "
            f"Builds take minutes on a Jetson: allow more time, or lower opt_level (now {settings.opt_level})."
        )
    if child.returncode in KILLED_CODES:
        killed = (
            f"the build process was killed with SIGKILL (exit code {child.returncode}), as the kernel's "
            f"out-of-memory killer does"
        )
        raise out_of_memory_error(killed, onnx_path=onnx_path, settings=settings, facts=facts)
    if payload.get("ok") and child.returncode == 0:
        result: dict[str, Any] = payload["result"]
        return result
    lines = [*payload.get("log", []), str(payload.get("error", "")), *child.output_tail]
    evidence = out_of_memory_evidence(lines)
    if evidence is not None:
        raise out_of_memory_error(f"TensorRT reported: {evidence}", onnx_path=onnx_path, settings=settings, facts=facts)
    missing = next((line.strip()[:300] for line in lines if re.search(NO_IMPLEMENTATION, line, re.IGNORECASE)), None)
    if missing is not None:
        raise no_implementation_error(missing, onnx_path=onnx_path, settings=settings, facts=facts)
    if payload.get("error"):
        cls = _ERROR_TYPES.get(str(payload.get("error_type")), EngineBuildError)
        raise cls(str(payload["error"]))
    tail = "\n  ".join(child.output_tail[-20:]) or "(no output)"
    raise EngineBuildError(
        f"the TensorRT engine build of {onnx_path} failed: the build process exited with code {child.returncode} "
        f"without a result. Its last output:\n  {tail}"
    )


def build_in_subprocess(
    onnx_path: Path,
    engine_path: Path,
    *,
    settings: EngineSettings,
    timing_cache: Path | None = None,
    progress: Progress | None = None,
    timeout_s: float | None = None,
    facts: DeviceFacts | None = None,
) -> BuildResult:
    """Run `engine_from_onnx` in `python -m edgeres.tensorrt.child`; progress lines are passed to `progress`."""
    report: Progress = progress or (lambda _msg: None)
    facts = facts or probe_device_facts(cuda_context=False)  # no CUDA context here: the child needs the memory
    with tempfile.TemporaryDirectory(prefix="edgeres-trt-build-") as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "edgeres.tensorrt.child", "--onnx", str(onnx_path), "--engine", str(engine_path)]
        cmd += ["--settings", json.dumps(settings.to_dict()), "--result", str(result_path)]
        if timing_cache is not None:
            cmd += ["--timing-cache", str(timing_cache)]
        tail: deque[str] = deque(maxlen=200)
        timed_out = threading.Event()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")

        def stop() -> None:
            timed_out.set()
            proc.kill()

        timer = None
        if timeout_s is not None:
            timer = threading.Timer(timeout_s, stop)
            timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(PROGRESS_PREFIX):
                    report(line[len(PROGRESS_PREFIX) :].rstrip("\n"))
                else:
                    tail.append(line.rstrip("\n"))
            returncode = proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        payload = None
        if result_path.is_file():
            with contextlib.suppress(OSError, json.JSONDecodeError):
                payload = json.loads(result_path.read_text(encoding="utf-8"))
    child = ChildResult(returncode, list(tail), payload, timed_out=timed_out.is_set())
    data = raise_for_child(child, onnx_path=onnx_path, settings=settings, facts=facts, timeout_s=timeout_s)
    return BuildResult.from_dict(data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeres.tensorrt.child", description="Build a TensorRT engine.")
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--engine", type=Path, required=True)
    ap.add_argument("--settings", default="{}", help="EngineSettings as JSON")
    ap.add_argument("--timing-cache", type=Path, default=None)
    ap.add_argument("--result", type=Path, default=None, help="write the result JSON here (else print it)")
    args = ap.parse_args(argv)

    def progress(msg: str) -> None:
        print(PROGRESS_PREFIX + msg.replace("\n", " "), flush=True)

    try:
        settings = EngineSettings.from_dict(json.loads(args.settings))
        result = engine_from_onnx(
            args.onnx, args.engine, settings=settings, timing_cache=args.timing_cache, progress=progress
        )
        payload: dict[str, Any] = {"ok": True, "result": result.to_dict()}
        code = 0
    except EdgeresError as exc:
        payload = {"ok": False, "error": str(exc), "error_type": type(exc).__name__, "log": getattr(exc, "log", [])}
        code = exc.exit_code
        print(f"error: {exc}", file=sys.stderr, flush=True)
    if args.result is not None:
        write_json_atomic(args.result, payload)
    else:
        print(json.dumps(payload))
    return code


if __name__ == "__main__":
    sys.exit(main())
