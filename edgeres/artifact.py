"""Artifacts: a folder of files plus the `artifact.json` sidecar that says what they are and how they were made.

The sidecar holds the stage, its cache key, the format, the sha256 of every file, the stage config, the input
artifacts' hashes, tool versions and measured numbers. It is written last: a folder without a valid sidecar is
never taken for a finished artifact. Loading verifies file hashes on request, so nothing tampered with is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeres import faults
from edgeres.errors import CacheError

SIDECAR = "artifact.json"
_UMASK = os.umask(0)
os.umask(_UMASK)
SCHEMA_VERSION = 1


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """The artifact cache root: $EDGERES_CACHE, else $XDG_CACHE_HOME/edgeres, else ~/.cache/edgeres."""
    env = os.environ.get("EDGERES_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeres"


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-serialisable object in canonical form (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def hash_files(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder (relative POSIX paths), except the sidecar."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != SIDECAR:
            out[p.relative_to(folder).as_posix()] = sha256_file(p)
    return out


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync it, then rename it into place: readers see old or new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            faults.point("write", path.name)  # tests: a disk that fills up in the middle of a write
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


@dataclass(frozen=True)
class Artifact:
    """A finished, committed stage output in the cache."""

    path: Path
    stage: str  # stage name in the recipe
    stage_type: str
    key: str
    format: str  # torch | onnx | report
    primary: str  # main file, relative to path
    files: dict[str, str]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def content_sha256(self) -> str:
        """Identity of the artifact's content: hash over its files' hashes (independent of how it was made)."""
        return sha256_json(self.files)

    @property
    def primary_path(self) -> Path:
        return self.path / self.primary

    def verify(self) -> None:
        """Re-hash every file and refuse the artifact if one differs from its sidecar."""
        actual = hash_files(self.path)
        if actual != self.files:
            changed = sorted(set(actual.items()) ^ set(self.files.items()))
            names = sorted({name for name, _ in changed})
            raise CacheError(
                f"artifact {self.path} does not match its sidecar (changed, missing or extra: {', '.join(names)}); "
                f"it was modified after it was written. Remove it with `edgeres cache clean` and rebuild."
            )

    def deliverables(self) -> list[str]:
        """The files the sidecar says to deliver, each checked to be one of the entry's hashed files (a relative
        path inside it): a tampered sidecar cannot make a build copy from, or write to, a path outside."""
        listed = self.metadata.get("deliverables", [self.primary])
        if not isinstance(listed, list) or not listed:
            raise CacheError(
                f"cache entry {self.path} is corrupt: its sidecar's deliverables are {listed!r}, not a list of its "
                f"files. {self.rebuild_hint()}"
            )
        for rel in [self.primary, *listed]:
            if not isinstance(rel, str) or rel not in self.files or not is_inside(rel):
                raise CacheError(
                    f"cache entry {self.path} is corrupt: its sidecar names {rel!r} as a deliverable, which is not "
                    f"one of the files it hashed ({', '.join(sorted(map(str, self.files))) or 'none'}). "
                    f"{self.rebuild_hint()}"
                )
        return list(listed)

    def rebuild_hint(self) -> str:
        return f"Rebuild it with `edgeres build RECIPE --force {self.stage}`, or remove it with `edgeres cache clean`."


def is_inside(rel: str) -> bool:
    """Whether `rel` is a relative POSIX path that stays inside its folder (no absolute path, `..`, backslash)."""
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and "\\" not in rel and "\0" not in rel and ".." not in parts


def read_artifact(folder: Path) -> Artifact | None:
    """The artifact in `folder`, or None when it has no valid sidecar (never finished)."""
    side = folder / SIDECAR
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # RecursionError: deep nesting
        return None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA_VERSION:
        return None
    files = meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        return None  # file hashes that are not name -> sha256: not a sidecar edgeres wrote
    try:
        return Artifact(
            path=folder,
            stage=str(meta["stage"]),
            stage_type=str(meta["stage_type"]),
            key=str(meta["key"]),
            format=str(meta["format"]),
            primary=str(meta["primary"]),
            files=dict(files),
            metadata=meta,
        )
    except (KeyError, TypeError, ValueError):
        return None  # a sidecar missing fields is not a commit marker
