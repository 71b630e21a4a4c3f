"""Stage `quantize`: post-training INT8 quantization of the exported ONNX, held to an accuracy budget.

- Calibration: a seeded subset of the val split (never test), checked for NaN/Inf, emptiness and a set that is one
  constant value before anything runs; its identity is hashed into the sidecar, so one recipe always gives the same
  scales.
- PTQ: NNCF on the ONNX model (the whole calibration subset, in a fixed order).
- Accuracy budget: with `max_accuracy_drop` set and plain PTQ beyond it, NNCF's accuracy control keeps the most
  sensitive layers in FP32 until the drop on val holds; the layers kept are listed, with the latency they cost.
- Target rules: the Q/DQ graph is checked as written. TensorRT targets need signed int8 with zero point 0 (NNCF
  writes uint8 for post-ReLU activations: rewritten here) and per-tensor activation scales; a breach fails the stage
  naming the node. Residual Adds get NVIDIA's layout (identity quantized, conv branch not: NNCF's Q/DQ on the
  conv-branch input is dropped so TensorRT fuses Conv + Add); what still differs is reported as a performance warning.
- Float islands (TensorRT targets): a strongly typed INT8 engine runs the graph's non-quantized parts in the ONNX's
  own types, so they are cast here to the compile stage's precision (fp16 by default, as NVIDIA's Model Optimizer
  does; inputs and outputs stay float32). Every candidate is judged, and shipped, as cast.
- Accuracy (val and test, top-1 and agreement with FP32) through the target's runtime, not the fake-quantized model.
- QAT (`qat:`): NNCF on the torch model upstream of export, trained a few epochs, exported to the same Q/DQ ONNX and
  judged the same way; `when: always`, or only when plain PTQ misses the budget (then before keeping layers FP32).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeres import dist, faults
from edgeres.artifact import Artifact, write_bytes_atomic
from edgeres.config import Latency, QuantizeStage
from edgeres.data import test_sealed
from edgeres.deps import require
from edgeres.errors import DataError, StageError
from edgeres.fp16 import fp16_from_fp32
from edgeres.inputs import QuantizeInputs
from edgeres.measure import measure_accuracy, p50_ms
from edgeres.models import evaluate as torch_evaluate
from edgeres.models import load_model
from edgeres.ptq import TargetRewrite, for_target, quantize_ptq, symmetric_activations
from edgeres.qdq import check_rules, float_layers, scales_digest
from edgeres.runtimes import open_runner
from edgeres.runtimes.settings import PrecisionUnsupported, RuntimeSettings
from edgeres.stages.base import SCRATCH, StageContext, StageOutput
from edgeres.training import feed_for

EVAL_BATCH = 64
# Latency of the kept-FP32 layers is measured with a short single-stream run: enough to rank, not to report.
QUICK_LATENCY = Latency(warmup=5, min_queries=30, min_duration_s=0.5, max_duration_s=10.0)


def calibration_batches(ctx: StageContext[QuantizeInputs], size: int) -> tuple[list[Any], str]:
    """The calibration images (numpy, batch 1, in a fixed order) and their identity hash; refuses bad data."""
    np = require("numpy")
    data = ctx.data
    idx, digest = data.calibration_indices(size, ctx.inputs.seed)
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


def float_islands(ctx: StageContext[QuantizeInputs]) -> str:
    """The precision the INT8 model's float parts are written in: for TensorRT targets (strongly typed: the ONNX's
    types are what runs) the compile stage's float precision, fp16 by default; fp32 elsewhere, where the runtime
    decides."""
    if ctx.inputs.target.runtime != "tensorrt":
        return "fp32"
    wanted = ctx.inputs.float_precision
    if wanted not in ("fp32", "fp16"):
        raise StageError(
            f"target {ctx.inputs.target_name} runs TensorRT, whose INT8 engines edgeres builds with float parts in "
            f"fp32 or fp16, and stages.compile.precision asks for {wanted}; set it to fp16 or fp32"
        )
    return wanted


def eval_runtime(ctx: StageContext[QuantizeInputs]) -> str:
    """Accuracy is measured on the target's runtime; TensorRT targets use ONNX Runtime on this host (said so)."""
    rt = ctx.inputs.target.runtime
    return rt if rt in ("onnxruntime", "openvino") else "onnxruntime"


