"""Building torchvision ResNets and saving/loading them without pickled modules.

A torch model artifact is `model.pt` (a plain state dict, loaded with `weights_only=True`) plus `model.json` (the
architecture: torchvision name, number of classes, preprocessing and, for a pruned model, the channel count of every
convolution, BatchNorm and linear layer, and the blocks kept per stage). Checkpoints from others never run code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeres.deps import require
from edgeres.errors import StageError

if TYPE_CHECKING:
    import torch

TORCHVISION_WEIGHTS = {
    ("resnet18", "imagenet-v1"): "ResNet18_Weights.IMAGENET1K_V1",
    ("resnet34", "imagenet-v1"): "ResNet34_Weights.IMAGENET1K_V1",
    ("resnet50", "imagenet-v1"): "ResNet50_Weights.IMAGENET1K_V1",
    ("resnet50", "imagenet-v2"): "ResNet50_Weights.IMAGENET1K_V2",
    ("resnet101", "imagenet-v1"): "ResNet101_Weights.IMAGENET1K_V1",
    ("resnet101", "imagenet-v2"): "ResNet101_Weights.IMAGENET1K_V2",
    ("resnet152", "imagenet-v1"): "ResNet152_Weights.IMAGENET1K_V1",
    ("resnet152", "imagenet-v2"): "ResNet152_Weights.IMAGENET1K_V2",
    ("resnext50_32x4d", "imagenet-v1"): "ResNeXt50_32X4D_Weights.IMAGENET1K_V1",
    ("resnext50_32x4d", "imagenet-v2"): "ResNeXt50_32X4D_Weights.IMAGENET1K_V2",
    ("wide_resnet50_2", "imagenet-v1"): "Wide_ResNet50_2_Weights.IMAGENET1K_V1",
    ("wide_resnet50_2", "imagenet-v2"): "Wide_ResNet50_2_Weights.IMAGENET1K_V2",
}


RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def build_model(
    arch: str, num_classes: int, *, channels: dict[str, list[int]] | None = None, depth: list[int] | None = None
) -> torch.nn.Module:
    """The torchvision network; with `depth` (blocks per stage of a depth-pruned model), each stage cut to its first
    blocks (the kept ones, renumbered); with `channels` (from channel_spec of a pruned model), layers resized."""
    models = require("torchvision.models", purpose="build torchvision ResNets")
    model = models.get_model(arch, weights=None, num_classes=num_classes)
    if depth:
        have = block_counts(model)
        if len(depth) != len(have) or any(not 1 <= k <= n for k, n in zip(depth, have, strict=False)):
            raise StageError(
                f"model.json keeps {depth} blocks per stage, but {arch} has {have}; the model file does not belong "
                "to this architecture"
            )
        keep_blocks(model, [list(range(k)) for k in depth])
    if channels:
        apply_channel_spec(model, channels)
    return model


def block_counts(model: torch.nn.Module) -> list[int]:
    """Residual blocks per stage of a torchvision ResNet (ResNet-50: [3, 4, 6, 3])."""
    return [len(model.get_submodule(name)) for name in RESNET_STAGES]  # type: ignore[arg-type]


def keep_blocks(model: torch.nn.Module, kept: list[list[int]]) -> None:
    """Keep only the listed blocks of each stage (indices into it, in order); they are renumbered 0, 1, ... . Every
    block but a stage's first adds its input back (identity shortcut, same shape), so removing one leaves a network
    whose stage passes its input on where the block was."""
    torch = require("torch")
    for name, idx in zip(RESNET_STAGES, kept, strict=True):
        layer: Any = model.get_submodule(name)
        if not idx or idx[0] != 0:
            raise ValueError(f"{name}: a stage keeps its first block (it changes the shape); got {idx}")
        setattr(model, name, torch.nn.Sequential(*(layer[i] for i in idx)))


def channel_spec(model: torch.nn.Module) -> dict[str, list[int]]:
    """Per layer [in, out] channels (Conv2d: in, out, groups; BatchNorm2d: features; Linear: in, out)."""
    torch = require("torch")
    spec: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            spec[name] = [m.in_channels, m.out_channels, m.groups]
        elif isinstance(m, torch.nn.BatchNorm2d):
            spec[name] = [m.num_features]
        elif isinstance(m, torch.nn.Linear):
            spec[name] = [m.in_features, m.out_features]
    return spec


def apply_channel_spec(model: torch.nn.Module, spec: dict[str, list[int]]) -> None:
    """Replace each listed layer by one of the recorded size (weights are loaded afterwards)."""
    torch = require("torch")
    for name, dims in spec.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr, None)
        if isinstance(old, torch.nn.Conv2d):
            new: Any = torch.nn.Conv2d(
                dims[0],
                dims[1],
                old.kernel_size,
                stride=old.stride,
                padding=old.padding,
                dilation=old.dilation,
                groups=dims[2],
                bias=old.bias is not None,
            )
        elif isinstance(old, torch.nn.BatchNorm2d):
            new = torch.nn.BatchNorm2d(dims[0], eps=old.eps, momentum=old.momentum)
        elif isinstance(old, torch.nn.Linear):
            new = torch.nn.Linear(dims[0], dims[1], bias=old.bias is not None)
        else:
            raise StageError(
                f"model.json lists layer {name!r} with channels {dims}, but the architecture has "
                f"{type(old).__name__ if old is not None else 'no such layer'} there; the model file does not "
                "belong to this architecture"
            )
        setattr(parent, attr, new)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely: tensors only (weights_only=True), never a fallback that unpickles code."""
    torch = require("torch")
    if not path.is_file():
        raise StageError(f"weights file {str(path)!r} does not exist; set finetune.weights to a state dict path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for unsafe or corrupt files
        raise StageError(
            f"cannot load {str(path)!r} as a tensors-only checkpoint ({type(exc).__name__}: {str(exc)[:300]}). "
            "edgeres never unpickles code: save a plain state dict with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise StageError(f"{str(path)!r} is not a state dict (a mapping of names to tensors); got {type(obj).__name__}")
    # Checkpoints saved from DataParallel / torch.compile carry prefixes.
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}


def imagenet_state_dict(arch: str, weights: str) -> dict[str, torch.Tensor]:
    name = TORCHVISION_WEIGHTS.get((arch, weights))
    if name is None:
        have = sorted(w for a, w in TORCHVISION_WEIGHTS if a == arch)
        raise StageError(f"torchvision has no {weights} weights for {arch}; available: {', '.join(have)}")
    models = require("torchvision.models")
    enum_name, member = name.split(".")
    try:
        return getattr(getattr(models, enum_name), member).get_state_dict(progress=False)
    except Exception as exc:  # network errors come in many types (URLError, OSError, HTTPError)
        raise StageError(
            f"could not download torchvision {name} ({type(exc).__name__}: {exc}); this machine may be offline. "
            "Download the weights elsewhere, save the state dict, and set finetune.weights to its path"
        ) from None


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> list[str]:
    """Load `state` into `model`; a classifier of another size is left freshly initialised. Returns what was dropped."""
    own = model.state_dict()
    dropped = [k for k, v in state.items() if k in own and own[k].shape != v.shape and k.startswith("fc.")]
    state = {k: v for k, v in state.items() if k not in dropped}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in dropped]
    if missing or unexpected:
        raise StageError(
            f"weights from {source} do not fit this architecture: {len(missing)} missing keys "
            f"(e.g. {', '.join(missing[:3]) or '-'}), {len(unexpected)} unexpected "
            f"(e.g. {', '.join(unexpected[:3]) or '-'}); check model.arch"
        )
    return dropped


def save_model(model: torch.nn.Module, folder: Path, spec: dict[str, Any]) -> None:
    torch = require("torch")
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, folder / "model.pt")
    (folder / "model.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")


def load_model(folder: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the architecture from model.json and load model.pt with weights_only=True."""
    spec = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    model = build_model(spec["arch"], spec["num_classes"], channels=spec.get("channels"), depth=spec.get("depth"))
    load_weights(model, read_state_dict(folder / "model.pt"), source=str(folder))
    model.eval()
    return model, spec


def evaluate(model: torch.nn.Module, batches: Any) -> dict[str, float]:
    """top-1 and mean cross-entropy of a torch model over (images, labels) batches, in eval mode."""
    torch = require("torch")
    model.eval()
    correct, total, loss = 0, 0, 0.0
    with torch.inference_mode():
        for x, y in batches:
            logits = model(x)
            loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            total += int(y.numel())
    return {"top1": correct / max(total, 1), "loss": loss / max(total, 1)}


def count_params(model: torch.nn.Module) -> int:
    return sum(int(p.numel()) for p in model.parameters())
