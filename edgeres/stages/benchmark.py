"""Stage `benchmark`: measure every variant's deliverable on the recipe's runtimes, and write the reports.

For each variant and each runtime that can run its format, in a child process of its own: single-stream latency,
peak resident memory, offline throughput, and accuracy on the chosen split (top-1, top-5, and drop and top-1
agreement against the baseline variant on the same runtime). With `fidelity` on (the default), the same child
process, after the timed runs, also measures the engine under common corruptions, draws its occlusion saliency maps
and profiles it layer by layer (edgeres.fidelity); where an engine agrees poorly with the baseline, its ONNX is
compared with the baseline's tensor by tensor. Writes report.json (versioned schema, environment recorded),
report.md and report.html (accuracy against latency, Pareto front marked, robustness plot, saliency grid, per-stage
table).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from edgeres import faults
from edgeres.artifact import Artifact, sha256_file, sha256_json, write_json_atomic, write_text_atomic
from edgeres.config import BenchmarkStage, Fidelity, Paired
from edgeres.deps import require
from edgeres.inputs import BenchmarkInputs, DataInputs, VariantInputs, keyed, recorded
from edgeres.measure import ACCURACY_BATCH, environment
from edgeres.paired import EngineSpec, paired_latency
from edgeres.preprocess import Preprocessing, model_input
from edgeres.report import REPORT_SCHEMA, render_html, render_markdown, result_row, stage_rows
from edgeres.runtimes import NATIVE, runs
from edgeres.runtimes.base import MANIFEST
from edgeres.runtimes.settings import RuntimeSettings, precision_label, settings_from_manifest
from edgeres.stages.base import SCRATCH, StageContext, StageOutput
from edgeres.worker import measure_artifact

GRID_IMAGES = 4  # images in the report's saliency grid (those where the engines disagree most with the baseline)


def _batch_size(art: Artifact) -> int:
    shape = art.metadata.get("metrics", {}).get("input", {}).get("shape", ["batch"])
    return ACCURACY_BATCH if shape and shape[0] == "batch" else 1


def deliverable_settings(art: Artifact, variant: VariantInputs, runtime: str) -> tuple[RuntimeSettings, str]:
    """How a deliverable is loaded on `runtime` and what precision it runs: the manifest of a compiled engine, else
    (an ONNX or torch model of a variant that stops earlier) what the variant resolves to."""
    manifest_path = art.path / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    settings = settings_from_manifest(manifest) or variant.settings
    settings = settings.for_runtime(runtime)
    quantized = art.metadata.get("metrics", {}).get("precision") == "int8"
    return settings, manifest.get("precision") or precision_label(quantized=quantized, settings=settings)


def lineage_onnx(ctx: StageContext[BenchmarkInputs], vname: str) -> Path | None:
    """The last ONNX model in a variant's chain: what its engine was compiled from."""
    onnx = [a for a in ctx.lineage.get(vname, []) if a.format == "onnx"]
    return onnx[-1].primary_path if onnx else None


