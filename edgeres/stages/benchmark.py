"""Stage `benchmark`: measure every variant's deliverable on the recipe's runtimes, and write the reports.

For each variant and each runtime that can run its format, in a child process of its own: single-stream latency,
peak resident memory, offline throughput, and accuracy on the chosen split (top-1, top-5, and drop and top-1
agreement against the baseline variant on the same runtime). Writes report.json (versioned schema, environment
recorded), report.md and report.html (accuracy against latency, Pareto front marked, per-stage table).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from edgeres import faults
from edgeres.artifact import Artifact, sha256_json, write_json_atomic, write_text_atomic
from edgeres.deps import require
from edgeres.measure import ACCURACY_BATCH, environment
from edgeres.preprocess import Preprocessing, model_input
from edgeres.recipe import BenchmarkStage, variant_recipe
from edgeres.report import REPORT_SCHEMA, render_html, render_markdown, result_row, stage_rows
from edgeres.runtimes import NATIVE, runs
from edgeres.runtimes.base import MANIFEST
from edgeres.runtimes.settings import RuntimeSettings, precision_label, settings_for, settings_from_manifest
from edgeres.stages.base import SCRATCH, StageContext, StageOutput
from edgeres.worker import measure_artifact


def _batch_size(art: Artifact) -> int:
    shape = art.metadata.get("metrics", {}).get("input", {}).get("shape", ["batch"])
    return ACCURACY_BATCH if shape and shape[0] == "batch" else 1


def deliverable_settings(art: Artifact, vrecipe: Any, runtime: str) -> tuple[RuntimeSettings, str]:
    """How a deliverable is loaded on `runtime` and what precision it runs: the manifest of a compiled engine, else
    (an ONNX or torch model of a variant that stops earlier) what its recipe resolves to."""
    manifest_path = art.path / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    settings = settings_from_manifest(manifest) or settings_for(vrecipe, runtime)
    settings = settings.for_runtime(runtime)
    quantized = art.metadata.get("metrics", {}).get("precision") == "int8"
    return settings, manifest.get("precision") or precision_label(quantized=quantized, settings=settings)


def run(ctx: StageContext, cfg: BenchmarkStage, inp: None) -> StageOutput:
    np = require("numpy")
    scratch = ctx.workdir / SCRATCH
    scratch.mkdir(exist_ok=True)
    evals: dict[str, tuple[Path, str]] = {}  # data settings -> (npz of the split, data fingerprint)

    def eval_set(vrecipe: Any) -> tuple[Path, str]:
        """The accuracy split preprocessed as this variant's recipe says (variants may override data.*)."""
        key = sha256_json([vrecipe.data.model_dump(mode="json"), vrecipe.seed])
        if key not in evals:
            data = ctx.data_of(vrecipe) if ctx.data_of is not None else ctx.data
            split = data.split(cfg.accuracy_split)
            # The preprocessing a deployed bundle applies (edgeres.preprocess): what is measured is what runs.
            x = model_input(data.pixels(split).numpy(), Preprocessing.from_spec(data.preprocessing()))
            npz = scratch / f"eval-{len(evals)}.npz"
            np.savez(npz, x=x, y=split.labels.numpy())
            evals[key] = (npz, data.fingerprint)
        return evals[key]

    baseline = cfg.baseline or next(iter(ctx.variants))
    order = [baseline, *(v for v in ctx.variants if v != baseline)]
    rows: list[dict[str, Any]] = []
    base_preds: dict[str, Any] = {}
    unmeasured: list[dict[str, Any]] = []
    for vname in order:
        art = ctx.variants[vname]
        vrecipe = variant_recipe(ctx.recipe, vname)
        native = [NATIVE[art.format]] if art.format in NATIVE else []
        candidates = [r for r in cfg.runtimes if runs(r, art.format)] or native
        if not candidates:
            ctx.reporter.log(f"benchmark {vname}: a {art.format} artifact cannot be measured on this host")
            reason = "no runtime on this host runs it"
            if art.format == "tensorrt-kit":
                reason = (
                    "a TensorRT device build kit; run its build.sh on the device, which writes device-report.json "
                    "for `edgeres compare`"
                )
            unmeasured.append({"variant": vname, "format": art.format, "reason": reason})
        npz, fingerprint = eval_set(vrecipe)
        for runtime in candidates:
            settings, precision = deliverable_settings(art, vrecipe, runtime)
            unsupported = settings.unsupported_reason()
            if unsupported is not None:
                ctx.reporter.log(f"benchmark {vname} on {runtime}: not measured here: {unsupported}")
                unmeasured.append(
                    {
                        "variant": vname,
                        "format": art.format,
                        "runtime": runtime,
                        "precision": precision,
                        "reason": unsupported,
                    }
                )
                continue
            ctx.reporter.log(f"benchmark {vname} on {runtime} ({precision}): {cfg.accuracy_split} split")
            spec = {
                "runtime": runtime,
                "path": str(art.primary_path),
                "format": art.format,
                "threads": ctx.threads,
                "data": str(npz),
                "batch": _batch_size(art),
                "settings": settings.to_dict(),
                "latency": cfg.latency.model_dump(),
                "offline": cfg.offline.model_dump() if cfg.offline else None,
            }
            measured = measure_artifact(spec, isolate=cfg.isolate)
            faults.point("benchmark:variant")
            preds = np.asarray(measured.pop("predictions"))
            row = result_row(vname, runtime, art, measured, cfg.accuracy_split, precision=precision)
            acc = row["accuracy"]
            if vname == baseline:
                base_preds[runtime] = (preds, acc["top1"], fingerprint)
            # Against the baseline on the same runtime where it ran there, else on the runtime it ran first on;
            # only on the same images (a variant may read other data).
            ref_rt = runtime if runtime in base_preds else next(iter(base_preds), None)
            if ref_rt is not None and base_preds[ref_rt][2] == fingerprint:
                acc["reference"] = f"{baseline} on {ref_rt}"
                acc["top1_drop"] = base_preds[ref_rt][1] - acc["top1"]
                acc["top1_agreement"] = float(np.mean(preds == base_preds[ref_rt][0]))
            rows.append(row)
            lat = row["latency"]
            ctx.reporter.log(
                f"{vname} on {runtime}: top-1 {acc['top1']:.4f}, p50 {lat['p50_ms']:.2f} ms, "
                f"peak RSS {row['memory']['peak_rss_mb']} MB" + ("" if lat["valid"] else " (latency run INVALID)")
            )
    report = {
        "schema": REPORT_SCHEMA,
        "recipe": ctx.recipe.name,
        "recipe_sha256": sha256_json(ctx.recipe.model_dump(mode="json")),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(ctx.threads),
        "data": {
            "type": ctx.recipe.data.type,
            "fingerprint": eval_set(ctx.recipe)[1],
            "split": cfg.accuracy_split,
            # data.bad_files: skip leaves unreadable images out: the report says how many and which
            "skipped_files": len(ctx.data.skipped),
            "skipped": ctx.data.skipped[:100],
        },
        "settings": {
            "latency": cfg.latency.model_dump(mode="json"),
            "offline": cfg.offline.model_dump(mode="json") if cfg.offline else None,
            "runtimes": cfg.runtimes,
            "isolated_processes": cfg.isolate,
        },
        "baseline": baseline,
        "variants": {
            name: {
                "stages": [s.id for s in ctx.recipe.chain(name) if s.type != "benchmark"],
                "artifact_sha256": art.content_sha256,
            }
            for name, art in ctx.variants.items()
        },
        "stages": stage_rows(ctx.lineage),
        "results": rows,
        "unmeasured": unmeasured,
    }
    write_json_atomic(ctx.workdir / "report.json", report)
    write_text_atomic(ctx.workdir / "report.md", render_markdown(report))
    write_text_atomic(ctx.workdir / "report.html", render_html(report))
    return StageOutput(
        format="report",
        primary="report.json",
        deliverables=["report.json", "report.md", "report.html"],
        metrics={"results": len(rows), "all_valid": all(r["latency"]["valid"] for r in rows)},
    )
