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
- QAT (`qat:`): NNCF on the torch model upstream of export, trained a few epochs, exported to the same Q/DQ ONNX and
  judged the same way; `when: always`, or only when plain PTQ misses the budget (then before keeping layers FP32).
"""

from __future__ import annotations

import time
from typing import Any

from edgeres.artifact import Artifact, write_bytes_atomic
from edgeres.deps import require
from edgeres.errors import DataError, StageError
from edgeres.measure import measure_accuracy, p50_ms
from edgeres.models import evaluate as torch_evaluate
from edgeres.models import load_model
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


def quantization_aware_training(
    ctx: StageContext, cfg: QuantizeStage, items: list[Any], symmetric: bool, fp32_onnx: Any
) -> tuple[Any, dict[str, Any]]:
    """QAT on the torch model the export stage read; returns the Q/DQ ONNX and what the sidecar records."""
    torch = require("torch", purpose="quantization-aware training")
    from edgeres import qat

    assert cfg.qat is not None
    if ctx.torch_source is None:
        raise StageError("QAT needs the torch model upstream of export, and the pipeline handed none (a bug)")
    torch.set_num_threads(ctx.threads)
    torch.manual_seed(ctx.seed)
    model, spec = load_model(ctx.torch_source.path)
    folded = qat.fold_batchnorm(model)
    teacher = qat.teacher_of(model, cfg.qat)
    ctx.reporter.log(f"QAT: {folded} BatchNorms folded, NNCF quantizers initialised on {len(items)} calibration images")
    qmodel = qat.insert_quantizers(model, items, symmetric=symmetric, fast_bias_correction=cfg.fast_bias_correction)
    info = qat.train(ctx, qmodel, cfg.qat, teacher)
    info["folded_batchnorm"] = folded
    # The fake-quantized torch model's accuracy, beside the runtime's (added by the caller): the gap between them is
    # what "it was fine in training" hides.
    info["torch_val_top1"] = torch_evaluate(qmodel, ctx.data.batches(ctx.data.val, EVAL_BATCH))["top1"]
    export_cfg = next(s for s in ctx.recipe.chain(ctx.variant) if s.type == "export")
    path = ctx.workdir / SCRATCH / "qat-raw.onnx"
    proto = qat.export(qmodel, export_cfg, fp32_onnx, path, tuple(spec["input_shape"]))
    return proto, info


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
    budget = cfg.max_accuracy_drop
    tries: dict[str, float] = {}  # method -> val drop, for the failure message

    def judge(model: Any, name: str, method: str) -> tuple[Any, Any, dict[str, Any], Any, float]:
        """Write the quantized model (int8 for TensorRT targets) and measure its val top-1 on the runtime."""
        converted = signed_from_unsigned(model) if target.qdq_rules == "tensorrt" else 0
        path = scratch / name
        write_bytes_atomic(path, model.SerializeToString())
        q_val, q_val_pred = evaluate(ctx, path, "val", runtime)
        drop = fp32_val["top1"] - q_val["top1"]
        tries[method] = drop
        label = {"ptq": "PTQ", "qat": "QAT"}.get(method, "PTQ with layers in FP32")
        ctx.reporter.log(
            f"{label} on {runtime}: val top-1 {fp32_val['top1']:.4f} -> {q_val['top1']:.4f} (drop {100 * drop:.2f} pts)"
        )
        return path, converted, q_val, q_val_pred, drop

    fp32_val, fp32_val_pred = evaluate(ctx, inp.primary_path, "val", runtime)
    seconds: dict[str, float] = {}
    method, ptq_path, qmodel, qat_info = "ptq", None, None, None
    kept_fp32: list[str] = []
    if cfg.qat is None or cfg.qat.when == "if-ptq-misses":
        ctx.reporter.log(f"PTQ with NNCF on {len(items)} calibration images (val subset {calib_digest[:12]})")
        t0 = time.monotonic()
        qmodel = nncf.quantize(
            fp32, calib, subset_size=len(items), preset=preset, fast_bias_correction=cfg.fast_bias_correction
        )
        seconds["ptq"] = round(time.monotonic() - t0, 1)
        q_path, converted, q_val, q_val_pred, drop = judge(qmodel, "ptq.onnx", "ptq")
        ptq_path = q_path

    if cfg.qat is not None and (cfg.qat.when == "always" or (budget is not None and drop > budget)):
        if ptq_path is not None and budget is not None:
            ctx.reporter.log(f"drop {100 * drop:.2f} pts exceeds max_accuracy_drop {100 * budget:g}: QAT")
        t0 = time.monotonic()
        qat_model, qat_info = quantization_aware_training(ctx, cfg, items, symmetric, fp32)
        seconds["qat"] = round(time.monotonic() - t0, 1)
        qmodel, method = qat_model, "qat"
        q_path, converted, q_val, q_val_pred, drop = judge(qmodel, "qat.onnx", "qat")
        qat_info["runtime_val_top1"] = q_val["top1"]

    if budget is not None and drop > budget:
        ctx.reporter.log(
            f"drop {100 * drop:.2f} pts exceeds max_accuracy_drop {100 * budget:g}: "
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
            max_drop=budget,
            drop_type=nncf.DropType.ABSOLUTE,
            preset=preset,
            subset_size=len(items),
            fast_bias_correction=cfg.fast_bias_correction,
        )
        seconds["accuracy_control"] = round(time.monotonic() - t1, 1)
        method = "ptq+accuracy-control"
        q_path, converted, q_val, q_val_pred, drop = judge(qmodel, "ptq-ac.onnx", method)
        _, kept_fp32 = float_layers(qmodel)
        ctx.reporter.log(f"accuracy control: val drop {100 * drop:.2f} pts with {len(kept_fp32)} layers in FP32")
        if drop > budget:
            reached = ", ".join(f"{m} {100 * d:.2f}" for m, d in tries.items())
            raise StageError(
                f"INT8 could not be held within max_accuracy_drop {100 * budget:g} pts on val: the best reached "
                f"is {100 * min(tries.values()):.2f} pts (drop per method, pts: {reached}; accuracy control kept "
                f"{len(kept_fp32)} layers in FP32). Raise the budget, calibrate on more images (calibration_size), "
                + ("train longer with QAT (qat.epochs), " if cfg.qat else "try QAT (qat:), ")
                + "or train longer before quantizing"
            )
    rules = check_rules(qmodel, target.qdq_rules, exempt=kept_fp32)
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
    if ptq_path is not None and q_path != ptq_path:  # what QAT or keeping layers in FP32 gives, against PTQ
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
            "qat": qat_info,
            "seconds": seconds,
            "input": inp.metadata.get("metrics", {}).get("input"),
        },
    )
