"""Float32 to float16 for ONNX graphs that TensorRT builds strongly typed, where the ONNX's types are the precision.

One conversion for both of edgeres' uses: an FP16 engine on TensorRT 11 (it has no FP16 builder flag), and the float
parts ("islands") of an INT8 Q/DQ model, which a strongly typed network otherwise runs in FP32 (NVIDIA's Model
Optimizer casts them to FP16 by default, `high_precision_dtype="fp16"`). The quantize stage casts its output for
TensorRT targets, so the accuracy it measures is that of the graph that ships.

The cast is onnxconverter-common's float16 converter (`keep_io_types`: callers still feed and read float32; its
block list keeps Resize, Upsample, TopK, Range and the like in float32 behind Cast nodes), with what it
leaves out done here:
- Cast(to=float) nodes inside the graph are retyped to float16, and Constant value_float(s) written as tensors it
  then casts (the converter only casts tensors);
- a Q/DQ model moves to opset 19, the first whose QuantizeLinear/DequantizeLinear take float16 scales (as Model
  Optimizer's AutoCast does); the scales become float16 with the rest, so DequantizeLinear writes float16;
- values are clipped to float16's range (+-65504, smallest subnormal 6e-8) rather than the converter's defaults
  (+-1e4, 1e-7), as Model Optimizer clips.
ONNX Runtime's CPU provider runs the result (float16 ops it has no kernel for run in float32 between Cast nodes it
inserts), so quantize can judge it on the build host, with one of its graph passes off (`ORT_DISABLED_FOR_FP16_QDQ`,
applied by edgeres' ONNX Runtime runner to graphs `has_float16_qdq` finds). The result passes onnx.checker's full
check.
"""

from __future__ import annotations

import warnings
from typing import Any

from edgeres.deps import require
from edgeres.errors import StageError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
QDQ_FLOAT16_OPSET = 19  # QuantizeLinear/DequantizeLinear-19: float16 scales and float16 input/output
FP16_MAX = 65504.0
FP16_SMALLEST = 5.960464477539063e-08  # float16's smallest subnormal
METADATA_KEY = "edgeres.float_islands"
# ONNX Runtime's WeightBiasQuantization pass gives a Conv/Gemm whose input and weight come through Q/DQ an int32 bias
# with scale input scale x weight scale. In a float16 Q/DQ graph it computes that scale in float16, where it is
# subnormal or zero and the bias overflows: measured, INT8 ResNet-18 on digits lost 2.1 points of val top-1 to it
# (and none without it). TensorRT adds the bias in float. Off for such graphs, judged by the ONNX's own semantics.
ORT_DISABLED_FOR_FP16_QDQ = ("WeightBiasQuantization",)


def _nodes(graph: Any) -> list[Any]:
    """Every node of a graph and of its subgraphs (If/Loop/Scan bodies)."""
    onnx = require("onnx")
    out = []
    for node in graph.node:
        out.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                out += _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    out += _nodes(g)
    return out


def fp16_from_fp32(model: Any, *, source: str = "the model") -> Any:
    """A copy of ONNX `model` with its float32 weights and compute in float16, inputs and outputs kept float32.

    Quantized (Q/DQ) models keep their int8 weights and zero points; their scales and everything between the Q/DQ
    pairs become float16. `source` names the model in errors. Refuses a model that already holds float16."""
    onnx = require("onnx", purpose="cast ONNX models to float16")
    require("onnxconverter_common", purpose="cast ONNX models to float16")
    from onnxconverter_common import float16

    HALF = onnx.TensorProto.FLOAT16
    graph = model.graph
    values = [*graph.input, *graph.output, *graph.value_info]
    if (
        any(i.data_type == HALF for i in graph.initializer)
        or any(v.type.tensor_type.elem_type == HALF for v in values)
        or any(n.op_type == "Cast" and any(a.name == "to" and a.i == HALF for a in n.attribute) for n in graph.node)
    ):
        raise StageError(f"{source} already holds float16 tensors, so it is not cast again. Cast the float32 model")
    work = onnx.ModelProto()
    work.CopyFrom(model)
    nodes = _nodes(work.graph)
    has_qdq = any(n.op_type in QDQ_OPS for n in nodes)
    opset = next((o.version for o in work.opset_import if o.domain in ("", "ai.onnx")), None)
    if has_qdq and opset is not None and opset < QDQ_FLOAT16_OPSET:
        try:
            work = onnx.version_converter.convert_version(work, QDQ_FLOAT16_OPSET)
        except Exception as exc:
            raise StageError(
                f"{source} is a Q/DQ model at opset {opset}; float16 scales need opset {QDQ_FLOAT16_OPSET}, and "
                f"onnx.version_converter could not convert it ({type(exc).__name__}: {str(exc)[:300]}). Export at "
                f"opset {QDQ_FLOAT16_OPSET} or later (stages.export.opset), or keep the float parts in float32 "
                "(stages.compile.precision: fp32)"
            ) from exc
        nodes = _nodes(work.graph)
    for node in nodes:
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                    attr.i = HALF
        elif node.op_type == "Constant":
            # value_float(s) are plain floats the converter does not see: as a float32 tensor, it casts them
            for attr in list(node.attribute):
                if attr.name in ("value_float", "value_floats"):
                    floats = [attr.f] if attr.name == "value_float" else list(attr.floats)
                    shape = [] if attr.name == "value_float" else [len(floats)]
                    tensor = onnx.helper.make_tensor("value", onnx.TensorProto.FLOAT, shape, floats)
                    node.attribute.remove(attr)
                    node.attribute.append(onnx.helper.make_attribute("value", tensor))
    with warnings.catch_warnings():
        # it warns for every tensor it clips; clipping to float16's range is the documented behaviour here
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(
            work,
            min_positive_val=FP16_SMALLEST,
            max_finite_val=FP16_MAX,
            keep_io_types=True,
            check_fp16_ready=False,  # checked above, before the Cast nodes were retyped
        )
    what = "float16 non-quantized compute (Q/DQ scales float16)" if has_qdq else "float16 weights and compute"
    props = {p.key: p.value for p in half.metadata_props}
    props[METADATA_KEY] = "fp16"
    props["edgeres.fp16"] = f"{what}; float32 inputs and outputs"
    onnx.helper.set_model_props(half, props)
    try:
        onnx.checker.check_model(half, full_check=True)
    except Exception as exc:
        raise StageError(
            f"casting {source} to float16 gave a model that fails onnx.checker ({str(exc)[:500]}). An operator in "
            "it needs a float32 input this cast does not know about. Keep the float parts in float32 "
            "(stages.compile.precision: fp32), or convert the model with NVIDIA Model Optimizer's AutoCast "
            "(python -m modelopt.onnx.autocast) and build that"
        ) from exc
    return half


def has_float16_qdq(model: Any) -> bool:
    """Whether a DequantizeLinear of `model` has a float16 scale (a Q/DQ model whose float parts are float16)."""
    onnx = require("onnx")
    half = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    return any(n.op_type == "DequantizeLinear" and len(n.input) > 1 and n.input[1] in half for n in model.graph.node)