def add_fidelity(
    ctx: StageContext[BenchmarkInputs],
    fid: Fidelity,
    row: dict[str, Any],
    measured: dict[str, Any],
    ref: dict[str, Any] | None,
    fset: dict[str, Any],
    base_onnx: Path | None,
    onnx: Path | None,
) -> None:
    """The row's robustness, saliency, profile and (where agreement is low) layer-by-layer figures."""
    from edgeres.fidelity.summary import robustness_row, saliency_row

    if "robustness" in measured:
        rob = robustness_row(measured["robustness"], (ref or {}).get("robustness"), fset["robustness_images"])
        row["robustness"] = rob
    if "saliency" in measured and fid.saliency is not None:
        row["saliency"] = saliency_row(
            measured["saliency"],
            (ref or {}).get("saliency"),
            fraction=fid.saliency.top_fraction,
            min_rank_correlation=fid.saliency.min_rank_correlation,
        )
    if "profile" in measured:
        row["profile"] = measured["profile"]
    if fid.layerwise is None or ref is None:
        return
    limit = fid.layerwise.below_agreement
    low = [
        f"{what} {value:.4f} < {limit}"
        for what, value in (
            ("top-1 agreement", row["accuracy"].get("top1_agreement")),
            ("agreement under corruption", (row.get("robustness") or {}).get("agreement_under_corruption")),
        )
        if value is not None and value < limit
    ]
    if (row.get("saliency") or {}).get("flagged"):
        low.append(f"saliency rank correlation {row['saliency']['rank_correlation']:.3f} flagged")
    if not low:
        return
    layer: dict[str, Any] = {"why": "; ".join(low)}
    if base_onnx is None or onnx is None:
        layer["skipped"] = "the baseline or this variant has no ONNX model in its chain"
    elif base_onnx.resolve() == onnx.resolve() or sha256_file(base_onnx) == sha256_file(onnx):
        layer["skipped"] = "same ONNX model as the baseline: the difference comes from the runtime, not the graph"
    else:
        from edgeres.fidelity.layerwise import compare_layers

        np = require("numpy")
        t0 = time.perf_counter()
        try:
            layer.update(compare_layers(base_onnx, onnx, np.load(fset["layer_images"]), threads=ctx.inputs.threads))
        except Exception as exc:  # a diagnostic: ONNX Runtime refusing a graph with every tensor marked is reported
            layer["skipped"] = f"ONNX Runtime could not run the graphs with every tensor as an output: {exc}"[:500]
        layer["seconds"] = round(time.perf_counter() - t0, 3)
    row["layerwise"] = layer


