"""Fast unit tests of edgeres.onnx_file.check_onnx_file on small hand-made ONNX files: every place a tensor can keep
its data outside the file, the external-data entry's location, offset and length, and the messages for files that
are missing, empty, too large, unparsable, empty of a graph or refused by onnx's checker (tests/test_bad_data.py
covers the same through the CLI). Used by `make mutate` (tests/MUTANTS.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeres import onnx_file
from edgeres.errors import MissingDependencyError, StageError
from edgeres.onnx_file import check_onnx_file

HOW = "Re-export it (edgeres build RECIPE --force export) or copy it again whole"
W_BYTES = np.ones((4, 2), dtype=np.float32).tobytes()  # 32 bytes


def external(name: str, entry: dict[str, str] | None, dims: tuple[int, ...] = (4, 2)) -> TensorProto:
    """A float tensor whose data is in a file, described by the external-data `entry` (keys in order)."""
    t = numpy_helper.from_array(np.ones(dims, dtype=np.float32), name)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (entry or {}).items():
        t.external_data.add(key=k, value=v)
    return t


def model_file(
    folder: Path,
    *,
    inits: list[TensorProto] | None = None,
    nodes: list[Any] | None = None,
    functions: list[Any] | None = None,
    inputs: bool = True,
    outputs: bool = True,
    name: str = "m.onnx",
) -> Path:
    """y = x @ W (W a plain initializer unless `inits` replaces it), with extra `nodes` and `functions`."""
    w = inits if inits is not None else [numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), "W")]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"), *(nodes or [])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])] if inputs else [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])] if outputs else [],
        w,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("t", 1)])
    model.functions.extend(functions or [])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def refused(path: Path) -> str:
    with pytest.raises(StageError) as err:
        check_onnx_file(path)
    return str(err.value)


def outside(path: Path, tensor: str, location: str) -> str:
    return (
        f"{path}: tensor {tensor!r} keeps its data in {location!r}, which is not a file inside the model's folder "
        f"{path.parent.resolve()}. Refusing to read it: an ONNX file may only name external data beside it"
    )


BAD = {"location": "../secret.bin", "offset": "0", "length": "32"}


def custom(name: str, **attrs: Any) -> Any:
    """A node of a custom domain (never run: the external-data checks come before onnx's checker)."""
    return helper.make_node("Custom", [], [f"{name}_out"], name=name, domain="t", **attrs)


def subgraph(tensors: list[TensorProto]) -> Any:
    return helper.make_graph(
        [helper.make_node("Identity", ["c"], ["o"])],
        "sub",
        [],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [4, 2])],
        tensors,
    )


# ------------------------------------------------------------------------------------ where external data hides


def test_an_external_initializer_outside_is_refused(tmp_path: Path) -> None:
    path = model_file(tmp_path / "m", inits=[external("W", BAD)])
    assert refused(path) == outside(path, "W", "../secret.bin")


def test_an_external_sparse_initializer_outside_is_refused(tmp_path: Path) -> None:
    sparse = helper.make_sparse_tensor(
        external("sv", BAD, dims=(2,)), numpy_helper.from_array(np.array([0, 3], dtype=np.int64), "si"), [4]
    )
    model = onnx.load_from_string(model_file(tmp_path / "m").read_bytes())
    model.graph.sparse_initializer.append(sparse)
    path = tmp_path / "m" / "s.onnx"
    path.write_bytes(model.SerializeToString())
    assert refused(path) == outside(path, "sv", "../secret.bin")


@pytest.mark.parametrize(
    ("attrs", "tensor"),
    [
        # the tensor attribute first, then attributes of other kinds (make_node sorts them by name)
        ({"a": external("in_t", BAD), "b": 1, "c": [subgraph([])]}, "in_t"),
        ({"a": [external("in_ts", BAD)], "b": 1, "c": [subgraph([])]}, "in_ts"),
        ({"a": subgraph([external("in_g", BAD)]), "b": 1, "c": [subgraph([])]}, "in_g"),
        ({"a": [subgraph([]), subgraph([external("in_gs", BAD)])], "b": 1, "c": [subgraph([])]}, "in_gs"),
    ],
)
def test_external_tensors_in_node_attributes_and_subgraphs_are_checked(
    tmp_path: Path, attrs: dict[str, Any], tensor: str
) -> None:
    path = model_file(tmp_path / "m", nodes=[custom("n1", **attrs), custom("n2", z=2)])
    assert refused(path) == outside(path, tensor, "../secret.bin")


