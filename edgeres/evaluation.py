"""`edgeres eval BUNDLE --recipe R`: the report's top-1, reproduced from the bundle on the device.

The bundle is opened as `edgeres.load` opens it (verified, checked for this device, self-tested), the recipe's split
is read as uint8 RGB images (the same data, seed and split the build measured), and each image goes through
`predict`, so through the manifest's preprocessing as a device applies it. The count of correct images is compared
with the figure the bundle recorded from its build (`measured` in its manifest): equal on the machine that built it;
elsewhere a different CPU may flip a few images near a decision boundary, and the difference is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeres.errors import UsageError

if TYPE_CHECKING:
    from edgeres.bundle.load import Model

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitImages:
    images: Any  # uint8 N x 3 x H x W, RGB: what a camera frame becomes after resizing, before preprocessing
    labels: Any  # int64 N
    classes: list[str]


@dataclass(frozen=True)
class Evaluation:
    split: str
    images: int
    correct: int
    measured_top1: float | None  # what the bundle recorded for this split's images, None if it recorded none
    measured_images: int | None

    @property
    def top1(self) -> float:
        return self.correct / self.images

    @property
    def measured_correct(self) -> int | None:
        if self.measured_top1 is None or self.measured_images is None:
            return None
        return round(self.measured_top1 * self.measured_images)

    @property
    def matches(self) -> bool | None:
        """Whether the same images were correct as many times as the build measured; None when nothing to compare."""
        if self.measured_correct is None:
            return None
        return self.measured_images == self.images and self.measured_correct == self.correct


def split_images(recipe: Path | str, split: str = "test") -> SplitImages:
    """A recipe's split as arrays (edgeres.split_images)."""
    from edgeres.data import load_data
    from edgeres.recipe import load_recipe

    if split not in SPLITS:
        raise UsageError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    r = load_recipe(recipe)
    data = load_data(r.data, seed=r.seed)
    part = data.split(split)
    return SplitImages(data.pixels(part).numpy(), part.labels.numpy(), list(data.classes))


def evaluate(model: Model, recipe: Path | str, split: str = "test", *, batch: int = 256) -> Evaluation:
    """Count the correct images of the recipe's split through `model.predict` (module doc)."""
    if batch < 1:
        raise UsageError(f"batch={batch}: pass 1 or more")
    data = split_images(recipe, split)
    if list(data.classes) != list(model.classes):
        raise UsageError(
            f"the recipe's classes {data.classes[:5]}{'...' if len(data.classes) > 5 else ''} are not the bundle's "
            f"{model.classes[:5]}{'...' if len(model.classes) > 5 else ''}: this bundle was built from other data"
        )
    correct = 0
    for i in range(0, len(data.labels), batch):
        got = model.predict(data.images[i : i + batch]).indices
        correct += int((got == data.labels[i : i + batch]).sum())
    measured = None
    runtime = model.opened.manifest.engine.runtime
    for row in (model.manifest.get("measured") or {}).get("results", []):
        acc = row.get("accuracy") or {}
        if row.get("runtime") == runtime and acc.get("split") == split and "top1" in acc:
            measured = acc
    return Evaluation(
        split=split,
        images=len(data.labels),
        correct=correct,
        measured_top1=float(measured["top1"]) if measured else None,
        measured_images=int(measured["images"]) if measured and "images" in measured else None,
    )


def describe(name: str, result: Evaluation) -> list[str]:
    """The lines `edgeres eval` prints."""
    lines = [
        f"{name}: {result.correct}/{result.images} correct on {result.split} (top-1 {100 * result.top1:.2f}%)",
    ]
    if result.measured_correct is None:
        lines.append(f"the bundle records no top-1 on {result.split} to compare with")
    elif result.matches:
        lines.append(f"the same as the build measured: {result.measured_correct}/{result.measured_images}")
    else:
        lines.append(
            f"the build measured {result.measured_correct}/{result.measured_images} "
            f"(top-1 {100 * (result.measured_top1 or 0):.2f}%): {result.correct - result.measured_correct:+d} images"
        )
    return lines
