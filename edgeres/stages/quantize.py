"""Stage `quantize`: post-training INT8 quantization of the exported ONNX, held to an accuracy budget.

- Calibration: a seeded subset of the val split (never test), checked for NaN/Inf, emptiness and a set that is one
  constant value before anything runs; its identity is hashed into the sidecar, so one recipe always gives the same
  scales.
- PTQ: NNCF on the ONNX model (the whole calibration subset, in a fixed order).
- Accuracy budget: with `max_accuracy_drop` set and plain PTQ beyond it, NNCF's accuracy control keeps the most
  sensitive layers in FP32 until the drop on val holds; the layers kept are listed, with the latency they cost.
- Target rules: the Q/DQ graph is checked as written. TensorRT targets need signed int8 with zero point 0 (NNCF
  writes uint8 for post-ReLU activations: rewritten here) and per-channel weights; a breach fails the stage naming
  the node. Unquantized residual Adds are reported as a performance warning.
- Accuracy (val and test, top-1 and agreement with FP32) through the target's runtime, not the fake-quantized model.
What this stage does not do yet: quantization-aware training.
"""

from __future__ import annotations

import time
from typing import Any

from edgeres.artifact import Artifact, write_bytes_atomic
from edgeres.deps import require
from edgeres.errors import DataError, StageError
from edgeres.measure import measure_accuracy, p50_ms
from edgeres.qdq import check_rules, float_layers, scales_digest, signed_from_unsigned
from edgeres.recipe import Latency, QuantizeStage
from edgeres.runtimes import open_runner
from edgeres.stages.base import SCRATCH, StageContext, StageOutput

EVAL_BATCH = 64
# Latency of the kept-FP32 layers is measured with a short single-stream run: enough to rank, not to report.
QUICK_LATENCY = Latency(warmup=5, min_queries=30, min_duration_s=0.5, max_duration_s=10.0)


def calibration_batches(ctx: StageContext, size: int) -> tuple[list[Any], str]:
    """The calibration images (numpy, batch 1, in a fixed order) and their identity hash; refuses bad data."""
    np = require("numpy")
    data = ctx.data
    idx, digest = data.calibration_indices(size, ctx.seed)
    if idx.numel() == 0:
        raise DataError("the calibration subset is empty: the val split has no images; check data.val_fraction")
    items = [x.numpy() for x, _ in data.batches(data.val, 1, indices=idx)]
    validate_calibration(items, np)
    return items, digest


def validate_calibration(items: list[Any], np: Any) -> None:
    if not items:
        raise DataError("the calibration set is empty; it needs at least one image (data.calibration_size)")
    for i, x in enumerate(items):
        if not np.isfinite(x).all():
            raise DataError(
                f"calibration image {i} holds NaN or Inf values; scales computed from it would be meaningless. "
                "Fix or remove the image (check mean/std and decoding)"
            )
    stacked = np.concatenate(items)
    if float(stacked.std()) == 0.0:
        raise DataError(
            f"all {len(items)} calibration images are the same constant value ({float(stacked.ravel()[0]):g}); "
            "quantization scales need real, varied images from the val split"
        )


def eval_runtime(ctx: StageContext) -> str:
    """Accuracy is measured on the target's runtime; TensorRT targets use ONNX Runtime on this host (said so)."""
    rt = ctx.recipe.target_spec().runtime
    return rt if rt in ("onnxruntime", "openvino") else "onnxruntime"


def evaluate(ctx: StageContext, path: Any, split: str, runtime: str) -> tuple[dict[str, Any], Any]:
    data = ctx.data
    with open_runner(runtime, path, fmt="onnx", threads=ctx.threads) as runner:
        return measure_accuracy(runner, data.numpy_batches(data.split(split), EVAL_BATCH))


def quick_latency(ctx: StageContext, path: Any, runtime: str, samples: list[Any]) -> float:
    return p50_ms(runtime, path, "onnx", samples, QUICK_LATENCY, threads=ctx.threads)


