"""Measurements shared by the benchmark stage and `edgeres bench`: accuracy and single-stream latency through a
Runner, and the environment every figure is reported with.

Latency follows MLPerf's single-stream scenario: batch 1, warm-up queries kept apart, and a run is valid only when
both the minimum query count and the minimum duration are met (stopped early at the maximum duration, it is
reported invalid with the reason, never silently accepted).
"""

from __future__ import annotations

import math
import os
import platform
import time
from typing import Any

from edgeres.deps import require, versions
from edgeres.recipe import Latency
from edgeres.runtimes.base import Runner


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile (as MLPerf loadgen reports it) of an ascending list."""
    if not sorted_ms:
        return float("nan")
    rank = max(1, math.ceil(q * len(sorted_ms) / 100 - 1e-9))  # the epsilon absorbs float error (90*10/100)
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


def summarize_latency(times_s: list[float], elapsed_s: float, settings: Latency) -> dict[str, Any]:
    ms = sorted(t * 1000.0 for t in times_s)
    problems = []
    if len(ms) < settings.min_queries:
        problems.append(f"{len(ms)} queries < min_queries {settings.min_queries}")
    if elapsed_s < settings.min_duration_s:
        problems.append(f"{elapsed_s:.2f} s < min_duration_s {settings.min_duration_s:g}")
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
    for i in range(settings.warmup):
        runner.infer(samples[i % len(samples)])
    times: list[float] = []
    start = time.perf_counter()
    while True:
        x = samples[len(times) % len(samples)]
        t0 = time.perf_counter()
        runner.infer(x)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        elapsed = t1 - start
        if len(times) >= settings.min_queries and elapsed >= settings.min_duration_s:
            break
        if elapsed >= settings.max_duration_s:
            break
    return summarize_latency(times, time.perf_counter() - start, settings)


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
