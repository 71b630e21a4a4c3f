"""Deploy bundles on a tiny hand-made model: layout, signatures, tampering, hostile archives, rollback, loading.

The package stage's own wiring (a real build, figures from the report, cache keys) is in test_package_stage.py;
firmware embedding in test_embed.py.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_fixtures import CLASSES, SIDE, engine_logits, images, make_bundle
from conftest import PYTHON, run_cli, subprocess_env

from edgeres.bundle.manifest import MANIFEST, SIGNATURE
from edgeres.bundle.verify import open_bundle
from edgeres.errors import BundleError

MEMBERS = [
    "manifest.json",
    "labels.txt",
    "engine/manifest.json",
    "engine/model.json",
    "engine/model.ort.onnx",
    "source/model.onnx",
    "golden/images.u8",
    "golden/inputs.f32",
    "golden/logits.f32",
]


@pytest.fixture(scope="module")
def keys(module_tmp: Any) -> dict[str, Path]:
    root = module_tmp("keys")
    for name in ("release", "other"):
        res = run_cli("keygen", str(root / name))
        assert res.code == 0, res.stderr
    return {
        "key": root / "release.key",
        "pub": root / "release.pub",
        "other_key": root / "other.key",
        "other_pub": root / "other.pub",
    }


@pytest.fixture(scope="module")
def bundles(module_tmp: Any, keys: dict[str, Path]) -> dict[str, Path]:
    root = module_tmp("bundles")
    unsigned = make_bundle(root / "tiny.tar", version=5)
    res = run_cli("sign", str(unsigned), "--key", str(keys["key"]), "--out", str(root / "signed.tar"))
    assert res.code == 0, res.stderr
    return {"unsigned": unsigned, "signed": root / "signed.tar"}


def members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path, "r:") as tf:
        return tf.getmembers()


def read_member(path: Path, name: str) -> bytes:
    with tarfile.open(path, "r:") as tf:
        f = tf.extractfile(name)
        assert f is not None
        return f.read()


def flip(path: Path, member: str, *, at: float = 0.5) -> None:
    """Flip one bit of one byte inside `member`'s data in the archive (tar headers untouched)."""
    (m,) = [m for m in members(path) if m.name == member]
    data = bytearray(path.read_bytes())
    data[m.offset_data + int(m.size * at)] ^= 0x01
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------------------------------- layout


def test_bundle_members_and_manifest(bundles: dict[str, Path]) -> None:
    ms = members(bundles["unsigned"])
    assert [m.name for m in ms] == MEMBERS
    assert all(m.isreg() and m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in ms)
    manifest = json.loads(read_member(bundles["unsigned"], MANIFEST))
    assert manifest["schema"] == "edgeres.bundle/1"
    assert manifest["version"] == 5
    assert manifest["classes"] == CLASSES
    assert read_member(bundles["unsigned"], "labels.txt").decode() == "\n".join(CLASSES) + "\n"
    assert set(manifest["files"]) == set(MEMBERS) - {MANIFEST}
    for name, entry in manifest["files"].items():
        data = read_member(bundles["unsigned"], name)
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert manifest["engine"]["primary"] == "engine/model.ort.onnx"
    assert manifest["engine"]["files"] == ["engine/model.ort.onnx"]
    golden = manifest["golden"]
    assert (golden["count"], golden["max_abs_diff"], golden["top1_must_match"]) == (3, 1e-3, True)
    assert len(read_member(bundles["unsigned"], "golden/inputs.f32")) == 3 * 3 * SIDE * SIDE * 4
    assert len(read_member(bundles["unsigned"], "golden/images.u8")) == 3 * SIDE * SIDE * 3


def test_bundles_are_deterministic(tmp_path: Path) -> None:
    a = make_bundle(tmp_path / "a" / "b.tar")
    b = make_bundle(tmp_path / "b" / "b.tar")
    assert a.read_bytes() == b.read_bytes()