@dataclass
class Candidate:
    """One quantized model and how it was judged on val through the target's runtime."""

    method: str  # ptq | qat | ptq+accuracy-control
    model: Any  # the ONNX ModelProto as written (for TensorRT targets: int8, its float parts cast)
    path: Path
    rewrite: TargetRewrite  # what the target's Q/DQ rules changed (TensorRT targets)
    val: dict[str, Any]
    val_pred: Any
    drop: float
    seconds: float
    kept_fp32: list[str] = field(default_factory=list)
    qat: dict[str, Any] | None = None
    # accuracy control: NNCF's own judgement of the model it returned, and whether that was this very graph
    accepted: dict[str, Any] | None = None


METHOD_LABEL = {"ptq": "PTQ", "qat": "QAT", "ptq+accuracy-control": "PTQ with layers in FP32"}
NEXT_LABEL = {"qat": "QAT", "ptq+accuracy-control": "accuracy control (keeping the most sensitive layers in FP32)"}
SECONDS_KEY = {"ptq": "ptq", "qat": "qat", "ptq+accuracy-control": "accuracy_control"}


def methods(cfg: QuantizeStage) -> list[str]:
    """The methods tried in order until one holds max_accuracy_drop (without a budget, the first is kept): PTQ, QAT
    when PTQ misses (or QAT alone with `qat.when: always`), then accuracy control keeping layers in FP32."""
    first = ["qat"] if cfg.qat is not None and cfg.qat.when == "always" else ["ptq"]
    if cfg.max_accuracy_drop is None:
        return first
    return [*first, *(["qat"] if cfg.qat is not None and first == ["ptq"] else []), "ptq+accuracy-control"]


