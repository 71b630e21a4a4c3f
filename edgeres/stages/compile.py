"""Stage `compile`: the deployable engine for the recipe's target, with a manifest beside it.

- cpu-onnxruntime: the ONNX with ONNX Runtime's graph optimisations applied and saved (`model.ort.onnx`), so the
  device loads it without re-optimising.
- cpu-openvino: OpenVINO IR (`model.xml` + `model.bin`), converted from the ONNX.
- nvidia-gpu / jetson-orin (TensorRT): on a host with TensorRT and a GPU, the engine is built in a child process;
  elsewhere (the normal case on a build server or laptop) a device build kit is written instead, whose script builds
  and measures the engine on the device with the same code.

`manifest.json` records the engine's sha256, the source ONNX's, the runtime version, the settings and the facts the
engine depends on; the loader checks it before use.
"""

from __future__ import annotations

import platform
import shutil
from typing import Any

from edgeres.artifact import Artifact, sha256_file, write_json_atomic
from edgeres.deps import require
from edgeres.errors import StageError
from edgeres.recipe import CompileStage
from edgeres.runtimes.base import MANIFEST
from edgeres.stages.base import StageContext, StageOutput
from edgeres.targets import Target


def ort_engine_from_onnx(ctx: StageContext, cfg: CompileStage, inp: Artifact) -> tuple[str, str, dict[str, Any]]:
    ort = require("onnxruntime", purpose="compile for an ONNX Runtime target")
    out = ctx.workdir / "model.ort.onnx"
    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[cfg.onnxruntime.optimization_level]
    opts.optimized_model_filepath = str(out)
    opts.intra_op_num_threads = ctx.threads
    ort.InferenceSession(str(inp.primary_path), sess_options=opts, providers=["CPUExecutionProvider"])
    settings = {"optimization_level": cfg.onnxruntime.optimization_level, "providers": ["CPUExecutionProvider"]}
    return "model.ort.onnx", "onnx", {"runtime": "onnxruntime", "runtime_version": ort.__version__, **settings}


def openvino_ir_from_onnx(ctx: StageContext, cfg: CompileStage, inp: Artifact) -> tuple[str, str, dict[str, Any]]:
    ov = require("openvino", purpose="compile for an OpenVINO target")
    model = ov.convert_model(str(inp.primary_path))
    ov.save_model(model, str(ctx.workdir / "model.xml"), compress_to_fp16=cfg.openvino.fp16_weights)
    settings = {"hint": cfg.openvino.hint, "fp16_weights": cfg.openvino.fp16_weights, "device": "CPU"}
    return "model.xml", "openvino", {"runtime": "openvino", "runtime_version": ov.get_version(), **settings}


def tensorrt_from_onnx(
    ctx: StageContext, cfg: CompileStage, inp: Artifact, target: Target
) -> tuple[str, str, dict[str, Any]]:
    """Build on a TensorRT host, or write the device build kit where TensorRT or a GPU is absent."""
    from edgeres.tensorrt import compile_for_target

    return compile_for_target(ctx, cfg, inp, target)


def run(ctx: StageContext, cfg: CompileStage, inp: Artifact) -> StageOutput:
    target = ctx.recipe.target_spec()
    if target.runtime == "onnxruntime":
        primary, fmt, info = ort_engine_from_onnx(ctx, cfg, inp)
    elif target.runtime == "openvino":
        primary, fmt, info = openvino_ir_from_onnx(ctx, cfg, inp)
    elif target.runtime == "tensorrt":
        primary, fmt, info = tensorrt_from_onnx(ctx, cfg, inp, target)
    else:  # the Target model allows nothing else; a new runtime needs a branch here
        raise StageError(f"target {ctx.recipe.target} has runtime {target.runtime}, which compile does not handle")
    spec_path = inp.path / "model.json"
    if spec_path.is_file() and not (ctx.workdir / "model.json").exists():
        shutil.copyfile(spec_path, ctx.workdir / "model.json")
    files = sorted(p.name for p in ctx.workdir.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {
        "schema": "edgeres.manifest/1",
        "target": ctx.recipe.target,
        "target_spec": target.model_dump(mode="json"),
        "engine": primary,
        "format": fmt,
        "sha256": {name: sha256_file(ctx.workdir / name) for name in files},
        "source_onnx_sha256": inp.files[inp.primary],
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
            "input": inp.metadata.get("metrics", {}).get("input"),
            **info,
        },
    )
