"""Tiny deploy bundles for the bundle tests: a 4-class convolutional model (a few KB) compiled for ONNX Runtime the
way the compile stage does, packed with edgeres.bundle.pack as the package stage does. Small enough that the C
embedding tests compile it in a second."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.artifact import sha256_file
from edgeres.bundle.pack import engine_files, golden_set, write_bundle
from edgeres.preprocess import Preprocessing, model_input
from edgeres.runtimes import open_runner
from edgeres.runtimes.settings import RuntimeSettings

SIDE = 16
CLASSES = ["zero", "one", 'two "quoted"', "drei ü"]  # C string escaping is exercised by the embed tests
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.2, 0.3)


def tiny_onnx(path: Path, *, seed: int = 0) -> Path:
    """Conv(3->8, 3x3) + ReLU + global average pool + Gemm(8->4), dynamic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(0, 1.0, (4, 8)).astype(np.float32), "fw"),
        numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def compiled_folder(
    folder: Path, *, seed: int = 0, level: str = "extended", runtime: str = "onnxruntime"
) -> tuple[Path, Path]:
    """(deliverable folder as compile writes it for cpu-onnxruntime or cpu-openvino, source ONNX)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = tiny_onnx(folder.parent / f"source-{seed}.onnx", seed=seed)
    settings = RuntimeSettings(runtime, ort_optimization_level=level)  # type: ignore[arg-type]
    if runtime == "onnxruntime":
        import onnxruntime as ort

        from edgeres.runtimes.onnxruntime import session_options

        opts = session_options(ort, settings, 1)
        opts.optimized_model_filepath = str(folder / "model.ort.onnx")
        ort.InferenceSession(str(source), sess_options=opts, providers=["CPUExecutionProvider"])
        engine, files, fmt, version = "model.ort.onnx", ["model.ort.onnx"], "onnx", ort.__version__
    else:
        import openvino as ov

        ov.save_model(ov.convert_model(str(source)), str(folder / "model.xml"))
        engine, files, fmt, version = "model.xml", ["model.xml", "model.bin"], "openvino", ov.get_version()
    spec = {
        "arch": "tiny",
        "num_classes": 4,
        "input_shape": [3, SIDE, SIDE],
        "preprocessing": {"layout": "NCHW", "color": "RGB", "height": SIDE, "width": SIDE, "scale": "pixel / 255",
                          "mean": list(MEAN), "std": list(STD), "classes": CLASSES},
    }  # fmt: skip
    (folder / "model.json").write_text(json.dumps(spec), encoding="utf-8")
    manifest = {
        "schema": "edgeres.manifest/1",
        "target": f"cpu-{runtime}",
        "engine": engine,
        "format": fmt,
        "sha256": {n: sha256_file(folder / n) for n in ("model.json", *files)},
        "source_onnx_sha256": sha256_file(source),
        "precision": "fp32",
        "runtime_settings": settings.to_dict(),
        "runtime": runtime,
        "runtime_version": version,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder, source


def images(n: int = 16, *, seed: int = 1) -> np.ndarray:
    """uint8 RGB images, N x 3 x H x W."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3, SIDE, SIDE), dtype=np.uint8)


def make_bundle(
    dest: Path,
    *,
    version: int = 1,
    seed: int = 0,
    level: str = "extended",
    runtime: str = "onnxruntime",
    info: dict[str, Any] | None = None,
) -> Path:
    """A bundle of the tiny model at `dest`, written by the package stage's writer."""
    work = dest.parent / f".{dest.name}.work"
    deliverable, source = compiled_folder(work / "compiled", seed=seed, level=level, runtime=runtime)
    manifest = json.loads((deliverable / "manifest.json").read_text(encoding="utf-8"))
    pre = Preprocessing(SIDE, SIDE, MEAN, STD)
    x = images()
    fmt = manifest["format"]

    def logits_of(batch: Any) -> Any:
        with open_runner(runtime, deliverable / manifest["engine"], fmt=fmt, threads=1) as runner:
            return runner.infer(batch)

    golden = golden_set(logits_of, x, model_input(x, pre), count=3, exact=True, max_abs_diff=None, reference="test")
    base = {
        "version": version,
        "name": "tiny",
        "variant": "main",
        "inputs_sha256": "0" * 64,
        "target": {"name": f"cpu-{runtime}", "runtime": runtime, "device": "cpu"},
        "engine": {
            "format": fmt,
            "runtime": runtime,
            "runtime_version": manifest["runtime_version"],
            "precision": "fp32",
            "runtime_settings": manifest["runtime_settings"],
            "primary": manifest["engine"],
            "files": engine_files(fmt, manifest),
            "built_on": {"machine": "x86_64", "isa": []},
        },
        "input": {"name": "input", "shape": ["batch", 3, SIDE, SIDE], "dtype": "float32", "layout": "NCHW",
                  "color": "RGB", "height": SIDE, "width": SIDE, "mean": list(MEAN), "std": list(STD)},
        "classes": CLASSES,
        "measured": {"results": []},
    }  # fmt: skip
    for key, value in (info or {}).items():
        base[key] = value if not isinstance(value, dict) else {**base.get(key, {}), **value}
    staging = work / "staging"
    staging.mkdir(parents=True)
    write_bundle(
        dest,
        staging,
        deliverable=deliverable,
        files=["manifest.json", *manifest["sha256"]],
        source_onnx=source,
        info=base,
        golden=golden,
    )
    return dest


def engine_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """Logits of an ONNX Runtime engine file as the benchmark loads it (its manifest's settings, one thread)."""
    with open_runner("onnxruntime", path, fmt="onnx", threads=1) as runner:
        return np.asarray(runner.infer(np.ascontiguousarray(x, dtype=np.float32)))


class FakeTensorRTRunner:
    """Stands in for the TensorRT runner on a host without TensorRT: runs the kit's ONNX on ONNX Runtime and adds
    OFFSET to every logit, so a test can tell what this "engine" computed from what ONNX Runtime computes on the
    same ONNX (the fallback a bundle would use without an engine)."""

    OFFSET = 1.0

    name = "tensorrt"

    def __init__(self, path: Path, *, threads: int, settings: Any = None) -> None:
        self.path = path
        self.settings = settings
        self._runner = open_runner("onnxruntime", path.parent / "model.onnx", fmt="onnx", threads=threads)

    def infer(self, batch: Any) -> Any:
        return np.asarray(self._runner.infer(batch)) + np.float32(self.OFFSET)

    def close(self) -> None:
        self._runner.close()

    def __enter__(self) -> FakeTensorRTRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
