"""The TensorRT timing cache shared by every build for one device and TensorRT version.

TensorRT times candidate kernels (tactics) while it builds, and noise decides between close ones: two builds of one
ONNX can pick different kernels. The timing cache records the choices, so a rebuild that loads it picks the same
ones (and builds faster). A cache is valid only for the TensorRT version and GPU that wrote it, so it is kept per
device: `<cache root>/tensorrt-timing/<key>.cache`, the key naming the TensorRT version, compute capability, GPU,
SM count and Jetson board (`timing_cache_key`). The cache root is edgeres' artifact cache (`--cache`,
$EDGERES_CACHE, else ~/.cache/edgeres), so builds of different recipes and variants on one device share it.

Builds of the same device can run at once (two variants, two recipes): the file is read and written under an
exclusive lock beside it (`cache_lock`), written atomically, and a build merges what another wrote meanwhile before
replacing the file (edgeres.tensorrt.build). TensorRT itself refuses a cache from another device or version
(`set_timing_cache(..., ignore_mismatch=False)`); the build then starts a fresh one and says so.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from edgeres.artifact import sha256_json
from edgeres.errors import CacheError
from edgeres.locks import held
from edgeres.tensorrt.facts import DeviceFacts

TIMING_DIR = "tensorrt-timing"
LOCK_TIMEOUT_S = 600.0  # a build holds the lock only while it reads or writes the file: seconds, not minutes


def timing_cache_key(facts: DeviceFacts) -> str | None:
    """A file name stem for this device and TensorRT version, or None without TensorRT (no cache to share)."""
    if facts.trt_version is None:
        return None
    identity = {
        "tensorrt": facts.trt_version,
        "compute_capability": facts.compute_capability,
        "gpu": facts.gpu_name,
        "sm_count": facts.sm_count,
        "board": facts.board,
    }
    sm = (facts.compute_capability or "unknown").replace(".", "")
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", facts.board or facts.gpu_name or "gpu").strip("-").lower()[:40]
    return f"trt{facts.trt_version}-sm{sm}-{gpu}-{sha256_json(identity)[:12]}"


def shared_timing_cache(root: Path, facts: DeviceFacts) -> Path | None:
    """The shared timing cache file for this device under the cache root, or None without TensorRT."""
    key = timing_cache_key(facts)
    return None if key is None else root / TIMING_DIR / f"{key}.cache"


@contextlib.contextmanager
def cache_lock(path: Path, *, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive lock on `<path>.lock` while reading or replacing the timing cache `path`."""
    lock = path.with_name(path.name + ".lock")

    def timed_out(_pid: str) -> CacheError:
        return CacheError(
            f"the TensorRT timing cache {path} stayed locked by another build for {timeout_s:g} s. Wait "
            f"for that build to finish, or delete {lock} if no build is running."
        )

    with held(lock, timeout_s=timeout_s, timed_out=timed_out):
        yield
