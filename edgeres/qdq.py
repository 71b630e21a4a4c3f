"""Q/DQ rules, checked on the written ONNX graph rather than assumed.

TensorRT (10 and 11) takes INT8 only from explicit QuantizeLinear/DequantizeLinear pairs, signed int8 with zero
point 0; weight scales per output channel (on the op's output-channel axis) or one scalar per weight; activation
scales per tensor only. Breaking those is an error (TensorRT refuses the model). A Q/DQ without a zero point is int8
zero point 0 to TensorRT but uint8 to ONNX Runtime, which judges accuracy on the build host: refused too, for that
difference. Layers kept in higher precision on purpose are exempt.

Residual Adds: TensorRT fuses Conv + Add (+ ReLU) into one INT8 convolution when the Add's identity (shortcut)
input is quantized and its conv-branch input is not. So a Q/DQ pair on the conv-branch input (which keeps the Conv
and the Add apart) and an unquantized identity (which leaves the Add in float) are warnings: INT8 can end up slower
than FP16. `drop_conv_branch_qdq` removes such conv-branch pairs where the identity is quantized, as NVIDIA's Model
Optimizer does after PTQ (modelopt/onnx/quantization/graph_utils.py: `build_non_residual_input_map`,
`remove_partial_input_qdq`); NVIDIA's quantized torchvision ResNet (pytorch-quantization,
examples/torchvision/models/classification/resnet.py) quantizes only the identity (`residual_quantizer`).

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
CONV_OPS = ("Conv", "ConvTranspose")
# Ops TensorRT moves a DequantizeLinear forward through (they commute with quantization; TensorRT developer guide,
# explicit quantization, Q/DQ propagation): an Add input behind one of them still reaches the Add quantized.
DQ_COMMUTING = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")
# Between a Conv and the Add it feeds, what TensorRT fuses into the Conv (a BatchNormalization left unfolded).
CONV_FUSED = ("BatchNormalization",)
ZERO_POINT_MISSING = (
    "no zero point, which ONNX Runtime (where quantize measures accuracy) reads as uint8 and TensorRT as int8 0: "
    "the accuracy measured here would not be the engine's. Write an explicit int8 zero point 0"
)


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
                report.errors.append(f"{n.op_type} {n.name}: {ZERO_POINT_MISSING}")
            continue
        if str(zp.dtype) != "int8":
            report.errors.append(f"{n.op_type} {n.name}: zero point type {zp.dtype}; TensorRT accepts only int8")
        if zp.size and bool((zp != 0).any()):
            report.errors.append(f"{n.op_type} {n.name}: zero point {zp.ravel()[:4].tolist()}; TensorRT needs 0")
        scale = const(n.input[1])
        if scale is not None and not bool(((scale > 0) & (abs(scale) < float("inf"))).all()):
            report.errors.append(f"{n.op_type} {n.name}: scale not finite and positive")
        if scale is not None and scale.size > 1 and not quantizes_constant(n, const, producers):
            rank_axis = _attr(n, "axis", 1)
            report.errors.append(
                f"{n.op_type} {n.name}: activation scale per channel ({scale.size} values on axis {rank_axis}); "
                "TensorRT takes one scale per activation tensor"
            )
        # Weights: per output channel on the op's output-channel axis, or one scalar scale (both legal in TensorRT).
        if n.op_type == "DequantizeLinear" and scale is not None and scale.size > 1:
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
                    if axis != want:
                        report.errors.append(
                            f"{c.name}: weight scale on axis {axis}; TensorRT needs the output-channel axis {want}"
                        )
    for add in residual_adds(model):
        if add.name in report.exempt:
            continue
        if add.conv_branch_qdq:
            report.warnings.append(
                f"residual Add {add.name}: its conv-branch input {add.conv_input} (from Conv {add.conv}) has a Q/DQ "
                "pair of its own, which keeps TensorRT from fusing the Conv and the Add; quantize only the identity "
                "input"
            )
        if not add.identity_quantized:
            report.warnings.append(
                f"residual Add {add.name}: its identity input {add.identity_input} is not quantized; TensorRT keeps "
                "the Add in higher precision and INT8 may be slower than FP16"
            )
    return report


def quantizes_constant(node: Any, const: Any, producers: dict[str, Any]) -> bool:
    """Whether a Q or DQ node quantizes a constant (a weight): its data input is a constant, or (a DQ) comes from a
    QuantizeLinear of one."""
    if const(node.input[0]) is not None:
        return True
    q = producers.get(node.input[0])
    return (
        node.op_type == "DequantizeLinear"
        and q is not None
        and q.op_type == "QuantizeLinear"
        and (const(q.input[0]) is not None)
    )


@dataclass(frozen=True)
class ResidualAdd:
    """An Add of a Conv's output (the conv branch) and another activation (the identity, or shortcut)."""

    name: str
    conv: str  # the Conv whose output is the conv-branch input
    conv_input: str  # the Add's conv-branch input
    identity_input: str
    conv_branch_qdq: bool  # the conv-branch input comes through its own Q/DQ pair
    identity_quantized: bool  # the identity reaches the Add through a DequantizeLinear (TensorRT's view)


