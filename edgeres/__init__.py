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

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from edgeres.bundle.load import Model
    from edgeres.evaluation import Evaluation, SplitImages

__version__ = "0.1.0"


def load(
    bundle: Path | str,
    *,
    public_keys: Path | str | list[Path | str] | tuple[Path | str, ...] = (),
    integrity_only: bool = False,
    min_version: int | None = None,
    target: str | None = None,
    threads: int = 1,
    self_test: bool = True,
) -> Model:
    """Verify a deploy bundle, check it fits this device, load its engine and self-test it; `.predict(images)` gives
    labels and scores. Use it with `with`, or call `.close()`.

    public_keys: the signer's public key(s), one path or a list. integrity_only: accept an unsigned bundle (files
    checked, origin not). min_version: refuse older bundles. target: refuse a bundle for another target.
    threads: the runtime's CPU threads (default 1). self_test: run the golden inputs before returning."""
    from edgeres.bundle.load import load as load_bundle

    return load_bundle(
        bundle,
        public_keys=public_keys,
        integrity_only=integrity_only,
        min_version=min_version,
        target=target,
        threads=threads,
        self_test=self_test,
    )


def split_images(recipe: Path | str, split: str = "test") -> SplitImages:
    """A recipe's split as arrays: uint8 RGB images (N x 3 x H x W), int64 labels and the class names, exactly the
    images the build measured (same data, seed and split)."""
    from edgeres.evaluation import split_images as images_of

    return images_of(recipe, split)


def evaluate(model: Model, recipe: Path | str, split: str = "test", *, batch: int = 256) -> Evaluation:
    """Run a loaded bundle over a recipe's split (uint8 images through `predict`, as on the device) and count the
    correct top-1 answers; with the figure the bundle recorded for comparison."""
    from edgeres.evaluation import evaluate as run

    return run(model, recipe, split, batch=batch)
