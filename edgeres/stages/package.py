"""Stage `package`: a deploy bundle per variant, after the benchmark, carrying the figures it measured.

The bundle (edgeres.bundle.pack) holds the variant's compiled deliverable, the ONNX it was compiled from, labels,
golden self-test data and one manifest: sha256 and size of every file, versions, the target and engine facts, the
input specification, class names, the report's figures for this variant and the hash of the benchmark's inputs.
Its cache key hashes the report, so new measurements make a new bundle. Golden logits come from the engine itself,
loaded with its manifest's settings through the same runner as the benchmark; where this host cannot run the engine
(a TensorRT device kit, bf16 on a CPU without it) from ONNX Runtime on the source ONNX, with a tolerance that allows
for it.
Signing is a separate step (`edgeres sign`): a signing key never enters a build.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

from edgeres.artifact import Artifact
from edgeres.bundle.pack import Golden, engine_files, golden_set, input_description, write_bundle
from edgeres.config import PackageStage
from edgeres.deps import available, require
from edgeres.errors import StageError
from edgeres.inputs import PackageInputs
from edgeres.preprocess import Preprocessing, model_input
from edgeres.runtimes import NATIVE, open_runner
from edgeres.runtimes.base import MANIFEST
from edgeres.runtimes.settings import RuntimeSettings, settings_from_manifest
from edgeres.stages.base import SCRATCH, StageContext, StageOutput

BUNDLE = "bundle.tar"


def resize_rule(data: Any, height: int, width: int) -> dict[str, Any]:
    """How the images were brought to the model's size when they were decoded (a device must do the same)."""
    if data.type == "digits":
        how = "bilinear interpolation (align_corners=False) of the 8x8 digit, grey replicated to RGB"
    elif data.type == "imagefolder" and data.image_size is not None:
        how = "bilinear resize with antialiasing (torchvision) of the decoded RGB image, aspect ratio not kept"
    else:
        how = "none: the images already have this size"
    return {"height": height, "width": width, "method": how}


def measured_figures(report: dict[str, Any], variant: str, report_sha256: str) -> dict[str, Any]:
    """This variant's rows of the report (accuracy, latency, memory, cold start), and the host they were taken on."""
    keep = ("runtime", "runtime_version", "precision", "accuracy", "cold_start", "latency", "offline", "memory")
    rows = [{k: r.get(k) for k in keep} for r in report.get("results", []) if r.get("variant") == variant]
    return {
        "report_sha256": report_sha256,
        "environment": report.get("environment"),
        "baseline": report.get("baseline"),
        "results": rows,
        "unmeasured": [u for u in report.get("unmeasured", []) if u.get("variant") == variant],
    }


def ship_onnx(include_onnx: bool | str, fmt: str) -> bool:
    """Whether the bundle carries the source ONNX: as the recipe says, or (auto) only beside a TensorRT engine. A kit
    carries its own ONNX, so never a second copy."""
    if fmt == "tensorrt-kit":
        return False
    return fmt == "tensorrt" if include_onnx == "auto" else bool(include_onnx)


def _logits_fn(runtime: str, path: Any, fmt: str, settings: RuntimeSettings | None, batch: int) -> Any:
    np = require("numpy")

    def run(x: Any) -> Any:
        with open_runner(runtime, path, fmt=fmt, threads=1, settings=settings) as runner:
            return np.concatenate([runner.infer(x[i : i + batch]) for i in range(0, len(x), batch)])

    return run