def run(ctx: StageContext, cfg: QuantizeStage, inp: Artifact) -> StageOutput:
    onnx = require("onnx")
    np = require("numpy")
    nncf = require("nncf", purpose="quantize with NNCF")
    target = ctx.recipe.target_spec()
    if "int8" not in target.precisions:
        raise StageError(f"target {ctx.recipe.target} does not run int8 (it runs {', '.join(target.precisions)})")
    size = cfg.calibration_size or ctx.recipe.data.calibration_size
    items, calib_digest = calibration_batches(ctx, size)
    runtime = eval_runtime(ctx)
    scratch = ctx.workdir / SCRATCH
    scratch.mkdir(exist_ok=True)
    fp32 = onnx.load(str(inp.primary_path))
    input_name = fp32.graph.input[0].name
    calib = nncf.Dataset(items, lambda x: {input_name: x})
    symmetric = cfg.preset == "performance" or (cfg.preset == "auto" and target.qdq_rules == "tensorrt")
    preset = nncf.QuantizationPreset.PERFORMANCE if symmetric else nncf.QuantizationPreset.MIXED
    ctx.reporter.log(f"PTQ with NNCF on {len(items)} calibration images (val subset {calib_digest[:12]})")
    t0 = time.monotonic()
    qmodel = nncf.quantize(
        fp32, calib, subset_size=len(items), preset=preset, fast_bias_correction=cfg.fast_bias_correction
    )
    ptq_seconds = time.monotonic() - t0

    def finish(model: Any, name: str) -> tuple[Any, Any]:
        converted = signed_from_unsigned(model) if target.qdq_rules == "tensorrt" else 0
        path = scratch / name
        write_bytes_atomic(path, model.SerializeToString())
        return path, converted

    fp32_val, fp32_val_pred = evaluate(ctx, inp.primary_path, "val", runtime)
    q_path, converted = finish(qmodel, "ptq.onnx")
    ptq_path = q_path
    q_val, q_val_pred = evaluate(ctx, q_path, "val", runtime)
    drop = fp32_val["top1"] - q_val["top1"]
    ctx.reporter.log(
        f"PTQ on {runtime}: val top-1 {fp32_val['top1']:.4f} -> {q_val['top1']:.4f} (drop {100 * drop:.2f} pts)"
    )
    method, ac_seconds = "ptq", 0.0
    kept_fp32: list[str] = []
    if cfg.max_accuracy_drop is not None and drop > cfg.max_accuracy_drop:
        ctx.reporter.log(
            f"drop {100 * drop:.2f} pts exceeds max_accuracy_drop {100 * cfg.max_accuracy_drop:g}: "
            "accuracy control (keeping the most sensitive layers in FP32)"
        )
        val_items = list(ctx.data.numpy_batches(ctx.data.val, EVAL_BATCH))

        def validate(model: Any, dataset: Any) -> float:
            # NNCF hands the model it is evaluating; accuracy comes from ONNX Runtime on the val split.
            ort = require("onnxruntime")
            sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            correct = total = 0
            for x, y in dataset:
                pred = sess.run(None, {input_name: x})[0].argmax(1)
                correct += int((pred == y).sum())
                total += len(y)
            return correct / max(total, 1)

        t1 = time.monotonic()
        qmodel = nncf.quantize_with_accuracy_control(
            fp32,
            calib,
            nncf.Dataset(val_items),
            validate,
            max_drop=cfg.max_accuracy_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            preset=preset,
            subset_size=len(items),
            fast_bias_correction=cfg.fast_bias_correction,
        )
        ac_seconds = time.monotonic() - t1
        method = "ptq+accuracy-control"
        q_path, converted = finish(qmodel, "ptq-ac.onnx")
        q_val, q_val_pred = evaluate(ctx, q_path, "val", runtime)
        drop = fp32_val["top1"] - q_val["top1"]
        _, kept_fp32 = float_layers(qmodel)
        ctx.reporter.log(f"accuracy control: val drop {100 * drop:.2f} pts with {len(kept_fp32)} layers in FP32")
        if drop > cfg.max_accuracy_drop:
            raise StageError(
                f"INT8 could not be held within max_accuracy_drop {100 * cfg.max_accuracy_drop:g} pts on val: the "
                f"best reached is {100 * drop:.2f} pts with {len(kept_fp32)} layers kept in FP32. Raise the budget, "
                "calibrate on more images (calibration_size), or train longer before quantizing"
            )
    rules = check_rules(qmodel, target.qdq_rules, exempt=kept_fp32 if method != "ptq" else [])
    if rules.errors:
        shown = "\n  ".join(rules.errors[:10])
        raise StageError(
            f"the quantized model breaks the {target.qdq_rules} Q/DQ rules of target {ctx.recipe.target} "
            f"({len(rules.errors)} problems):\n  {shown}"
        )
    test: dict[str, Any] | None = None
    if cfg.report_test:
        fp32_test, fp32_test_pred = evaluate(ctx, inp.primary_path, "test", runtime)
        q_test, q_test_pred = evaluate(ctx, q_path, "test", runtime)
        test = {
            "fp32_top1": fp32_test["top1"],
            "int8_top1": q_test["top1"],
            "drop": fp32_test["top1"] - q_test["top1"],
            "agreement": float(np.mean(q_test_pred == fp32_test_pred)),
        }
    out = ctx.workdir / "model.onnx"
    out.write_bytes(q_path.read_bytes())
    spec = inp.path / "model.json"
    if spec.is_file():
        (ctx.workdir / "model.json").write_bytes(spec.read_bytes())
    samples = [x for x, _ in ctx.data.numpy_batches(ctx.data.val, 1, limit=16)]
    latency = {
        "fp32_p50_ms": quick_latency(ctx, inp.primary_path, runtime, samples),
        "int8_p50_ms": quick_latency(ctx, out, runtime, samples),
    }
    if q_path != ptq_path:  # what keeping layers in FP32 cost, against all-INT8 PTQ
        latency["all_int8_ptq_p50_ms"] = quick_latency(ctx, ptq_path, runtime, samples)
    accuracy = (
        f"test top-1 {test['fp32_top1']:.4f} -> {test['int8_top1']:.4f}, agreement {test['agreement']:.4f}; "
        if test
        else ""
    )
    ctx.reporter.log(
        f"INT8 on {runtime}: {accuracy}p50 {latency['fp32_p50_ms']:.2f} -> {latency['int8_p50_ms']:.2f} ms"
    )
    return StageOutput(
        format="onnx",
        primary="model.onnx",
        deliverables=["model.onnx", "model.json"] if spec.is_file() else ["model.onnx"],
        metrics={
            "method": method,
            "precision": "int8",
            "runtime": runtime,
            "calibration": {"images": len(items), "sha256": calib_digest, "split": "val"},
            "scales_sha256": scales_digest(qmodel),
            "val": {
                "fp32_top1": fp32_val["top1"],
                "int8_top1": q_val["top1"],
                "drop": drop,
                "agreement": float(np.mean(q_val_pred == fp32_val_pred)),
            },
            "test": test,
            "max_accuracy_drop": cfg.max_accuracy_drop,
            "kept_fp32_layers": kept_fp32,
            "unsigned_rewritten_to_int8": converted,
            "rules": rules.to_dict(),
            "quick_latency": latency,
            "seconds": {"ptq": round(ptq_seconds, 1), "accuracy_control": round(ac_seconds, 1)},
            "input": inp.metadata.get("metrics", {}).get("input"),
        },
    )
