"""Measurements shared by the benchmark stage and `edgeres bench`: accuracy and single-stream latency through a
Runner, and the environment every figure is reported with.

Scenarios follow MLPerf: single-stream (batch 1, latency percentiles) and offline (batch N, samples per second).
Warm-up queries are kept apart, and a run is valid only when both the minimum query count and the minimum duration
are met (stopped early at the maximum duration, it is reported invalid with the reason, never silently accepted).
Memory is the peak resident set of the measuring process (run in a child process, see edgeres.worker), and on an
NVIDIA GPU what NVML reports (`gpu_memory`).

Latency is host end-to-end: `time.perf_counter` around each `infer` call, which for a GPU runner includes the copies
to and from the device, the launch and the synchronisation. A runner on a GPU (TensorRT, torch on CUDA) also sets
`last_gpu_ms` after each call: the GPU time of the compute alone, from CUDA events recorded on its stream around it.
The report gives both, named apart (`p50_ms`... host end-to-end; `gpu_compute` from CUDA events).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from typing import Any

from edgeres.config import Latency, Offline
from edgeres.deps import require, versions
from edgeres.runtimes.base import Runner
from edgeres.runtimes.settings import RuntimeSettings

# Images per accuracy batch; never more than the engine's profile allows (`accuracy_batch_size`).
ACCURACY_BATCH = 64
HOST_CLOCK = "host end-to-end: time.perf_counter around each call (copies in and out, launch, compute, synchronise)"
GPU_CLOCK = "GPU compute: CUDA events on the runner's stream around the compute alone (no host-device copies)"


def accuracy_batch_size(max_batch: int | None) -> int:
    """Images per accuracy batch for a model whose largest batch is `max_batch` (None: any)."""
    return ACCURACY_BATCH if max_batch is None else max(1, min(ACCURACY_BATCH, max_batch))


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


def gpu_summary(gpu_ms: list[float]) -> dict[str, Any] | None:
    """Percentiles of the GPU compute times a runner reported (None when it reported none)."""
    if not gpu_ms:
        return None
    ms = sorted(gpu_ms)
    return {
        "queries": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": sum(ms) / len(ms),
        "clock": GPU_CLOCK,
    }


def summarize_latency(
    times_s: list[float], elapsed_s: float, settings: Latency, *, gpu_ms: list[float] | None = None
) -> dict[str, Any]:
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
        "clock": HOST_CLOCK,
        "gpu_compute": gpu_summary(gpu_ms or []),
    }


def measure_latency(runner: Runner, samples: list[Any], settings: Latency) -> dict[str, Any]:
    """Single-stream latency over real images (cycled), after `warmup` uncounted queries; with the GPU compute time
    beside it where the runner reports one."""
    times, elapsed, gpu_ms = _timed_loop(runner, samples, settings)
    return summarize_latency(times, elapsed, settings, gpu_ms=gpu_ms)


def _timed_loop(
    runner: Runner, inputs: list[Any], settings: Latency | Offline
) -> tuple[list[float], float, list[float]]:
    for i in range(settings.warmup):
        runner.infer(inputs[i % len(inputs)])
    times: list[float] = []
    gpu_ms: list[float] = []
    start = time.perf_counter()
    while True:
        x = inputs[len(times) % len(inputs)]
        t0 = time.perf_counter()
        runner.infer(x)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if runner.last_gpu_ms is not None:
            gpu_ms.append(runner.last_gpu_ms)
        elapsed = t1 - start
        if len(times) >= settings.min_queries and elapsed >= settings.min_duration_s:
            break
        if elapsed >= settings.max_duration_s:
            break
    return times, time.perf_counter() - start, gpu_ms


def measure_offline(runner: Runner, batches: list[Any], settings: Offline) -> dict[str, Any]:
    """Offline throughput: back-to-back batches of `settings.batch` images; samples per second."""
    times, elapsed, gpu_ms = _timed_loop(runner, batches, settings)
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
        "gpu_compute": gpu_summary(gpu_ms),
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


AA_TOLERANCE = 0.05  # an A/A control (an engine against itself) must read 1.00 +- this, else the host was too noisy
BOOTSTRAP_RESAMPLES = 10_000


def bootstrap_median_ci(
    values: list[float],
    *,
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    groups: list[int] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of `values` (resampled with replacement, seeded). With `groups`
    (each value's session), two stages: sessions are resampled, then values within each drawn session, so the
    interval carries the spread between sessions as well as within them."""
    np = require("numpy")
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        raise ValueError("a bootstrap interval needs at least two values")
    rng = np.random.default_rng(seed)
    if groups is not None and len(set(groups)) > 1:
        g = np.asarray(groups)
        members = [np.flatnonzero(g == k) for k in sorted(set(groups))]
        medians = np.empty(resamples)
        for r in range(resamples):
            drawn = rng.integers(0, len(members), size=len(members))
            picked = np.concatenate([m[rng.integers(0, m.size, size=m.size)] for m in (members[d] for d in drawn)])
            medians[r] = np.median(v[picked])
        lo, hi = np.quantile(medians, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
        return float(lo), float(hi)
    medians = np.median(v[rng.integers(0, v.size, size=(resamples, v.size))], axis=1)
    lo, hi = np.quantile(medians, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return float(lo), float(hi)


def paired_summary(ratios: list[float], *, seed: int = 0, sessions: list[int] | None = None) -> dict[str, Any]:
    """The claim statistic of paired ratios: their median, its bootstrap 95% interval (two-stage over `sessions`,
    each ratio's session, where there are several), the range, the count and each session's median."""
    import statistics

    lo, hi = bootstrap_median_ci(ratios, seed=seed, groups=sessions)
    return {
        "median": statistics.median(ratios),
        "ci95": [lo, hi],
        "min": min(ratios),
        "max": max(ratios),
        "pairs": len(ratios),
        "ratios": [round(r, 5) for r in ratios],
        "session_medians": [
            statistics.median([r for r, k in zip(ratios, sessions, strict=True) if k == s])
            for s in sorted(set(sessions or [0]))
        ]
        if sessions
        else [statistics.median(ratios)],
    }


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


def gpu_memory(index: int = 0, *, pid: int | None = None) -> dict[str, Any] | None:
    """GPU memory from NVML (the `nvidia-ml-py` package, module pynvml): {"total_bytes", "used_bytes",
    "process_bytes"} of GPU `index`; process_bytes is what process `pid` (default: this one) holds there, None where
    NVML does not say (it lists compute processes only, and not inside every container). None where there is no NVML:
    a CPU host, or a Jetson before JetPack 7, where NVML reads N/A (use tegrastats or jetson-stats there)."""
    try:
        import pynvml
    except ImportError:
        return None
    pid = os.getpid() if pid is None else pid
    try:
        pynvml.nvmlInit()
    except Exception:  # pynvml.NVMLError: no driver or no GPU
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        mine = None
        try:
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            held = [p.usedGpuMemory for p in procs if p.pid == pid and p.usedGpuMemory is not None]
            mine = int(sum(held)) if held else None
        except Exception:  # not supported on this GPU or driver
            mine = None
        return {"total_bytes": int(info.total), "used_bytes": int(info.used), "process_bytes": mine}
    except Exception:  # N/A fields (Jetson before JetPack 7) raise NVMLError_NotSupported
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def gpu_memory_used_bytes() -> int | None:
    """Device memory in use on GPU 0 (NVML), or None where there is no NVML (CPU hosts; Jetson before JetPack 7)."""
    mem = gpu_memory(0)
    return None if mem is None else int(mem["used_bytes"])


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
