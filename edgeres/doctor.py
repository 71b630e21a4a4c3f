"""`edgeres doctor`: what this machine can do with edgeres, and how to install what is missing.

Reads package metadata without importing heavy packages, except to ask the runtimes that are installed which
devices they see (ONNX Runtime providers, OpenVINO devices, CUDA through torch, TensorRT's version).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from typing import Any

from edgeres.deps import available, install_hint, version_of

PACKAGES: list[tuple[str, str]] = [
    ("click", "the command line"),
    ("pydantic", "recipe validation"),
    ("yaml", "reading recipes"),
    ("rich", "progress bars"),
    ("numpy", "measurements"),
    ("onnx", "ONNX checks and export"),
    ("torch", "stages finetune and export (extra: train)"),
    ("torchvision", "the ResNet models and image decoding (extra: train)"),
    ("sklearn", "the digits data set (extra: train)"),
    ("onnxscript", "the dynamo ONNX exporter (extra: train)"),
    ("torch_pruning", "stage prune (extra: train)"),
    ("nncf", "stage quantize (extra: train)"),
    ("onnxconverter_common", "float16 casts for TensorRT (extra: train on a build host, tensorrt on a device)"),
    ("onnxruntime", "runtime onnxruntime: parity checks and benchmarks (extra: cpu, or gpu)"),
    ("openvino", "runtime openvino and cpu-openvino engines (extra: cpu)"),
    ("tensorrt", "TensorRT engines on NVIDIA GPUs and Jetson (extra: tensorrt)"),
    ("model_signing", "signing and verifying deploy bundles (extra: sign)"),
]
DIST = {"yaml": "PyYAML", "sklearn": "scikit-learn"}


def _probe(fn: Any) -> str:
    try:
        return str(fn())
    except Exception as exc:  # a broken install must not break the doctor: report it instead
        return f"error: {type(exc).__name__}: {exc}"


def report() -> str:
    lines = [f"python {platform.python_version()} on {platform.platform()} ({platform.machine()})", "", "packages:"]
    missing = []
    for mod, purpose in PACKAGES:
        v = version_of(DIST.get(mod, mod)) if mod in DIST else version_of(mod)
        if v is None and not available(mod):
            missing.append((mod, purpose))
            lines.append(f"  {mod:<14} missing    enables {purpose}")
        else:
            lines.append(f"  {mod:<14} {v or '?':<10} {purpose}")
    if version_of("onnxruntime") and available("onnxruntime"):
        from importlib.metadata import PackageNotFoundError, version

        both = []
        for d in ("onnxruntime", "onnxruntime-gpu"):
            try:
                version(d)
                both.append(d)
            except PackageNotFoundError:
                pass
        if len(both) == 2:
            lines.append("  WARNING: onnxruntime and onnxruntime-gpu are both installed; they share one module and")
            lines.append("  the CPU build may win. Uninstall both, then install only the one you need.")
    lines += ["", "runtimes and devices:"]
    if available("onnxruntime"):
        lines.append(
            "  onnxruntime providers: " + _probe(lambda: ", ".join(__import__("onnxruntime").get_available_providers()))
        )
    if available("openvino"):
        lines.append(
            "  openvino devices: " + _probe(lambda: ", ".join(__import__("openvino").Core().available_devices))
        )
    if available("torch"):
        lines.append("  torch CUDA: " + _probe(_torch_cuda))
    if shutil.which("nvidia-smi"):
        lines.append("  nvidia-smi: " + _probe(_nvidia_smi))
    if available("tensorrt"):
        lines.append("  tensorrt: " + _probe(_tensorrt))
    else:
        lines.append("  tensorrt: not installed; TensorRT targets cannot build engines on this machine")
    if missing:
        lines += ["", "to install what is missing:"]
        for mod, _ in missing:
            lines.append(f"  {mod}: {install_hint(mod)}")
    return "\n".join(lines)


def _tensorrt() -> str:
    from edgeres.tensorrt import require_tensorrt

    return str(require_tensorrt(purpose="report its version").__version__)


def _torch_cuda() -> str:
    import torch

    if not torch.cuda.is_available():
        return f"not available (torch {torch.__version__})"
    return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))


def _nvidia_smi() -> str:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return out.stdout.strip().replace("\n", "; ") or out.stderr.strip()