class Quantization:
    """One run of the stage: the calibration set, the FP32 reference on val and the runtime settings every candidate
    is judged with (those the variant's engine ships with, runtimes.settings), and one method per candidate."""

    def __init__(self, ctx: StageContext[QuantizeInputs], cfg: QuantizeStage, inp: Artifact) -> None:
        onnx = require("onnx")
        self.ctx, self.cfg, self.inp = ctx, cfg, inp
        self.target = ctx.inputs.target
        if "int8" not in self.target.precisions:
            raise StageError(
                f"target {ctx.inputs.target_name} does not run int8 (it runs {', '.join(self.target.precisions)})"
            )
        self.runtime = eval_runtime(ctx)
        self.islands = float_islands(ctx)
        # A TensorRT target is judged on ONNX Runtime as a stand-in (its sidecar says which runtime), with fp32
        # settings: the graph's float16 parts, where cast, run as the ONNX writes them.
        stand_in = self.runtime != self.target.runtime
        self.settings = RuntimeSettings(self.runtime) if stand_in else ctx.inputs.settings
        unsupported = self.settings.unsupported_reason()
        if unsupported is not None:
            raise PrecisionUnsupported(
                f"quantize judges INT8 on {self.runtime} with the settings the variant's engine ships with, and "
                f"{unsupported}. Build on a CPU that has it, or set stages.compile.precision: fp32"
            )
        self.items, self.calib_digest = calibration_batches(ctx, ctx.inputs.calibration_size)
        self.symmetric = symmetric_activations(cfg.preset, self.target.qdq_rules)
        self.scratch = ctx.workdir / SCRATCH
        self.scratch.mkdir(exist_ok=True)
        self.fp32 = onnx.load(str(inp.primary_path))
        if self.islands == "fp16":
            ctx.reporter.log(
                "INT8 for TensorRT: the float (non-quantized) parts are cast to fp16, as the strongly typed engine "
                "runs them (stages.compile.precision fp32 keeps them fp32); accuracy is judged on the cast graph"
            )
        self.fp32_val, self.fp32_val_pred = self.evaluate(inp.primary_path, "val")
        self.announced: list[bool] = []

    def evaluate(self, path: Any, split: str) -> tuple[dict[str, Any], Any]:
        data = self.ctx.data
        return self.accuracy(path, data.numpy_batches(data.split(split), EVAL_BATCH))

    def accuracy(self, path: Any, batches: Any) -> tuple[dict[str, Any], Any]:
        """Top-1/top-5 of the ONNX at `path` over (images, labels) batches, on the runtime and settings judged with."""
        with open_runner(self.runtime, path, fmt="onnx", threads=self.ctx.inputs.threads, settings=self.settings) as r:
            return measure_accuracy(r, batches)

    def shipped(self, model: Any) -> tuple[Any, TargetRewrite]:
        """The graph that ships from a quantizer's output (changed in place): rewritten for the target's Q/DQ rules,
        and with its float parts cast where the target runs them in fp16."""
        rewrite = for_target(model, self.target.qdq_rules)
        if self.islands == "fp16":
            model = fp16_from_fp32(model, source="the quantized model")
        return model, rewrite

    def judge(self, model: Any, method: str, seconds: float, **extra: Any) -> Candidate:
        """Write the quantized model as it ships (see `shipped`) and measure its val top-1 on the runtime."""
        model, rewrite = self.shipped(model)
        path = self.scratch / f"{method}.onnx"
        write_bytes_atomic(path, model.SerializeToString())
        val, val_pred = self.evaluate(path, "val")
        drop = self.fp32_val["top1"] - val["top1"]
        self.ctx.reporter.log(
            f"{METHOD_LABEL[method]} on {self.runtime}: val top-1 {self.fp32_val['top1']:.4f} -> {val['top1']:.4f} "
            f"(drop {100 * drop:.2f} pts)"
        )
        faults.point("quantize:candidate")
        return Candidate(method, model, path, rewrite, val, val_pred, drop, seconds, **extra)

    def ptq(self) -> Candidate:
        self.ctx.reporter.log(
            f"PTQ with NNCF on {len(self.items)} calibration images (val subset {self.calib_digest[:12]})"
        )
        t0 = time.monotonic()
        model = quantize_ptq(
            self.fp32, self.items, symmetric=self.symmetric, fast_bias_correction=self.cfg.fast_bias_correction
        )
        return self.judge(model, "ptq", round(time.monotonic() - t0, 1))

    def qat(self) -> Candidate:
        """QAT on the torch model the export stage read, exported to Q/DQ ONNX like PTQ's."""
        from edgeres import qat

        ctx = self.ctx
        t0 = time.monotonic()
        dist.broadcast(True)  # under torchrun the other ranks wait for this, then train with rank 0
        self.announced.append(True)
        qmodel, info, spec = train_qat(ctx, self.cfg, self.items, self.symmetric, self.scratch)
        assert ctx.inputs.qat is not None  # resolved where the config has qat
        proto = qat.export(
            qmodel, ctx.inputs.qat.export, self.fp32, self.scratch / "qat-raw.onnx", tuple(spec["input_shape"])
        )
        cand = self.judge(proto, "qat", round(time.monotonic() - t0, 1), qat=info)
        info["runtime_val_top1"] = cand.val["top1"]
        return cand

    def accuracy_control(self) -> Candidate:
        """NNCF's accuracy control: the most sensitive layers stay FP32 until the val drop holds. NNCF hands each
        model it evaluates; it is judged exactly as it would ship, on the target's runtime with the shipped settings,
        like every candidate. NNCF evaluates its candidates with float weights behind QuantizeLinear and folds them
        into int8 initializers only in the model it returns: each candidate is folded the same way here first (for
        a TensorRT target the fp16 cast would otherwise round the float weights before quantizing them, and a CPU
        runtime may run such weights another way), so the graph NNCF accepted is byte for byte the one that ships,
        and the stage records whether it was and what NNCF measured on it."""
        nncf = require("nncf")
        onnx = require("onnx")
        passes = require("nncf.onnx.graph.passes", purpose="fold weights as NNCF's accuracy control does")
        ctx, cfg = self.ctx, self.cfg
        assert cfg.max_accuracy_drop is not None
        val_items = list(ctx.data.numpy_batches(ctx.data.val, EVAL_BATCH))
        probe = self.scratch / "accuracy-control-probe.onnx"
        judged: dict[str, float] = {}  # sha256 of each candidate as shipped -> its val top-1 (whole val split)

        def validate(model: Any, dataset: Any) -> float:
            if model is self.fp32:  # NNCF's reference: the FP32 model as edgeres measures every drop against it
                # (through `shipped`, a TensorRT target's reference would be the FP32 model cast to fp16)
                return float(self.accuracy(self.inp.primary_path, dataset)[0]["top1"])
            copy = onnx.ModelProto()
            copy.CopyFrom(model)  # NNCF goes on with its own
            passes.compress_quantize_weights_transformation(copy)  # as NNCF does to the model it returns
            data = self.shipped(copy)[0].SerializeToString()
            write_bytes_atomic(probe, data)
            acc = self.accuracy(probe, dataset)[0]
            if acc["images"] == len(ctx.data.val):  # not a ranking subset
                judged[hashlib.sha256(data).hexdigest()] = float(acc["top1"])
            return float(acc["top1"])

        t0 = time.monotonic()
        model = nncf.quantize_with_accuracy_control(
            self.fp32,
            nncf.Dataset(self.items, lambda x: {self.fp32.graph.input[0].name: x}),
            nncf.Dataset(val_items),
            validate,
            max_drop=cfg.max_accuracy_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            preset=nncf.QuantizationPreset.PERFORMANCE if self.symmetric else nncf.QuantizationPreset.MIXED,
            subset_size=len(self.items),
            fast_bias_correction=cfg.fast_bias_correction,
        )
        _, kept = float_layers(model)
        cand = self.judge(model, "ptq+accuracy-control", round(time.monotonic() - t0, 1), kept_fp32=kept)
        nncf_top1 = judged.get(hashlib.sha256(cand.model.SerializeToString()).hexdigest())
        cand.accepted = {"val_top1": nncf_top1, "same_graph": nncf_top1 is not None}
        ctx.reporter.log(f"accuracy control: val drop {100 * cand.drop:.2f} pts with {len(kept)} layers in FP32")
        if nncf_top1 is None:
            ctx.reporter.log(
                "warning: the model accuracy control returned is not one it judged on the whole val split; edgeres' "
                "own figure above is what ships"
            )
        elif nncf_top1 != cand.val["top1"]:
            ctx.reporter.log(
                f"warning: accuracy control judged this graph at val top-1 {nncf_top1:.4f}, edgeres at "
                f"{cand.val['top1']:.4f} (the runtime is not deterministic); edgeres' figure is what ships"
            )
        return cand