def test_golden_images_are_the_surest_of_the_reference(bundles: dict[str, Path], tmp_path: Path) -> None:
    """The golden images are the candidates with the widest top-1 margin, and their logits are the engine's."""
    with _opened(bundles["unsigned"], tmp_path) as opened:
        g = opened.data["golden"]
        x = np.fromfile(opened.path(g["inputs"]), dtype="<f4").reshape(3, 3, SIDE, SIDE)
        want = np.fromfile(opened.path(g["logits"]), dtype="<f4").reshape(3, 4)
        np.testing.assert_array_equal(engine_logits(opened.path("engine/model.ort.onnx"), x), want)
        assert g["split_indices"] == sorted(g["split_indices"])


class _opened:  # a context manager for open_bundle in a test's own folder
    def __init__(self, path: Path, tmp: Path) -> None:
        self.path, self.tmp = path, tmp / "open"

    def __enter__(self) -> Any:
        self.tmp.mkdir()
        return open_bundle(self.path, self.tmp, integrity_only=True)

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.tmp)


# ------------------------------------------------------------------------------------------------ signatures


def test_keygen_writes_a_private_key_only_its_owner_reads(keys: dict[str, Path]) -> None:
    assert stat.S_IMODE(keys["key"].stat().st_mode) == 0o600
    assert keys["key"].read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert keys["pub"].read_text().startswith("-----BEGIN PUBLIC KEY-----")
    res = run_cli("keygen", str(keys["key"].with_suffix("")))
    assert res.code == 2
    assert "exists; keys are never overwritten" in res.stderr


def test_signed_bundle_verifies_and_holds_no_private_key(bundles: dict[str, Path], keys: dict[str, Path]) -> None:
    res = run_cli("verify", str(bundles["signed"]), "--key", str(keys["pub"]))
    assert res.code == 0, res.stderr
    assert f"signed by {keys['pub']}" in res.stdout
    assert [m.name for m in members(bundles["signed"])] == [*MEMBERS, SIGNATURE]
    data = bundles["signed"].read_bytes()
    secret = b"".join(keys["key"].read_bytes().splitlines()[1:-1])
    assert secret[:40] not in data and secret[-40:] not in data
    sig = json.loads(read_member(bundles["signed"], SIGNATURE))
    assert sig["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert sig["verificationMaterial"]["publicKey"]["hint"] == hashlib.sha256(keys["pub"].read_bytes()).hexdigest()


def test_model_signing_itself_verifies_an_edgeres_bundle(
    bundles: dict[str, Path], keys: dict[str, Path], tmp_path: Path
) -> None:
    """Interoperability: model-signing's own command line accepts the extracted bundle (README's commands)."""
    (tmp_path / "bundle").mkdir()
    subprocess.run(["tar", "-xf", str(bundles["signed"]), "-C", str(tmp_path / "bundle")], check=True)
    shutil.move(tmp_path / "bundle" / SIGNATURE, tmp_path / SIGNATURE)
    cmd = [PYTHON, "-m", "model_signing", "verify", "key", str(tmp_path / "bundle"), "--signature",
           str(tmp_path / SIGNATURE), "--public_key", str(keys["pub"]), "--no-ignore-git-paths"]  # fmt: skip
    ok = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(tmp_path), timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (tmp_path / "bundle" / "labels.txt").write_text("changed\n")
    bad = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(tmp_path), timeout=120)
    assert bad.returncode != 0


