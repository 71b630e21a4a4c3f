"""`edgeres cache clean` never empties a cache silently: it lists what it would remove, asks on a terminal, needs --yes
elsewhere; --dry-run only lists; --partial removes unfinished entries without asking. (Lock-respecting removal is in
test_locks.py, on real entries.)"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import run_cli

from edgeres import cli

DONE = "finetune-" + "a" * 64
PARTIAL = "export-" + "b" * 64 + ".partial"


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A cache with a committed entry (1 MB), a leftover .partial (0.5 MB) and decoded data (2 MB)."""
    root = tmp_path / "cache"
    for name, size in ((DONE, 1_000_000), (PARTIAL, 500_000), ("data", 2_000_000)):
        (root / name).mkdir(parents=True)
        (root / name / "file").write_bytes(bytes(size))
    return root


def names(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()}


def test_without_yes_off_a_terminal_nothing_is_removed(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_stdin_is_tty", lambda: False)
    res = run_cli("cache", "clean", "--cache", str(cache))
    assert res.code == 2
    assert names(cache) == {DONE, PARTIAL, "data"}
    assert res.stderr.startswith(
        "edgeres: usage error: cache clean would remove 2 entries and the decoded data sets (3.5 MB, listed above)"
    )
    assert "pass --yes to remove them, --dry-run to only list them" in res.stderr
    assert "Error" not in res.stderr and "Traceback" not in res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"would remove from {cache}:"
    assert lines[1].split() == ["export", "b" * 16, "partial", "0.5", "MB"]
    assert lines[2].split() == ["finetune", "a" * 16, "done", "1.0", "MB"]
    assert lines[3].split() == ["data", "(decoded", "data", "sets)", "2.0", "MB"]
    assert (
        lines[4]
        == "2 entries and the decoded data sets, 3.5 MB in all; an entry a running build holds is skipped when removing"
    )


def test_dry_run_only_lists(cache: Path) -> None:
    res = run_cli("cache", "clean", "--cache", str(cache), "--dry-run")
    assert res.code == 0, res.stderr
    assert names(cache) == {DONE, PARTIAL, "data"}
    assert "finetune   aaaaaaaaaaaaaaaa" in res.stdout
    assert res.stdout.splitlines()[-1] == "dry run: nothing was removed"
    res = run_cli("cache", "clean", "--cache", str(cache), "--dry-run", "--partial")
    assert res.code == 0, res.stderr
    assert "export     bbbbbbbbbbbbbbbb  partial" in res.stdout
    assert "finetune" not in res.stdout and "data" not in res.stdout.replace("dry run", "")
    assert names(cache) == {DONE, PARTIAL, "data"}


def test_on_a_terminal_it_asks_and_no_removes_nothing(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_stdin_is_tty", lambda: True)
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    res = run_cli("cache", "clean", "--cache", str(cache))
    assert res.code == 0, res.stderr
    assert f"remove 2 entries and the decoded data sets (3.5 MB) from {cache}? [y/N]: " in res.stdout
    assert res.stdout.endswith("nothing was removed\n")
    assert names(cache) == {DONE, PARTIAL, "data"}
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    res = run_cli("cache", "clean", "--cache", str(cache))
    assert res.code == 0, res.stderr
    assert res.stdout.endswith(f"[y/N]: removed 2 entries, freed 3.5 MB from {cache}\n")
    assert names(cache) == set()


def test_yes_removes_without_asking_and_partial_needs_no_yes(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_stdin_is_tty", lambda: False)
    res = run_cli("cache", "clean", "--cache", str(cache), "--partial")
    assert res.code == 0, res.stderr
    assert res.stdout.startswith("removed 1 entries")
    assert names(cache) == {DONE, "data"}
    res = run_cli("cache", "clean", "--cache", str(cache), "--yes")
    assert res.code == 0, res.stderr
    assert res.stdout.startswith("removed 1 entries")
    assert names(cache) == set()
    res = run_cli("cache", "clean", "--cache", str(cache))  # nothing left: nothing to confirm
    assert res.code == 0, res.stderr
    assert res.stdout == f"nothing to remove in {cache}\n"


def test_the_default_cache_is_named_as_shared(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGERES_CACHE", str(cache))
    res = run_cli("cache", "clean", "--dry-run")
    assert res.code == 0, res.stderr
    assert res.stdout.startswith(f"would remove from {cache} (the default cache: every build without --cache")
