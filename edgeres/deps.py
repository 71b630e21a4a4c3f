"""The one place optional heavy packages are imported.

`require("torch")` returns the module or raises MissingDependencyError naming the pip extra that provides it, so no
stage pastes its own import guard. Nothing here imports a heavy package at module import time.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
from types import ModuleType

from edgeres.errors import MissingDependencyError

# import name -> (distribution name on PyPI, extra of edgeres that installs it)
OPTIONAL: dict[str, tuple[str, str]] = {
    "torch": ("torch", "train"),
    "torchvision": ("torchvision", "train"),
    "torch_pruning": ("torch-pruning", "train"),
    "nncf": ("nncf", "train"),
    "sklearn": ("scikit-learn", "train"),
    "onnxscript": ("onnxscript", "train"),
    "onnxconverter_common": ("onnxconverter-common", "train"),  # also in `tensorrt`: TensorRT 11's FP16 cast
    "onnxruntime": ("onnxruntime", "cpu"),
    "openvino": ("openvino", "cpu"),
    "tensorrt": ("tensorrt", "tensorrt"),
    "cuda": ("cuda-python", "tensorrt"),
    "matplotlib": ("matplotlib", "report"),
    "psutil": ("psutil", "cpu"),
    "onnx": ("onnx", "core"),
    "model_signing": ("model-signing", "sign"),
    "cryptography": ("cryptography", "sign"),
    "OpenSSL": ("pyopenssl", "sign"),
}


def install_hint(module: str) -> str:
    dist, extra = OPTIONAL.get(module, (module, ""))
    if extra == "core":
        return f"pip install {dist}  (a core dependency of edgeres; reinstall edgeres)"
    if extra == "cpu" and module == "onnxruntime":
        return (
            "pip install 'edgeres[cpu]'  (or 'edgeres[gpu]' for onnxruntime-gpu on NVIDIA machines; "
            "never both: they share one module name)"
        )
    if module == "onnxconverter_common":  # the build host casts INT8 models' float parts, a device FP16 models
        return "pip install 'edgeres[train]' on a build host, or 'edgeres[tensorrt]' on a device"
    if extra == "train":
        # torch first, pinned: PyPI's newest torch may not match the torchvision wheel (see README).
        return f"pip install 'edgeres[{extra}]'"
    return f"pip install 'edgeres[{extra}]'" if extra else f"pip install {dist}"


def require(module: str, *, purpose: str = "") -> ModuleType:
    """Import `module` or raise MissingDependencyError saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        need = f" (needed to {purpose})" if purpose else ""
        raise MissingDependencyError(
            f"The package '{module}'{need} is not installed or failed to import: {exc}. "
            f"Install it with: {install_hint(module)}"
        ) from exc


def available(module: str) -> bool:
    """True when `module` can be found, without importing it."""
    return importlib.util.find_spec(module) is not None


@functools.cache
def version_of(module: str) -> str | None:
    """The installed distribution version of an import name, or None; reads metadata (once), imports nothing."""
    dist = OPTIONAL.get(module, (module, ""))[0]
    candidates = [dist, "onnxruntime-gpu"] if module == "onnxruntime" else [dist]
    for name in candidates:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def versions(*modules: str) -> dict[str, str]:
    """Versions of the given import names that are installed (used in cache keys and sidecars)."""
    out: dict[str, str] = {}
    for m in modules:
        v = version_of(m)
        out[m] = v if v is not None else "absent"
    return out
