"""Reading and writing bundle archives (plain POSIX tar) without trusting them.

A bundle comes from elsewhere, so every member is checked before anything is written: only regular files, with
relative names made of safe components (letters, digits, `_`, `.`, `-`; no `..`, no absolute path, no backslash, no
empty or hidden component), each name once (also ignoring case, for case-insensitive file systems), at most
MAX_MEMBERS members and MAX_BYTES in all. Symbolic and hard links, devices, FIFOs, sparse and contiguous files are
refused, as are directory entries (edgeres writes none). Only then are the files written, each created new
(O_EXCL, O_NOFOLLOW) inside a folder this process made. Nothing in an archive is executed or unpickled.

Written archives are deterministic: members in the order given, mtime 0, owner 0/0 without names, mode 0644
(0755 for a device kit's build.sh, which is meant to be run).
"""

from __future__ import annotations

import os
import re
import tarfile
import tempfile
from pathlib import Path

from edgeres.errors import BundleError

MAX_MEMBERS = 1000
MAX_BYTES = 64 << 30  # a ResNet-152 FP32 engine plus its ONNX is well under 2 GiB; this only stops a runaway archive
COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
EXECUTABLE = {"engine/build.sh"}
KIND = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.DIRTYPE: "a directory entry",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


def unsafe_name(name: str) -> str | None:
    """Why `name` may not be a bundle member's name, or None when it is a safe relative path."""
    if not name:
        return "an empty name"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if "\\" in name or "\0" in name:
        return "a backslash or NUL byte"
    parts = name.split("/")
    if ".." in parts:
        return "a '..' component (path traversal)"
    bad = [p for p in parts if not COMPONENT.match(p)]
    if bad:
        return f"the component {bad[0]!r} (allowed: letters, digits, '_', '.', '-', not starting with '.' or '-')"
    return None


def check_members(path: Path) -> list[tarfile.TarInfo]:
    """Every member of the archive at `path`, each checked (see the module docstring); raises BundleError naming the
    first one refused. Reads headers only."""
    out: list[tarfile.TarInfo] = []
    seen: dict[str, str] = {}
    total = 0
    try:
        with tarfile.open(path, "r:") as tf:
            while (m := tf.next()) is not None:
                if len(out) >= MAX_MEMBERS:
                    raise BundleError(f"{path}: more than {MAX_MEMBERS} members; not an edgeres bundle")
                if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                    what = KIND.get(m.type, f"a member of type {m.type!r}")
                    raise BundleError(
                        f"{path}: member {m.name!r} is {what}; a bundle holds regular files only, so it is refused "
                        "and nothing was extracted"
                    )
                why = unsafe_name(m.name)
                if why is not None:
                    raise BundleError(f"{path}: member name {m.name!r} has {why}; refused, nothing was extracted")
                folded = m.name.casefold()
                if folded in seen:
                    raise BundleError(
                        f"{path}: member {m.name!r} appears twice (or as {seen[folded]!r}, equal ignoring case), so "
                        "one would overwrite the other; refused, nothing was extracted"
                    )
                seen[folded] = m.name
                total += m.size
                if total > MAX_BYTES:
                    raise BundleError(f"{path}: members add up to more than {MAX_BYTES >> 30} GiB; refused")
                out.append(m)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{path} cannot be read as a plain (uncompressed) tar archive: {exc}") from None
    # A file and a folder of one name (`a` and `a/b`) cannot both exist.
    folders = {"/".join(m.name.split("/")[:i]).casefold() for m in out for i in range(1, m.name.count("/") + 1)}
    clash = [m.name for m in out if m.name.casefold() in folders]
    if clash:
        raise BundleError(f"{path}: member {clash[0]!r} is both a file and a folder of other members; refused")
    return out


def extract(path: Path, dest: Path) -> list[str]:
    """Check every member, then write each regular file under `dest` (an empty folder this process made). Returns
    the member names in archive order."""
    members = check_members(path)
    with tarfile.open(path, "r:") as tf:
        for m in members:
            target = dest.joinpath(*m.name.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            if src is None:  # only regular files get here; a reader that disagrees is a corrupt archive
                raise BundleError(f"{path}: member {m.name!r} cannot be read")
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            with os.fdopen(fd, "wb") as f, src:
                written = 0
                while block := src.read(1 << 20):
                    f.write(block)
                    written += len(block)
            if written != m.size:
                raise BundleError(f"{path}: member {m.name!r} is truncated ({written} of {m.size} bytes)")
    return [m.name for m in members]


def write_tar(path: Path, files: list[tuple[str, Path]]) -> None:
    """Write (member name, source file) pairs into a deterministic tar at `path`, atomically (temporary file beside
    it, fsync, rename)."""
    for name, _ in files:
        why = unsafe_name(name)
        if why is not None:  # names come from edgeres itself: a bad one is a bug
            raise ValueError(f"bundle member name {name!r} has {why}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:", format=tarfile.PAX_FORMAT) as tf:
                for name, src in files:
                    info = tarfile.TarInfo(name)
                    info.size = src.stat().st_size
                    info.mtime = 0
                    info.mode = 0o755 if name in EXECUTABLE else 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    with open(src, "rb") as f:
                        tf.addfile(info, f)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
