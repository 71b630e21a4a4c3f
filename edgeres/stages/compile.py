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

import shutil
from typing import Any, Literal

from edgeres import faults
from edgeres.artifact import Artifact, sha256_file, write_json_atomic
from edgeres.config import CompileStage
from edgeres.deps import require
from edgeres.errors import StageError
from edgeres.inputs import CompileInputs
from edgeres.runtimes.base import MANIFEST
from edgeres.runtimes.settings import RuntimeSettings, precision_label
from edgeres.stages.base import StageContext, StageOutput

Ctx = StageContext[CompileInputs]


def ort_engine_from_onnx(
    ctx: Ctx, cfg: CompileStage, inp: Artifact, settings: RuntimeSettings
) -> tuple[str, str, dict[str, Any]]:
    ort = require("onnxruntime", purpose="compile for an ONNX Runtime target")
    from edgeres.runtimes.onnxruntime import session_options

    out = ctx.workdir / "model.ort.onnx"
    opts = session_options(ort, settings, ctx.inputs.threads)
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(str(inp.primary_path), sess_options=opts, providers=["CPUExecutionProvider"])
    info = {"optimization_level": settings.ort_optimization_level, "providers": ["CPUExecutionProvider"]}
    return "model.ort.onnx", "onnx", {"runtime": "onnxruntime", "runtime_version": ort.__version__, **info}


def openvino_ir_from_onnx(
    ctx: Ctx, cfg: CompileStage, inp: Artifact, settings: RuntimeSettings
) -> tuple[str, str, dict[str, Any]]:
    """The IR, and the precision OpenVINO compiles it to here with the shipped settings (checked where this CPU can
    run that precision; the IR itself is portable, so a bf16 engine can be built on a host without bf16)."""
    ov = require("openvino", purpose="compile for an OpenVINO target")
    from edgeres.runtimes.settings import check_openvino_precision

    model = ov.convert_model(str(inp.primary_path))
    ov.save_model(model, str(ctx.workdir / "model.xml"), compress_to_fp16=cfg.openvino.fp16_weights)
    info: dict[str, Any] = {"hint": settings.openvino_hint, "fp16_weights": cfg.openvino.fp16_weights, "device": "CPU"}
    # The configuration a runner compiles the IR with, less the thread count, which is the running host's choice.
    info["openvino_config"] = {
        k: v for k, v in settings.openvino_config(ctx.inputs.threads).items() if k != "INFERENCE_NUM_THREADS"
    }
    unsupported = settings.unsupported_reason()
    if unsupported is None:
        compiled = ov.Core().compile_model(
            str(ctx.workdir / "model.xml"), "CPU", settings.openvino_config(ctx.inputs.threads)
        )
        info["inference_precision_here"] = check_openvino_precision(compiled, settings)
    else:
        info["inference_precision_here"] = None
        info["not_checked_here"] = unsupported
        ctx.reporter.log(f"compile: the IR is built, but this host cannot run it as asked: {unsupported}")
    return "model.xml", "openvino", {"runtime": "openvino", "runtime_version": ov.get_version(), **info}


