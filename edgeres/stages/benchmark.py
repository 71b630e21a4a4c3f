"""Stage `benchmark`: measure every variant's deliverable on the recipe's runtimes, and write the reports.

For each variant and each runtime that can run its format: accuracy on the chosen split (top-1, top-5, drop and
top-1 agreement against the baseline variant on the same runtime) and single-stream latency. Writes report.json
(versioned schema, environment recorded) and report.md.
"""

from __future__ import annotations

import time
from typing import Any

from edgeres.artifact import Artifact, sha256_json, write_json_atomic, write_text_atomic
from edgeres.deps import require
from edgeres.measure import environment, measure_accuracy, measure_latency
from edgeres.recipe import BenchmarkStage
from edgeres.report import REPORT_SCHEMA, render_markdown
from edgeres.runtimes import open_runner, runs
from edgeres.stages.base import StageContext, StageOutput

ACCURACY_BATCH = 64


def _batch_size(art: Artifact) -> int:
    shape = art.metadata.get("metrics", {}).get("input", {}).get("shape", ["batch"])
    return ACCURACY_BATCH if shape and shape[0] == "batch" else 1


def run(ctx: StageContext, cfg: BenchmarkStage, inp: None) -> StageOutput:
    np = require("numpy")
    data = ctx.data
    split = data.split(cfg.accuracy_split)
    baseline = cfg.baseline or next(iter(ctx.variants))
    order = [baseline, *(v for v in ctx.variants if v != baseline)]
    samples = [x for x, _ in data.numpy_batches(split, 1, limit=64)]
    rows: list[dict[str, Any]] = []
    base_preds: dict[str, Any] = {}
    base_top1: dict[str, float] = {}
    for vname in order:
        art = ctx.variants[vname]
        for runtime in cfg.runtimes:
            if not runs(runtime, art.format):
                continue
            ctx.reporter.log(f"benchmark {vname} on {runtime}: accuracy on {len(split)} {cfg.accuracy_split} images")
            t0 = time.monotonic()
            with open_runner(runtime, art.primary_path, fmt=art.format, threads=ctx.threads) as runner:
                acc, preds = measure_accuracy(runner, data.numpy_batches(split, _batch_size(art)))
                ctx.reporter.log(f"benchmark {vname} on {runtime}: single-stream latency")
                lat = measure_latency(runner, samples, cfg.latency)
                rt_version = runner.version()
            if vname == baseline:
                base_preds[runtime], base_top1[runtime] = preds, acc["top1"]
            if runtime in base_preds:
                acc["top1_drop"] = base_top1[runtime] - acc["top1"]
                acc["top1_agreement"] = float(np.mean(preds == base_preds[runtime]))
            rows.append(
                {
                    "variant": vname,
                    "runtime": runtime,
                    "runtime_version": rt_version,
                    "artifact": {
                        "stage": art.stage,
                        "format": art.format,
                        "file": art.primary,
                        "sha256": art.files[art.primary],
                        "bytes": art.primary_path.stat().st_size,
                    },
                    "accuracy": {"split": cfg.accuracy_split, **acc},
                    "latency": lat,
                    "seconds": round(time.monotonic() - t0, 2),
                }
            )
            ctx.reporter.log(
                f"{vname} on {runtime}: top-1 {acc['top1']:.4f}, p50 {lat['p50_ms']:.2f} ms, p90 {lat['p90_ms']:.2f} ms"
                + ("" if lat["valid"] else f" (INVALID: {lat['invalid_reason']})")
            )
    report = {
        "schema": REPORT_SCHEMA,
        "recipe": ctx.recipe.name,
        "recipe_sha256": sha256_json(ctx.recipe.model_dump(mode="json")),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(ctx.threads),
        "data": {"type": ctx.recipe.data.type, "fingerprint": data.fingerprint, "split": cfg.accuracy_split},
        "settings": {"latency": cfg.latency.model_dump(mode="json"), "runtimes": cfg.runtimes},
        "baseline": baseline,
        "variants": {
            name: {
                "stages": [s.id for s in ctx.recipe.chain(name) if s.type != "benchmark"],
                "artifact_sha256": art.content_sha256,
            }
            for name, art in ctx.variants.items()
        },
        "results": rows,
    }
    write_json_atomic(ctx.workdir / "report.json", report)
    write_text_atomic(ctx.workdir / "report.md", render_markdown(report))
    return StageOutput(
        format="report",
        primary="report.json",
        deliverables=["report.json", "report.md"],
        metrics={"results": len(rows), "all_valid": all(r["latency"]["valid"] for r in rows)},
    )
