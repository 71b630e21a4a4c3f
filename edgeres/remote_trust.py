"""What makes a remote cache entry trustworthy (edgeres.remote): its signature, and where the code that built it
came from.

- `sign(payload, key)` / `signer_of(envelope, trusted)`: ECDSA P-256 / SHA-256 over the payload bytes, the envelope
  `{"schema", "payload" (base64), "signature" (base64 DER), "key_id"}` (key id: sha256 of the PEM public key, as
  bundle signatures name keys).
- `source_state()`: edgeres' version, the sha256 of its package files, and the git commit of the checkout it runs
  from or the installed release, with the package files that differ from it. Training keys do not hash edgeres'
  source, so a build pushes only when that list is empty.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata
import os
import subprocess
from pathlib import Path
from typing import Any

from edgeres import __version__
from edgeres.deps import require
from edgeres.errors import UsageError
from edgeres.keys import PACKAGE, source_digest

SCHEMA = "edgeres.remote-entry/1"
ENV_KEY_PASSWORD = "EDGERES_CACHE_KEY_PASSWORD"


@functools.cache
def source_state(package: Path = PACKAGE) -> dict[str, Any]:
    """Where edgeres' code comes from: its version, the sha256 of its package files, and either the git commit of
    the checkout it runs from (`modified`: its package files that differ from that commit, untracked ones too) or
    the installed release (`modified`: files that differ from the installed RECORD). Files outside the package (a
    checkout's tests, notes) do not matter."""
    state: dict[str, Any] = {"version": __version__, "source_sha256": source_digest()}
    git = _git(package, "rev-parse", "--show-toplevel")
    if git is not None:
        top = Path(git.strip())
        rel = package.resolve().relative_to(top.resolve()).as_posix()
        status = _git(top, "status", "--porcelain", "--untracked-files=all", "--", rel) or ""
        state["commit"] = (_git(top, "rev-parse", "HEAD") or "").strip() or None
        state["modified"] = sorted(line[3:] for line in status.splitlines() if line.strip())
        return state
    state["release"] = __version__
    state["modified"] = _differs_from_record(package)
    return state


def _git(where: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _differs_from_record(package: Path) -> list[str]:
    """Package files whose sha256 differs from the installed distribution's RECORD (or that it does not list)."""
    try:
        files = importlib.metadata.distribution("edgeres").files or []
    except importlib.metadata.PackageNotFoundError:
        return ["(not a git checkout and not an installed distribution: nothing to compare the code with)"]
    site = package.parent
    recorded = {str(f): f.hash.value for f in files if f.hash is not None and str(f).startswith("edgeres/")}
    if not recorded:
        return ["(the installed distribution has no RECORD hashes to compare the code with)"]
    out = []
    for p in sorted(package.rglob("*")):
        if not p.is_file() or "__pycache__" in p.parts or p.suffix not in (".py", ".yaml"):
            continue
        rel = p.relative_to(site).as_posix()
        digest = base64.urlsafe_b64encode(hashlib.sha256(p.read_bytes()).digest()).rstrip(b"=").decode()
        if recorded.get(rel) != digest:
            out.append(rel)
    return out


# --------------------------------------------------------------------------------------------------- signatures


def _crypto() -> tuple[Any, Any, Any]:
    require("cryptography", purpose="sign and verify remote cache entries")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return hashes, serialization, ec


def sign(payload: bytes, private_key: Path) -> dict[str, str]:
    """The envelope of `payload` signed with the P-256 private key in `private_key` (PEM; encrypted ones take their
    password from $EDGERES_CACHE_KEY_PASSWORD)."""
    from edgeres.bundle.sign import key_id

    hashes, serialization, ec = _crypto()
    password = os.environ.get(ENV_KEY_PASSWORD)
    try:
        key = serialization.load_pem_private_key(
            private_key.read_bytes(), password=password.encode() if password else None
        )
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"cache signing key {private_key} cannot be read ({exc}); it must be a PEM P-256 private key "
            f"(`edgeres keygen`), with its password in {ENV_KEY_PASSWORD} if it is encrypted"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise UsageError(f"cache signing key {private_key} is not an ECDSA P-256 key (`edgeres keygen` writes one)")
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return {
        "schema": SCHEMA,
        "payload": base64.b64encode(payload).decode(),
        "signature": base64.b64encode(signature).decode(),
        "key_id": key_id(public),
    }


def check_public_key(path: Path) -> None:
    """Refuse a trusted-key file that is not a PEM ECDSA P-256 public key (else every entry would seem unsigned)."""
    _, serialization, ec = _crypto()
    try:
        public = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"trusted cache key {path} is not a PEM public key ({exc}); pass the .pub file `edgeres keygen` wrote"
        ) from exc
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise UsageError(f"trusted cache key {path} is not an ECDSA P-256 public key (`edgeres keygen` writes one)")


def signer_of(envelope: dict[str, Any], trusted: tuple[Path, ...]) -> tuple[Path | None, bytes]:
    """(the trusted public key whose signature over the payload verifies, or None; the payload bytes).
    ValueError when the envelope is not one edgeres writes."""
    from cryptography.exceptions import InvalidSignature

    hashes, serialization, ec = _crypto()
    if not isinstance(envelope, dict) or envelope.get("schema") != SCHEMA:
        raise ValueError(f"its schema is {envelope.get('schema') if isinstance(envelope, dict) else None!r}")
    if not envelope.get("signature"):
        raise ValueError("it is unsigned")
    try:
        payload = base64.b64decode(str(envelope["payload"]), validate=True)
        signature = base64.b64decode(str(envelope["signature"]), validate=True)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"its payload or signature is not base64 ({exc})") from exc
    for path in trusted:
        try:
            public = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError):
            continue
        if not isinstance(public, ec.EllipticCurvePublicKey):
            continue
        try:
            public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
            return path, payload
        except InvalidSignature:
            continue
    return None, payload
