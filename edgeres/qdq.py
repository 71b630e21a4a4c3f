"""Q/DQ rules, checked on the written ONNX graph rather than assumed.

TensorRT (10 and 11) takes INT8 only from explicit QuantizeLinear/DequantizeLinear pairs, and only when they are
signed int8 with zero point 0, with weight scales per output channel (axis 0). Breaking those is an error (TensorRT
refuses the model). Leaving one input of a residual Add unquantized is a warning: TensorRT then keeps the Add in
higher precision and INT8 can end up slower than FP16. Layers kept in higher precision on purpose are exempt.

`signed_from_unsigned` rewrites NNCF's uint8 activation quantizers (zero point 0, range [0, 255 s]) as signed int8
with zero point 0 over the same range (scale 255 s / 127): what TensorRT needs, at one bit less resolution for
non-negative activations, which is what TensorRT itself would run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeres.deps import require

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


@dataclass
class RuleReport:
    rules: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    exempt: list[str] = field(default_factory=list)
    quantized_layers: int = 0
    float_layers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _attr(node: Any, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return require("onnx").helper.get_attribute_value(a)
    return default


def float_layers(model: Any) -> tuple[int, list[str]]:
    """(number of weighted layers whose weight comes through a DequantizeLinear, names of those that do not)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    quantized, plain = 0, []
    for n in model.graph.node:
        if n.op_type not in WEIGHTED_OPS or len(n.input) < 2:
            continue
        src = producers.get(n.input[1])
        if src is not None and src.op_type == "DequantizeLinear":
            quantized += 1
        else:
            plain.append(n.name)
    return quantized, plain