def test_a_device_verifies_with_ecdsa_and_sha256_alone(
    bundles: dict[str, Path], keys: dict[str, Path], tmp_path: Path
) -> None:
    """The README's device procedure, written with nothing but ECDSA P-256 and SHA-256 (what a secure element or
    mbedTLS offers): verify the signature over DSSE's encoding of the statement, then every file's digest."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    sig = json.loads(read_member(bundles["signed"], SIGNATURE))
    env = sig["dsseEnvelope"]
    payload = base64.b64decode(env["payload"])
    ptype = env["payloadType"].encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(payload), payload)
    public = serialization.load_pem_public_key(keys["pub"].read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(base64.b64decode(env["signatures"][0]["sig"]), pae, ec.ECDSA(hashes.SHA256()))
    statement = json.loads(payload)
    digests = {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
    assert set(digests) == set(MEMBERS)
    for name, digest in digests.items():
        assert hashlib.sha256(read_member(bundles["signed"], name)).hexdigest() == digest


@pytest.mark.parametrize("member", [*MEMBERS, SIGNATURE])
def test_one_flipped_byte_in_any_file_fails_verify_naming_it(
    bundles: dict[str, Path], keys: dict[str, Path], tmp_path: Path, member: str
) -> None:
    bundle = tmp_path / "b.tar"
    shutil.copyfile(bundles["signed"], bundle)
    flip(bundle, member)
    res = run_cli("verify", str(bundle), "--key", str(keys["pub"]))
    assert res.code == 9, res.stdout + res.stderr
    if member == SIGNATURE:
        assert f"{SIGNATURE} cannot be read" in res.stderr or f"{SIGNATURE} does not verify" in res.stderr
    else:
        assert f"signature check failed; changed since signing: {member} (" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("member", MEMBERS)
def test_one_flipped_byte_fails_an_integrity_check_naming_the_file(
    bundles: dict[str, Path], tmp_path: Path, member: str
) -> None:
    """Unsigned (integrity only): the manifest's own digest and the file hashes still find any changed byte."""
    bundle = tmp_path / "b.tar"
    shutil.copyfile(bundles["unsigned"], bundle)
    flip(bundle, member, at=0.3)
    res = run_cli("verify", str(bundle), "--integrity-only")
    assert res.code == 9, res.stdout + res.stderr
    if member == MANIFEST:
        assert "manifest.json is not valid JSON" in res.stderr or "does not match its own digest" in res.stderr
    else:
        assert f"bundle files do not match manifest.json: changed: {member} (sha256" in res.stderr


def test_wrong_key_missing_signature_and_no_key(bundles: dict[str, Path], keys: dict[str, Path]) -> None:
    wrong = run_cli("verify", str(bundles["signed"]), "--key", str(keys["other_pub"]))
    assert wrong.code == 9
    assert "the signature was made with key " in wrong.stderr
    assert "pass the public key of the signer" in wrong.stderr
    either = run_cli("verify", str(bundles["signed"]), "--key", str(keys["other_pub"]), "--key", str(keys["pub"]))
    assert either.code == 0, either.stderr  # key rotation: devices trust the old and the new key for a while
    unsigned = run_cli("verify", str(bundles["unsigned"]), "--key", str(keys["pub"]))
    assert unsigned.code == 9
    assert "is not signed (no signature.sig)" in unsigned.stderr
    nokey = run_cli("verify", str(bundles["unsigned"]))
    assert nokey.code == 2
    assert "(CLI: --key PUBLIC.pem, repeatable" in nokey.stderr
    integrity = run_cli("verify", str(bundles["unsigned"]), "--integrity-only")
    assert integrity.code == 0
    assert "integrity only (signature not checked)" in integrity.stdout


def test_resigning_with_a_new_key_replaces_the_signature(
    bundles: dict[str, Path], keys: dict[str, Path], tmp_path: Path
) -> None:
    rotated = tmp_path / "rotated.tar"
    res = run_cli("sign", str(bundles["signed"]), "--key", str(keys["other_key"]), "--out", str(rotated))
    assert res.code == 0, res.stderr
    assert [m.name for m in members(rotated)] == [*MEMBERS, SIGNATURE]
    assert run_cli("verify", str(rotated), "--key", str(keys["other_pub"])).code == 0
    assert run_cli("verify", str(rotated), "--key", str(keys["pub"])).code == 9


