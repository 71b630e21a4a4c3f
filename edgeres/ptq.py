"""Post-training INT8 quantization of an ONNX model with NNCF, as the quantize stage ships it.

One function for every graph edgeres quantizes this way: the quantize stage's PTQ and prune's latency probe (which
must time the graph that will ship). The preset follows the target's Q/DQ rules (TensorRT accepts only zero point
0, so its activations are symmetric), and for TensorRT targets NNCF's uint8 activations are rewritten as signed int8
over the same range (`qdq.signed_from_unsigned`) and the Q/DQ pairs NNCF puts on the conv-branch input of residual
Adds are dropped, so that TensorRT fuses Conv + Add (`qdq.drop_conv_branch_qdq`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeres.deps import require
from edgeres.qdq import drop_conv_branch_qdq, signed_from_unsigned


def symmetric_activations(preset: str, qdq_rules: str) -> bool:
    """NNCF's performance preset (symmetric everywhere) or its mixed one: the recipe's preset, `auto` by target."""
    return preset == "performance" or (preset == "auto" and qdq_rules == "tensorrt")


def quantize_ptq(fp32: Any, calibration: list[Any], *, symmetric: bool, fast_bias_correction: bool) -> Any:
    """NNCF PTQ of an ONNX ModelProto on the whole calibration list (numpy batches of one image, fixed order)."""
    nncf = require("nncf", purpose="quantize with NNCF")
    input_name = fp32.graph.input[0].name
    preset = nncf.QuantizationPreset.PERFORMANCE if symmetric else nncf.QuantizationPreset.MIXED
    return nncf.quantize(
        fp32,
        nncf.Dataset(calibration, lambda x: {input_name: x}),
        subset_size=len(calibration),
        preset=preset,
        fast_bias_correction=fast_bias_correction,
    )


@dataclass(frozen=True)
class TargetRewrite:
    """What `for_target` changed."""

    unsigned_to_int8: int = 0  # uint8 quantizers made signed int8
    conv_branch_qdq_dropped: int = 0  # residual Adds whose conv-branch Q/DQ pair was removed


def for_target(model: Any, qdq_rules: str) -> TargetRewrite:
    """Rewrite a Q/DQ model in place for the target's rules (TensorRT's; CPU targets take NNCF's output as it is)."""
    if qdq_rules != "tensorrt":
        return TargetRewrite()
    return TargetRewrite(signed_from_unsigned(model), drop_conv_branch_qdq(model))