def out_channel_axis(node: Any, rank: int) -> int:
    """The weight axis that indexes output channels for this op (where per-channel scales must lie)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if _attr(node, "transB", 0) else 1
    return rank - 1  # MatMul: weight is [..., K, N]


def check_rules(model: Any, rules: str, *, exempt: list[str] | None = None) -> RuleReport:
    """Check a Q/DQ model against the rules of a target ('tensorrt' or 'cpu')."""
    onnx = require("onnx")
    numpy_helper = onnx.numpy_helper
    report = RuleReport(rules=rules, exempt=sorted(exempt or []))
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    report.quantized_layers, report.float_layers = float_layers(model)
    if rules != "tensorrt":
        return report

    def const(name: str) -> Any:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        p = producers.get(name)
        if p is not None and p.op_type == "Constant":
            return numpy_helper.to_array(_attr(p, "value", None))
        return None

    for n in model.graph.node:
        if n.op_type not in QDQ_OPS:
            continue
        zp = const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is None:
            if len(n.input) <= 2 or not n.input[2]:
                # No zero point: ONNX defaults to uint8 zero point 0, which TensorRT refuses.
                report.errors.append(f"{n.op_type} {n.name}: no zero point (ONNX default uint8); TensorRT needs int8 0")
            continue
        if str(zp.dtype) != "int8":
            report.errors.append(f"{n.op_type} {n.name}: zero point type {zp.dtype}; TensorRT accepts only int8")
        if zp.size and bool((zp != 0).any()):
            report.errors.append(f"{n.op_type} {n.name}: zero point {zp.ravel()[:4].tolist()}; TensorRT needs 0")
        scale = const(n.input[1])
        if scale is not None and not bool(((scale > 0) & (abs(scale) < float("inf"))).all()):
            report.errors.append(f"{n.op_type} {n.name}: scale not finite and positive")
        # Weights: the DQ feeding a Conv/Gemm weight input must be per output channel (axis 0).
        if n.op_type == "DequantizeLinear":
            for c in consumers.get(n.output[0], []):
                if c.op_type in WEIGHTED_OPS and len(c.input) > 1 and c.input[1] == n.output[0]:
                    if c.name in report.exempt:
                        continue
                    weight = const(n.input[0])
                    q = producers.get(n.input[0])
                    if weight is None and q is not None and q.op_type == "QuantizeLinear":
                        weight = const(q.input[0])  # an FP32 weight quantized in the graph
                    rank = weight.ndim if weight is not None else 4
                    axis = _attr(n, "axis", 1)
                    axis = axis + rank if axis < 0 else axis
                    want = out_channel_axis(c, rank)
                    if scale is None or scale.size <= 1:
                        report.errors.append(f"{c.name}: weight scale is per tensor; TensorRT needs per channel")
                    elif axis != want:
                        report.errors.append(
                            f"{c.name}: weight scale on axis {axis}; TensorRT needs the output-channel axis {want}"
                        )
    for n in model.graph.node:
        if n.op_type != "Add" or n.name in report.exempt:
            continue
        acts = [i for i in n.input if i not in inits and const(i) is None]
        if len(acts) == 2:
            unq = [i for i in acts if producers.get(i) is None or producers[i].op_type != "DequantizeLinear"]
            if unq:
                report.warnings.append(
                    f"residual Add {n.name}: {len(unq)} of 2 inputs not quantized; TensorRT keeps it in higher "
                    "precision and INT8 may be slower than FP16"
                )
    return report


def constants_to_initializers(model: Any) -> int:
    """Move the top graph's Constant nodes (torch's exporter writes Q/DQ scales and zero points so) into initializers,
    where the rule checks, the uint8 rewrite and the scales digest read them; returns how many moved."""
    onnx = require("onnx")
    kept, moved = [], 0
    for n in model.graph.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            model.graph.initializer.append(t)
            moved += 1
        else:
            kept.append(n)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return moved


def signed_from_unsigned(model: Any) -> int:
    """Rewrite uint8 zero-point-0 quantizers as int8 over the same range (scale x 255/127), in place; returns how many
    quantizers (distinct scale / zero-point pairs) changed.

    Decided on the graph as it was: torch's exporter shares one zero-point constant between many quantizers with
    different scales, so every scale read with a converted zero point is rescaled once, and a scale that a quantizer
    left alone also reads gets a private rescaled copy."""
    onnx = require("onnx")
    np = require("numpy")
    numpy_helper = onnx.numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in QDQ_OPS and len(n.input) >= 3 and n.input[2] in inits]

    def unsigned_zero(name: str) -> bool:
        zp = numpy_helper.to_array(inits[name])
        # an asymmetric quantizer (zero point not 0) has no signed equivalent; check_rules reports it
        return zp.dtype == np.uint8 and not bool(zp.any())

    convert = {n.input[2] for n in qdq if unsigned_zero(n.input[2])}
    kept_scales = {n.input[1] for n in qdq if n.input[2] not in convert}
    rescaled: dict[str, str] = {}  # original scale name -> name of its int8 version
    pairs: set[tuple[str, str]] = set()
    retyped: set[str] = set()
    for n in qdq:
        if n.input[2] not in convert or n.input[1] not in inits:
            continue
        pairs.add((n.input[1], n.input[2]))
        old = n.input[1]
        if old not in rescaled:
            scale = numpy_helper.to_array(inits[old])
            new_name = f"{old}_int8" if old in kept_scales else old
            t = numpy_helper.from_array((scale.astype(np.float64) * 255.0 / 127.0).astype(scale.dtype), new_name)
            if new_name == old:
                inits[old].CopyFrom(t)
            else:
                model.graph.initializer.append(t)
            rescaled[old] = new_name
        n.input[1] = rescaled[old]
        if n.op_type == "QuantizeLinear":
            retyped.add(n.output[0])
    for name in convert:
        zp = numpy_helper.to_array(inits[name])
        inits[name].CopyFrom(numpy_helper.from_array(np.zeros_like(zp, dtype=np.int8), name))
    # Shape information recorded for the quantized tensors still says uint8: correct it.
    for vi in model.graph.value_info:
        if vi.name in retyped:
            vi.type.tensor_type.elem_type = onnx.TensorProto.INT8
    return len(pairs)


def scales_digest(model: Any) -> str:
    """sha256 over every Q/DQ scale and zero point (names and bytes): equal digests mean identical quantization."""
    import hashlib

    inits = {i.name: i for i in model.graph.initializer}
    h = hashlib.sha256()
    seen = set()
    for n in model.graph.node:
        if n.op_type in QDQ_OPS:
            for name in n.input[1:3]:
                if name in inits and name not in seen:
                    seen.add(name)
                    h.update(name.encode() + b"\0" + inits[name].SerializeToString())
    return h.hexdigest()