def test_external_tensors_in_a_nested_subgraph_are_checked(tmp_path: Path) -> None:
    inner = subgraph([])
    inner.node.append(custom("deep", t=external("deep_t", BAD)))
    path = model_file(tmp_path / "m", nodes=[custom("n", g=inner)])
    assert refused(path) == outside(path, "deep_t", "../secret.bin")


def test_external_tensors_in_functions_are_checked(tmp_path: Path) -> None:
    plain = helper.make_function("t", "Plain", ["a"], ["b"], [helper.make_node("Identity", ["a"], ["b"])], [])
    bad_fn = helper.make_function("t", "Bad", [], ["b"], [custom("in_fn", t=external("fn_t", BAD))], [])
    path = model_file(tmp_path / "m", functions=[bad_fn, plain])
    assert refused(path) == outside(path, "fn_t", "../secret.bin")


def test_every_external_tensor_is_checked_not_only_the_last_place(tmp_path: Path) -> None:
    """A bad initializer with attribute tensors and functions after it: each place adds to the list."""
    plain = helper.make_function("t", "Plain", ["a"], ["b"], [helper.make_node("Identity", ["a"], ["b"])], [])
    path = model_file(
        tmp_path / "m",
        inits=[external("W", BAD)],
        nodes=[custom("n", a=numpy_helper.from_array(np.zeros(2, dtype=np.float32), "plain_t"), b=1)],
        functions=[plain],
    )
    assert refused(path) == outside(path, "W", "../secret.bin")


# --------------------------------------------------------------------------------------- the external-data entry


@pytest.mark.parametrize(
    ("entry", "location"),
    [
        ({"offset": "0", "length": "32"}, ""),  # no location at all
        ({"location": "", "length": "32"}, ""),
        ({"location": "sub/../w.bin", "length": "32"}, "sub/../w.bin"),  # `..` even where it resolves inside
        ({"location": "/abs/w.bin"}, "/abs/w.bin"),
    ],
)
def test_locations_that_are_not_plain_relative_paths_are_refused(
    tmp_path: Path, entry: dict[str, str], location: str
) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(W_BYTES)
    path = model_file(tmp_path / "m", inits=[external("W", entry)])
    assert refused(path) == outside(path, "W", location)


def test_a_missing_data_file_is_named(tmp_path: Path) -> None:
    path = model_file(tmp_path / "m", inits=[external("W", {"location": "w.bin"})])
    assert refused(path) == f"{path}: tensor 'W' keeps its data in 'w.bin', which is missing. {HOW}"


