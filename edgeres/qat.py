"""Quantization-aware training with NNCF on the torch model, exported to the same Q/DQ ONNX that PTQ writes.

1. BatchNorm is folded into the convolution before it (eval statistics), as the FP32 ONNX export folds it for PTQ:
   QAT then trains the weights that ship, and its Q/DQ graph has PTQ's shape (no BatchNormalization left between a
   quantized Conv and its consumer, which neither TensorRT nor the CPU runtimes could fuse).
2. NNCF inserts fake quantizers (`nncf.quantize` on the torch model) initialised from the calibration subset.
3. A few epochs (or `max_steps`) of training with the fake quantizers in the loop, optionally distilled from the
   FP32 model; scales are trained with the weights.
4. Export through torch's TorchScript exporter with NNCF's quantizers in Q/DQ-pair mode: QuantizeLinear /
   DequantizeLinear, the exporter's Constant nodes moved to initializers so the rule checks, the uint8 -> int8
   rewrite and the scales digest read them exactly as they read PTQ's output.
"""

from __future__ import annotations

import copy
import time
import types
import warnings
from pathlib import Path
from typing import Any

from edgeres.config import ExportStage, Qat
from edgeres.deps import require
from edgeres.errors import StageError
from edgeres.training import Feed, train_epochs

CONV_BN_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def fold_batchnorm(model: Any) -> int:
    """Fold every BatchNorm of a torchvision ResNet into its convolution (in place); returns how many."""
    torch = require("torch")
    from torchvision.models.resnet import BasicBlock, Bottleneck

    fuse = torch.nn.utils.fusion.fuse_conv_bn_eval
    model.eval()
    pairs: list[tuple[Any, str, str]] = [(model, "conv1", "bn1")]
    for mod in model.modules():
        if isinstance(mod, (BasicBlock, Bottleneck)):
            pairs += [(mod, c, b) for c, b in CONV_BN_PAIRS if hasattr(mod, c)]
            if mod.downsample is not None:
                pairs.append((mod.downsample, "0", "1"))
    for parent, c, b in pairs:
        setattr(parent, c, fuse(getattr(parent, c), getattr(parent, b)))
        setattr(parent, b, torch.nn.Identity())
    left = [n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if left:
        raise StageError(
            f"QAT folds BatchNorm into the convolutions of torchvision ResNets, and {len(left)} BatchNorm layers "
            f"did not follow a convolution it knows ({', '.join(left[:3])}); this model needs PTQ"
        )
    return len(pairs)


def use_reference_kernels() -> None:
    """Use NNCF's pure-torch fake-quantize functions on CPU instead of its C++ extension.

    NNCF compiles that extension on first use: a C++ compiler is needed, the build took 104 s on the 2-core build
    machine, and NNCF gives up after 60 s on a busy one (ExtensionLoaderTimeoutException). Measured there, training
    steps with the compiled kernels were barely faster (10.0 s against 11.2 s per ResNet-18 step on a shared
    machine), so edgeres uses the reference functions: the same arithmetic, nothing to compile. If a future
    NNCF moves these internals, its own default is used and nothing breaks."""
    try:
        from nncf.torch.quantization.extensions import QuantizedFunctionsCPU
        from nncf.torch.quantization.reference import ReferenceBackendType, ReferenceQuantize
    except ImportError:
        return
    if getattr(QuantizedFunctionsCPU, "_loaded_namespace", False) is None:
        ref = ReferenceQuantize(backend_type=ReferenceBackendType.TORCH)
        QuantizedFunctionsCPU._loaded_namespace = types.SimpleNamespace(
            Quantize_forward=ref.forward, Quantize_backward=ref.backward
        )


def insert_quantizers(model: Any, calibration: list[Any], *, symmetric: bool, fast_bias_correction: bool) -> Any:
    """NNCF fake quantizers in `model`, their ranges initialised on the calibration images (numpy, batch 1)."""
    torch = require("torch")
    nncf = require("nncf", purpose="quantization-aware training with NNCF")
    use_reference_kernels()
    preset = nncf.QuantizationPreset.PERFORMANCE if symmetric else nncf.QuantizationPreset.MIXED
    tensors = [torch.from_numpy(x) for x in calibration]
    return nncf.quantize(
        model,
        nncf.Dataset(tensors),
        subset_size=len(tensors),
        preset=preset,
        fast_bias_correction=fast_bias_correction,
    )


def train(
    feed: Feed, model: Any, cfg: Qat, teacher: Any, *, seed: int, checkpoint: Path | None = None
) -> dict[str, Any]:
    """QAT epochs over the train split (resuming from `checkpoint` after a kill); returns what the sidecar records."""
    t0 = time.monotonic()
    losses, steps = train_epochs(
        feed,
        model,
        cfg,
        seeds=[seed * 7919 + 31 * e + 17 for e in range(cfg.epochs)],
        labels=[f"QAT epoch {e + 1}/{cfg.epochs}" for e in range(cfg.epochs)],
        teacher=teacher,
        distill=cfg.distill,
        max_steps=cfg.max_steps,
        checkpoint=checkpoint,
        fault="qat",
    )
    model.eval()
    return {"steps": steps, "loss": losses, "seconds": round(time.monotonic() - t0, 1)}


def export(model: Any, export_cfg: ExportStage, fp32_onnx: Any, path: Path, image_shape: tuple[int, ...]) -> Any:
    """The QAT model as Q/DQ ONNX with the FP32 export's names, batch axis, opset and metadata; checked."""
    torch = require("torch")
    onnx = require("onnx")
    from nncf.torch.quantization.layers import BaseQuantizer, QuantizerExportMode

    from edgeres.qdq import constants_to_initializers
    from edgeres.torch_to_onnx import onnx_from_torch

    model.eval()
    quantizers = [m for m in model.modules() if isinstance(m, BaseQuantizer)]
    if not quantizers:
        raise StageError("NNCF inserted no quantizers into the model; nothing to export as INT8")
    for q in quantizers:
        q.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
    example = torch.zeros(2 if export_cfg.dynamic_batch else 1, *image_shape)
    # NNCF's quantizers export through TorchScript symbolics; the dynamo exporter does not know them.
    cfg = export_cfg.model_copy(update={"exporter": "torchscript"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings from NNCF's hooks: shapes are static here
        onnx_from_torch(model, example, cfg, path)
    proto = onnx.load(str(path))
    constants_to_initializers(proto)
    del proto.metadata_props[:]
    for p in fp32_onnx.metadata_props:
        proto.metadata_props.add(key=p.key, value=p.value)
    proto.producer_name, proto.producer_version = fp32_onnx.producer_name, fp32_onnx.producer_version
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise StageError(f"the QAT model's ONNX fails onnx's checker: {str(exc)[:800]}") from exc
    got = [i.name for i in proto.graph.input], [o.name for o in proto.graph.output]
    want = [i.name for i in fp32_onnx.graph.input], [o.name for o in fp32_onnx.graph.output]
    if got != want:
        raise StageError(f"the QAT export names its inputs/outputs {got}, the FP32 export {want}: a bug in edgeres")
    return proto


def teacher_of(model: Any, cfg: Qat) -> Any:
    """The FP32 model (BatchNorm folded, frozen) as distillation teacher, or None."""
    if cfg.distill is None:
        return None
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