def residual_adds(model: Any) -> list[ResidualAdd]:
    """The residual Adds of a graph, each with its conv branch told from its identity.

    The conv-branch input is the one produced by a Conv (through a Q/DQ pair or a BatchNormalization); where both
    are (a downsampling block's shortcut is a Conv too), it is the one on the longer path back to where the two
    branches split, as Model Optimizer decides (`build_non_residual_input_map`). Adds with a constant input or no
    Conv on either side are not residual Adds."""
    inits = {i.name for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def through_qdq(name: str) -> tuple[Any | None, bool]:
        """(the node behind `name` once a Q/DQ pair is skipped, whether there was one)."""
        node = producers.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            q = producers.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                return producers.get(q.input[0]), True
        return node, False

    def conv_of(name: str) -> Any | None:
        node, _ = through_qdq(name)
        while node is not None and node.op_type in CONV_FUSED:
            node = producers.get(node.input[0])
        return node if node is not None and node.op_type in CONV_OPS else None

    def quantized(name: str) -> bool:
        node = producers.get(name)
        while node is not None and node.op_type in DQ_COMMUTING:
            node = producers.get(node.input[0])
        return node is not None and node.op_type == "DequantizeLinear"

    def distances(name: str) -> dict[str, int]:
        """Every node upstream of value `name`, with its distance in nodes (breadth first: the shortest)."""
        start = producers.get(name)
        if start is None:
            return {}
        seen = {start.name: 0}
        frontier = [start]
        while frontier:
            nxt = []
            for node in frontier:
                for i in node.input:
                    p = producers.get(i)
                    if p is not None and p.name not in seen:
                        seen[p.name] = seen[node.name] + 1
                        nxt.append(p)
            frontier = nxt
        return seen

    out = []
    for n in model.graph.node:
        if n.op_type != "Add" or len(n.input) != 2 or any(i in inits or i not in producers for i in n.input):
            continue
        if any(producers[i].op_type == "Constant" for i in n.input):
            continue
        convs = [conv_of(i) for i in n.input]
        if convs[0] is None and convs[1] is None:
            continue
        if convs[0] is not None and convs[1] is not None:
            d0, d1 = distances(n.input[0]), distances(n.input[1])
            common = set(d0) & set(d1)
            if not common:
                continue
            split = min(common, key=lambda name: (d0[name], d1[name]))
            if d0[split] == d1[split]:
                continue  # two equal branches: no conv branch and identity to tell apart
            k = 0 if d0[split] > d1[split] else 1
        else:
            k = 0 if convs[0] is not None else 1
        conv, conv_input, identity_input = convs[k], n.input[k], n.input[1 - k]
        if conv is None:  # the longer branch does not end in a Conv: nothing TensorRT fuses
            continue
        out.append(
            ResidualAdd(
                name=n.name,
                conv=conv.name,
                conv_input=conv_input,
                identity_input=identity_input,
                conv_branch_qdq=through_qdq(conv_input)[1],
                identity_quantized=quantized(identity_input),
            )
        )
    return out


def drop_conv_branch_qdq(model: Any) -> int:
    """Remove the Q/DQ pair on the conv-branch input of each residual Add whose identity is quantized (the layout
    TensorRT fuses into one INT8 convolution), in place; returns how many Adds changed. A pair that something else
    also reads (another node, a graph output) stays for that reader."""
    producers = {o: n for n in model.graph.node for o in n.output}
    nodes = {n.name: n for n in model.graph.node}
    changed = 0
    for add in residual_adds(model):
        if not (add.conv_branch_qdq and add.identity_quantized):
            continue
        dq = producers[add.conv_input]
        q = producers[dq.input[0]]
        node = nodes[add.name]
        node.input[:] = [q.input[0] if i == add.conv_input else i for i in node.input]
        changed += 1
    if changed:
        _drop_unread(model, QDQ_OPS)
    return changed


def _drop_unread(model: Any, op_types: tuple[str, ...]) -> None:
    """Remove nodes of `op_types` whose outputs nothing reads (repeatedly), then the initializers and shape records
    only they used."""
    graph = model.graph
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in op_types and not set(n.output) & read]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    kept = [i for i in graph.initializer if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    kept_vi = [v for v in graph.value_info if v.name in read | produced]
    del graph.value_info[:]
    graph.value_info.extend(kept_vi)


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
    # Shape information recorded for the quantized tensors and the zero points themselves still says uint8.
    for vi in model.graph.value_info:
        if vi.name in retyped or vi.name in convert:
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
