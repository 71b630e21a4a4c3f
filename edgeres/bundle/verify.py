"""Opening a bundle: safe extraction, then the signature, the manifest and every file, before anything is loaded.

`open_bundle` is the one way edgeres reads a bundle (`edgeres verify`, `sign`, `embed`, `edgeres.load`):

1. every tar member is checked and only then extracted (edgeres.bundle.tarsafe);
2. with public keys, the signature must be there and verify with one of them over every file, manifest included
   (a file that differs is named); without keys, only `integrity_only=True` goes on, and says so;
3. the manifest must match its own digest and schema, and every file its sha256 and size; no file may be missing
   or extra (each one that differs is named);
4. with `min_version`, an older bundle is refused (anti-rollback).

Only JSON is parsed before these checks pass; engines, arrays and images are read after them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeres.bundle.manifest import MANIFEST, SIGNATURE, Manifest, check_files, parse
from edgeres.bundle.tarsafe import extract
from edgeres.errors import BundleError, UsageError

CONTENT = "bundle"  # the folder the files are extracted to (and signed in): its name is part of the signed statement


@dataclass(frozen=True)
class Opened:
    source: Path
    root: Path  # the extracted files, signature left out
    manifest: Manifest
    data: dict[str, Any]  # the manifest as JSON
    signature: Path | None
    signed_by: Path | None  # the public key that verified the signature; None when only integrity was checked
    names: tuple[str, ...]  # the files in archive order, signature left out

    def path(self, rel: str) -> Path:
        return self.root.joinpath(*rel.split("/"))


def open_bundle(
    path: Path,
    workdir: Path,
    *,
    public_keys: list[Path] | tuple[Path, ...] = (),
    integrity_only: bool = False,
    min_version: int | None = None,
) -> Opened:
    """Extract the bundle at `path` into `workdir` (an empty folder this process made) and check it (module doc)."""
    if not public_keys and not integrity_only:
        raise UsageError(
            f"no public key given to check {path}'s signature: pass the signer's public key (CLI: --key PUBLIC.pem, "
            "repeatable; Python: public_keys=[...]), or ask for integrity only (CLI: --integrity-only; Python: "
            "integrity_only=True) to check only that the files match the manifest, not who made them"
        )
    if not path.is_file():
        raise UsageError(f"bundle {path} does not exist")
    root = workdir / CONTENT
    root.mkdir()
    names = extract(path, root)
    source = str(path)
    signature = None
    if SIGNATURE in names:
        signature = workdir / SIGNATURE
        os.replace(root / SIGNATURE, signature)
        names.remove(SIGNATURE)
    signed_by = None
    if public_keys:
        if signature is None:
            raise BundleError(
                f"{source} is not signed (no {SIGNATURE}), and a signed bundle was asked for: sign it with "
                "`edgeres sign BUNDLE --key PRIVATE.pem`"
            )
        from edgeres.bundle.sign import verify_folder

        signed_by = verify_folder(root, signature, list(public_keys), source=source)
    if MANIFEST not in names:
        raise BundleError(f"{source} has no {MANIFEST}; not an edgeres bundle")
    manifest, data = parse((root / MANIFEST).read_bytes(), source=source)
    check_files(root, manifest, names, source=source)
    if min_version is not None and manifest.version < min_version:
        raise BundleError(
            f"{source} has version {manifest.version}, older than {min_version}, the lowest this device accepts "
            "(anti-rollback): an older bundle is never installed over a newer one"
        )
    return Opened(Path(path), root, manifest, data, signature, signed_by, tuple(names))


def read_golden(opened: Opened) -> tuple[Any, Any, Any] | None:
    """The golden (images or None, inputs, logits) arrays of a verified bundle, their sizes checked against the
    manifest; None where it carries none."""
    from edgeres.deps import require

    np = require("numpy")
    g = opened.manifest.golden
    if g is None:
        return None
    n, c = g.count, len(opened.manifest.classes)
    h, w = opened.manifest.input.height, opened.manifest.input.width
    arrays: list[Any] = []
    for rel, dtype, shape in ((g.images, np.uint8, (n, h, w, 3)), (g.inputs, "<f4", (n, 3, h, w)),
                              (g.logits, "<f4", (n, c))):  # fmt: skip
        if rel is None:
            arrays.append(None)
            continue
        if rel not in opened.manifest.files:
            raise BundleError(f"{opened.source}: golden file {rel!r} is not one the manifest lists; refused")
        data = np.fromfile(opened.path(rel), dtype=dtype)
        if data.size != int(np.prod(shape)):
            raise BundleError(
                f"{opened.source}: {rel} holds {data.size} values, not the {shape} the manifest says; refused"
            )
        arrays.append(data.reshape(shape))
    return arrays[0], arrays[1], arrays[2]
