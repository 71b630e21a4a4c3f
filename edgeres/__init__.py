"""edgeres: take a torchvision ResNet from fine-tuning to a verified, fast engine on an edge device.

Importing this package imports nothing heavy (no torch, ONNX Runtime, OpenVINO or TensorRT); stages and runtimes
import what they need when they run.

The Python API:
- `edgeres.load(bundle, public_keys=...)` opens a deploy bundle (verified, checked for this device, self-tested);
  `.predict(images, top_k=1)` gives labels and scores for uint8 RGB images.
- `edgeres.split_images(recipe, "test")` gives a recipe's split as uint8 images and labels: what the report's top-1
  was measured on.
- `edgeres.evaluate(model, recipe)` counts the correct images of that split through the loaded bundle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and editors
    from edgeres.bundle.load import load
    from edgeres.evaluation import evaluate, split_images

__version__ = "0.1.0"

# The Python API, imported when first used (so `import edgeres` stays light): each name is its module's function
# itself, with that function's signature and documentation.
_API = {"load": "edgeres.bundle.load", "split_images": "edgeres.evaluation", "evaluate": "edgeres.evaluation"}
__all__ = ["__version__", "evaluate", "load", "split_images"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'edgeres' has no attribute {name!r}")
