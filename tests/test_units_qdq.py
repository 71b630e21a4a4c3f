"""Fast unit tests of edgeres.qdq on small hand-made graphs (no model is built or run): the TensorRT rules' corner
cases, residual Adds told apart in every input order, the conv-branch Q/DQ drop and its clean-up, the uint8 rewrite
and the scales digest. tests/test_quantize.py holds the main cases and the real builds. Used by `make mutate`
(tests/MUTANTS.md)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeres.qdq import (
    ZERO_POINT_MISSING,
    RuleReport,
    check_rules,
    constants_to_initializers,
    drop_conv_branch_qdq,
    float_layers,
    out_channel_axis,
    residual_adds,
    scales_digest,
    signed_from_unsigned,
)


def model(
    nodes: list[Any],
    inits: list[Any] | tuple[Any, ...] = (),
    inputs: tuple[str, ...] = ("x",),
    outputs: tuple[str, ...] = ("y",),
    **kw: Any,
) -> Any:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(i, TensorProto.FLOAT, None) for i in inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=list(inits),
        **kw,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def init(name: str, value: Any, dtype: Any = np.float32) -> Any:
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def node(op: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any) -> Any:
    return helper.make_node(op, inputs, outputs, name=name, **attrs)


def qdq(name: str, src: str, out: str, scale: str = "s", zp: str = "z") -> list[Any]:
    return [
        node("QuantizeLinear", [src, scale, zp], [f"{name}_q"], f"{name}_q"),
        node("DequantizeLinear", [f"{name}_q", scale, zp], [out], f"{name}_dq"),
    ]


def conv(name: str, src: str, out: str) -> list[Any]:
    """A Conv whose weight comes through a per-channel DequantizeLinear of an int8 initializer (added by `block`)."""
    return [
        node("DequantizeLinear", [f"{name}_w", f"{name}_ws", "wz"], [f"{name}_wd"], f"{name}_wdq", axis=0),
        node("Conv", [src, f"{name}_wd"], [out], name),
    ]


SHARED = [init("s", 0.05), init("z", 0, np.int8), init("wz", [0, 0], np.int8)]


def weights(*convs: str) -> list[Any]:
    out = []
    for c in convs:
        out += [init(f"{c}_w", np.ones((2, 2, 3, 3)), np.int8), init(f"{c}_ws", [0.01, 0.02])]
    return out


def block(tag: str, src: str, out: str, *, conv_qdq: bool, identity_qdq: bool, swap: bool = False) -> list[Any]:
    """A residual block on `src`: Q/DQ -> conv -> relu -> Q/DQ -> conv [-> Q/DQ] + identity [through the block's
    input Q/DQ] -> Add `tag`_add -> `out`; `swap` puts the identity first in the Add."""
    nodes = [*qdq(f"{tag}_in", src, f"{tag}_rd"), *conv(f"{tag}_c1", f"{tag}_rd", f"{tag}_c1o")]
    nodes += [
        node("Relu", [f"{tag}_c1o"], [f"{tag}_c1r"], f"{tag}_relu1"),
        *qdq(f"{tag}_mid", f"{tag}_c1r", f"{tag}_c1d"),
    ]
    nodes += conv(f"{tag}_c2", f"{tag}_c1d", f"{tag}_c2o")
    main = f"{tag}_c2o"
    if conv_qdq:
        nodes += qdq(f"{tag}_out", main, f"{tag}_c2d")
        main = f"{tag}_c2d"
    identity = f"{tag}_rd" if identity_qdq else src
    pair = [identity, main] if swap else [main, identity]
    return [*nodes, node("Add", pair, [out], f"{tag}_add")]


def two_blocks(first: dict[str, bool], second: dict[str, bool]) -> Any:
    nodes = [node("Relu", ["x"], ["r"], "relu"), *block("a", "r", "ya", **first), *block("b", "ya", "y", **second)]
    return model(nodes, [*SHARED, *weights("a_c1", "a_c2", "b_c1", "b_c2")])


CONV_QDQ = (
    "residual Add {tag}_add: its conv-branch input {tag}_c2d (from Conv {tag}_c2) has a Q/DQ pair of its own, which "
    "keeps TensorRT from fusing the Conv and the Add; quantize only the identity input"
)


# ---------------------------------------------------------------------------------------------- report, layers


def test_rule_report_to_dict_is_a_copy_of_its_fields() -> None:
    report = RuleReport(rules="tensorrt", errors=["e"], warnings=["w"], exempt=["a"], quantized_layers=2)
    report.float_layers.append("fc")
    d = report.to_dict()
    assert d == {
        "rules": "tensorrt",
        "errors": ["e"],
        "warnings": ["w"],
        "exempt": ["a"],
        "quantized_layers": 2,
        "float_layers": ["fc"],
    }
    d["rules"] = "cpu"
    assert report.rules == "tensorrt"


def test_float_layers_counts_weights_through_a_dequantize_and_names_the_others() -> None:
    nodes = [
        *conv("c1", "x", "a"),
        *conv("c2", "a", "b"),
        node("Flatten", ["b"], ["f"], "flatten"),
        node("Gemm", ["f", "fw"], ["g"], "fc", transB=1),  # a float initializer weight
        node("Relu", ["g"], ["gr"], "relu"),
        node("MatMul", ["g", "gr"], ["m"], "mm"),  # a weight that is an activation
        node("Add", ["m", "m"], ["y"], "add"),  # not a weighted op
    ]
    m = model(nodes, [*SHARED, *weights("c1", "c2"), init("fw", np.ones((4, 2)))])
    assert float_layers(m) == (2, ["fc", "mm"])
    report = check_rules(m, "cpu")
    assert (report.quantized_layers, report.float_layers) == (2, ["fc", "mm"])


@pytest.mark.parametrize(
    ("op", "attrs", "rank", "axis"),
    [
        ("Conv", {}, 4, 0),
        ("ConvTranspose", {}, 4, 1),
        ("Gemm", {"transB": 1}, 2, 0),
        ("Gemm", {"transB": 0}, 2, 1),
        ("Gemm", {}, 2, 1),  # transB defaults to 0
        ("MatMul", {}, 2, 1),
        ("MatMul", {}, 3, 2),
    ],
)
def test_out_channel_axis(op: str, attrs: dict[str, int], rank: int, axis: int) -> None:
    assert out_channel_axis(node(op, ["x", "w"], ["y"], "n", **attrs), rank) == axis


# ------------------------------------------------------------------------------------------------ the rules


def act_pair(scale: Any, zp: Any, *, zp_dtype: Any = np.int8, **attrs: Any) -> Any:
    """x -> Relu -> Q -> DQ -> y with initializer scale `s` and zero point `z`."""
    nodes = [node("Relu", ["x"], ["r"], "relu")]
    nodes += [node("QuantizeLinear", ["r", "s", "z"], ["q"], "q", **attrs)]
    nodes += [node("DequantizeLinear", ["q", "s", "z"], ["y"], "dq", **attrs)]
    return model(nodes, [init("s", scale), init("z", zp, zp_dtype)])


def test_scales_and_zero_points_from_constant_nodes_are_checked() -> None:
    nodes = [
        node("Constant", [], ["s"], "cs", value=numpy_helper.from_array(np.array(0.0, np.float32))),
        node("Constant", [], ["z"], "cz", value=numpy_helper.from_array(np.array(3, np.int8))),
        node("Relu", ["x"], ["r"], "relu"),
        node("QuantizeLinear", ["r", "s", "z"], ["q"], "q"),
        node("DequantizeLinear", ["q", "s", "z"], ["y"], "dq"),
    ]
    assert check_rules(model(nodes), "tensorrt").errors == [
        "QuantizeLinear q: zero point [3]; TensorRT needs 0",
        "QuantizeLinear q: scale not finite and positive",
        "DequantizeLinear dq: zero point [3]; TensorRT needs 0",
        "DequantizeLinear dq: scale not finite and positive",
    ]


def test_a_zero_point_that_is_not_a_constant_is_left_alone_and_an_empty_one_is_missing() -> None:
    nodes = [
        node("QuantizeLinear", ["x", "s", "zin"], ["q"], "q"),
        node("DequantizeLinear", ["q", "s", ""], ["y"], "dq"),
    ]
    m = model(nodes, [init("s", 0.1)], inputs=("x", "zin"))
    assert check_rules(m, "tensorrt").errors == [f"DequantizeLinear dq: {ZERO_POINT_MISSING}"]


def test_a_nonzero_zero_point_shows_its_first_four_values() -> None:
    nodes = [
        node("DequantizeLinear", ["w", "ws", "wz6"], ["wd"], "wdq", axis=0),
        node("Conv", ["x", "wd"], ["y"], "conv"),
    ]
    inits = [init("w", np.ones((6, 2, 1, 1)), np.int8), init("ws", [0.1] * 6), init("wz6", [1, 2, 3, 4, 5, 6], np.int8)]
    assert check_rules(model(nodes, inits), "tensorrt").errors == [
        "DequantizeLinear wdq: zero point [1, 2, 3, 4]; TensorRT needs 0"
    ]


@pytest.mark.parametrize(
    ("scale", "ok"),
    [(0.1, True), (0.0, False), (-0.1, False), (float("inf"), False), (float("nan"), False), (1e30, True)],
)
def test_scales_must_be_finite_and_positive(scale: float, ok: bool) -> None:
    errors = check_rules(act_pair(scale, 0), "tensorrt").errors
    assert errors == ([] if ok else [f"{op} {n}: scale not finite and positive" for op, n in
                                     (("QuantizeLinear", "q"), ("DequantizeLinear", "dq"))])  # fmt: skip


def test_one_bad_channel_scale_is_enough() -> None:
    nodes = [
        node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], "wdq", axis=0),
        node("Conv", ["x", "wd"], ["y"], "conv"),
    ]
    inits = [init("w", np.ones((2, 2, 1, 1)), np.int8), init("ws", [0.1, 0.0]), init("wz", [0, 0], np.int8)]
    assert check_rules(model(nodes, inits), "tensorrt").errors == [
        "DequantizeLinear wdq: scale not finite and positive"
    ]


@pytest.mark.parametrize(("attrs", "axis"), [({}, 1), ({"axis": 3}, 3)])
def test_an_activation_scale_of_two_channels_is_per_channel(attrs: dict[str, int], axis: int) -> None:
    why = f"activation scale per channel (2 values on axis {axis}); TensorRT takes one scale per activation tensor"
    assert check_rules(act_pair([0.1, 0.2], [0, 0], **attrs), "tensorrt").errors == [
        f"QuantizeLinear q: {why}",
        f"DequantizeLinear dq: {why}",
    ]


def weight_dq_model(w_shape: tuple[int, ...], axis: int | None, consumers: list[Any], **kw: Any) -> Any:
    attrs = {} if axis is None else {"axis": axis}
    n = w_shape[axis if axis is not None else 1]
    nodes = [node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], "wdq", **attrs), *consumers]
    inits = [init("w", np.ones(w_shape), np.int8), init("ws", [0.1] * n), init("wz", [0] * n, np.int8)]
    return model(nodes, inits, **kw)


@pytest.mark.parametrize(("axis", "errors"), [
    (-4, []),
    (0, []),
    (-3, ["conv: weight scale on axis 1; TensorRT needs the output-channel axis 0"]),
    (None, ["conv: weight scale on axis 1; TensorRT needs the output-channel axis 0"]),  # axis defaults to 1
])  # fmt: skip
def test_weight_scale_axes_are_normalised_and_default_to_1(axis: int | None, errors: list[str]) -> None:
    m = weight_dq_model((3, 3, 1, 1), axis, [node("Conv", ["x", "wd"], ["y"], "conv")])
    assert check_rules(m, "tensorrt").errors == errors


def test_a_weight_scale_on_axis_2_is_named() -> None:
    m = weight_dq_model((3, 3, 3, 1), 2, [node("Conv", ["x", "wd"], ["y"], "conv")])
    assert check_rules(m, "tensorrt").errors == [
        "conv: weight scale on axis 2; TensorRT needs the output-channel axis 0"
    ]


def test_a_dequantized_constant_read_as_data_or_by_another_op_is_no_weight() -> None:
    """Per-channel on axis 0 of a [3, 3] constant: MatMul's weight axis would be 1, but here the constant is the
    MatMul's first (data) input and an Add's second input, so the weight-axis rule does not apply."""
    consumers = [node("MatMul", ["wd", "x"], ["m"], "mm"), node("Add", ["m", "wd"], ["y"], "add")]
    assert check_rules(weight_dq_model((3, 3), 0, consumers), "tensorrt").errors == []


def test_an_exempt_layer_does_not_hide_the_next_reader() -> None:
    consumers = [node("Conv", ["x", "wd"], ["a"], "conv_a"), node("Conv", ["a", "wd"], ["y"], "conv_b")]
    m = weight_dq_model((3, 3, 1, 1), 1, consumers)
    assert check_rules(m, "tensorrt", exempt=["conv_a"]).errors == [
        "conv_b: weight scale on axis 1; TensorRT needs the output-channel axis 0"
    ]


def test_a_weight_of_unknown_rank_is_taken_as_4d() -> None:
    """An int8 weight fed as a graph input (neither a constant nor quantized in the graph): rank 4 is assumed, so
    axis -4 is the Conv's output-channel axis; its per-channel scale is then an activation's, which is an error."""
    nodes = [
        node("DequantizeLinear", ["win", "ws", "wz"], ["wd"], "wdq", axis=-4),
        node("Conv", ["x", "wd"], ["y"], "conv"),
    ]
    m = model(nodes, [init("ws", [0.1, 0.2]), init("wz", [0, 0], np.int8)], inputs=("x", "win"))
    assert check_rules(m, "tensorrt").errors == [
        "DequantizeLinear wdq: activation scale per channel (2 values on axis -4); TensorRT takes one scale per "
        "activation tensor"
    ]


def test_exempt_layers_are_sorted_and_an_exempt_add_does_not_hide_the_next() -> None:
    m = two_blocks({"conv_qdq": True, "identity_qdq": True}, {"conv_qdq": True, "identity_qdq": True})
    report = check_rules(m, "tensorrt", exempt=["zz", "a_add"])
    assert report.exempt == ["a_add", "zz"]
    assert report.errors == []
    assert report.warnings == [CONV_QDQ.format(tag="b")]
    assert check_rules(m, "tensorrt").warnings == [CONV_QDQ.format(tag="a"), CONV_QDQ.format(tag="b")]


# ------------------------------------------------------------------------------------------------ residual Adds


def adds(m: Any) -> list[tuple[str, str, str, str, bool, bool]]:
    return [(a.name, a.conv, a.conv_input, a.identity_input, a.conv_branch_qdq, a.identity_quantized)
            for a in residual_adds(m)]  # fmt: skip


@pytest.mark.parametrize("swap", [False, True])
def test_the_conv_branch_is_found_on_either_input(swap: bool) -> None:
    nodes = [node("Relu", ["x"], ["r"], "relu"), *block("a", "r", "y", conv_qdq=True, identity_qdq=True, swap=swap)]
    m = model(nodes, [*SHARED, *weights("a_c1", "a_c2")])
    assert adds(m) == [("a_add", "a_c2", "a_c2d", "a_rd", True, True)]


@pytest.mark.parametrize("swap", [False, True])
def test_a_downsample_shortcut_is_the_identity_on_either_input(swap: bool) -> None:
    nodes = [node("Relu", ["x"], ["r"], "relu"), *qdq("in", "r", "rd")]
    nodes += [*conv("c1", "rd", "c1o"), node("Relu", ["c1o"], ["c1r"], "relu1"), *qdq("mid", "c1r", "c1d")]
    nodes += [*conv("c2", "c1d", "c2o"), *conv("down", "rd", "ds"), *qdq("id", "ds", "dsd")]
    pair = ["dsd", "c2o"] if swap else ["c2o", "dsd"]
    m = model([*nodes, node("Add", pair, ["y"], "add")], [*SHARED, *weights("c1", "c2", "down")])
    assert adds(m) == [("add", "c2", "c2o", "dsd", False, True)]


def test_a_batchnorm_between_the_conv_and_the_add_is_looked_through() -> None:
    nodes = [node("Relu", ["x"], ["r"], "relu"), *qdq("in", "r", "rd"), *conv("c1", "rd", "c1o")]
    nodes += [node("BatchNormalization", ["c1o", "g", "b", "mu", "var"], ["bn"], "bn1")]
    nodes += [node("Add", ["bn", "rd"], ["y"], "add")]
    inits = [*SHARED, *weights("c1"), *(init(n, [1.0, 1.0]) for n in ("g", "b", "mu", "var"))]
    assert adds(model(nodes, inits)) == [("add", "c1", "bn", "rd", False, True)]


def test_adds_that_are_not_residual_do_not_stop_the_search() -> None:
    """Before a real residual Add: an Add of two plain activations, a bias Add, an Add of a graph input, an Add of a
    Constant, a Mul, an Add of two Convs of separate inputs and an Add of two equal branches."""
    nodes = [node("Relu", ["x"], ["r"], "relu"), node("Relu", ["r"], ["r2"], "relu2")]
    nodes += [node("Add", ["r2", "r"], ["p1"], "plain")]
    nodes += [*conv("cb", "p1", "cbo"), node("Add", ["cbo", "bias"], ["p2"], "bias_add")]
    nodes += [*conv("cx", "x", "cxo"), node("Add", ["cxo", "x"], ["p3"], "input_add")]
    nodes += [node("Constant", [], ["k"], "const", value=numpy_helper.from_array(np.ones(2, np.float32)))]
    nodes += [node("Add", ["p3", "k"], ["p4"], "const_add"), node("Mul", ["cbo", "r"], ["p5"], "mul")]
    nodes += [*conv("ci", "x2", "cio"), node("Add", ["cxo", "cio"], ["p6"], "separate")]
    nodes += [*conv("e1", "r", "e1o"), *conv("e2", "r", "e2o"), node("Add", ["e1o", "e2o"], ["p7"], "equal")]
    nodes += block("a", "p2", "y", conv_qdq=False, identity_qdq=False)
    inits = [*SHARED, *weights("cb", "cx", "ci", "e1", "e2", "a_c1", "a_c2"), init("bias", [0.5, 0.5])]
    m = model(nodes, inits, inputs=("x", "x2"))
    assert adds(m) == [("a_add", "a_c2", "a_c2o", "p2", False, False)]


def test_an_identity_behind_commuting_ops_and_a_dequantize_is_quantized() -> None:
    nodes = [node("Relu", ["x"], ["r"], "relu"), *qdq("in", "r", "rd"), *conv("c1", "rd", "c1o")]
    nodes += [node("Reshape", ["rd", "shape"], ["rs"], "reshape"), node("Flatten", ["rs"], ["rf"], "flatten")]
    nodes += [node("Add", ["c1o", "rf"], ["y"], "add")]
    m = model(nodes, [*SHARED, *weights("c1"), init("shape", [1, 2, 4, 4], np.int64)])
    assert adds(m) == [("add", "c1", "c1o", "rf", False, True)]


# ---------------------------------------------------------------------------------------- dropping Q/DQ pairs


def test_every_block_whose_identity_is_quantized_loses_its_conv_branch_pair() -> None:
    m = two_blocks({"conv_qdq": True, "identity_qdq": True}, {"conv_qdq": True, "identity_qdq": True})
    assert drop_conv_branch_qdq(m) == 2
    assert check_rules(m, "tensorrt").warnings == []
    m = two_blocks({"conv_qdq": True, "identity_qdq": False}, {"conv_qdq": True, "identity_qdq": True})
    assert drop_conv_branch_qdq(m) == 1
    names = {n.name for n in m.graph.node}
    assert {"a_out_q", "a_out_dq"} <= names
    assert not {"b_out_q", "b_out_dq"} & names


def test_dropping_a_pair_removes_its_constants_and_shape_records_only() -> None:
    nodes = [node("Relu", ["x"], ["r"], "relu"), node("Relu", ["r"], ["unread"], "side")]
    nodes += block("a", "r", "y", conv_qdq=True, identity_qdq=True)
    for n in nodes:  # the conv-branch pair gets constants of its own
        if n.name in ("a_out_q", "a_out_dq"):
            n.input[1:] = ["os", "oz"]
    inits = [*SHARED, *weights("a_c1", "a_c2"), init("os", 0.1), init("oz", 0, np.int8), init("unused", 1.0)]
    records = ["x", "r", "unread", "a_c2o", "a_out_q", "a_c2d", "a_rd", "elsewhere"]
    vi = [helper.make_tensor_value_info(v, TensorProto.FLOAT, None) for v in records]
    m = model(nodes, inits, value_info=vi)
    assert drop_conv_branch_qdq(m) == 1
    assert {"os", "oz", "unused"} & {i.name for i in m.graph.initializer} == set()
    assert {"s", "z", "wz", "a_c1_w", "a_c2_ws"} <= {i.name for i in m.graph.initializer}
    assert [v.name for v in m.graph.value_info] == ["x", "r", "unread", "a_c2o", "a_rd"]
    assert next(n for n in m.graph.node if n.name == "a_add").input[:] == ["a_c2o", "a_rd"]


# ------------------------------------------------------------------------------------------ constants, uint8


def test_only_constant_nodes_with_a_tensor_value_move() -> None:
    nodes = [
        node("Constant", [], ["c"], "c", value=numpy_helper.from_array(np.array(2.0, np.float32))),
        node("Constant", [], ["f"], "f", value_float=3.0),
        node("Custom", [], ["v"], "v", domain="t", value=numpy_helper.from_array(np.array(1.0, np.float32))),
        node("Sum", ["x", "c", "f", "v"], ["y"], "sum"),
    ]
    m = model(nodes)
    assert constants_to_initializers(m) == 1
    assert [n.name for n in m.graph.node] == ["f", "v", "sum"]
    assert [(i.name, float(numpy_helper.to_array(i))) for i in m.graph.initializer] == [("c", 2.0)]


def uint8_pairs(*, first_signed: bool = False) -> Any:
    nodes = [node("Relu", ["x"], ["r"], "relu")]
    if first_signed:
        nodes += qdq("p0", "r", "r", scale="s0", zp="z0")
        nodes[-1].output[:] = ["r0"]
        nodes += qdq("p1", "r0", "y", scale="s1", zp="z1")
    else:
        nodes += qdq("p1", "r", "y", scale="s1", zp="z1")
    inits = [init("s0", 0.1), init("z0", 0, np.int8), init("s1", 0.02), init("z1", 0, np.uint8)]
    return model(nodes, inits)


def test_a_signed_quantizer_before_does_not_stop_the_rewrite() -> None:
    m = uint8_pairs(first_signed=True)
    assert signed_from_unsigned(m) == 1
    values = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    assert values["z1"].dtype == np.int8
    assert float(values["s1"]) == pytest.approx(0.02 * 255 / 127, rel=1e-6)
    assert float(values["s0"]) == pytest.approx(0.1)


def test_per_channel_uint8_zero_points_keep_their_shape() -> None:
    nodes = [
        node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], "wdq", axis=0),
        node("Conv", ["x", "wd"], ["y"], "conv"),
    ]
    m = model(nodes, [init("w", np.ones((3, 2, 1, 1)), np.uint8), init("ws", [0.1, 0.2, 0.3]),
                      init("wz", [0, 0, 0], np.uint8)])  # fmt: skip
    assert signed_from_unsigned(m) == 1
    values = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    assert values["wz"].dtype == np.int8 and values["wz"].shape == (3,)
    np.testing.assert_allclose(values["ws"], np.array([0.1, 0.2, 0.3]) * 255 / 127, rtol=1e-6)


def test_only_quantizers_are_rewritten() -> None:
    """A Clip whose third input is an all-zero uint8 constant is not a quantizer."""
    m = model([node("Clip", ["x", "lo", "hi"], ["y"], "clip")], [init("lo", 0, np.uint8), init("hi", 0, np.uint8)])
    assert signed_from_unsigned(m) == 0
    assert {i.name: numpy_helper.to_array(i).dtype for i in m.graph.initializer} == {"lo": np.uint8, "hi": np.uint8}


def test_a_scale_that_is_no_initializer_counts_no_rewrite() -> None:
    nodes = [
        node("QuantizeLinear", ["x", "sin", "z"], ["q"], "q"),
        node("DequantizeLinear", ["q", "sin", "z"], ["y"], "dq"),
    ]
    m = model(nodes, [init("z", 0, np.uint8)], inputs=("x", "sin"))
    assert signed_from_unsigned(m) == 0


# ---------------------------------------------------------------------------------------------------- digest


def expected_digest(m: Any, names: list[str]) -> str:
    inits = {i.name: i for i in m.graph.initializer}
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0" + inits[name].SerializeToString())
    return h.hexdigest()


def test_scales_digest_covers_each_qdq_scale_and_zero_point_once_in_graph_order() -> None:
    nodes = [
        node("Relu", ["x"], ["r"], "relu"),
        *qdq("a", "r", "ad", scale="s", zp="z"),
        node("QuantizeLinear", ["ad", "s2"], ["bq"], "bq"),  # no zero point
        node("DequantizeLinear", ["bq", "sin", "z"], ["bd"], "bdq"),  # a scale that is a graph input
        *conv("c", "bd", "co"),
        node("Add", ["co", "bias"], ["y"], "add"),
    ]
    inits = [init("s", 0.1), init("z", 0, np.int8), init("s2", 0.2), *weights("c"), init("wz", [0, 0], np.int8),
             init("bias", [1.0, 1.0])]  # fmt: skip
    m = model(nodes, inits, inputs=("x", "sin"))
    digest = scales_digest(m)
    assert digest == expected_digest(m, ["s", "z", "s2", "c_ws", "wz"])
    m.graph.initializer[0].CopyFrom(init("s", 0.11))
    assert scales_digest(m) != digest
    again = model(nodes, inits, inputs=("x", "sin"))
    again.graph.initializer[-1].CopyFrom(init("bias", [2.0, 2.0]))  # not a quantization constant
    assert scales_digest(again) == digest


def test_an_add_of_a_conv_and_a_constant_is_no_residual_add() -> None:
    nodes = [*conv("c", "x", "co")]
    nodes += [node("Constant", [], ["k"], "const", value=numpy_helper.from_array(np.ones(2, np.float32)))]
    nodes += [node("Add", ["co", "k"], ["y"], "add")]
    assert adds(model(nodes, [*SHARED, *weights("c")])) == []


def test_a_conv_on_the_second_input_needs_no_common_ancestor() -> None:
    """Only the second input comes from a Conv: it is the conv branch, whatever the identity comes from."""
    nodes = [node("Relu", ["x2"], ["side"], "side"), *conv("c", "x", "co")]
    nodes += [node("Add", ["side", "co"], ["y"], "add")]
    m = model(nodes, [*SHARED, *weights("c")], inputs=("x", "x2"))
    assert adds(m) == [("add", "c", "co", "side", False, False)]