def tensorrt_from_onnx(ctx: Ctx, cfg: CompileStage, inp: Artifact) -> tuple[str, str, dict[str, Any]]:
    """The TensorRT branch: (primary file, format, info for the manifest). With TensorRT and a GPU here (the inputs'
    `device` says so, and the key holds it), builds `engine.plan` (+ its engine manifest and layer info) in a child
    process: format `tensorrt`. Elsewhere writes a device kit into the stage folder: format `tensorrt-kit`, primary
    `build.sh`, which no runtime runs (the engine is measured on the device, into device-report.json). An engine
    without Q/DQ nodes runs in the resolved float precision."""
    np = require("numpy")
    from edgeres.tensorrt.child import build_in_subprocess
    from edgeres.tensorrt.facts import probe_device_facts
    from edgeres.tensorrt.kit import ENGINE, TIMING_CACHE, write_device_kit
    from edgeres.tensorrt.manifest import EngineSettings
    from edgeres.tensorrt.onnx_graph import count_qdq

    inputs = ctx.inputs
    target, float_precision = inputs.target, inputs.settings.precision
    if float_precision not in ("fp32", "fp16"):  # the recipe refuses others for TensorRT targets
        raise StageError(f"TensorRT engines in edgeres are fp32, fp16 or int8; {float_precision} was asked for")
    trt_float: Literal["fp32", "fp16"] = "fp32" if float_precision == "fp32" else "fp16"
    trt_cfg = cfg.tensorrt
    qdq = count_qdq(inp.primary_path)
    dla = trt_cfg.dla_core if trt_cfg.dla_core is not None else (target.tensorrt.dla_core if target.tensorrt else None)
    settings = EngineSettings(
        precision="int8" if qdq else trt_float,
        workspace_mb=trt_cfg.workspace_mb,
        opt_level=trt_cfg.opt_level,
        min_batch=trt_cfg.min_batch,
        opt_batch=trt_cfg.opt_batch,
        max_batch=trt_cfg.max_batch,
        dla_core=dla,
    )
    device = inputs.device or {}
    info: dict[str, Any] = {"runtime": "tensorrt", "settings": settings.to_dict()}
    if device.get("can_build"):
        facts = probe_device_facts(cuda_context=False)
        result = build_in_subprocess(
            inp.primary_path,
            ctx.workdir / ENGINE,
            settings=settings,
            timing_cache=inputs.timing_cache or ctx.workdir / TIMING_CACHE,
            progress=ctx.reporter.log,
            facts=facts,
        )
        manifest = result.manifest
        info.update(
            runtime_version=manifest.tensorrt_version,
            built="here",
            plan=manifest.plan.to_dict(),
            profile=manifest.profile,
            timing_cache=manifest.timing_cache,
            dla_placement=manifest.dla_placement,
        )
        return ENGINE, "tensorrt", info
    kit = inputs.kit
    if kit is None:
        raise StageError("compile has no TensorRT device here and no kit inputs (a bug in edgeres' resolver)")
    data = ctx.data_of(kit.data)
    xs, ys = zip(*data.numpy_batches(data.split("val"), 256, limit=trt_cfg.kit_val_images), strict=True)
    expect: dict[str, Any] = {"name": inputs.target_name, "description": target.description, "device": target.device}
    if target.tensorrt is not None:
        expect["tensorrt_major"] = list(target.tensorrt.major)
    if dla is not None:
        expect["dla_core"] = dla
    calibration = None
    if kit.calibration_size and settings.precision == "int8" and dla is not None:
        # quantize's own calibration images, so the scales the DLA needs beyond the Q/DQ ones come from the same set
        idx, _ = data.calibration_indices(kit.calibration_size, inputs.seed)
        calibration = np.concatenate([x.numpy() for x, _ in data.batches(data.val, 1, indices=idx)])
    write_device_kit(
        ctx.workdir,
        onnx_path=inp.primary_path,
        target=expect,
        settings=settings,
        val_subset=(np.concatenate(xs), np.concatenate(ys)),
        name=kit.recipe,
        variant=kit.variant,
        calibration=calibration,
        calibration_source="quantize's calibration set",
    )
    why = "TensorRT is not installed here" if device.get("trt_version") is None else "no NVIDIA GPU is visible here"
    ctx.reporter.log(
        f"{why}: wrote a device kit; copy models/{kit.variant} from the build output to the device and run "
        "`bash build.sh` there"
    )
    info.update(runtime_version=None, built="kit", reason=why)
    return "build.sh", "tensorrt-kit", info


def run(ctx: Ctx, cfg: CompileStage, inp: Artifact) -> StageOutput:
    target, settings, target_name = ctx.inputs.target, ctx.inputs.settings, ctx.inputs.target_name
    if target.runtime == "onnxruntime":
        primary, fmt, info = ort_engine_from_onnx(ctx, cfg, inp, settings)
    elif target.runtime == "openvino":
        primary, fmt, info = openvino_ir_from_onnx(ctx, cfg, inp, settings)
    elif target.runtime == "tensorrt":
        primary, fmt, info = tensorrt_from_onnx(ctx, cfg, inp)
    else:  # the Target model allows nothing else; a new runtime needs a branch here
        raise StageError(f"target {target_name} has runtime {target.runtime}, which compile does not handle")
    faults.point("compile:written")
    # Checked on this host, so recorded in the sidecar's metrics, not in the manifest (whose bytes are the entry's).
    here: dict[str, Any] = {k: info.pop(k) for k in ("inference_precision_here", "not_checked_here") if k in info}
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
        "target": target_name,
        "target_spec": target.model_dump(mode="json"),
        "engine": primary,
        "format": fmt,
        "sha256": {name: sha256_file(ctx.workdir / name) for name in files},
        "source_onnx_sha256": inp.files[inp.primary],
        "precision": precision,
        # What every runner loads this engine with (runtimes.settings): measured as it ships.
        "runtime_settings": settings.to_dict(),
        "built_on": ctx.inputs.platform,
        **info,
    }
    write_json_atomic(ctx.workdir / MANIFEST, manifest)
    ctx.reporter.log(f"compile for {target_name}: {primary} ({fmt})")
    return StageOutput(
        format=fmt,
        primary=primary,
        deliverables=[*files, MANIFEST],
        metrics={
            "target": target_name,
            "runtime": target.runtime,
            "engine": primary,
            "precision": precision,
            "input": inp.metadata.get("metrics", {}).get("input"),
            **here,
            **info,
        },
    )
