"""Checks on an ONNX file from someone else, before any runtime opens it.

A runtime handed a truncated file fails with a parser message that does not say what is wrong with the file, and
an ONNX file's external-data entries name files by path: one that points outside the model's folder (`../`, an
absolute path, a link leading elsewhere) would make a runtime read any file the user can read. `check_onnx_file`
refuses both with a message that says what is wrong and how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeres.deps import require
from edgeres.errors import StageError

MAX_ONNX_BYTES = 2**31 - 1  # protobuf's limit: a larger model keeps its weights in external data


def _tensors(graph: Any) -> list[Any]:
    """Every tensor a graph holds: initializers, sparse initializers and node attributes, subgraphs included."""
    out = [*graph.initializer, *(s.values for s in graph.sparse_initializer)]
    for node in graph.node:
        out += _attribute_tensors(node.attribute)
    return out


def _attribute_tensors(attributes: Any) -> list[Any]:
    out = []
    for a in attributes:
        out += [a.t] if a.HasField("t") else []
        out += list(a.tensors)
        out += _tensors(a.g) if a.HasField("g") else []
        for g in a.graphs:
            out += _tensors(g)
    return out


def _external_tensors(onnx: Any, proto: Any) -> list[Any]:
    """Every tensor of the graph, its subgraphs and its functions that keeps its data outside the file."""
    tensors = _tensors(proto.graph)
    for fn in proto.functions:
        for node in fn.node:
            tensors += _attribute_tensors(node.attribute)
    return [t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]


def check_onnx_file(path: Path) -> Any:
    """The model's graph (external data not loaded), after checking that the file parses and that every external
    data file it names is a regular file inside its folder and holds the bytes the entry says. Raises StageError."""
    onnx = require("onnx", purpose="read an ONNX file")
    from google.protobuf.message import DecodeError

    how = "Re-export it (edgeres build RECIPE --force export) or copy it again whole"
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise StageError(f"cannot read the ONNX file {path}: {exc.strerror}") from exc
    if size == 0:
        raise StageError(f"the ONNX file {path} is empty. {how}")
    if size > MAX_ONNX_BYTES:
        raise StageError(f"the ONNX file {path} is {size} bytes, over protobuf's 2 GiB limit. {how}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise StageError(
            f"{path} is not a readable ONNX model (truncated or corrupt: {str(exc)[:200]}). {how}"
        ) from exc
    if len(proto.graph.node) == 0 or len(proto.graph.input) == 0 or len(proto.graph.output) == 0:
        raise StageError(
            f"{path} parses but holds no graph (no nodes, inputs or outputs): it is truncated or not a model. {how}"
        )
    folder = path.parent.resolve()
    for tensor in _external_tensors(onnx, proto):
        entry = {e.key: e.value for e in tensor.external_data}
        location = entry.get("location", "")
        target = (path.parent / location).resolve() if location else None
        inside = (
            bool(location)
            and not os.path.isabs(location)
            and ".." not in Path(location).parts
            and target is not None
            and target.is_relative_to(folder)
        )
        if not inside or target is None:
            raise StageError(
                f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, which is not a file inside the "
                f"model's folder {folder}. Refusing to read it: an ONNX file may only name external data beside it"
            )
        if not target.is_file():
            raise StageError(f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, which is missing. {how}")
        try:
            offset, length = int(entry.get("offset", 0)), int(entry.get("length", -1))
        except ValueError as exc:
            raise StageError(
                f"{path}: tensor {tensor.name!r} has an unreadable external-data offset or length"
            ) from exc
        have = target.stat().st_size
        if offset < 0 or offset > have or (length >= 0 and offset + length > have):
            raise StageError(
                f"{path}: tensor {tensor.name!r} wants bytes {offset}..{offset + max(length, 0)} of {location!r}, "
                f"which holds {have}: the data file is truncated or belongs to another model. {how}"
            )
    try:  # a file cut at a field boundary parses: the checker sees what is missing (opsets, types, edges)
        onnx.checker.check_model(str(path))  # external data read from beside the file
    except onnx.checker.ValidationError as exc:
        raise StageError(
            f"{path} fails onnx's checker (truncated, corrupt or not made by an ONNX exporter): {str(exc)[:300]}. {how}"
        ) from exc
    return proto
