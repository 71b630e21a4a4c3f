"""Common corruptions in the style of ImageNet-C (Hendrycks and Dietterich, ICLR 2019), applied to uint8 images.

The operations are torchvision's transforms v2 kernels (`gaussian_noise`, `gaussian_blur`, `adjust_contrast`,
`jpeg`, `resize`); the severity parameters are ImageNet-C's (levels 1-5 of its `make_imagenet_c.py`, as the
`imagecorruptions` package copies them). Brightness is ImageNet-C's own definition (a shift of HSV value, not
torchvision's multiplication), written out in three lines of torch. The `imagecorruptions` package itself is not
used: version 1.1.2 (the latest) imports `pkg_resources` at import time, which setuptools 81 and later no longer
ship, calls `np.float_` (removed in numpy 2), draws its noise from numpy's global generator, and pulls in OpenCV and
scikit-image; torchvision is already a dependency and is kept working with current numpy and torch.

Spatial parameters (the blur's sigma) are ImageNet-C's at 224x224, scaled to the image side, so a 32x32 image is
blurred as much, relative to its size, as an ImageNet one. Noise is drawn from a torch generator seeded by (seed,
corruption, severity): the same images on every machine and in every process.
"""

from __future__ import annotations

import importlib
import math
import zlib
from typing import TYPE_CHECKING, Any

from edgeres.deps import require

if TYPE_CHECKING:
    import torch

# name -> ImageNet-C's parameter at severities 1..5
SEVERITY_PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # std of additive noise on [0, 1] pixels
    "gaussian_blur": (1, 2, 3, 4, 6),  # sigma in pixels at 224x224
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # added to HSV value
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),  # contrast factor
    "jpeg_compression": (25, 18, 15, 10, 7),  # JPEG quality
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),  # down-scale factor, then back up with nearest neighbours
}
CORRUPTIONS: tuple[str, ...] = tuple(SEVERITY_PARAMS)
IMAGENET_SIDE = 224


def _seed(seed: int, name: str, severity: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 7 + severity) % (2**63 - 1)


def _brightness(x: torch.Tensor, c: float) -> torch.Tensor:
    """ImageNet-C brightness on float RGB in [0, 1]: V += c in HSV (H and S kept), i.e. RGB scaled by (V + c) / V."""
    torch = require("torch")
    v = x.amax(dim=-3, keepdim=True)
    v_new = (v + c).clamp(max=1.0)
    scaled = x * (v_new / v.clamp(min=1e-12))
    return torch.where(v > 0, scaled, v_new.expand_as(x)).clamp(0.0, 1.0)


def corrupt(images: torch.Tensor, name: str, severity: int, *, seed: int) -> torch.Tensor:
    """`images` (uint8, N x 3 x H x W) corrupted by `name` at ImageNet-C `severity` (1-5); uint8 out."""
    torch = require("torch")
    require("torchvision", purpose="corrupt images for the robustness check (benchmark.fidelity.robustness)")
    F = importlib.import_module("torchvision.transforms.v2.functional")
    if name not in SEVERITY_PARAMS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    c = SEVERITY_PARAMS[name][severity - 1]
    h, w = int(images.shape[-2]), int(images.shape[-1])
    if name == "jpeg_compression":
        return F.jpeg(images.contiguous(), quality=int(c))
    if name == "pixelate":
        small = F.resize(images, [max(1, int(h * c)), max(1, int(w * c))], antialias=True)
        return F.resize(small, [h, w], interpolation=F.InterpolationMode.NEAREST)
    x = images.float() / 255.0
    if name == "gaussian_noise":
        g = torch.Generator().manual_seed(_seed(seed, name, severity))
        x = (x + c * torch.randn(x.shape, generator=g)).clamp(0.0, 1.0)
    elif name == "gaussian_blur":
        sigma = float(c) * max(h, w) / IMAGENET_SIDE
        k = 2 * math.ceil(3 * sigma) + 1
        x = F.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])
    elif name == "brightness":
        x = _brightness(x, c)
    elif name == "contrast":
        x = F.adjust_contrast(x, c)
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8)


def corrupted_set(images: Any, corruptions: list[str], severities: list[int], *, seed: int) -> Any:
    """uint8 array (len(corruptions) * len(severities), N, 3, H, W): each corruption at each severity, in that
    order (corruption-major)."""
    torch = require("torch")
    x = torch.as_tensor(images)
    out = [corrupt(x, name, s, seed=seed) for name in corruptions for s in severities]
    return torch.stack(out).numpy()
