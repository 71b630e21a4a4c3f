"""Measure one artifact on one runtime, in a child process of its own.

`measure_artifact(...)` runs `python -m edgeres.worker SPEC OUT` so each runtime gets the machine's threads to itself
and the peak resident memory measured is that of the inference process alone. The same function runs in-process
when isolation is off (and in tests). The child reads preprocessed images from an .npz file and writes JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeres.config import Latency, Offline
from edgeres.deps import require
from edgeres.errors import StageError
from edgeres.measure import (
    accuracy_batch_size,
    gpu_memory,
    gpu_memory_used_bytes,
    measure_accuracy,
    measure_latency,
    measure_offline,
    peak_rss_bytes,
    reset_peak_rss,
)
from edgeres.runtimes import open_runner
from edgeres.runtimes.settings import RuntimeSettings

MB = 1e6


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the artifact (timed: the cold start), then: first inference (timed), single-stream latency, peak memory,
    offline throughput, accuracy (in that order). `spec["settings"]` (runtimes.settings) says how to load it; without
    them, the manifest beside a compiled engine does."""
    np = require("numpy")
    data = np.load(spec["data"])
    x, y = data["x"], data["y"]
    settings = RuntimeSettings.from_dict(spec["settings"]) if spec.get("settings") else None
    base_rss = peak_rss_bytes()
    reset_peak_rss()
    gpu_before = gpu_memory_used_bytes()
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    runner = open_runner(
        spec["runtime"], Path(spec["path"]), fmt=spec["format"], threads=spec["threads"], settings=settings
    )
    with runner:
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        runner.infer(x[:1])
        first_s = time.perf_counter() - t1
        out["runtime_version"] = runner.version()
        out["settings"] = runner.settings.to_dict()
        out["effective"] = runner.effective()
        # A device that boots and must answer at once pays both: loading (OpenVINO compiles for the CPU here, ONNX
        # Runtime optimises the graph) and the first inference (allocations, kernel choices).
        out["cold_start"] = {"load_ms": round(1000 * load_s, 2), "first_inference_ms": round(1000 * first_s, 2)}
        samples = [x[i : i + 1] for i in range(min(len(x), 64))]
        out["latency"] = measure_latency(runner, samples, Latency(**spec["latency"]))
        peak = peak_rss_bytes()
        gpu_after = gpu_memory_used_bytes()
        gpu_mine = (gpu_memory() or {}).get("process_bytes")
        out["memory"] = {
            "peak_rss_mb": None if peak is None else round(peak / MB, 1),
            "process_base_rss_mb": None if base_rss is None else round(base_rss / MB, 1),
            "gpu_used_mb": None if gpu_after is None or gpu_before is None else round((gpu_after - gpu_before) / MB, 1),
            "gpu_process_mb": None if gpu_mine is None else round(gpu_mine / MB, 1),
            "note": "peak resident set of the inference process while loading and running single-stream "
            "(interpreter and runtime libraries included)",
        }
        # the model's own largest batch bounds every batch fed to it (a TensorRT engine's profile: 8 by default)
        limit = runner.max_batch
        if spec.get("offline"):
            off = Offline(**spec["offline"])
            if limit is not None and off.batch > limit:
                out["offline"] = {
                    "scenario": "offline",
                    "skipped": f"offline batch {off.batch} is larger than the engine's largest batch {limit} "
                    f"(its profile): build it with max_batch >= {off.batch}, or set benchmark.offline.batch",
                }
            elif spec["batch"] >= off.batch:
                batches = [x[i : i + off.batch] for i in range(0, len(x) - off.batch + 1, off.batch)][:16] or [x]
                out["offline"] = measure_offline(runner, batches, off)
            else:
                out["offline"] = {"scenario": "offline", "skipped": "the model has a fixed batch size of 1"}
        if spec.get("accuracy", True):
            bs = min(spec["batch"], accuracy_batch_size(limit))
            acc, preds = measure_accuracy(runner, ((x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)))
            out["accuracy"] = acc
            out["predictions"] = preds.tolist()
        if spec.get("fidelity"):  # after the timed runs: nothing here slows or grows what was measured above
            from edgeres.fidelity.measure import measure_fidelity

            out["fidelity"] = measure_fidelity(
                runner,
                spec["fidelity"],
                batch=min(spec["batch"], accuracy_batch_size(limit)),
                sample=x[:1],
                runtime=spec["runtime"],
                path=spec["path"],
                threads=spec["threads"],
            )
    return out


def measure_artifact(spec: dict[str, Any], *, isolate: bool, timeout_s: float = 3600) -> dict[str, Any]:
    if not isolate:
        return run_spec(spec)
    with tempfile.TemporaryDirectory(prefix="edgeres-measure-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, "-m", "edgeres.worker", str(spec_path), str(out_path)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if proc.returncode != 0 or not out_path.is_file():
            tail = (proc.stderr or proc.stdout).strip()[-1500:]
            killed = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
            raise StageError(
                f"measuring {spec['path']} on {spec['runtime']} failed in its child process with exit code "
                f"{proc.returncode}{killed}:\n{tail}"
            )
        return json.loads(out_path.read_text(encoding="utf-8"))


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    result = run_spec(spec)
    Path(sys.argv[2]).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
