"""Does edgeres' latency agree with an independent tool? OpenVINO's own benchmark_app measures the same model.

Both measure the same ONNX on OpenVINO's CPU plugin, batch 1, one stream (edgeres: the latency hint; benchmark_app:
`-nstreams 1`, since it refuses a thread count beside a hint), the same thread count, synchronous single-stream
(benchmark_app `-api sync`, one request at a time, as MLPerf single-stream does). They run in
alternating rounds so machine noise hits both alike; the result is the ratio of medians, with benchmark_app's own
round-to-round spread, which sets the tolerance: edgeres agrees when the ratio lies within 1 +/- max(10%, 2x that
spread). 10% is the floor because edgeres' timer wraps a Python call (tens of microseconds) that benchmark_app's
C++ loop does not have, which matters on millisecond-scale models.
Usage: python benchmarks/openvino_agreement.py [MODEL.onnx] (default: the quickstart build's model).
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from edgeres.artifact import write_json_atomic
from edgeres.config import Latency
from edgeres.measure import environment, measure_latency
from edgeres.pipeline import Pipeline
from edgeres.progress import Reporter
from edgeres.recipe import load_recipe
from edgeres.runtimes import open_runner

ROUNDS = 5
SECONDS = 10  # per round and per tool
THREADS = 2


def benchmark_app_median_ms(model: Path, shape: list[int]) -> float:
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    out = subprocess.run(
        [
            exe,
            "-m",
            str(model),
            "-d",
            "CPU",
            "-hint",
            "none",  # benchmark_app refuses -nthreads with a hint; one stream is what the latency hint picks
            "-nstreams",
            "1",
            "-api",
            "sync",
            "-nthreads",
            str(THREADS),
            "-t",
            str(SECONDS),
            "-shape",
            str([1, *shape]).replace(" ", ""),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"Median:\s+([0-9.]+) ms", out)
    if m is None:
        raise RuntimeError(f"benchmark_app printed no median latency:\n{out[-2000:]}")
    return float(m.group(1))


def main() -> None:
    if len(sys.argv) > 1:
        model = Path(sys.argv[1])
    else:
        result = Pipeline(load_recipe("recipes/quickstart.yaml"), until_stage="export", reporter=Reporter()).run()
        model = next(iter(result.variants.values())).primary_path
    import numpy as np

    rng = np.random.default_rng(0)
    shape = json.loads((model.parent / "model.json").read_text())["input_shape"]
    samples = [rng.standard_normal((1, *shape), dtype=np.float32) for _ in range(16)]
    settings = Latency(warmup=20, min_queries=200, min_duration_s=SECONDS, max_duration_s=SECONDS * 3)
    ours, request_ms, theirs = [], [], []
    with open_runner("openvino", model, fmt="onnx", threads=THREADS) as runner:
        for _ in range(ROUNDS):
            ours.append(measure_latency(runner, samples, settings)["p50_ms"])
            # The same queries once more, reading OpenVINO's own timing of each request.
            inner = []
            for i in range(settings.min_queries):
                runner.infer(samples[i % len(samples)])
                inner.append(runner.last_request_ms)  # type: ignore[attr-defined]
            request_ms.append(statistics.median(inner))
            theirs.append(benchmark_app_median_ms(model, shape))
    med_ours, med_req, med_theirs = statistics.median(ours), statistics.median(request_ms), statistics.median(theirs)
    spread = (max(theirs) - min(theirs)) / med_theirs
    tolerance = max(0.10, 2 * spread)
    ratio = med_req / med_theirs
    out = {
        "model": str(model),
        "environment": environment(THREADS),
        "edgeres_call_p50_ms": ours,
        "edgeres_request_p50_ms": request_ms,
        "benchmark_app_median_ms": theirs,
        "ratio_request_to_benchmark_app": ratio,
        "python_call_overhead_ms": med_ours - med_req,
        "ratio_call_to_benchmark_app": med_ours / med_theirs,
        "benchmark_app_spread": spread,
        "tolerance": tolerance,
        "agree": abs(ratio - 1) <= tolerance,
    }
    write_json_atomic(Path("out/bench/openvino_agreement.json"), out)
    print(json.dumps({k: v for k, v in out.items() if k != "environment"}, indent=2))
    sys.exit(0 if out["agree"] else 1)


if __name__ == "__main__":
    main()
