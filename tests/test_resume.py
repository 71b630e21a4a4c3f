"""A build killed (SIGKILL) mid-finetune resumes from its last epoch checkpoint and ends bit-identical."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, committed, run_pipeline, statuses, subprocess_env, tiny_recipe, write_recipe

EPOCHS = 4


def build_cmd(recipe: Path, cache: Path, out: Path) -> list[str]:
    return [PYTHON, "-m", "edgeres", "build", str(recipe), "--cache", str(cache), "--out", str(out)]


def checkpoint_epoch(cache: Path) -> int | None:
    """Epoch of the finetune checkpoint in a .partial work folder, or None while there is none."""
    found = list(cache.glob("finetune-*.partial/.scratch/last.pt"))
    if not found:
        return None
    try:
        state = torch.load(found[0], map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError):  # replaced while opening: read it on the next poll
        return None
    return int(state["epoch"])


def final_state(cache: Path) -> tuple[str, dict[str, torch.Tensor], dict[str, object]]:
    (entry,) = committed(cache, "finetune")
    state = torch.load(entry / "model.pt", map_location="cpu", weights_only=True)
    meta = json.loads((entry / "artifact.json").read_text(encoding="utf-8"))
    return entry.name, state, meta


def test_killed_finetune_resumes_bit_identical(tmp_path: Path) -> None:
    recipe = tiny_recipe(name="resume", stages=[{"type": "finetune", "epochs": EPOCHS, "batch_size": 32}])
    path = write_recipe(tmp_path / "resume.yaml", recipe)
    env = subprocess_env(tmp_path)

    # Uninterrupted reference build in its own cache (in-process: the recipe pins one CPU thread).
    ref_cache = tmp_path / "ref-cache"
    ref, ref_log = run_pipeline(recipe, ref_cache)
    assert statuses(ref) == [("main", "finetune", "ran")]
    assert "resuming from the checkpoint" not in ref_log

    # The same build, killed once a checkpoint after at least one epoch is on disk.
    cache = tmp_path / "cache"
    log1 = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(
        build_cmd(path, cache, tmp_path / "out"), stdout=log1, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
    )
    try:
        deadline = time.monotonic() + 300
        seen = None
        while time.monotonic() < deadline and proc.poll() is None:
            seen = checkpoint_epoch(cache)
            if seen is not None and seen >= 1:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        log1.close()
    assert proc.returncode == -signal.SIGKILL, "the build ended before it could be killed"
    assert seen is not None and seen >= 1
    killed_at = checkpoint_epoch(cache)
    assert killed_at is not None
    if killed_at >= EPOCHS:
        pytest.fail(f"the kill came after the last epoch ({killed_at}/{EPOCHS}); nothing left to resume")
    assert committed(cache, "finetune") == []  # nothing committed by the killed run

    # Re-run to completion: it resumes from the checkpoint.
    resumed = subprocess.run(
        build_cmd(path, cache, tmp_path / "out"), capture_output=True, text=True, env=env, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from the checkpoint after epoch {killed_at} of {EPOCHS}" in resumed.stderr
    assert not list(cache.glob("*.partial"))

    ref_name, ref_state, ref_meta = final_state(ref_cache)
    name, state, meta = final_state(cache)
    assert name == ref_name  # same cache key
    assert sorted(state) == sorted(ref_state)
    different = [k for k in ref_state if not torch.equal(state[k], ref_state[k])]
    assert different == [], f"resumed weights differ from the uninterrupted build in {len(different)} tensors"
    assert meta["files"] == ref_meta["files"]  # byte-identical model.pt and model.json
    curve = meta["metrics"]["curve"]  # type: ignore[index]
    assert [row["epoch"] for row in curve] == list(range(1, EPOCHS + 1))
    assert [row["val_top1"] for row in curve] == [row["val_top1"] for row in ref_meta["metrics"]["curve"]]  # type: ignore[index]