def run(ctx: StageContext[PackageInputs], cfg: PackageStage, inp: Artifact) -> StageOutput:
    if ctx.report is None or inp.stage_type != "compile":
        raise StageError(f"package needs a compiled engine and the benchmark's report; got a {inp.format} artifact")
    manifest = json.loads((inp.path / MANIFEST).read_text(encoding="utf-8"))
    spec = json.loads((inp.path / "model.json").read_text(encoding="utf-8"))
    inputs = ctx.inputs
    lineage = ctx.lineage.get(inputs.variant, [])
    upstream = [a for a in lineage if a.format == "onnx" and a.stage_type in ("export", "quantize")]
    if not upstream:
        raise StageError(f"variant {inputs.variant} has no ONNX before compile; a bundle ships the engine's ONNX")
    source = upstream[-1]
    report_art = ctx.report
    report = json.loads(report_art.primary_path.read_text(encoding="utf-8"))

    target = inputs.target
    pre = Preprocessing.from_spec(spec["preprocessing"])
    fmt = inp.format
    input_meta = inp.metadata.get("metrics", {}).get("input") or {}
    shape = input_meta.get("shape") or ["batch", 3, pre.height, pre.width]
    batch = 64 if isinstance(shape[0], str) else 1  # a fixed-batch engine takes one image at a time
    is_kit = fmt == "tensorrt-kit"
    settings = settings_from_manifest(manifest)
    unsupported = None if is_kit or settings is None else settings.unsupported_reason()
    if is_kit or unsupported is not None or fmt not in NATIVE:
        require("onnxruntime", purpose="compute golden logits from the source ONNX")
        why = unsupported or "a TensorRT device kit has no engine on this host"
        reference = f"ONNX Runtime fp32 on the source ONNX ({why}); the engine itself may differ within the tolerance"
        logits_of = _logits_fn("onnxruntime", source.primary_path, "onnx", RuntimeSettings("onnxruntime"), batch)
        exact = False
    else:
        runtime = NATIVE[fmt]
        logits_of = _logits_fn(runtime, inp.primary_path, fmt, settings, batch)
        precision = manifest.get("precision")
        reference = f"the engine on {runtime} {manifest.get('runtime_version')} ({precision}) on {inputs.host['cpu']}"
        exact = precision == "fp32"
    test = ctx.data.split("test")
    n = min(len(test), 64)
    images = ctx.data.pixels(test, n).numpy()
    golden: Golden = golden_set(
        logits_of,
        images,
        model_input(images, pre),
        count=min(cfg.golden.images, n),
        exact=exact,
        max_abs_diff=cfg.golden.max_abs_diff,
        reference=reference,
    )
    rows = measured_figures(report, inputs.variant, report_art.files[report_art.primary])
    classes = [str(c) for c in spec["preprocessing"]["classes"]]
    info = {
        "version": cfg.version,
        "name": report.get("recipe"),
        "variant": inputs.variant,
        "inputs_sha256": report.get("inputs_sha256"),
        "target": {"name": inputs.target_name, **target.model_dump(mode="json")},
        "engine": {
            "format": fmt,
            "runtime": target.runtime,
            "runtime_version": manifest.get("runtime_version"),
            "precision": manifest.get("precision"),
            "runtime_settings": manifest.get("runtime_settings"),
            "primary": manifest["engine"],
            "files": engine_files(fmt, manifest),
            # The host compile ran on: a CPU engine optimised at level 'all' needs its instruction sets.
            "built_on": inp.metadata.get("host"),
            "tensorrt": manifest.get("settings") if target.runtime == "tensorrt" else None,
        },
        "model": {"arch": spec.get("arch"), "num_classes": spec.get("num_classes"), "pruned": "channels" in spec},
        "input": input_description(
            input_meta.get("name", "input"), shape, pre, resize_rule(inputs.data.config, pre.height, pre.width)
        ),
        "output": {"name": "logits", "shape": [shape[0], len(classes)], "dtype": "float32", "softmax": "not applied"},
        "classes": classes,
        "measured": rows,
    }
    staging = ctx.workdir / SCRATCH / "bundle"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = sorted(inp.deliverables())
    written = write_bundle(
        ctx.workdir / BUNDLE,
        staging,
        deliverable=inp.path,
        files=files,
        source_onnx=source.primary_path if ship_onnx(cfg.include_onnx, fmt) else None,
        info=info,
        golden=golden,
    )
    size = (ctx.workdir / BUNDLE).stat().st_size
    ctx.reporter.log(
        f"package {inputs.variant}: {BUNDLE} version {cfg.version}, {len(written['files']) + 1} files, "
        f"{size / 1e6:.1f} MB"
        + ("" if available("model_signing") else "; sign it with `edgeres sign` (needs the `sign` extra)")
    )
    return StageOutput(
        format="bundle",
        primary=BUNDLE,
        deliverables=[BUNDLE],
        metrics={
            "version": cfg.version,
            "bytes": size,
            "files": sorted(written["files"]),
            "golden": {k: written["golden"][k] for k in ("count", "max_abs_diff", "reference", "split_indices")},
        },
    )
