"""What a model takes: uint8 RGB images turned into the normalised float32 NCHW batch, in numpy only.

The benchmark stage preprocesses its accuracy split with `model_input`, and so does a deployed bundle
(`edgeres.load(bundle).predict(images)`), from the preprocessing recorded in the model's `model.json` and in the
bundle's manifest: what is measured is what runs. The arithmetic is the training loader's (`(pixel / 255 - mean) /
std` in float32, the same operations in the same order), so the values are bit-identical to it (tested).

What this module does not do: resize. The data loaders resize when they decode (recorded as `resize` in a bundle's
manifest); images handed to `model_input` must already have the model's height and width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeres.deps import require
from edgeres.errors import DataError


@dataclass(frozen=True)
class Preprocessing:
    """How uint8 RGB pixels become the model's input: x = (pixel / 255 - mean) / std per channel, NCHW float32."""

    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str = "NCHW"
    color: str = "RGB"

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Preprocessing:
        """From the `preprocessing` mapping of model.json (DataBundle.preprocessing) or a bundle manifest's input."""
        try:
            mean = tuple(float(v) for v in spec["mean"])
            std = tuple(float(v) for v in spec["std"])
            height, width = int(spec["height"]), int(spec["width"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"preprocessing {spec!r:.300} lacks height, width, mean or std ({exc})") from None
        layout, color = str(spec.get("layout", "NCHW")), str(spec.get("color", "RGB"))
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or (layout, color) != ("NCHW", "RGB"):
            raise DataError(
                f"preprocessing {spec!r:.300} is not 3-channel RGB NCHW with positive std; edgeres writes no other"
            )
        return cls(height, width, (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]), layout, color)


def model_input(images: Any, pre: Preprocessing) -> Any:
    """The float32 NCHW batch for uint8 RGB `images`: one image (H, W, 3) or (3, H, W), or a batch (N, H, W, 3) or
    (N, 3, H, W), at the model's height and width."""
    np = require("numpy")
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise DataError(
            f"images must be uint8 RGB pixels (0-255), as decoded from a file; got dtype {x.dtype}. Preprocessing "
            "(scale, mean, std) is applied here, so pass the pixels, not normalised values"
        )
    if x.ndim == 3:
        x = x[None]
    hw = (pre.height, pre.width)
    if x.ndim == 4 and x.shape[1] != 3 and x.shape[3] == 3:
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != hw:
        raise DataError(
            f"images have shape {tuple(np.asarray(images).shape)}; the model takes RGB images of {hw[0]}x{hw[1]} "
            "as (H, W, 3), (3, H, W) or a batch of either. Resize them first as the manifest's `resize` says"
        )
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x.astype(np.float32) / np.float32(255.0) - mean) / std)
