"""Where batch-1 latency stops following MACs: ResNet-50 pruned in width (channels) and in depth (blocks), as shipped.

The peers benchmark (benchmarks/peers.py) asks edgeres' best artifact to be 2.5x faster than the fastest peer (NNCF
INT8 on OpenVINO) at 32x32 as well as at 224x224. At 32x32 the network's last stages run on 2x2 and 1x1 maps, so
most of a query's time is fixed cost per layer rather than arithmetic. This script measures how far removing work
can go there, with no training (the weights' values do not change the kernels' speed; the models' accuracy is not
measured and is meaningless here):

- width: the model pruned to several channel ratios by the prune stage's own pruner, with the recipe variant's
  prune settings (L1, uniform, round_to 16 for cifar10-peers), the depth kept;
- depth: the same with only the first k bottleneck blocks of each stage kept (the others have identity shortcuts, so
  the network stays whole): what removing layers, which no channel pruner does, buys (the prune stage's `depth`).

Each model is exported and INT8-quantized by the function the prune stage's latency probe uses
(`edgeres.stages.prune.shipped_onnx`: the recipe's export settings, edgeres' PTQ, here on 32 random images), run on
OpenVINO with the settings the compile stage ships, and measured right after NNCF's default PTQ of the unpruned model
on OpenVINO with its defaults (the fastest peer in peers.py) in each round, all with the same threads. Output: JSON
and Markdown in benchmarks/results/.

Usage:
    python benchmarks/latency_floor.py [--weights resnet50-cifar10.pt] [--size 32] [--rounds 5]
        [--ratios 0,0.3,0.5,0.7] [--depths 3-4-6-3,2-2-2-2,1-1-1-1] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import atexit
import multiprocessing
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import LAT32, DefaultOpenVino, machine_tag, nncf_openvino

from edgeres.artifact import write_json_atomic, write_text_atomic
from edgeres.deps import require, versions
from edgeres.measure import environment, measure_latency
from edgeres.models import build_model, keep_blocks, load_weights, read_state_dict
from edgeres.recipe import load_recipe, variant_recipe
from edgeres.resolve import runtime_settings
from edgeres.runtimes import open_runner
from edgeres.stages.prune import _pruner, macs_of, shipped_onnx

REPO = Path(__file__).resolve().parents[1]
CALIBRATION = 32  # as the prune stage's latency probe: the graph, not its scales, sets the speed


def shaped(weights: Path | None, depth: tuple[int, ...], ratio: float, prune: Any, round_to: int, size: int) -> Any:
    """ResNet-50 (10 classes) with the first depth[i] blocks of stage i, pruned in one step to `ratio` of channels by
    the prune stage's own pruner with the recipe's prune settings (criterion, scope)."""
    torch = require("torch")
    tp = require("torch_pruning")
    model = build_model("resnet50", 10)
    if weights is not None:
        load_weights(model, read_state_dict(weights), source=str(weights))
    keep_blocks(model, [list(range(k)) for k in depth])
    model.eval()
    example = torch.zeros(1, 3, size, size)
    if ratio > 0:
        _pruner(tp, model, example, prune, ratio, 1, round_to).step()
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return model, macs_of(model, example), convs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=None, help="A ResNet-50 state dict (default: random weights).")
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "cifar10-peers.yaml")
    ap.add_argument("--variant", default="pruned30-int8", help="The recipe variant whose export/PTQ/settings to use.")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ratios", default="0,0.3,0.5,0.7")
    ap.add_argument("--depths", default="3-4-6-3,2-2-2-2,1-1-1-1")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument(
        "--peer",
        type=Path,
        action="append",
        default=[],
        help="Also measure this OpenVINO IR or ONNX model on OpenVINO's defaults (e.g. peers.py's NNCF model).",
    )
    args = ap.parse_args()
    np = require("numpy")

    recipe = variant_recipe(load_recipe(args.recipe), args.variant)
    target = recipe.target_spec()
    export = next(s for s in recipe.stages if s.type == "export")
    quantize = next(s for s in recipe.stages if s.type == "quantize")
    prune = next(s for s in recipe.stages if s.type == "prune")
    settings = runtime_settings(recipe, args.variant)
    threads = args.threads or recipe.threads or multiprocessing.cpu_count()
    round_to = prune.round_to or target.round_to or 1
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, 3, args.size, args.size)).astype("float32") for _ in range(CALIBRATION)]
    samples = [rng.standard_normal((1, 3, args.size, args.size)).astype("float32") for _ in range(64)]
    ratios = [float(r) for r in args.ratios.split(",")]
    depths = [tuple(int(k) for k in d.split("-")) for d in args.depths.split(",")]

    work = Path(tempfile.mkdtemp(prefix="edgeres-floor-"))
    atexit.register(shutil.rmtree, work, True)  # the models are only for this run, also when it fails
    rows: list[dict[str, Any]] = []
    runners: dict[str, Any] = {}
    base = work / "dense.onnx"
    model, base_macs, _ = shaped(args.weights, (3, 4, 6, 3), 0.0, prune, round_to, args.size)
    shipped_onnx(model, (args.size, args.size), export, None, target.qdq_rules, calib, base)
    runners["NNCF INT8, OpenVINO defaults (dense)"] = DefaultOpenVino(
        nncf_openvino(base, calib, work / "nncf.xml"), threads=threads
    )
    rows.append({"name": "NNCF INT8, OpenVINO defaults (dense)", "depth": [3, 4, 6, 3], "ratio": 0.0})
    for extra in args.peer:
        runners[f"peer {extra}"] = DefaultOpenVino(extra, threads=threads)
        rows.append({"name": f"peer {extra}", "depth": [3, 4, 6, 3], "ratio": 0.0})
    for depth in depths:
        for ratio in ratios:
            name = f"edgeres INT8 depth {'-'.join(map(str, depth))} ratio {ratio:.2f}"
            model, macs, convs = shaped(args.weights, depth, ratio, prune, round_to, args.size)
            path = shipped_onnx(
                model, (args.size, args.size), export, quantize, target.qdq_rules, calib, work / f"m{len(rows)}.onnx"
            )
            runners[name] = open_runner(settings.runtime, path, fmt="onnx", threads=threads, settings=settings)
            rows.append({"name": name, "depth": list(depth), "ratio": ratio, "macs_fraction": macs / base_macs})
            rows[-1]["convs"] = convs
            print(f"built {name}: {macs / base_macs:.3f} of the MACs, {convs} convolutions", flush=True)
    for runner in runners.values():
        runner.infer(samples[0])
    # Every model is measured right after the reference, in each round: the speed-up is the median over rounds of
    # those pairs' ratio, so drift (and whatever a long round does to caches) falls on both sides alike.
    reference = rows[0]["name"]
    p50: dict[str, list[float]] = {name: [] for name in runners}
    pairs: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.rounds):
        for name, runner in runners.items():
            ref_ms = float(measure_latency(runners[reference], samples, LAT32)["p50_ms"])
            ms = ref_ms if name == reference else float(measure_latency(runner, samples, LAT32)["p50_ms"])
            pairs[name].append(ref_ms / ms)
            p50[reference].append(ref_ms)
            if name != reference:
                p50[name].append(ms)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    for row in rows:
        row["p50_ms"] = statistics.median(p50[row["name"]])
        row["p50_ms_rounds"] = [round(v, 3) for v in p50[row["name"]]]
        row["speedup_vs_peer"] = statistics.median(pairs[row["name"]])
        runners[row["name"]].close()
    report = {
        "size": args.size,
        "threads": threads,
        "rounds": args.rounds,
        "weights": str(args.weights.name) if args.weights else "random",
        "settings": settings.to_dict(),
        "environment": environment(threads),
        "versions": versions("torch", "onnx", "openvino", "nncf", "torch_pruning"),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"latency-floor-{args.size}-{machine_tag()}"
    write_json_atomic(stem.with_suffix(".json"), report)
    lines = [
        f"# Batch-1 latency at {args.size}x{args.size} against width and depth (INT8, OpenVINO, {threads} threads)",
        "",
        f"p50: median over rounds; speed-up over NNCF INT8 of the dense model on OpenVINO: median over "
        f"{args.rounds} rounds of the ratio to the reference measured just before it.",
        "",
        "| model | MACs | convolutions | p50 ms | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        macs = f"{row['macs_fraction']:.3f}" if "macs_fraction" in row else "1.000"
        convs = row.get("convs", 53)
        lines.append(f"| {row['name']} | {macs} | {convs} | {row['p50_ms']:.3f} | {row['speedup_vs_peer']:.2f}x |")
    write_text_atomic(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
