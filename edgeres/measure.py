"""Measurements shared by the benchmark stage and `edgeres bench`: accuracy and single-stream latency through a
Runner, and the environment every figure is reported with.

Scenarios follow MLPerf: single-stream (batch 1, latency percentiles) and offline (batch N, samples per second).
Warm-up queries are kept apart, and a run is valid only when both the minimum query count and the minimum duration
are met (stopped early at the maximum duration, it is reported invalid with the reason, never silently accepted).
Memory is the peak resident set of the measuring process (run in a child process, see edgeres.worker).
"""

from __future__ import annotations

import math
import os
import platform
import time
from typing import Any

from edgeres.deps import require, versions
from edgeres.recipe import Latency, Offline
from edgeres.runtimes.base import Runner
from edgeres.runtimes.settings import RuntimeSettings


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile (as MLPerf loadgen reports it) of an ascending list."""
    if not sorted_ms:
        return float("nan")
    rank = max(1, math.ceil(q * len(sorted_ms) / 100 - 1e-9))  # the epsilon absorbs float error (90*10/100)
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


def _validity(queries: int, elapsed_s: float, settings: Latency | Offline) -> list[str]:
    problems = []
    if queries < settings.min_queries:
        problems.append(f"{queries} queries < min_queries {settings.min_queries}")
    if elapsed_s < settings.min_duration_s:
        problems.append(f"{elapsed_s:.2f} s < min_duration_s {settings.min_duration_s:g}")
    return problems


def summarize_latency(times_s: list[float], elapsed_s: float, settings: Latency) -> dict[str, Any]:
    ms = sorted(t * 1000.0 for t in times_s)
    problems = _validity(len(ms), elapsed_s, settings)
    return {
        "scenario": "single-stream",
        "batch": 1,
        "queries": len(ms),
        "duration_s": round(elapsed_s, 3),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": sum(ms) / len(ms) if ms else float("nan"),
        "min_ms": ms[0] if ms else float("nan"),
        "max_ms": ms[-1] if ms else float("nan"),
        "valid": not problems,
        "invalid_reason": "; ".join(problems) or None,
    }


def measure_latency(runner: Runner, samples: list[Any], settings: Latency) -> dict[str, Any]:
    """Single-stream latency over real images (cycled), after `warmup` uncounted queries."""
    times, elapsed = _timed_loop(runner, samples, settings)
    return summarize_latency(times, elapsed, settings)


def _timed_loop(runner: Runner, inputs: list[Any], settings: Latency | Offline) -> tuple[list[float], float]:
    for i in range(settings.warmup):
        runner.infer(inputs[i % len(inputs)])
    times: list[float] = []
    start = time.perf_counter()
    while True:
        x = inputs[len(times) % len(inputs)]
        t0 = time.perf_counter()
        runner.infer(x)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        elapsed = t1 - start
        if len(times) >= settings.min_queries and elapsed >= settings.min_duration_s:
            break
        if elapsed >= settings.max_duration_s:
            break
    return times, time.perf_counter() - start


def measure_offline(runner: Runner, batches: list[Any], settings: Offline) -> dict[str, Any]:
    """Offline throughput: back-to-back batches of `settings.batch` images; samples per second."""
    times, elapsed = _timed_loop(runner, batches, settings)
    samples = len(times) * settings.batch
    problems = _validity(len(times), elapsed, settings)
    return {
        "scenario": "offline",
        "batch": settings.batch,
        "queries": len(times),
        "samples": samples,
        "duration_s": round(elapsed, 3),
        "samples_per_s": samples / elapsed if elapsed > 0 else float("nan"),
        "valid": not problems,
        "invalid_reason": "; ".join(problems) or None,
    }


def p50_ms(
    runtime: str,
    path: Any,
    fmt: str,
    samples: list[Any],
    latency: Latency,
    *,
    threads: int,
    settings: RuntimeSettings,
) -> float:
    """Median single-stream latency of one model file on one runtime (quick in-process figure for stage decisions),
    loaded with the settings it ships with."""
    from edgeres.runtimes import open_runner

    with open_runner(runtime, path, fmt=fmt, threads=threads, settings=settings) as runner:
        return float(measure_latency(runner, samples, latency)["p50_ms"])


def interleaved_ratio(
    reference: Any,
    candidate: Any,
    samples: list[Any],
    latency: Latency,
    *,
    threads: int,
    rounds: int,
    settings: RuntimeSettings,
) -> tuple[float, list[float]]:
    """Median over `rounds` of p50(candidate) / p50(reference), the two models measured in alternation within each
    round, so that the drift of a shared host falls on both; also returns the reference's p50 of each round."""
    import statistics

    from edgeres.runtimes import open_runner

    ratios, reference_ms = [], []
    rt = settings.runtime
    with (
        open_runner(rt, reference, fmt="onnx", threads=threads, settings=settings) as ref,
        open_runner(rt, candidate, fmt="onnx", threads=threads, settings=settings) as cand,
    ):
        for _ in range(rounds):
            r = float(measure_latency(ref, samples, latency)["p50_ms"])
            c = float(measure_latency(cand, samples, latency)["p50_ms"])
            ratios.append(c / r)
            reference_ms.append(r)
    return statistics.median(ratios), reference_ms


def measure_accuracy(runner: Runner, batches: Any) -> tuple[dict[str, Any], Any]:
    """top-1 and top-5 over (images, labels) numpy batches; also returns the top-1 predictions."""
    np = require("numpy")
    preds, correct1, correct5, n = [], 0, 0, 0
    for x, y in batches:
        logits = runner.infer(x)
        top = np.argsort(-logits, axis=1)[:, :5]
        preds.append(top[:, 0])
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(axis=1).sum())
        n += len(y)
    return {"images": n, "top1": correct1 / max(n, 1), "top5": correct5 / max(n, 1)}, np.concatenate(preds)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process since start or the last reset (VmHWM), else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):
        return None


def gpu_memory_used_bytes() -> int | None:
    """Device memory in use on GPU 0 (NVML), or None where there is no NVML (CPU hosts; Jetson before JetPack 7)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
            return int(info.used)
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int) -> dict[str, Any]:
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions("torch", "onnx", "onnxruntime", "openvino", "tensorrt", "nncf"),
    }
