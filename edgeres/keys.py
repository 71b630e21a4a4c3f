"""Cache keys from declared reads: a stage's key hashes exactly the recipe values it declares it reads.

Each stage config declares its reads (`reads(recipe, variant)` in edgeres.recipe): recipe paths such as
`data.mean`, `stages.export` (a whole stage config) or `target` (the resolved target spec), plus a few facts that are
not in the recipe:

- `@quantizes`: whether the variant's chain quantizes (prune's latency probe times INT8 then);
- `@host`: this machine as the runtimes see it (CPU model and instruction-set flags, cores, OS, runtime versions);
  measurements and CPU-specific engines are never reused on another machine;
- `@source`: a digest of edgeres' own code; a benchmark measured by older code is never reused. Training stages do
  not hash the source, so a code change does not throw away hours of training: bump a stage's registry version
  (edgeres.stages) when its output for the same inputs changes;
- `*`: the whole recipe (the benchmark's report names it).

The key also hashes the stage type and registry version, the input artifacts' identities, the data fingerprint
(file contents and split rule) where the stage reads data, and the versions of the tools the stage uses.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
from functools import cache
from pathlib import Path
from typing import Any

from edgeres.artifact import sha256_json
from edgeres.deps import versions

PACKAGE = Path(__file__).parent
# CPU flags that decide which kernels the runtimes pick (instruction-set extensions), not the VM's other flags.
ISA_FLAG = re.compile(r"^(sse\d.*|ssse3|avx.*|amx.*|fma|f16c|bmi\d|vnni.*|neon|asimd.*|sve.*|fp16|bf16|i8mm)$")


def read_value(recipe: Any, variant: str, path: str) -> Any:
    """The value of one declared read in the variant's recipe (null where the path leads nowhere)."""
    if path == "*":  # how long a build waits for a lock shapes no output
        return recipe.model_dump(mode="json", exclude={"lock_timeout_s"})
    if path == "@host":
        return host_facts()
    if path == "@source":
        return source_digest()
    if path == "@quantizes":
        return any(s.type == "quantize" for s in recipe.chain(variant))
    if path == "target":
        return recipe.target_spec().model_dump(mode="json")
    parts = path.split(".")
    node: Any
    if parts[0] == "stages":
        stage = next((s for s in recipe.chain(variant) if s.id == parts[1]), None)
        node = None if stage is None else stage.model_dump(mode="json", exclude={"name"})
        parts = parts[2:]
    else:
        node = recipe.model_dump(mode="json")
    for part in parts:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def canonical(recipe: Any, path: str) -> str:
    """A read path with its stage named by type and position (`stages.export#0`), not by its `name:`, so renaming a
    stage keeps its key."""
    parts = path.split(".")
    if parts[0] != "stages" or len(parts) < 2:
        return path
    stage = next((s for s in recipe.stages if s.id == parts[1]), None)
    if stage is None:
        return path
    n = [s.id for s in recipe.stages if s.type == stage.type].index(stage.id)
    return ".".join(["stages", f"{stage.type}#{n}", *parts[2:]])


def reads_data(reads: list[str]) -> bool:
    return "*" in reads or any(p.startswith("data.") for p in reads)


def key_material(
    recipe: Any,
    variant: str,
    stage: Any,
    *,
    version: int,
    tools: tuple[str, ...],
    inputs: dict[str, str],
    data_fingerprint: str | None,
) -> dict[str, Any]:
    """Everything a stage's key hashes (see the module docstring)."""
    reads = stage.reads(recipe, variant)
    material = {
        "stage": stage.type,
        "impl": version,
        "reads": {canonical(recipe, p): read_value(recipe, variant, p) for p in reads},
        "inputs": inputs,
        "data": data_fingerprint if reads_data(reads) else None,
        "tools": versions(*tools),
    }
    from edgeres import dist

    if stage.trains() and dist.world_size() > 1:
        # Trained by several processes (per-process BatchNorm statistics, another summation order): not the weights
        # one process makes, so keyed apart. One process keeps the keys it always had.
        material["world"] = {"size": dist.world_size(), **recipe.distributed.model_dump(mode="json")}
    return material


def stage_key(material: dict[str, Any]) -> str:
    return sha256_json(material)


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return sorted(x for x in line.split(":", 1)[1].split() if ISA_FLAG.match(x))
    except OSError:
        pass
    return []


@cache
def host_facts() -> dict[str, Any]:
    """What makes a measurement or a CPU-specific engine belong to this machine."""
    from edgeres.measure import cpu_name

    return {
        "cpu": cpu_name(),
        "isa": cpu_flags(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "runtimes": versions("onnxruntime", "openvino", "torch", "tensorrt", "numpy"),
    }


@cache
def source_digest() -> str:
    """sha256 over edgeres' own code and data files (path and content of each)."""
    h = hashlib.sha256()
    for f in sorted(p for p in PACKAGE.rglob("*") if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts):
        h.update(f.relative_to(PACKAGE).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()
