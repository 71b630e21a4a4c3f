"""Stage `compile`: the deployable engine for the recipe's target, with a manifest beside it.

- cpu-onnxruntime: the ONNX with ONNX Runtime's graph optimisations applied and saved (`model.ort.onnx`), so the
  device loads it without re-optimising.
- cpu-openvino: OpenVINO IR (`model.xml` + `model.bin`), converted from the ONNX.
- nvidia-gpu / jetson-orin (TensorRT): on a host with TensorRT and a GPU, the engine is built in a child process;
  elsewhere (the normal case on a build server or laptop) a device build kit is written instead, whose script builds
  and measures the engine on the device with the same code. An INT8 engine's float parts run in the precision the
  quantize stage cast them to (`float_islands` in the manifest; its precision reads int8+fp16 then).

`manifest.json` records the engine's sha256, the source ONNX's, the runtime version, the settings and the facts the
engine depends on; the loader checks it before use.
"""

from __future__ import annotations

import platform
import shutil
from typing import Any

from edgeres import faults
from edgeres.artifact import Artifact, sha256_file, write_json_atomic
from edgeres.deps import require
from edgeres.errors import StageError
from edgeres.recipe import CompileStage
from edgeres.runtimes.base import MANIFEST
from edgeres.runtimes.settings import RuntimeSettings, precision_label, settings_for
from edgeres.stages.base import StageContext, StageOutput
from edgeres.targets import Target


def ort_engine_from_onnx(
    ctx: StageContext, cfg: CompileStage, inp: Artifact, settings: RuntimeSettings
) -> tuple[str, str, dict[str, Any]]:
    ort = require("onnxruntime", purpose="compile for an ONNX Runtime target")
    from edgeres.runtimes.onnxruntime import session_options

    out = ctx.workdir / "model.ort.onnx"
    opts = session_options(ort, settings, ctx.threads)
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(str(inp.primary_path), sess_options=opts, providers=["CPUExecutionProvider"])
    info = {"optimization_level": settings.ort_optimization_level, "providers": ["CPUExecutionProvider"]}
    return "model.ort.onnx", "onnx", {"runtime": "onnxruntime", "runtime_version": ort.__version__, **info}


def openvino_ir_from_onnx(
    ctx: StageContext, cfg: CompileStage, inp: Artifact, settings: RuntimeSettings
) -> tuple[str, str, dict[str, Any]]:
    """The IR, and the precision OpenVINO compiles it to here with the shipped settings (checked where this CPU can
    run that precision; the IR itself is portable, so a bf16 engine can be built on a host without bf16)."""
    ov = require("openvino", purpose="compile for an OpenVINO target")
    from edgeres.runtimes.settings import check_openvino_precision

    model = ov.convert_model(str(inp.primary_path))
    ov.save_model(model, str(ctx.workdir / "model.xml"), compress_to_fp16=cfg.openvino.fp16_weights)
    info: dict[str, Any] = {"hint": settings.openvino_hint, "fp16_weights": cfg.openvino.fp16_weights, "device": "CPU"}
    info["openvino_config"] = settings.openvino_config(ctx.threads)
    unsupported = settings.unsupported_reason()
    if unsupported is None:
        compiled = ov.Core().compile_model(str(ctx.workdir / "model.xml"), "CPU", settings.openvino_config(ctx.threads))
        info["inference_precision_here"] = check_openvino_precision(compiled, settings)
    else:
        info["inference_precision_here"] = None
        info["not_checked_here"] = unsupported
        ctx.reporter.log(f"compile: the IR is built, but this host cannot run it as asked: {unsupported}")
    return "model.xml", "openvino", {"runtime": "openvino", "runtime_version": ov.get_version(), **info}


def tensorrt_from_onnx(
    ctx: StageContext, cfg: CompileStage, inp: Artifact, target: Target, settings: RuntimeSettings
) -> tuple[str, str, dict[str, Any]]:
    """Build on a TensorRT host, or write the device build kit where TensorRT or a GPU is absent."""
    from edgeres.tensorrt import compile_for_target

    return compile_for_target(ctx, cfg, inp, target, float_precision=settings.precision)


def run(ctx: StageContext, cfg: CompileStage, inp: Artifact) -> StageOutput:
    target = ctx.recipe.target_spec()
    settings = settings_for(ctx.recipe)
    if target.runtime == "onnxruntime":
        primary, fmt, info = ort_engine_from_onnx(ctx, cfg, inp, settings)
    elif target.runtime == "openvino":
        primary, fmt, info = openvino_ir_from_onnx(ctx, cfg, inp, settings)
    elif target.runtime == "tensorrt":
        primary, fmt, info = tensorrt_from_onnx(ctx, cfg, inp, target, settings)
    else:  # the Target model allows nothing else; a new runtime needs a branch here
        raise StageError(f"target {ctx.recipe.target} has runtime {target.runtime}, which compile does not handle")
    faults.point("compile:written")
    spec_path = inp.path / "model.json"
    if spec_path.is_file() and not (ctx.workdir / "model.json").exists():
        shutil.copyfile(spec_path, ctx.workdir / "model.json")
    files = sorted(p.name for p in ctx.workdir.iterdir() if p.is_file() and p.name != MANIFEST)
    upstream = inp.metadata.get("metrics", {})
    quantized = upstream.get("precision") == "int8"
    precision = precision_label(quantized=quantized, settings=settings)
    if target.runtime == "tensorrt" and quantized:
        # Strongly typed: an INT8 engine's float parts run in the ONNX's own types, which quantize wrote.
        info["float_islands"] = upstream.get("float_islands", "fp32")
        precision = "int8" if info["float_islands"] == "fp32" else f"int8+{info['float_islands']}"
    manifest = {
        "schema": "edgeres.manifest/1",
        "target": ctx.recipe.target,
        "target_spec": target.model_dump(mode="json"),
        "engine": primary,
        "format": fmt,
        "sha256": {name: sha256_file(ctx.workdir / name) for name in files},
        "source_onnx_sha256": inp.files[inp.primary],
        "precision": precision,
        # What every runner loads this engine with (runtimes.settings): measured as it ships.
        "runtime_settings": settings.to_dict(),
        "built_on": {"machine": platform.machine(), "system": platform.system()},
        **info,
    }
    write_json_atomic(ctx.workdir / MANIFEST, manifest)
    ctx.reporter.log(f"compile for {ctx.recipe.target}: {primary} ({fmt})")
    return StageOutput(
        format=fmt,
        primary=primary,
        deliverables=[*files, MANIFEST],
        metrics={
            "target": ctx.recipe.target,
            "runtime": target.runtime,
            "engine": primary,
            "precision": precision,
            "input": inp.metadata.get("metrics", {}).get("input"),
            **info,
        },
    )
