"""Deployment targets as data: the registry in targets.yaml plus any the recipe adds under `targets:`.

A target names its runtime, the precisions it runs, its Q/DQ rules (for the quantize stage), the channel multiple
that suits its kernels (for the prune stage) and the facts its engine depends on.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

REGISTRY_FILE = Path(__file__).with_name("targets.yaml")


class TensorRTTarget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    major: list[Literal[10, 11]] = Field(default=[10, 11], description="TensorRT major versions the target runs.")
    dla_core: int | None = Field(None, ge=0, le=1, description="DLA core to build for (Jetson), GPU fallback on.")


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str = Field(description="What the device is.")
    runtime: Literal["onnxruntime", "openvino", "tensorrt"] = Field(description="Runtime that runs the engine.")
    device: Literal["cpu", "gpu", "jetson"] = Field(description="Device class.")
    precisions: list[Literal["fp32", "bf16", "fp16", "int8"]] = Field(
        description="Precisions the runtime can run on this kind of device (bf16 and fp16 only where the CPU or GPU "
        "has them; a stage checks the host)."
    )
    float_precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="Precision of the float (non-quantized) compute when the recipe's compile stage sets none: fp32 "
        "on CPUs, whatever their defaults; fp16 for TensorRT's float engines.",
    )
    qdq_rules: Literal["cpu", "tensorrt"] = Field(description="Q/DQ rules an INT8 model must follow.")
    round_to: int = Field(8, ge=1, le=256, description="Channel multiple that suits the target's kernels.")
    tensorrt: TensorRTTarget | None = Field(None, description="TensorRT specifics.")
    engine_depends_on: list[str] = Field(default_factory=list, description="What the engine is tied to.")


@cache
def builtin_targets() -> dict[str, Target]:
    raw = yaml.safe_load(REGISTRY_FILE.read_text(encoding="utf-8"))
    return {name: Target.model_validate(spec) for name, spec in raw.items()}
