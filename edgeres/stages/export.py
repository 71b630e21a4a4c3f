"""Stage `export`: torch model -> ONNX, with the exporter pinned, checked and compared against torch.

The exporter is chosen explicitly (torch's default changed to dynamo in 2.9); weights are embedded (no external
data: a ResNet is far below ONNX's 2 GB limit, and one file is what ships). The graph passes `onnx.checker` (full
check) and strict shape inference, carries the preprocessing it expects in its metadata, and its logits are compared
with torch's on real val images through ONNX Runtime: a parity failure fails the stage.
"""

from __future__ import annotations

import json
from typing import Any

from edgeres import __version__, faults
from edgeres.artifact import Artifact, write_bytes_atomic
from edgeres.config import ExportStage
from edgeres.deps import require
from edgeres.errors import StageError
from edgeres.inputs import ExportInputs
from edgeres.models import load_model
from edgeres.runtimes import open_runner
from edgeres.runtimes.settings import RuntimeSettings
from edgeres.stages.base import SCRATCH, StageContext, StageOutput
from edgeres.torch_to_onnx import INPUT_NAME, onnx_from_torch


def run(ctx: StageContext[ExportInputs], cfg: ExportStage, inp: Artifact) -> StageOutput:
    torch = require("torch", purpose="export to ONNX")
    onnx = require("onnx")
    torch.set_num_threads(ctx.inputs.threads)
    model, spec = load_model(inp.path)
    c, h, w = spec["input_shape"]
    # Batch 2, not 1: the dynamo exporter would specialise a size-1 batch axis to a constant.
    example = torch.zeros(2 if cfg.dynamic_batch else 1, c, h, w)
    scratch = ctx.workdir / SCRATCH
    scratch.mkdir(exist_ok=True)
    raw = scratch / "raw.onnx"
    ctx.reporter.log(f"exporting with the {cfg.exporter} exporter, opset {cfg.opset}")
    try:
        onnx_from_torch(model, example, cfg, raw)
    except Exception as exc:  # exporter failures come in many types; say which exporter and how to switch
        other = "torchscript" if cfg.exporter == "dynamo" else "dynamo"
        raise StageError(
            f"torch.onnx.export ({cfg.exporter}, opset {cfg.opset}) failed: {type(exc).__name__}: {str(exc)[:500]}. "
            f"Try stages.{cfg.id}.exporter={other} or another opset"
        ) from exc

    proto = onnx.load(str(raw), load_external_data=True)
    meta = {
        "edgeres.version": __version__,
        "edgeres.arch": spec["arch"],
        "edgeres.preprocessing": json.dumps(spec["preprocessing"], sort_keys=True),
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name, proto.producer_version = "edgeres", __version__
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise StageError(f"the exported ONNX fails onnx's checker: {str(exc)[:800]}") from exc
    out = ctx.workdir / "model.onnx"
    write_bytes_atomic(out, proto.SerializeToString())
    faults.point("export:written")

    parity = check_parity(ctx, cfg, model, out)
    ctx.reporter.log(
        f"parity on {parity['samples']} val images: max |diff| {parity['max_abs_diff']:.2e}, "
        f"top-1 agreement {parity['top1_agreement']:.4f}"
    )
    if parity["max_abs_diff"] > cfg.parity.max_abs_diff or parity["top1_agreement"] < cfg.parity.min_top1_agreement:
        raise StageError(
            f"the ONNX model disagrees with torch on {parity['samples']} val images: max |logit diff| "
            f"{parity['max_abs_diff']:.3g} (allowed {cfg.parity.max_abs_diff:g}), top-1 agreement "
            f"{parity['top1_agreement']:.4f} (required {cfg.parity.min_top1_agreement:g}). Try the other exporter "
            f"(stages.{cfg.id}.exporter) or report the model"
        )
    (ctx.workdir / "model.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return StageOutput(
        format="onnx",
        primary="model.onnx",
        deliverables=["model.onnx", "model.json"],
        metrics={
            "exporter": cfg.exporter,
            "opset": cfg.opset,
            "input": {"name": INPUT_NAME, "shape": ["batch" if cfg.dynamic_batch else 1, c, h, w]},
            "bytes": out.stat().st_size,
            "parity": parity,
            "val_top1_torch": inp.metadata.get("metrics", {}).get("val_top1"),
        },
    )


def check_parity(ctx: StageContext[ExportInputs], cfg: ExportStage, model: Any, onnx_path: Any) -> dict[str, Any]:
    torch = require("torch")
    np = require("numpy")
    data = ctx.data
    n = min(cfg.parity.samples, len(data.val))
    batch = 64 if cfg.dynamic_batch else 1
    max_diff, agree = 0.0, 0
    # Parity checks the exporter, not the target: FP32 on ONNX Runtime with fixed settings (the target's settings
    # are not read, so the export entry serves every target).
    settings = RuntimeSettings("onnxruntime")
    with (
        open_runner("onnxruntime", onnx_path, fmt="onnx", threads=ctx.inputs.threads, settings=settings) as runner,
        torch.inference_mode(),
    ):
        for x, _ in data.batches(data.val, batch, indices=torch.arange(n)):
            ref = model(x).numpy()
            got = runner.infer(x.numpy())
            max_diff = max(max_diff, float(np.abs(ref - got).max()))
            agree += int((ref.argmax(1) == got.argmax(1)).sum())
    return {"samples": n, "max_abs_diff": max_diff, "top1_agreement": agree / n}
