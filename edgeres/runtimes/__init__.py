"""Runtimes behind one Runner interface, so accuracy and latency are measured the same way on every artifact.

`open_runner(runtime, artifact_file, threads=..., settings=...)` returns a Runner for a torch model folder, an ONNX
file on ONNX Runtime (CPU; with onnxruntime-gpu its CUDA or TensorRT provider) or OpenVINO, an OpenVINO IR or a
TensorRT engine. A compiled engine's manifest is checked (every
file re-hashed) before anything loads, and the settings it records are the ones it is loaded with unless the caller
passes its own (see runtimes.settings). Each runtime's module is imported only when it is used.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from edgeres.errors import StageError
from edgeres.runtimes.base import Runner, check_manifest
from edgeres.runtimes.settings import RuntimeSettings, settings_from_manifest

RUNTIMES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # name -> (module, class, formats it runs)
    "onnxruntime": ("edgeres.runtimes.onnxruntime", "OnnxRuntimeRunner", ("onnx",)),
    # onnxruntime-gpu (the `gpu` extra): ONNX Runtime's CUDA provider, and its TensorRT provider as a peer
    "cuda": ("edgeres.runtimes.onnxruntime", "OnnxRuntimeCudaRunner", ("onnx",)),
    "ort-tensorrt": ("edgeres.runtimes.onnxruntime", "OnnxRuntimeTensorRTRunner", ("onnx",)),
    "openvino": ("edgeres.runtimes.openvino", "OpenVinoRunner", ("onnx", "openvino")),
    "torch": ("edgeres.runtimes.torch", "TorchRunner", ("torch",)),
    "tensorrt": ("edgeres.tensorrt.runner", "TensorRTRunner", ("tensorrt",)),
}
# The runtime that runs a format when the recipe lists none that can.
NATIVE = {"onnx": "onnxruntime", "openvino": "openvino", "torch": "torch", "tensorrt": "tensorrt"}


def runs(runtime: str, fmt: str) -> bool:
    return fmt in RUNTIMES[runtime][2]


def open_runner(runtime: str, path: Path, *, fmt: str, threads: int, settings: RuntimeSettings | None = None) -> Runner:
    """A runner for `path` on `runtime`, loaded with `settings`; without them, with those in the manifest beside a
    compiled engine, else with the defaults (fp32, the compile stage's default levels and hints)."""
    if runtime not in RUNTIMES:
        raise StageError(f"unknown runtime {runtime!r}; available: {', '.join(RUNTIMES)}")
    module, cls, formats = RUNTIMES[runtime]
    if fmt not in formats:
        raise StageError(f"runtime {runtime} cannot run a {fmt} artifact; it runs {', '.join(formats)}")
    manifest = check_manifest(path)
    if settings is None and manifest is not None:
        settings = settings_from_manifest(manifest)
    settings = (settings or RuntimeSettings(runtime)).for_runtime(runtime)
    runner_cls = getattr(importlib.import_module(module), cls)
    return runner_cls(path, threads=threads, settings=settings)