def test_an_inconsistent_bundle_is_not_signed(bundles: dict[str, Path], keys: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar"
    shutil.copyfile(bundles["unsigned"], bundle)
    flip(bundle, "engine/model.ort.onnx")
    res = run_cli("sign", str(bundle), "--key", str(keys["key"]))
    assert res.code == 9
    assert "changed: engine/model.ort.onnx" in res.stderr


# ------------------------------------------------------------------------------------------------ rollback


def test_anti_rollback_refuses_an_older_version(bundles: dict[str, Path], keys: dict[str, Path]) -> None:
    ok = run_cli("verify", str(bundles["signed"]), "--key", str(keys["pub"]), "--min-version", "5")
    assert ok.code == 0
    old = run_cli("verify", str(bundles["signed"]), "--key", str(keys["pub"]), "--min-version", "6")
    assert old.code == 9
    assert "has version 5, older than 6, the lowest this device accepts (anti-rollback)" in old.stderr


# ------------------------------------------------------------------------------------------- hostile archives


def hostile(path: Path, specs: list[tuple[str, str, bytes]]) -> Path:
    """A tar of (name, kind, data) members; kind: file, dir, symlink, hardlink, chr, blk, fifo."""
    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data in specs:
            info = tarfile.TarInfo(name)
            info.type = {
                "file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]  # fmt: skip
            if kind in ("symlink", "hardlink"):
                info.linkname = data.decode()
                tf.addfile(info)
            elif kind == "file":
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([("ABS", "file", b"x")], "has an absolute path"),
        ([("../escaped.txt", "file", b"x")], "has a '..' component (path traversal)"),
        ([("golden/../../escaped.txt", "file", b"x")], "has a '..' component (path traversal)"),
        ([("manifest.json", "file", b"{}"), ("engine", "symlink", b"/etc")], "is a symbolic link"),
        ([("passwd", "hardlink", b"/etc/passwd")], "is a hard link"),
        ([("console", "chr", b"")], "is a character device"),
        ([("disk", "blk", b"")], "is a block device"),
        ([("pipe", "fifo", b"")], "is a FIFO"),
        ([("engine", "dir", b"")], "is a directory entry"),
        ([("a.txt", "file", b"1"), ("a.txt", "file", b"2")], "appears twice"),
        ([("A.txt", "file", b"1"), ("a.txt", "file", b"2")], "equal ignoring case"),
        ([("a", "file", b"1"), ("a/b", "file", b"2")], "is both a file and a folder"),
        ([("a\\..\\b", "file", b"1")], "a backslash"),
        ([(".hidden", "file", b"1")], "the component '.hidden'"),
        ([("C:evil", "file", b"1")], "has an absolute path"),
    ],
)
def test_hostile_archives_are_refused_before_anything_is_written(
    tmp_path: Path, specs: list[tuple[str, str, bytes]], message: str
) -> None:
    escaped = tmp_path / "escaped.txt"
    specs = [(str(escaped) if name == "ABS" else name, kind, data) for name, kind, data in specs]
    bundle = hostile(tmp_path / "evil.tar", specs)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(BundleError, match="refused") as err:
        open_bundle(bundle, work, integrity_only=True)
    assert message in str(err.value)
    assert not escaped.exists()
    assert [p.relative_to(work).as_posix() for p in work.rglob("*")] == ["bundle"]  # nothing extracted
    res = run_cli("verify", str(bundle), "--integrity-only")
    assert res.code == 9
    assert message in res.stderr


def test_compressed_and_non_tar_files_are_refused(tmp_path: Path, bundles: dict[str, Path]) -> None:
    gz = tmp_path / "b.tar.gz"
    with tarfile.open(gz, "w:gz") as tf:
        tf.add(bundles["unsigned"], arcname="x")
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    for path in (gz, tmp_path / "junk.tar"):
        res = run_cli("verify", str(path), "--integrity-only")
        assert res.code == 9
        assert "cannot be read as a plain (uncompressed) tar archive" in res.stderr


def test_a_member_not_in_the_manifest_is_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar"
    shutil.copyfile(bundles["unsigned"], bundle)
    with tarfile.open(bundle, "a:") as tf:
        info = tarfile.TarInfo("engine/extra.so")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    res = run_cli("verify", str(bundle), "--integrity-only")
    assert res.code == 9
    assert "not in manifest.json: engine/extra.so" in res.stderr


# ---------------------------------------------------------------------------------------------------- loading


