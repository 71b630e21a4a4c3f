"""Artifacts: sidecar reading, hashing, tamper detection, atomic writes (no builds; pure file operations)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edgeres.artifact import (
    SCHEMA_VERSION,
    SIDECAR,
    hash_files,
    read_artifact,
    sha256_json,
    write_bytes_atomic,
    write_json_atomic,
)
from edgeres.errors import CacheError


def make_entry(folder: Path, files: dict[str, bytes] | None = None) -> Path:
    """A committed-looking entry: files plus a valid sidecar listing their hashes."""
    files = files if files is not None else {"model.pt": b"weights", "model.json": b"{}", "sub/x.bin": b"\x00\x01"}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    write_json_atomic(
        folder / SIDECAR,
        {
            "schema": SCHEMA_VERSION,
            "stage": "finetune",
            "stage_type": "finetune",
            "key": "0" * 64,
            "format": "torch",
            "primary": "model.pt",
            "files": hash_files(folder),
            "metrics": {"val_top1": 0.5},
        },
    )
    return folder


def test_hash_files_lists_every_file_but_the_sidecar(tmp_path: Path) -> None:
    make_entry(tmp_path)
    assert hash_files(tmp_path) == {
        "model.json": hashlib.sha256(b"{}").hexdigest(),
        "model.pt": hashlib.sha256(b"weights").hexdigest(),
        "sub/x.bin": hashlib.sha256(b"\x00\x01").hexdigest(),
    }


def test_sha256_json_is_canonical() -> None:
    assert sha256_json({"b": 1, "a": [1, 2]}) == sha256_json({"a": [1, 2], "b": 1})
    assert sha256_json({"a": 1}) == hashlib.sha256(b'{"a":1}').hexdigest()
    assert sha256_json({"a": 1}) != sha256_json({"a": 2})


def test_read_valid_entry(tmp_path: Path) -> None:
    make_entry(tmp_path)
    art = read_artifact(tmp_path)
    assert art is not None
    assert (art.stage, art.stage_type, art.format, art.primary) == ("finetune", "finetune", "torch", "model.pt")
    assert art.primary_path == tmp_path / "model.pt"
    assert art.metadata["metrics"] == {"val_top1": 0.5}
    art.verify()


def test_content_hash_depends_on_content_only(tmp_path: Path) -> None:
    a = read_artifact(make_entry(tmp_path / "a"))
    b = read_artifact(make_entry(tmp_path / "b"))
    c = read_artifact(make_entry(tmp_path / "c", {"model.pt": b"other"}))
    assert a is not None and b is not None and c is not None
    assert a.content_sha256 == b.content_sha256
    assert a.content_sha256 != c.content_sha256


def test_missing_folder_or_sidecar_is_not_done(tmp_path: Path) -> None:
    assert read_artifact(tmp_path / "nope") is None
    (tmp_path / "f.partial").mkdir()
    (tmp_path / "f.partial" / "model.pt").write_bytes(b"half")
    assert read_artifact(tmp_path / "f.partial") is None
    (tmp_path / "file").write_text("x")
    assert read_artifact(tmp_path / "file") is None  # a file where a folder should be


@pytest.mark.parametrize(
    "sidecar",
    [
        "",
        '{"schema": 1, "stage": ',  # truncated JSON
        "[1, 2]",
        '"text"',
        json.dumps({"schema": SCHEMA_VERSION + 1, "stage": "x"}),
        json.dumps({"stage": "x"}),
    ],
)
def test_invalid_sidecar_is_not_done(tmp_path: Path, sidecar: str) -> None:
    make_entry(tmp_path)
    (tmp_path / SIDECAR).write_text(sidecar, encoding="utf-8")
    assert read_artifact(tmp_path) is None


def test_sidecar_that_is_not_utf8_is_not_done(tmp_path: Path) -> None:
    make_entry(tmp_path)
    (tmp_path / SIDECAR).write_bytes(b"\xff\xfe\x00{")
    assert read_artifact(tmp_path) is None


def test_sidecar_missing_fields_is_not_done(tmp_path: Path) -> None:
    make_entry(tmp_path)
    (tmp_path / SIDECAR).write_text(json.dumps({"schema": SCHEMA_VERSION}), encoding="utf-8")
    assert read_artifact(tmp_path) is None


def _verify_error(folder: Path, names: str) -> str:
    return (
        f"artifact {folder} does not match its sidecar (changed, missing or extra: {names}); it was modified after "
        "it was written. Remove it with `edgeres cache clean` and rebuild."
    )


def test_tampered_file_fails_verify(tmp_path: Path) -> None:
    make_entry(tmp_path)
    art = read_artifact(tmp_path)
    assert art is not None
    (tmp_path / "model.pt").write_bytes(b"weightz")
    with pytest.raises(CacheError) as info:
        art.verify()
    assert str(info.value) == _verify_error(tmp_path, "model.pt")
    # Reading it again does not make it valid: the sidecar still holds the original hashes.
    again = read_artifact(tmp_path)
    assert again is not None
    with pytest.raises(CacheError):
        again.verify()


def test_missing_and_extra_files_fail_verify(tmp_path: Path) -> None:
    make_entry(tmp_path)
    art = read_artifact(tmp_path)
    assert art is not None
    (tmp_path / "sub" / "x.bin").unlink()
    (tmp_path / "extra.txt").write_text("hi")
    with pytest.raises(CacheError) as info:
        art.verify()
    assert str(info.value) == _verify_error(tmp_path, "extra.txt, sub/x.bin")


def test_write_bytes_atomic_replaces_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "f.bin"
    write_bytes_atomic(target, b"one")
    write_bytes_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]


def test_write_bytes_atomic_keeps_old_content_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    write_bytes_atomic(target, b"old")

    with pytest.raises(TypeError):
        write_bytes_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