def fidelity_report(fid: Fidelity | None, inputs: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> Any:
    """The report's fidelity header: settings, what implements the corruptions, time spent, the saliency grid."""
    if fid is None or not inputs:
        return None
    from edgeres.fidelity.summary import disagreeing_images, encode_image

    first = next(iter(inputs.values()))
    grid = []
    if "saliency_raw" in first:
        for i in disagreeing_images(rows, GRID_IMAGES):
            grid.append(
                {"index": i, "label": first["saliency_labels"][i], "image": encode_image(first["saliency_raw"][i])}
            )
    return {
        "settings": fid.model_dump(mode="json"),
        "corruptions": "ImageNet-C parameters on torchvision transforms v2 kernels (edgeres.fidelity.corruptions)",
        "saliency_method": "occlusion sensitivity through each engine's runner; classes: the baseline's top-1",
        "robustness_images": first.get("robustness_images"),
        "saliency_images": len(first.get("saliency_labels", [])),
        "prepare_s": sum(v["prepare_s"] for v in inputs.values()),
        "grid": grid,
    }


def paired_row(
    against: EngineSpec, engine: EngineSpec, npz: Path, cfg: Paired, threads: int, log: Any
) -> dict[str, Any]:
    """The paired protocol's reading of `engine` against the baseline's, for the report row."""
    p = paired_latency(against, engine, npz, threads=threads, pairs=cfg.pairs, block=cfg.block, sessions=cfg.sessions)
    log(
        f"paired: {engine.label} on {engine.runtime} against {against.label} on {against.runtime}: "
        f"{p['speedup']['median']:.2f}x (95% CI {p['speedup']['ci95'][0]:.2f}-{p['speedup']['ci95'][1]:.2f}x), "
        f"A/A control {p['control']['median']:.3f}" + ("" if p["control_ok"] else " (too noisy to claim anything)")
    )
    return {
        "against": f"{against.label} on {against.runtime}",
        "latency_ratio": {k: p["latency_ratio"][k] for k in ("median", "ci95", "pairs")},
        "speedup": p["speedup"],
        "control": {k: p["control"][k] for k in ("median", "ci95")},
        "control_ok": p["control_ok"],
        "protocol": p["protocol"],
    }


def run(ctx: StageContext[BenchmarkInputs], cfg: BenchmarkStage, inp: None) -> StageOutput:
    np = require("numpy")
    scratch = ctx.workdir / SCRATCH
    scratch.mkdir(exist_ok=True)
    evals: dict[str, tuple[Path, str]] = {}  # data settings -> (npz of the split, data fingerprint)

    def eval_set(vdata: DataInputs) -> tuple[Path, str]:
        """The accuracy split preprocessed as this variant's data says (variants may override data.*)."""
        key = sha256_json(recorded(vdata))
        if key not in evals:
            data = ctx.data_of(vdata)
            split = data.split(cfg.accuracy_split)
            # The preprocessing a deployed bundle applies (edgeres.preprocess): what is measured is what runs.
            x = model_input(data.pixels(split).numpy(), Preprocessing.from_spec(data.preprocessing()))
            npz = scratch / f"eval-{len(evals)}.npz"
            np.savez(npz, x=x, y=split.labels.numpy())
            evals[key] = (npz, data.fingerprint)
        return evals[key]

    fid = cfg.fidelity
    fid_inputs: dict[str, dict[str, Any]] = {}  # data settings -> the child's fidelity spec and what the parent keeps

    def fidelity_set(vdata: DataInputs) -> dict[str, Any] | None:
        """Corrupted copies and saliency images of a seeded subset of the accuracy split, made once per data set."""
        if fid is None or (fid.robustness is None and fid.saliency is None and not fid.profile_runs):
            return None
        key = sha256_json(recorded(vdata))
        if key not in fid_inputs:
            from edgeres.fidelity.corruptions import corrupted_set
            from edgeres.fidelity.summary import set_labels

            t0 = time.perf_counter()
            data = ctx.data_of(vdata)
            split = data.split(cfg.accuracy_split)
            n = len(fid_inputs)
            spec: dict[str, Any] = {}
            kept: dict[str, Any] = {}
            if fid.robustness is not None:
                rob = fid.robustness
                idx = data.subset_indices(split, rob.images, vdata.seed)
                raw = data.raw_images(split, idx)
                sets = corrupted_set(raw, list(rob.corruptions), list(rob.severities), seed=vdata.seed)
                x_path, y_path = scratch / f"corrupted-{n}.npy", scratch / f"corrupted-{n}-labels.npy"
                np.save(x_path, np.concatenate([raw.numpy()[None], sets]))
                np.save(y_path, split.labels[idx].numpy())
                spec["robustness"] = {
                    "x": str(x_path),
                    "y": str(y_path),
                    "mean": list(data.mean),
                    "std": list(data.std),
                    "labels": set_labels(list(rob.corruptions), list(rob.severities)),
                }
                kept["robustness_images"] = int(idx.numel())
            if fid.saliency is not None:
                idx = data.subset_indices(split, fid.saliency.images, vdata.seed)
                raw = data.raw_images(split, idx)
                x_path = scratch / f"saliency-{n}.npy"
                np.save(x_path, data.normalize(raw).numpy())
                spec["saliency"] = {"x": str(x_path), "grid": fid.saliency.grid, "classes": None}
                kept["saliency_raw"] = raw.numpy()
                kept["saliency_labels"] = split.labels[idx].tolist()
            if fid.layerwise is not None:
                idx = data.subset_indices(split, fid.layerwise.images, vdata.seed)
                kept["layer_images"] = scratch / f"layerwise-{n}.npy"
                np.save(kept["layer_images"], data.normalize(data.raw_images(split, idx)).numpy())
            if fid.profile_runs:
                spec["profile"] = {"runs": fid.profile_runs}
            kept["prepare_s"] = round(time.perf_counter() - t0, 3)
            fid_inputs[key] = {"spec": spec, **kept}
        return fid_inputs[key]

    baseline = ctx.inputs.baseline
    order = [baseline, *(v for v in ctx.inputs.order if v != baseline)]
    rows: list[dict[str, Any]] = []
    base_preds: dict[str, Any] = {}
    base_fid: dict[str, tuple[dict[str, Any], str]] = {}  # runtime -> (baseline's fidelity output, data fingerprint)
    sal_classes: list[int] | None = None  # the classes every engine's saliency explains: the baseline's top-1
    unmeasured: list[dict[str, Any]] = []
    base_engines: dict[str, EngineSpec] = {}  # runtime -> the baseline's engine there (benchmark.paired)
    for vname in order:
        art = ctx.variants[vname]
        vin = ctx.inputs.variants[vname]
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
        npz, fingerprint = eval_set(vin.data)
        fset = fidelity_set(vin.data) if candidates else None
        for runtime in candidates:
            settings, precision = deliverable_settings(art, vin, runtime)
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
                "threads": vin.threads,
                "data": str(npz),
                "batch": _batch_size(art),
                "settings": settings.to_dict(),
                "latency": cfg.latency.model_dump(),
                "offline": cfg.offline.model_dump() if cfg.offline else None,
            }
            if fset is not None:
                fspec = json.loads(json.dumps(fset["spec"]))
                if "saliency" in fspec:
                    fspec["saliency"]["classes"] = sal_classes
                spec["fidelity"] = fspec
            measured = measure_artifact(spec, isolate=cfg.isolate)
            faults.point("benchmark:variant")
            preds = np.asarray(measured.pop("predictions"))
            fmeasured = measured.pop("fidelity", None)
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
            if fmeasured is not None and fset is not None and fid is not None:
                if vname == baseline:
                    base_fid[runtime] = (fmeasured, fingerprint)
                    if sal_classes is None and "saliency" in fmeasured:
                        sal_classes = fmeasured["saliency"]["classes"]
                # Against the baseline on the same runtime, else on the runtime it ran first on; the baseline itself
                # on a second runtime against its first (FP32 against itself through another runtime).
                first_rt = next(iter(base_fid), None)
                if vname == baseline:
                    ref_rt = first_rt if first_rt != runtime else None
                else:
                    ref_rt = runtime if runtime in base_fid else first_rt
                ref_fid = base_fid.get(ref_rt) if ref_rt is not None else None
                ref = ref_fid[0] if ref_fid is not None and ref_fid[1] == fingerprint else None
                add_fidelity(ctx, fid, row, fmeasured, ref, fset, lineage_onnx(ctx, baseline), lineage_onnx(ctx, vname))
            if cfg.paired is not None:
                engine = EngineSpec(runtime, str(art.primary_path), art.format, settings.to_dict(), label=vname)
                if vname == baseline:
                    base_engines.setdefault(runtime, engine)
                elif base_engines:
                    against = base_engines.get(runtime) or next(iter(base_engines.values()))
                    row["paired"] = paired_row(against, engine, npz, cfg.paired, vin.threads, ctx.reporter.log)
            rows.append(row)
            lat = row["latency"]
            ctx.reporter.log(
                f"{vname} on {runtime}: top-1 {acc['top1']:.4f}, p50 {lat['p50_ms']:.2f} ms, "
                f"peak RSS {row['memory']['peak_rss_mb']} MB" + ("" if lat["valid"] else " (latency run INVALID)")
            )
    report = {
        "schema": REPORT_SCHEMA,
        "recipe": ctx.inputs.recipe,
        # What this report was measured from: the hash of the benchmark's inputs object (its cache key's core).
        "inputs_sha256": sha256_json(keyed(ctx.inputs)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(ctx.inputs.threads),
        "data": {
            "type": ctx.inputs.data.config.type,
            "fingerprint": eval_set(ctx.inputs.data)[1],
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
                "stages": ctx.inputs.variants[name].stages,
                "artifact_sha256": art.content_sha256,
            }
            for name, art in ctx.variants.items()
        },
        "fidelity": fidelity_report(fid, fid_inputs, rows),
        "stages": stage_rows(ctx.lineage, {v: vin.stages for v, vin in ctx.inputs.variants.items()}),
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