def test_load_predicts_with_the_manifest_preprocessing(bundles: dict[str, Path], keys: dict[str, Path]) -> None:
    import edgeres

    x = images(5, seed=7)
    mean = np.float32([0.5, 0.45, 0.4]).reshape(1, 3, 1, 1)
    std = np.float32([0.25, 0.2, 0.3]).reshape(1, 3, 1, 1)
    with edgeres.load(bundles["signed"], public_keys=[keys["pub"]]) as model:
        nchw = model.predict(x)
        nhwc = model.predict(x.transpose(0, 2, 3, 1))
        one = model.predict(x[0].transpose(1, 2, 0))
        source = model.opened.path("source/model.onnx")
        result = model.self_test()
        direct = engine_logits(model.opened.path("engine/model.ort.onnx"), (x / np.float32(255) - mean) / std)
    np.testing.assert_array_equal(nchw.logits, direct)
    np.testing.assert_array_equal(nchw.logits, nhwc.logits)
    np.testing.assert_array_equal(one.logits, nchw.logits[:1])
    assert nchw.labels == [CLASSES[i] for i in nchw.logits.argmax(1)]
    assert np.all((nchw.scores > 0) & (nchw.scores <= 1))
    assert not source.exists()  # the extracted bundle is removed on close
    assert result["max_abs_diff"] == 0.0  # tighter than the self-test's own tolerance (which load already checked)


def test_predict_refuses_what_the_model_does_not_take(bundles: dict[str, Path]) -> None:
    """Bad input to the Python API is an edgeres UsageError saying what to pass, never a runtime's raw error."""
    import edgeres
    from edgeres.errors import UsageError

    with edgeres.load(bundles["unsigned"], integrity_only=True) as model:
        with pytest.raises(UsageError, match="images must be uint8 RGB pixels"):
            model.predict(images(2).astype(np.float32))
        with pytest.raises(UsageError, match=r"the model takes RGB images of 16x16"):
            model.predict(np.zeros((2, 3, 8, 8), dtype=np.uint8))
        with pytest.raises(UsageError, match=r"predict\(\) was given no images"):
            model.predict(np.zeros((0, 3, 16, 16), dtype=np.uint8))
        with pytest.raises(UsageError, match=r"logits\(\) takes preprocessed float32 inputs; these are uint8"):
            model.logits(images(2))
        with pytest.raises(UsageError, match=r"logits\(\) was given an empty batch"):
            model.logits(np.zeros((0, 3, 16, 16), dtype=np.float32))
        with pytest.raises(UsageError, match=r"logits\(\) takes a batch of shape \(N, 3, 16, 16\); got \(2, 3, 8, 8\)"):
            model.logits(np.zeros((2, 3, 8, 8), dtype=np.float32))
        for bad in (0, 5, True, 1.5):
            with pytest.raises(UsageError, match="top_k="):
                model.predict(images(1), top_k=bad)  # type: ignore[arg-type]
    for options in ({"threads": 0}, {"min_version": -1}):
        with pytest.raises(UsageError):
            edgeres.load(bundles["unsigned"], integrity_only=True, **options)  # type: ignore[arg-type]


