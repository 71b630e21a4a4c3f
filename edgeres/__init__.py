"""edgeres: take a torchvision ResNet from fine-tuning to a verified, fast engine on an edge device.

Importing this package imports nothing heavy (no torch, ONNX Runtime, OpenVINO or TensorRT); stages and runtimes
import what they need when they run. `edgeres.load(bundle)` opens a deploy bundle (edgeres.bundle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeres.bundle.load import Model

__version__ = "0.1.0"


def load(bundle: Any, **options: Any) -> Model:
    """Verify a deploy bundle, check it fits this device, load its engine and self-test it; `.predict(images)` gives
    labels and scores. See edgeres.bundle.load.load for the options (public_keys, min_version, target, ...)."""
    from edgeres.bundle.load import load as load_bundle

    return load_bundle(bundle, **options)
