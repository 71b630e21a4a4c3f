"""Signing keys and signatures in the OpenSSF model-signing format (the `model-signing` package, key-based).

A signature (`signature.sig` in the bundle, a Sigstore bundle in JSON) is an ECDSA signature over an in-toto
statement that lists the sha256 of every other file of the bundle, the manifest included; verifying re-hashes every
file. Why this format: any model-signing verifier checks an edgeres bundle (`model_signing verify key ...`), it works
offline with a key pair (no transparency log, no identity provider), and ECDSA P-256 is what secure elements and
microcontroller crypto engines verify in hardware. Keys are NIST P-256 (the curve model-signing and most devices
support), PEM: PKCS#8 private keys, SubjectPublicKeyInfo public keys. A private key is only ever read from the path
given; nothing edgeres writes (bundle, report, C source) contains it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from edgeres.artifact import sha256_file
from edgeres.deps import require
from edgeres.errors import BundleError, UsageError

PURPOSE = "sign and verify bundles"
IN_TOTO = "application/vnd.in-toto+json"


def key_id(public_pem: bytes) -> str:
    """A key's id: sha256 of its PEM public key (the `hint` model-signing writes into a signature)."""
    return hashlib.sha256(public_pem).hexdigest()


def generate_key(private_path: Path, public_path: Path, *, password: bytes | None = None) -> str:
    """Write a new P-256 key pair: the private key created 0600 and never overwritten, the public key beside it.
    Returns the key id."""
    require("cryptography", purpose=PURPOSE)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    for p in (private_path, public_path):
        if p.exists():
            raise UsageError(f"{p} exists; keys are never overwritten. Choose another name or remove it first")
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: Any = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(public_pem)
    return key_id(public_pem)


def _hashing_config() -> Any:
    """Every file is signed: model-signing's default leaves out git files (.gitignore...), edgeres leaves out none."""
    ms = require("model_signing", purpose=PURPOSE)
    return ms.hashing.Config().set_ignored_paths(paths=[], ignore_git_paths=False)


def sign_folder(content: Path, signature: Path, private_key: Path, *, password: str | None = None) -> None:
    """Sign every file under `content` into `signature` (model-signing, elliptic-curve key). `password` decrypts an
    encrypted key (model-signing, like `cryptography`, takes it as bytes: a str failed with "Cannot convert")."""
    ms = require("model_signing", purpose=PURPOSE)
    require("OpenSSL", purpose=PURPOSE)  # model-signing 1.1 imports pyOpenSSL without declaring it
    if not private_key.is_file():
        raise UsageError(f"private key {private_key} does not exist; make one with `edgeres keygen`")
    try:
        secret = password.encode("utf-8") if password is not None else None
        config = ms.signing.Config().use_elliptic_key_signer(private_key=private_key, password=secret)
        config.set_hashing_config(_hashing_config()).sign(content, signature)
    except (ValueError, TypeError) as exc:  # unreadable key, wrong password, unsupported curve
        if password is not None:
            raise UsageError(
                f"cannot sign with {private_key}: the password does not decrypt it (or the key is unreadable: {exc}); "
                "check the password (CLI: the variable --password-env names)"
            ) from None
        if "encrypted" in str(exc).lower() or "password" in str(exc).lower():
            raise UsageError(
                f"cannot sign with {private_key}: the key is encrypted; give its password (CLI: --password-env VAR; "
                "Python: password=)"
            ) from None
        raise UsageError(f"cannot sign with {private_key}: {exc}") from None


def verify_folder(content: Path, signature: Path, public_keys: list[Path], *, source: str) -> Path:
    """Check the signature over every file under `content` with any of `public_keys`; returns the key that verified.
    On failure, names the files that differ from what was signed."""
    ms = require("model_signing", purpose=PURPOSE)
    require("OpenSSL", purpose=PURPOSE)
    errors = []
    for key in public_keys:
        if not key.is_file():
            raise UsageError(f"public key {key} does not exist")
        try:
            config = ms.verifying.Config().use_elliptic_key_verifier(public_key=key)
            config.set_hashing_config(_hashing_config()).verify(content, signature)
            return key
        except Exception as exc:  # model-signing raises ValueError, InvalidSignature, pydantic and JSON errors
            errors.append(f"{key.name}: {_why_not(exc)}")
    raise BundleError(f"{source}: {diagnose(content, signature, public_keys)} ({'; '.join(errors)}). Refused")


