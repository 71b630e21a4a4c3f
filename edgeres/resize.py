"""A model's copy at another input size, for latency at the size a deployment runs (e.g. a CIFAR-10 model's
weights at 224x224), and the same images at that size.

ResNet's convolutions and global pooling take any spatial size, so a copy with its input's height and width set
(ONNX: the input's dims, the graph's other shapes left for the runtime to infer; OpenVINO IR: `reshape`, weights
kept in their precision) runs the same weights at that size. Such a copy is for timing only: its manifest (if the
source had one) no longer matches, and accuracy is measured at the data's own size.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from edgeres.artifact import sha256_file
from edgeres.deps import require


def model_files(path: Path) -> list[Path]:
    """The files a model is made of: an ONNX and its external data, or an OpenVINO IR's .xml and .bin."""
    if path.suffix == ".xml":
        return [path, path.with_suffix(".bin")]
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    locations = {
        e.value
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }
    return [path, *sorted(path.parent / loc for loc in locations)]


def digest_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def input_size(path: Path) -> int | None:
    """The model's input height where it is static and square, else None."""
    if path.suffix == ".xml":
        shape = require("openvino").Core().read_model(str(path)).input(0).get_partial_shape()
        h, w = shape[2], shape[3]
        return int(h.get_length()) if h.is_static and w.is_static and h == w else None
    onnx = require("onnx")
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    h, w = dims[2].dim_value, dims[3].dim_value
    return int(h) if h and h == w else None


def resized_onnx(src: Path, dst: Path, size: int) -> Path:
    """A copy of an NCHW image classifier's ONNX with its input at size x size."""
    onnx = require("onnx")
    if dst.is_file():
        return dst
    model = onnx.load(str(src))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = size, size
    del model.graph.value_info[:]
    tmp = dst.with_name(dst.name + ".tmp")
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(tmp), save_as_external_data=True, location=dst.name + ".data", all_tensors_to_one_file=True)
    tmp.replace(dst)  # the external data file is written under its final name; the graph is renamed last
    return dst


def resized_ir(src: Path, dst: Path, size: int) -> Path:
    """A copy of an OpenVINO IR with its input at size x size (weights kept in their precision)."""
    ov = require("openvino")
    if dst.is_file():
        return dst
    model = ov.Core().read_model(str(src))
    shape = model.input(0).get_partial_shape()
    shape[2], shape[3] = size, size
    model.reshape({model.input(0): shape})
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name("tmp-" + dst.name)
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    tmp.with_suffix(".bin").replace(dst.with_suffix(".bin"))
    tmp.replace(dst)
    return dst


def at_size(path: Path, size: int, work: Path) -> Path:
    """`path` itself where its input is already size x size, else a copy at that size under `work` (kept, keyed by
    the model's files, so a second call reuses it)."""
    if input_size(path) == size:
        return path
    key = digest_files(model_files(path))[:16]
    if path.suffix == ".xml":
        return resized_ir(path, work / f"{key}-{size}" / "model.xml", size)
    return resized_onnx(path, work / f"{key}-{size}" / "model.onnx", size)


def images_at(x: Any, size: int) -> Any:
    """NCHW images at size x size (nearest neighbour: latency does not depend on the pixels' values)."""
    np = require("numpy")
    x = np.asarray(x, dtype=np.float32)
    rows = np.arange(size) * x.shape[2] // size
    cols = np.arange(size) * x.shape[3] // size
    return np.ascontiguousarray(x[:, :, rows][:, :, :, cols])
