"""Cache keys: the hash of a stage's resolved inputs object (edgeres.inputs), its input artifacts, its type and
registry version, and the versions of the tools it uses; and the facts those objects hold about this host.

- `host_facts`: this machine as the runtimes see it (CPU model and instruction-set flags, cores, OS, runtime
  versions): measurements and CPU-specific engines are never reused on another machine;
- `kernel_facts`: what decides which kernels compute a result (machine, instruction-set flags, runtime versions),
  without the CPU's name or core count: quantize is keyed on it;
- `source_digest`: edgeres' own code; a benchmark measured by older code is never reused. Training stages do not
  hold it, so a code change does not throw away hours of training: bump a stage's registry version
  (edgeres.stages) when its output for the same inputs changes;
- `file_sha256`: the content of a file a recipe references (memoized by path, size and modification time).
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
from functools import cache
from pathlib import Path
from typing import Any

from edgeres.artifact import sha256_file, sha256_json
from edgeres.deps import versions

PACKAGE = Path(__file__).parent
# CPU flags that decide which kernels the runtimes pick (instruction-set extensions), not the VM's other flags.
ISA_FLAG = re.compile(r"^(sse\d.*|ssse3|avx.*|amx.*|fma|f16c|bmi\d|vnni.*|neon|asimd.*|sve.*|fp16|bf16|i8mm)$")


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


# Test hook (README: the remote cache): set, it joins the host facts, so the entries keyed by them (measurements,
# CPU-specific engines) are those of another machine, while those keyed by the kernels' facts (quantize) are shared.
TEST_HOST = "EDGERES_TEST_HOST"


@cache
def host_facts() -> dict[str, Any]:
    """What makes a measurement or a CPU-specific engine belong to this machine."""
    from edgeres.measure import cpu_name

    facts = {
        "cpu": cpu_name(),
        "isa": cpu_flags(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "runtimes": versions("onnxruntime", "openvino", "torch", "tensorrt", "numpy"),
    }
    if os.environ.get(TEST_HOST):  # a test hook: this process stands in for another machine with the same CPU
        facts["test_host"] = os.environ[TEST_HOST]
    return facts


@cache
def source_digest() -> str:
    """sha256 over edgeres' own code and data files (path and content of each)."""
    h = hashlib.sha256()
    for f in sorted(p for p in PACKAGE.rglob("*") if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts):
        h.update(f.relative_to(PACKAGE).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def kernel_facts() -> dict[str, Any]:
    """What decides the kernels a CPU runtime computes with: a result that follows them (INT8 scales collected by
    running the FP32 model, accuracy judged with this CPU's integer kernels) is the same on hosts that share these."""
    facts = host_facts()
    return {k: facts[k] for k in ("isa", "machine", "runtimes")}


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a referenced file's bytes; memoized by (resolved path, size, mtime) within one process."""
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        _FILE_DIGESTS[memo] = sha256_file(path)
    return _FILE_DIGESTS[memo]