@pytest.mark.parametrize(
    "entry",
    [
        {"location": "w.bin"},  # no offset, no length: the whole file from 0
        {"location": "w.bin", "length": "32"},
        {"location": "w.bin", "offset": "32"},  # at the end, to the end: nothing
        {"location": "w.bin", "offset": "32", "length": "0"},
        {"location": "w.bin", "offset": "8", "length": "24"},
    ],
)
def test_entries_within_the_data_file_pass_the_entry_checks(tmp_path: Path, entry: dict[str, str]) -> None:
    """onnx's checker then reads the data itself (which a shorter tensor fails); the entry checks let it through."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(W_BYTES)
    path = model_file(tmp_path / "m", inits=[external("W", entry)])
    try:
        check_onnx_file(path)
    except StageError as exc:
        assert "fails onnx's checker" in str(exc)


def test_an_entry_with_the_whole_file_passes(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(W_BYTES)
    proto = check_onnx_file(model_file(tmp_path / "m", inits=[external("W", {"location": "w.bin"})]))
    assert proto.graph.initializer[0].data_location == TensorProto.EXTERNAL  # the data was not loaded


@pytest.mark.parametrize(
    ("entry", "wants"),
    [
        ({"offset": "8", "length": "32"}, "8..40"),
        ({"offset": "33"}, "33..33"),
        ({"offset": "33", "length": "-1"}, "33..33"),
        ({"offset": "-1"}, "-1..-1"),
        ({"offset": "-4", "length": "4"}, "-4..0"),
        ({"offset": "32", "length": "1"}, "32..33"),
    ],
)
def test_entries_past_the_end_of_the_data_file_are_refused(tmp_path: Path, entry: dict[str, str], wants: str) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(W_BYTES)
    path = model_file(tmp_path / "m", inits=[external("W", {"location": "w.bin", **entry})])
    assert refused(path) == (
        f"{path}: tensor 'W' wants bytes {wants} of 'w.bin', which holds 32: the data file is truncated or belongs "
        f"to another model. {HOW}"
    )


@pytest.mark.parametrize("entry", [{"offset": "x"}, {"length": "1.5"}])
def test_an_unreadable_offset_or_length_is_refused(tmp_path: Path, entry: dict[str, str]) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(W_BYTES)
    path = model_file(tmp_path / "m", inits=[external("W", {"location": "w.bin", **entry})])
    assert refused(path) == f"{path}: tensor 'W' has an unreadable external-data offset or length"


# --------------------------------------------------------------------------------------------- the file itself


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.onnx"
    assert refused(path) == f"cannot read the ONNX file {path}: No such file or directory"


def test_an_empty_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "e.onnx"
    path.write_bytes(b"")
    assert refused(path) == f"the ONNX file {path} is empty. {HOW}"


def test_the_size_limit_is_inclusive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = model_file(tmp_path)
    size = path.stat().st_size
    monkeypatch.setattr(onnx_file, "MAX_ONNX_BYTES", size)
    check_onnx_file(path)
    monkeypatch.setattr(onnx_file, "MAX_ONNX_BYTES", size - 1)
    assert refused(path) == f"the ONNX file {path} is {size} bytes, over protobuf's 2 GiB limit. {HOW}"


@pytest.mark.parametrize("data", [b"\x01", b"\xff" * 40])
def test_bytes_that_do_not_parse_are_refused_with_the_parsers_words(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(data)
    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # what check_onnx_file quotes, cut at 200 characters
        why = str(exc)[:200]
    assert why
    assert refused(path) == f"{path} is not a readable ONNX model (truncated or corrupt: {why}). {HOW}"


@pytest.mark.parametrize(
    "kw",
    [
        {"inputs": False},  # a Constant-only graph has nodes and outputs
        {"outputs": False},
        {"inputs": False, "outputs": False},
    ],
)
def test_a_graph_without_inputs_or_outputs_is_refused(tmp_path: Path, kw: dict[str, bool]) -> None:
    path = model_file(tmp_path, **kw)
    assert refused(path) == (
        f"{path} parses but holds no graph (no nodes, inputs or outputs): it is truncated or not a model. {HOW}"
    )


def test_a_graph_without_nodes_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "empty-graph.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert "parses but holds no graph" in refused(path)


def test_the_checkers_complaint_is_quoted_cut_at_300_characters(tmp_path: Path) -> None:
    long_name = "n" * 400
    path = model_file(tmp_path, nodes=[helper.make_node("NoSuchOp", ["y"], ["z"], name=long_name)])
    with pytest.raises(onnx.checker.ValidationError) as checker:
        onnx.checker.check_model(str(path))
    why = str(checker.value)[:300]
    assert len(str(checker.value)) > 300 and "NoSuchOp" in why
    assert refused(path) == (
        f"{path} fails onnx's checker (truncated, corrupt or not made by an ONNX exporter): {why}. {HOW}"
    )


def test_a_plain_model_passes_and_comes_back_as_its_graph(tmp_path: Path) -> None:
    proto = check_onnx_file(model_file(tmp_path))
    assert [n.op_type for n in proto.graph.node] == ["MatMul"]


def test_without_onnx_the_error_says_what_needs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingDependencyError) as err:
        check_onnx_file(tmp_path / "m.onnx")
    assert "The package 'onnx' (needed to read an ONNX file) is not installed" in str(err.value)