def _why_not(exc: Exception) -> str:
    """A key's failure in words (model-signing's exception class names mean nothing to a user)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "public key" in text.lower() or "pem" in text.lower() or "deserialize" in text.lower():
        return f"not a usable public key ({text[:120]})"
    return f"does not verify{f' ({text[:120]})' if text else ''}"


def read_signature(signature: Path) -> tuple[bytes, bytes, str | None]:
    """(payload, DER signature, key hint) of a model-signing signature file; ValueError when it cannot be read."""
    try:
        bundle = json.loads(signature.read_text(encoding="utf-8"))
        envelope = bundle["dsseEnvelope"]
        if envelope.get("payloadType") != IN_TOTO:
            raise ValueError(f"payload type {envelope.get('payloadType')!r}")
        hint = bundle.get("verificationMaterial", {}).get("publicKey", {}).get("hint")
        payload = base64.b64decode(envelope["payload"], validate=True)
        return payload, base64.b64decode(envelope["signatures"][0]["sig"], validate=True), hint
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def pae(payload: bytes) -> bytes:
    """What the signature signs: DSSE's pre-authentication encoding of the in-toto payload."""
    return b"DSSEv1 %d %s %d %s" % (len(IN_TOTO), IN_TOTO.encode(), len(payload), payload)


def signed_by(signature: Path, public_keys: list[Path]) -> Path | None:
    """The key whose ECDSA signature over the statement verifies (files not looked at), or None."""
    require("cryptography", purpose=PURPOSE)
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        payload, sig, _ = read_signature(signature)
    except ValueError:
        return None
    for key in public_keys:
        try:
            public = serialization.load_pem_public_key(key.read_bytes())
        except ValueError:
            continue
        if not isinstance(public, ec.EllipticCurvePublicKey):
            continue
        digest = {256: hashes.SHA256(), 384: hashes.SHA384()}.get(public.curve.key_size, hashes.SHA512())
        try:
            public.verify(sig, pae(payload), ec.ECDSA(digest))
            return key
        except InvalidSignature:
            continue
    return None


def diagnose(content: Path, signature: Path, public_keys: list[Path]) -> str:
    """Why a signature check failed, in words: the signature file itself, the signer's key, or which files differ
    from the digests it signed (named only once the signed statement itself is authentic)."""
    try:
        payload, _, hint = read_signature(signature)
    except ValueError as exc:
        return f"{signature.name} cannot be read ({exc}): it was changed or damaged, so nothing it covers is trusted"
    if signed_by(signature, public_keys) is None:
        ids = [key_id(k.read_bytes()) for k in public_keys]
        if hint and hint not in ids:
            return (
                f"the signature was made with key {hint[:16]}..., not with the given key(s) "
                f"({', '.join(i[:16] + '...' for i in ids)}); pass the public key of the signer"
            )
        return f"{signature.name} does not verify with the signer's key: the signature file was changed"
    try:
        resources = json.loads(payload)["predicate"]["resources"]
        claimed = {str(r["name"]): str(r["digest"]) for r in resources}
    except (ValueError, KeyError, TypeError) as exc:
        return f"the signed statement in {signature.name} is not model-signing's ({exc})"
    actual = {p.relative_to(content).as_posix(): p for p in content.rglob("*") if p.is_file()}
    changed = sorted(n for n in set(claimed) & set(actual) if sha256_file(actual[n]) != claimed[n])
    missing = sorted(set(claimed) - set(actual))
    extra = sorted(set(actual) - set(claimed))
    parts = []
    if changed:
        parts.append(f"changed since signing: {', '.join(changed)}")
    if missing:
        parts.append(f"missing: {', '.join(missing)}")
    if extra:
        parts.append(f"not signed: {', '.join(extra)}")
    return "signature check failed; " + ("; ".join(parts) or "the signed statement does not match these files")


def sign_bundle(bundle: Path, private_key: Path, *, out: Path | None = None, password: str | None = None) -> str:
    """Sign a bundle (replacing any earlier signature, e.g. when a key is rotated) into `out` (default: in place).
    The files are first checked against the manifest, so only a consistent bundle is signed. Returns the key id."""
    import tempfile

    from edgeres.bundle.manifest import SIGNATURE
    from edgeres.bundle.tarsafe import write_tar
    from edgeres.bundle.verify import open_bundle

    dest = out or bundle
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".edgeres-sign-", dir=dest.parent) as tmp:
        opened = open_bundle(bundle, Path(tmp), integrity_only=True)
        signature = Path(tmp) / SIGNATURE
        signature.unlink(missing_ok=True)
        sign_folder(opened.root, signature, private_key, password=password)
        write_tar(dest, [*((rel, opened.path(rel)) for rel in opened.names), (SIGNATURE, signature)])
        return read_signature(signature)[2] or "unknown"
