"""Every architecture the recipe accepts goes through finetune (no epochs), prune, export, quantize and compile at a
tiny input: before this, only resnet18 and resnet50 were ever built. All but resnet18 are marked slow (each takes
6-60 s here; `make test-slow` builds them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_DATA, run_pipeline

from edgeres.config import ARCHS

FAST = ("resnet18",)


def arch_recipe(arch: str) -> dict[str, Any]:
    return {
        "name": f"arch-{arch}",
        "seed": 0,
        "threads": 1,
        "data": {**TINY_DATA, "train_size": 16, "val_size": 16, "test_size": 16},
        "model": {"arch": arch},
        "stages": [
            {"type": "finetune", "epochs": 0},
            {
                "type": "prune",
                "budget": {"type": "ratio", "ratio": 0.25},
                "steps": 1,
                "recovery": {"epochs": 0},
            },
            {"type": "export", "parity": {"samples": 8}},
            {"type": "quantize", "calibration_size": 8, "report_test": False},
            {"type": "compile"},
        ],
    }


@pytest.mark.parametrize("arch", [a if a in FAST else pytest.param(a, marks=pytest.mark.slow) for a in ARCHS])
def test_every_architecture_builds_through_compile(arch: str, tmp_path: Path) -> None:
    result, _ = run_pipeline(arch_recipe(arch), tmp_path / "cache")
    art = result.variants["main"]
    assert art.stage_type == "compile" and art.primary_path.is_file()
    lineage = {a.stage_type: a for a in result.lineage["main"]}
    pruned = lineage["prune"].metadata["metrics"]
    assert pruned["macs_after"] < pruned["macs_before"], pruned  # channels really went
    import onnx

    from edgeres.qdq import float_layers

    quantized, _ = float_layers(onnx.load(str(lineage["quantize"].primary_path)))
    assert quantized > 0  # the written graph holds quantized layers (the sidecar's "int8" is a constant)
