"""Side-by-side latency of one model on every runtime: torch eager FP32, ONNX Runtime and OpenVINO on the ONNX.

Builds the quickstart recipe up to `export` (cached after the first run), then measures single-stream latency on
each runtime in interleaved rounds (so machine noise hits all alike), and prints medians and ratios to torch, with
the environment. Writes out/bench/runtimes.json. Usage: `make bench` or `python benchmarks/runtimes.py [RECIPE]`.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from edgeres.artifact import write_json_atomic
from edgeres.config import Latency
from edgeres.measure import environment, measure_latency
from edgeres.pipeline import Pipeline
from edgeres.progress import Reporter
from edgeres.recipe import load_recipe
from edgeres.runtimes import open_runner

ROUNDS = 5  # interleaved rounds per runtime; the median of the per-round medians is reported
SETTINGS = Latency(warmup=20, min_queries=100, min_duration_s=2.0, max_duration_s=30.0)


def main() -> None:
    recipe_path = Path(sys.argv[1] if len(sys.argv) > 1 else "recipes/quickstart.yaml")
    recipe = load_recipe(recipe_path)
    result = Pipeline(recipe, until_stage="export", reporter=Reporter()).run()
    onnx_art = next(iter(result.variants.values()))
    torch_art = next(r for r in result.records if r.stage_type == "finetune")
    data = Pipeline(recipe).data_of(recipe)
    samples = [x for x, _ in data.numpy_batches(data.test, 1, limit=64)]
    threads = recipe.threads or 2
    targets = {
        "torch": (Path(torch_art.path), "torch"),
        "onnxruntime": (onnx_art.primary_path, "onnx"),
        "openvino": (onnx_art.primary_path, "onnx"),
    }
    runners = {name: open_runner(name, path, fmt=fmt, threads=threads) for name, (path, fmt) in targets.items()}
    p50s: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(ROUNDS):
        for name, runner in runners.items():
            p50s[name].append(measure_latency(runner, samples, SETTINGS)["p50_ms"])
    med = {name: statistics.median(v) for name, v in p50s.items()}
    out = {
        "model": str(onnx_art.primary_path),
        "environment": environment(threads),
        "rounds": ROUNDS,
        "p50_ms_per_round": p50s,
        "median_p50_ms": med,
        "speedup_vs_torch": {name: med["torch"] / v for name, v in med.items()},
    }
    write_json_atomic(Path("out/bench/runtimes.json"), out)
    print(json.dumps({k: out[k] for k in ("median_p50_ms", "speedup_vs_torch")}, indent=2))
    print(f"{out['environment']['cpu']}, {threads} threads; versions {out['environment']['versions']}")


if __name__ == "__main__":
    main()