def train_qat(
    ctx: StageContext[QuantizeInputs], cfg: QuantizeStage, items: list[Any], symmetric: bool, scratch: Any
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The QAT model: the torch model upstream of export, BatchNorm folded, NNCF quantizers initialised on the
    calibration images, trained (resuming from its epoch checkpoint in `scratch`). Returns it, what the sidecar
    records and the model spec. Under torchrun every rank runs this."""
    torch = require("torch", purpose="quantization-aware training")
    from edgeres import qat

    assert cfg.qat is not None
    if ctx.torch_source is None:
        raise StageError("QAT needs the torch model upstream of export, and the pipeline handed none (a bug)")
    inputs = ctx.inputs
    assert inputs.qat is not None
    torch.set_num_threads(inputs.threads)
    torch.manual_seed(inputs.seed)
    model, spec = load_model(ctx.torch_source.path)
    folded = qat.fold_batchnorm(model)
    teacher = qat.teacher_of(model, cfg.qat)
    ctx.reporter.log(f"QAT: {folded} BatchNorms folded, NNCF quantizers initialised on {len(items)} calibration images")
    qmodel = qat.insert_quantizers(model, items, symmetric=symmetric, fast_bias_correction=cfg.fast_bias_correction)
    feed = feed_for(
        ctx.data, inputs.qat.augment, ctx.reporter, inputs.qat.world.distributed if inputs.qat.world else None
    )
    info = qat.train(feed, qmodel, cfg.qat, teacher, seed=inputs.seed, checkpoint=scratch / "qat.pt")
    info["folded_batchnorm"] = folded
    # The fake-quantized torch model's accuracy, beside the runtime's: the gap between them is what "it was fine in
    # training" hides.
    info["torch_val_top1"] = torch_evaluate(qmodel, ctx.data.batches(ctx.data.val, EVAL_BATCH))["top1"]
    return qmodel, info, spec


def follow(ctx: StageContext[QuantizeInputs], cfg: QuantizeStage) -> StageOutput:
    """A torchrun rank other than 0: wait for rank 0 to say whether QAT runs, and if so train with it."""
    if dist.broadcast(None):
        target = ctx.inputs.target
        items, _ = calibration_batches(ctx, ctx.inputs.calibration_size)
        train_qat(ctx, cfg, items, symmetric_activations(cfg.preset, target.qdq_rules), ctx.workdir / SCRATCH)
    return StageOutput(format="onnx", primary="model.onnx")


def run(ctx: StageContext[QuantizeInputs], cfg: QuantizeStage, inp: Artifact) -> StageOutput:
    if not dist.is_main():
        return follow(ctx, cfg)
    announced: list[bool] = []  # Quantization.qat appends when it tells the other ranks QAT runs
    try:
        return _run(ctx, cfg, inp, announced)
    finally:
        if cfg.qat is not None and not announced:
            dist.broadcast(False)  # QAT did not run (PTQ held, or this failed): the other ranks go on


def _run(ctx: StageContext[QuantizeInputs], cfg: QuantizeStage, inp: Artifact, announced: list[bool]) -> StageOutput:
    np = require("numpy")
    q = Quantization(ctx, cfg, inp)
    q.announced = announced
    budget = cfg.max_accuracy_drop
    tried: list[Candidate] = []
    for method in methods(cfg):
        if tried and budget is not None:
            ctx.reporter.log(
                f"drop {100 * tried[-1].drop:.2f} pts exceeds max_accuracy_drop {100 * budget:g}: {NEXT_LABEL[method]}"
            )
        tried.append({"ptq": q.ptq, "qat": q.qat, "ptq+accuracy-control": q.accuracy_control}[method]())
        if budget is None or tried[-1].drop <= budget:
            break
    else:
        reached = ", ".join(f"{c.method} {100 * c.drop:.2f}" for c in tried)
        raise StageError(
            f"INT8 could not be held within max_accuracy_drop {100 * (budget or 0):g} pts on val: the best reached "
            f"is {100 * min(c.drop for c in tried):.2f} pts (drop per method, pts: {reached}; accuracy control kept "
            f"{len(tried[-1].kept_fp32)} layers in FP32). Raise the budget, calibrate on more images "
            "(calibration_size), "
            + ("train longer with QAT (qat.epochs), " if cfg.qat else "try QAT (qat:), ")
            + "or train longer before quantizing"
        )
    chosen = tried[-1]
    target = q.target
    rules = check_rules(chosen.model, target.qdq_rules, exempt=chosen.kept_fp32)
    if rules.errors:
        shown = "\n  ".join(rules.errors[:10])
        raise StageError(
            f"the quantized model breaks the {target.qdq_rules} Q/DQ rules of target {ctx.inputs.target_name} "
            f"({len(rules.errors)} problems):\n  {shown}"
        )
    test: dict[str, Any] | None = None
    if cfg.report_test and not test_sealed():  # sealed: edgeres search reads test once, at its end
        fp32_test, fp32_test_pred = q.evaluate(inp.primary_path, "test")
        q_test, q_test_pred = q.evaluate(chosen.path, "test")
        test = {
            "fp32_top1": fp32_test["top1"],
            "int8_top1": q_test["top1"],
            "drop": fp32_test["top1"] - q_test["top1"],
            "agreement": float(np.mean(q_test_pred == fp32_test_pred)),
        }
    out = ctx.workdir / "model.onnx"
    out.write_bytes(chosen.path.read_bytes())
    spec = inp.path / "model.json"
    if spec.is_file():
        (ctx.workdir / "model.json").write_bytes(spec.read_bytes())
    latency = quick_latencies(ctx, q, inp, out, tried)
    accuracy = (
        f"test top-1 {test['fp32_top1']:.4f} -> {test['int8_top1']:.4f}, agreement {test['agreement']:.4f}"
        if test
        else ""
    )
    shown_latency = (
        f"; p50 {latency['fp32_p50_ms']:.2f} -> {latency['int8_p50_ms']:.2f} ms"
        if latency.get("int8_p50_ms") is not None
        else ""
    )
    ctx.reporter.log(f"INT8 ({chosen.method}) on {q.runtime}: {accuracy}{shown_latency}")
    return StageOutput(
        format="onnx",
        primary="model.onnx",
        deliverables=["model.onnx", "model.json"] if spec.is_file() else ["model.onnx"],
        metrics={
            "method": chosen.method,
            "precision": "int8",
            "runtime": q.runtime,
            "runtime_settings": q.settings.to_dict(),
            "calibration": {"images": len(q.items), "sha256": q.calib_digest, "split": "val"},
            "scales_sha256": scales_digest(chosen.model),
            "val": {
                "fp32_top1": q.fp32_val["top1"],
                "int8_top1": chosen.val["top1"],
                "drop": chosen.drop,
                "agreement": float(np.mean(chosen.val_pred == q.fp32_val_pred)),
            },
            "test": test,
            "max_accuracy_drop": cfg.max_accuracy_drop,
            "tried": {c.method: c.drop for c in tried},
            "kept_fp32_layers": chosen.kept_fp32,
            # NNCF accuracy control: its val top-1 of the graph it accepted; same_graph: whether it judged, on the whole
            # val split, byte for byte the graph that ships (False also when it judged that graph on a subset only)
            "accepted_by_accuracy_control": next((c.accepted for c in tried if c.accepted is not None), None),
            "unsigned_rewritten_to_int8": chosen.rewrite.unsigned_to_int8,
            "conv_branch_qdq_dropped": chosen.rewrite.conv_branch_qdq_dropped,
            # precision of the model's non-quantized parts as written (TensorRT runs them so; CPU runtimes decide)
            "float_islands": q.islands,
            "rules": rules.to_dict(),
            "quick_latency": latency,
            "qat": next((c.qat for c in tried if c.qat is not None), None),  # also when accuracy control won after it
            "seconds": {SECONDS_KEY[c.method]: c.seconds for c in tried},
            "input": inp.metadata.get("metrics", {}).get("input"),
        },
    )


def quick_latencies(
    ctx: StageContext[QuantizeInputs], q: Quantization, inp: Artifact, out: Path, tried: list[Candidate]
) -> dict[str, Any]:
    """Quick batch-1 p50 of FP32 and the INT8 chosen (and all-INT8 PTQ when another method won), on the target's
    runtime with its settings. A TensorRT target's runtime is not here: no figure rather than ONNX Runtime's CPU
    kernels, which say nothing about the device (signed-int8 Q/DQ runs several times slower there than FP32)."""
    if q.runtime != ctx.inputs.target.runtime:
        return {
            "fp32_p50_ms": None,
            "int8_p50_ms": None,
            "not_measured": f"the target's runtime ({ctx.inputs.target.runtime}) is not on this host; "
            "its device kit measures latency there",
        }
    samples = [x for x, _ in ctx.data.numpy_batches(ctx.data.val, 1, limit=16)]

    def p50(path: Any) -> float:
        return p50_ms(q.runtime, path, "onnx", samples, QUICK_LATENCY, threads=ctx.inputs.threads, settings=q.settings)

    latency: dict[str, Any] = {"fp32_p50_ms": p50(inp.primary_path), "int8_p50_ms": p50(out)}
    if tried[0].method == "ptq" and tried[-1].method != "ptq":  # what QAT or keeping layers in FP32 gives
        latency["all_int8_ptq_p50_ms"] = p50(tried[0].path)
    return latency
