"""TensorRT engines for NVIDIA GPUs and Jetson: build on the device, record how, refuse what does not match.

- `facts`: what the device is (TensorRT, CUDA, driver, GPU and compute capability, JetPack/L4T, DLA, memory).
- `manifest`: the build settings and `engine.manifest.json` written beside every engine; `check_compatible` runs
  before any engine is deserialized (a TensorRT engine is native code tied to one TensorRT version and GPU model).
- `build`: ONNX to engine with the TensorRT 10/11 Python API; `child` runs it in a child process so that an
  out-of-memory kill becomes a clear error; `onnx_graph` reads the ONNX (Q/DQ count, input) and writes the fp16 copy
  TensorRT 11 needs (it has no FP16 builder flag).
- `runner`: `TensorRTRunner`, the Runner interface over an engine.
- `kit`: a folder to copy to a device when the build host has no TensorRT (the usual case); the compile stage
  (edgeres.stages.compile) builds here or writes a kit.
- `stubs`: copies and patches the `tensorrt-stubs` type stubs so that mypy checks this package's TensorRT calls.

Nothing here imports TensorRT at module import time. Functions that need it call `require_tensorrt()` first (it
names the extra to install, and tells the real bindings from the empty `tensorrt` namespace package that installing
`tensorrt-stubs` leaves behind), then bind the module with a plain `import tensorrt as trt`, which is what lets mypy
check the calls against the stubs.
"""

from __future__ import annotations

import re
from types import ModuleType

from edgeres.deps import install_hint, require
from edgeres.errors import MissingDependencyError, StageError


def require_tensorrt(*, purpose: str) -> ModuleType:
    """The TensorRT Python bindings, or MissingDependencyError saying how to get them."""
    trt = require("tensorrt", purpose=purpose)
    if not hasattr(trt, "Builder"):
        where = ", ".join(str(p) for p in getattr(trt, "__path__", [])) or "an unknown place"
        raise MissingDependencyError(
            f"'import tensorrt' found a module without TensorRT's bindings (at {where}; needed to {purpose}): "
            f"this is what the type stubs package tensorrt-stubs leaves in site-packages, or a broken install. "
            f"Install TensorRT itself: JetPack ships it on Jetson; elsewhere {install_hint('tensorrt')}; "
            f"and if tensorrt-stubs is installed in this environment, `pip uninstall tensorrt-stubs` "
            f"(edgeres uses the stubs only through `python -m edgeres.tensorrt.stubs`)."
        )
    return trt


def tensorrt_major(version: str) -> int:
    """Major version of a TensorRT version string ('10.3.0.30' -> 10)."""
    m = re.match(r"\s*(\d+)\.", version)
    if not m:
        raise StageError(f"cannot read a TensorRT version from {version!r}; expected a dotted version like '10.3.0'")
    return int(m.group(1))