def test_predict_gives_the_top_k_classes(bundles: dict[str, Path]) -> None:
    import edgeres

    x = images(6, seed=3)
    with edgeres.load(bundles["unsigned"], integrity_only=True) as model:
        one = model.predict(x)
        three = model.predict(x, top_k=3)
    order = np.argsort(-three.logits, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(three.top_indices, order)
    np.testing.assert_array_equal(three.top_indices[:, 0], one.indices)
    np.testing.assert_array_equal(three.top_scores[:, 0], one.scores)
    assert np.all(np.diff(three.top_scores, axis=1) <= 0)  # most probable first
    assert three.top_labels == [[CLASSES[i] for i in row] for row in order]
    assert one.top_indices.shape == (6, 1)


def test_the_public_api_has_explicit_signatures() -> None:
    """`edgeres.load` shows its options (no **options), with threads=1 documented."""
    import inspect

    import edgeres

    params = inspect.signature(edgeres.load).parameters
    assert list(params) == [
        "bundle", "public_keys", "integrity_only", "min_version", "target", "threads", "self_test"
    ]  # fmt: skip
    assert params["threads"].default == 1
    assert "threads" in (edgeres.load.__doc__ or "")


def test_load_refuses_another_target_naming_it(bundles: dict[str, Path]) -> None:
    import edgeres

    with pytest.raises(BundleError) as err:
        edgeres.load(bundles["unsigned"], integrity_only=True, target="cpu-openvino")
    assert (
        "was not built for this device: target: the bundle is for cpu-onnxruntime (onnxruntime on cpu), this device "
        "expects cpu-openvino. Refused"
    ) in str(err.value)
    res = run_cli("verify", str(bundles["unsigned"]), "--integrity-only", "--target", "cpu-openvino")
    assert res.code == 9


def test_load_refuses_an_engine_optimised_for_instruction_sets_this_cpu_lacks(tmp_path: Path) -> None:
    import edgeres

    bundle = make_bundle(
        tmp_path / "all.tar",
        level="all",
        info={"engine": {"built_on": {"machine": os.uname().machine, "isa": ["avx2", "amx_fake", "avx512_fake"]}}},
    )
    with pytest.raises(BundleError) as err:
        edgeres.load(bundle, integrity_only=True)
    assert (
        "instruction sets: the engine was optimised at level 'all' on a CPU with amx_fake, avx512_fake, which this "
        "CPU lacks"
    ) in str(err.value)


def test_a_kit_bundle_cannot_be_loaded(tmp_path: Path) -> None:
    import edgeres

    bundle = make_bundle(
        tmp_path / "kit.tar", info={"engine": {"format": "tensorrt-kit", "runtime": "tensorrt", "files": []}}
    )
    with pytest.raises(BundleError, match=r"the bundle holds a TensorRT device kit, not an engine; run its build\.sh"):
        edgeres.load(bundle, integrity_only=True)


def test_self_test_fails_when_the_engine_computes_something_else(bundles: dict[str, Path], tmp_path: Path) -> None:
    """An engine that passes verification but does not compute the golden logits (here another model's engine,
    re-bundled with the first one's golden data) is refused at load."""
    import edgeres

    other = make_bundle(tmp_path / "other.tar", seed=3)
    work = tmp_path / "mix"
    work.mkdir()
    opened = open_bundle(other, work, integrity_only=True)
    for name in ("golden/inputs.f32", "golden/logits.f32", "golden/images.u8"):
        opened.path(name).write_bytes(read_member(bundles["unsigned"], name))
    manifest = dict(opened.data)
    for name in ("golden/inputs.f32", "golden/logits.f32", "golden/images.u8"):
        data = opened.path(name).read_bytes()
        manifest["files"] = {**manifest["files"], name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}
    from edgeres.bundle.manifest import seal
    from edgeres.bundle.tarsafe import write_tar

    opened.path(MANIFEST).write_bytes(seal(manifest))
    mixed = tmp_path / "mixed.tar"
    write_tar(mixed, [(MANIFEST, opened.path(MANIFEST)), *((n, opened.path(n)) for n in manifest["files"])])
    with pytest.raises(BundleError, match="boot self-test failed: logits differ from the golden ones by up to"):
        edgeres.load(mixed, integrity_only=True)


def test_signing_with_an_encrypted_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's release-job path: a key made with --password-env signs with the same variable and verifies; a
    wrong password or none is refused with a message that says so (exit 2). It failed before with "Cannot convert
    <class 'str'> instance to a buffer" whatever the password."""
    monkeypatch.setenv("KP", "correct horse")
    assert run_cli("keygen", str(tmp_path / "enc"), "--password-env", "KP").code == 0
    bundle = make_bundle(tmp_path / "b.tar", version=1)
    signed = tmp_path / "signed.tar"
    res = run_cli("sign", str(bundle), "--key", str(tmp_path / "enc.key"), "--password-env", "KP", "--out", str(signed))
    assert res.code == 0, res.stderr
    assert run_cli("verify", str(signed), "--key", str(tmp_path / "enc.pub")).code == 0
    monkeypatch.setenv("KP", "wrong")
    wrong = run_cli("sign", str(bundle), "--key", str(tmp_path / "enc.key"), "--password-env", "KP")
    assert wrong.code == 2 and "the password does not decrypt it" in wrong.stderr
    none = run_cli("sign", str(bundle), "--key", str(tmp_path / "enc.key"))
    assert none.code == 2 and "(CLI: --password-env VAR" in none.stderr, none.stderr


def test_load_cleans_up_after_itself_and_takes_one_key_as_a_path(
    bundles: dict[str, Path], keys: dict[str, Path]
) -> None:
    """Issue 26, item 2: each `edgeres.load` left its extracted bundle in /tmp unless closed, surviving `del`, gc and
    interpreter exit, and `predict` after `close()` raised AttributeError. Item 7: one key as a string was read as
    characters ("public key r does not exist")."""
    import gc

    import edgeres

    model = edgeres.load(str(bundles["signed"]), public_keys=str(keys["pub"]))
    folder = model._workdir
    assert folder.is_dir()
    del model
    gc.collect()
    assert not folder.exists()  # dropped without close(): removed all the same
    with edgeres.load(bundles["signed"], public_keys=keys["pub"]) as model:
        folder = model._workdir
    assert not folder.exists()
    with pytest.raises(BundleError, match="this model was closed; load the bundle again"):
        model.predict(np.zeros((model.preprocessing.height, model.preprocessing.width, 3), dtype=np.uint8))
    # exits without close(): the folder goes at interpreter exit
    script = "import edgeres, sys; m = edgeres.load(sys.argv[1], integrity_only=True); print(m._workdir)"
    out = subprocess.run([sys.executable, "-c", script, str(bundles["unsigned"])], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not Path(out.stdout.strip()).exists()


# ------------------------------------------------------------------------------------- verify and embed wording


def with_signature(src: Path, dest: Path, signature: bytes) -> Path:
    """A copy of bundle `src` whose signature.sig holds `signature` (the other members unchanged)."""
    from edgeres.bundle.tarsafe import write_tar

    work = dest.parent / f".{dest.name}.members"
    work.mkdir()
    files = []
    for m in members(src):
        path = work / m.name.replace("/", "__")
        path.write_bytes(signature if m.name == SIGNATURE else read_member(src, m.name))
        files.append((m.name, path))
    write_tar(dest, files)
    return dest


def test_verify_prints_no_ok_before_a_refusal(bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """`verify --target X` printed "OK, 9 files match" and then refused with exit 9; so did `--load` before a failed
    self-test. OK is printed only once every check passed."""
    res = run_cli("verify", str(bundles["unsigned"]), "--integrity-only", "--target", "cpu-openvino")
    assert res.code == 9
    assert res.stdout == ""
    assert "was not built for this device: target: the bundle is for cpu-onnxruntime" in res.stderr
    from edgeres.bundle.load import Model

    def failing(self: Any) -> dict[str, Any]:
        raise BundleError("boot self-test failed: logits differ (test)")

    monkeypatch.setattr(Model, "self_test", failing)
    res = run_cli("verify", str(bundles["unsigned"]), "--integrity-only", "--load")
    assert res.code == 9
    assert res.stdout == ""
    assert "boot self-test failed" in res.stderr
    ok = run_cli("verify", str(bundles["unsigned"]), "--integrity-only", "--target", "cpu-onnxruntime")
    assert ok.code == 0, ok.stderr
    assert ok.stdout.startswith(f"{bundles['unsigned']}: OK, 9 files match the manifest")


def test_verify_and_embed_refuse_an_unknown_target_as_usage(bundles: dict[str, Path], tmp_path: Path) -> None:
    for cmd in (["verify"], ["embed", "--format", "c", "--out", str(tmp_path / "fw")]):
        res = run_cli(*cmd, str(bundles["unsigned"]), "--integrity-only", "--target", "foo")
        assert res.code == 2, res.stderr
        assert res.stdout == ""
        assert res.stderr.startswith(
            "edgeres: usage error: --target 'foo' is not a target edgeres knows: pass one of cpu-onnxruntime, "
            "cpu-openvino, jetson-orin, nvidia-gpu"
        )
    assert not (tmp_path / "fw").exists()
    # A recipe's own target is known to the bundles built for it.
    custom = make_bundle(tmp_path / "custom.tar", info={"target": {"name": "my-board"}})
    res = run_cli("verify", str(custom), "--integrity-only", "--target", "my-board")
    assert res.code == 0, res.stderr
    res = run_cli("verify", str(custom), "--integrity-only", "--target", "my-other-board")
    assert res.code == 2
    assert "pass one of cpu-onnxruntime, cpu-openvino, jetson-orin, my-board, nvidia-gpu" in res.stderr


def test_min_version_must_not_be_negative(bundles: dict[str, Path]) -> None:
    res = run_cli("verify", str(bundles["unsigned"]), "--integrity-only", "--min-version", "-1")
    assert res.code == 2
    assert "Invalid value for '--min-version': -1 is not in the range 0<=x<=4294967295" in res.stderr
    assert res.stdout == ""


def test_integrity_only_warns_about_a_signature_it_did_not_check(
    bundles: dict[str, Path], keys: dict[str, Path], tmp_path: Path
) -> None:
    res = run_cli("verify", str(bundles["signed"]), "--integrity-only")
    assert res.code == 0, res.stderr
    assert "integrity only (signature present, not checked)" in res.stdout
    assert res.stderr.startswith(f"warning: {bundles['signed']} carries a signature ({SIGNATURE}) and")
    assert "so it was not checked: the files match the manifest, but who made them is unknown" in res.stderr
    assert "cannot even be read" not in res.stderr
    garbage = with_signature(bundles["signed"], tmp_path / "garbage.tar", b"\x00not a signature\xff")
    res = run_cli("verify", str(garbage), "--integrity-only")
    assert res.code == 0, res.stderr  # integrity only was asked for, and the files match
    assert "cannot even be read as a model-signing signature" in res.stderr
    assert "Pass --key PUBLIC.pem to check the signature" in res.stderr
    assert run_cli("verify", str(garbage), "--key", str(keys["pub"])).code == 9
    res = run_cli("embed", str(garbage), "--format", "bin", "--out", str(tmp_path / "fw"), "--integrity-only")
    assert res.code == 0, res.stderr
    assert "cannot even be read as a model-signing signature" in res.stderr
    unsigned = run_cli("verify", str(bundles["unsigned"]), "--integrity-only")
    assert unsigned.stderr == ""  # nothing to warn about: there is no signature


def test_verify_load_prints_a_readable_summary(bundles: dict[str, Path]) -> None:
    res = run_cli("verify", str(bundles["unsigned"]), "--integrity-only", "--load")
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 3, res.stdout
    assert lines[0].startswith(f"{bundles['unsigned']}: OK, 9 files match the manifest")
    assert lines[1].startswith("loaded: onnx engine engine/model.ort.onnx on onnxruntime ")
    assert lines[1].endswith(" (fp32)")
    assert lines[2].startswith("self-test: passed on 3 golden images: logits within ")
    assert "top-1 class the same on every image" in lines[2]
    assert "{" not in res.stdout and "'ran'" not in res.stdout


def test_embed_refuses_a_prefix_it_would_change_and_a_bad_alignment(bundles: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "fw"
    for prefix, suggested in (("my-model", "my_model"), ("Model", "model"), ("int", "m_int"), ("9lives", "m_9lives")):
        res = run_cli("embed", str(bundles["unsigned"]), "--format", "c", "--out", str(out), "--prefix", prefix,
                      "--integrity-only")  # fmt: skip
        assert res.code == 2, res.stderr
        assert res.stderr.startswith(f"edgeres: usage error: --prefix {prefix!r} cannot be used as it is")
        assert res.stderr.rstrip().endswith(f"pass --prefix {suggested}")
    for align in ("3", "0", "8192"):
        res = run_cli("embed", str(bundles["unsigned"]), "--format", "bin", "--out", str(out), "--align", align,
                      "--integrity-only")  # fmt: skip
        assert res.code == 2, res.stderr
        assert res.stderr.startswith(f"edgeres: usage error: --align {align}: the alignment must be a power of two")
    assert not out.exists()
    res = run_cli("embed", str(bundles["unsigned"]), "--format", "c", "--out", str(out), "--prefix", "my_model",
                  "--integrity-only")  # fmt: skip
    assert res.code == 0, res.stderr
    assert (out / "my_model.h").is_file()
