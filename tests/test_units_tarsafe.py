"""Fast unit tests of edgeres.bundle.tarsafe: member names, the member checks and their limits, extraction and the
deterministic writer, on small archives made here (tests/test_bundle.py covers the same code through whole bundles).
Used by `make mutate` (tests/MUTANTS.md)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeres.bundle import tarsafe
from edgeres.errors import BundleError


def make_tar(path: Path, members: list[tuple[str, bytes]], *, kind: bytes = tarfile.REGTYPE) -> Path:
    """A plain PAX tar of (name, data) members, each of type `kind`."""
    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def refusal(path: Path) -> str:
    with pytest.raises(BundleError) as err:
        tarsafe.check_members(path)
    return str(err.value)


@pytest.fixture
def umask_0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "an empty name"),
        ("/etc/passwd", "an absolute path"),
        ("C:evil", "an absolute path"),
        ("c:evil", "an absolute path"),
        ("z:/x", "an absolute path"),
        ("a\\b", "a backslash or NUL byte"),
        ("a\0b", "a backslash or NUL byte"),
        ("../x", "a '..' component (path traversal)"),
        ("a/../../x", "a '..' component (path traversal)"),
        ("a//b", "the component '' (allowed: letters, digits, '_', '.', '-', not starting with '.' or '-')"),
        (".hidden", "the component '.hidden' (allowed: letters, digits, '_', '.', '-', not starting with '.' or '-')"),
        ("a/-x", "the component '-x' (allowed: letters, digits, '_', '.', '-', not starting with '.' or '-')"),
        ("a/b:c", "the component 'b:c' (allowed: letters, digits, '_', '.', '-', not starting with '.' or '-')"),
        ("x" * 129, f"the component {'x' * 129!r} (allowed: letters, digits, '_', '.', '-', not starting with '.' or "
         "'-')"),
    ],
)  # fmt: skip
def test_unsafe_name_says_why(name: str, why: str) -> None:
    assert tarsafe.unsafe_name(name) == why


@pytest.mark.parametrize(
    "name", ["manifest.json", "engine/model.ort.onnx", "golden/logits.f32", "a/b/c_d-e.f", "x" * 128]
)
def test_safe_names_pass(name: str) -> None:
    assert tarsafe.unsafe_name(name) is None


# ---------------------------------------------------------------------------------------------- member checks


def test_check_members_returns_every_member_in_order(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "b.tar", [("b.txt", b"1"), ("a/x.bin", b"22"), ("a/y.bin", b"")])
    assert [(m.name, m.size) for m in tarsafe.check_members(path)] == [("b.txt", 1), ("a/x.bin", 2), ("a/y.bin", 0)]


def test_member_count_limit_is_inclusive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tarsafe, "MAX_MEMBERS", 3)
    three = make_tar(tmp_path / "3.tar", [(f"f{i}", b"x") for i in range(3)])
    assert len(tarsafe.check_members(three)) == 3
    four = make_tar(tmp_path / "4.tar", [(f"f{i}", b"x") for i in range(4)])
    assert refusal(four) == f"{four}: more than 3 members; not an edgeres bundle"


def test_member_bytes_limit_is_inclusive_and_adds_every_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tarsafe, "MAX_BYTES", 10)
    exact = make_tar(tmp_path / "exact.tar", [("a", b"x" * 4), ("b", b"x" * 6)])
    assert len(tarsafe.check_members(exact)) == 2
    over = make_tar(tmp_path / "over.tar", [("a", b"x" * 6), ("b", b"x" * 5)])
    assert refusal(over) == f"{over}: members add up to more than 0 GiB; refused"
    one = make_tar(tmp_path / "one.tar", [("a", b"x" * 11)])
    assert "members add up to more than" in refusal(one)


def test_a_runaway_member_is_refused_from_its_header(tmp_path: Path) -> None:
    """One header claiming 65 GiB (no data behind it): refused on the header, before anything is read."""
    info = tarfile.TarInfo("engine/huge.bin")
    info.size = 65 << 30
    path = tmp_path / "huge.tar"
    path.write_bytes(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    assert refusal(path) == f"{path}: members add up to more than 64 GiB; refused"


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        (tarfile.SYMTYPE, "a symbolic link"),
        (tarfile.LNKTYPE, "a hard link"),
        (tarfile.FIFOTYPE, "a FIFO"),
        (tarfile.DIRTYPE, "a directory entry"),
        (tarfile.CONTTYPE, "a contiguous file"),
        (b"Z", "a member of type b'Z'"),
    ],
)
def test_only_regular_files_are_members(tmp_path: Path, kind: bytes, what: str) -> None:
    path = make_tar(tmp_path / "b.tar", [("ok.txt", b"1")])
    with tarfile.open(path, "a:", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("odd")
        info.type = kind
        tf.addfile(info)
    assert refusal(path) == (
        f"{path}: member 'odd' is {what}; a bundle holds regular files only, so it is refused and nothing was extracted"
    )


def test_a_bad_member_name_is_refused_naming_it(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "b.tar", [("ok", b"1"), ("a/../b", b"2")])
    assert refusal(path) == (
        f"{path}: member name 'a/../b' has a '..' component (path traversal); refused, nothing was extracted"
    )


def test_a_name_twice_ignoring_case_is_refused_naming_both(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "b.tar", [("Golden/A.bin", b"1"), ("x", b"2"), ("golden/a.BIN", b"3")])
    assert refusal(path) == (
        f"{path}: member 'golden/a.BIN' appears twice (or as 'Golden/A.bin', equal ignoring case), so one would "
        "overwrite the other; refused, nothing was extracted"
    )


@pytest.mark.parametrize(
    ("names", "clash"),
    [
        (["a/b", "a/b/c"], "a/b"),
        (["x/y/z/w", "x/Y/z"], "x/Y/z"),
        (["a", "a/b"], "a"),
    ],
)
def test_a_file_that_is_also_a_folder_is_refused(tmp_path: Path, names: list[str], clash: str) -> None:
    path = make_tar(tmp_path / "b.tar", [(n, b"1") for n in names])
    assert refusal(path) == f"{path}: member {clash!r} is both a file and a folder of other members; refused"


def test_sibling_paths_are_not_a_clash(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "b.tar", [("a/b/c", b"1"), ("a/b/d", b"2"), ("a/bc", b"3"), ("ab", b"4")])
    assert len(tarsafe.check_members(path)) == 4


def test_unreadable_archives_are_refused(tmp_path: Path) -> None:
    whole = make_tar(tmp_path / "t.tar", [("a.bin", b"x" * 5000)])
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[: 512 * 3])
    assert refusal(cut) == f"{cut} cannot be read as a plain (uncompressed) tar archive: unexpected end of data"
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz") as tf:
        tf.add(whole, arcname="x")
    assert refusal(tmp_path / "c.tar.gz").startswith(f"{tmp_path / 'c.tar.gz'} cannot be read as a plain")
    assert refusal(tmp_path / "missing.tar").startswith(f"{tmp_path / 'missing.tar'} cannot be read as a plain")


# ------------------------------------------------------------------------------------------------- extraction


def test_extract_writes_nested_files_with_mode_0644(tmp_path: Path, umask_0: None) -> None:
    big = bytes(range(256)) * 6000  # 1.5 MiB: more than one read block
    path = make_tar(tmp_path / "b.tar", [("manifest.json", b"{}"), ("golden/deep/x.bin", big), ("engine/e", b"")])
    dest = tmp_path / "dest"
    dest.mkdir()
    assert tarsafe.extract(path, dest) == ["manifest.json", "golden/deep/x.bin", "engine/e"]
    assert (dest / "manifest.json").read_bytes() == b"{}"
    assert (dest / "golden" / "deep" / "x.bin").read_bytes() == big
    assert (dest / "engine" / "e").read_bytes() == b""
    for rel in ("manifest.json", "golden/deep/x.bin", "engine/e"):
        assert stat.S_IMODE((dest / rel).stat().st_mode) == 0o644
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "engine", "engine/e", "golden", "golden/deep", "golden/deep/x.bin", "manifest.json"
    ]  # fmt: skip


def test_extract_never_overwrites_or_follows_what_is_there(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "b.tar", [("a.txt", b"new")])
    dest = tmp_path / "dest"
    dest.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep")
    (dest / "a.txt").symlink_to(outside)
    with pytest.raises(FileExistsError):
        tarsafe.extract(path, dest)
    assert outside.read_bytes() == b"keep"
    (dest / "a.txt").unlink()
    (dest / "a.txt").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        tarsafe.extract(path, dest)
    assert (dest / "a.txt").read_bytes() == b"old"


def test_extract_checks_every_member_before_writing_any(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "b.tar", [("first.txt", b"1"), (".evil", b"2")])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(BundleError, match="refused, nothing was extracted"):
        tarsafe.extract(path, dest)
    assert list(dest.iterdir()) == []


# ------------------------------------------------------------------------------------------------------ writing


def test_write_tar_is_deterministic_with_fixed_metadata(tmp_path: Path, umask_0: None) -> None:
    a = tmp_path / "a.bin"
    a.write_bytes(b"alpha")
    script = tmp_path / "build.sh"
    script.write_bytes(b"#!/bin/sh\n")
    os.chmod(a, 0o600)
    out = tmp_path / "deep" / "er" / "b.tar"  # folders made as needed
    tarsafe.write_tar(out, [("engine/build.sh", script), ("x/a.bin", a)])
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    with tarfile.open(out, "r:") as tf:
        assert tf.pax_headers == {}
        members = tf.getmembers()
        assert [(m.name, m.size, m.mode, m.mtime, m.uid, m.gid, m.uname, m.gname, m.type) for m in members] == [
            ("engine/build.sh", 10, 0o755, 0, 0, 0, "", "", tarfile.REGTYPE),
            ("x/a.bin", 5, 0o644, 0, 0, 0, "", "", tarfile.REGTYPE),
        ]
        f = tf.extractfile("x/a.bin")
        assert f is not None and f.read() == b"alpha"
    first = out.read_bytes()
    os.utime(a, (12345, 12345))
    tarsafe.write_tar(out, [("engine/build.sh", script), ("x/a.bin", a)])
    assert out.read_bytes() == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["b.tar"]  # no temporary file left


def test_write_tar_renames_a_temporary_file_beside_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = tmp_path / "a.bin"
    a.write_bytes(b"alpha")
    out = tmp_path / "out" / "b.tar"
    moves: list[tuple[Path, Path]] = []
    real = os.replace

    def spy(src: Any, dst: Any) -> None:
        moves.append((Path(src), Path(dst)))
        real(src, dst)

    monkeypatch.setattr(tarsafe.os, "replace", spy)
    tarsafe.write_tar(out, [("a.bin", a)])
    ((src, dst),) = moves
    assert dst == out
    assert src.parent == out.parent
    assert src.name.startswith(".b.tar.")


def test_write_tar_refuses_a_bad_name_and_leaves_nothing(tmp_path: Path) -> None:
    a = tmp_path / "a.bin"
    a.write_bytes(b"alpha")
    out = tmp_path / "out" / "b.tar"
    with pytest.raises(ValueError) as err:
        tarsafe.write_tar(out, [("ok", a), ("../b", a)])
    assert str(err.value) == "bundle member name '../b' has a '..' component (path traversal)"
    assert not out.parent.exists()


def test_write_tar_removes_its_temporary_file_when_it_fails(tmp_path: Path) -> None:
    a = tmp_path / "a.bin"
    a.write_bytes(b"alpha")
    out = tmp_path / "out" / "b.tar"
    with pytest.raises(FileNotFoundError):
        tarsafe.write_tar(out, [("a.bin", a), ("b.bin", tmp_path / "missing")])
    assert list(out.parent.iterdir()) == []


def test_written_archives_pass_the_checks_and_extract_back(tmp_path: Path) -> None:
    files = []
    for i, name in enumerate(["manifest.json", "engine/model.onnx", "golden/inputs.f32"]):
        f = tmp_path / f"src{i}"
        f.write_bytes(name.encode() * (i + 1))
        files.append((name, f))
    out = tmp_path / "b.tar"
    tarsafe.write_tar(out, files)
    dest = tmp_path / "dest"
    dest.mkdir()
    assert tarsafe.extract(out, dest) == [n for n, _ in files]
    for name, f in files:
        assert dest.joinpath(*name.split("/")).read_bytes() == f.read_bytes()
