"""Two builds of one recipe at once, into one cache and one output folder: both finish, each entry is computed
once, and the output folder is whole (every delivered file is the one its sidecar hashed)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import PYTHON, committed, subprocess_env, tiny_recipe, write_recipe

from edgeres.artifact import sha256_file


def test_two_builds_of_one_recipe_at_once(tmp_path: Path) -> None:
    recipe = tiny_recipe(
        name="twice", stages=[{"type": "finetune", "epochs": 2, "batch_size": 32}, {"type": "export", "opset": 18}]
    )
    path = write_recipe(tmp_path / "twice.yaml", recipe)
    cache, out = tmp_path / "cache", tmp_path / "out"
    cmd = [PYTHON, "-m", "edgeres", "build", str(path), "--cache", str(cache), "--out", str(out)]
    env = subprocess_env(tmp_path)
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    logs = [err for _, err in results]
    for stage in ("finetune", "export"):
        assert sum(log.count(f"[main] {stage}: running") for log in logs) == 1, f"{stage} ran twice"
        assert len(committed(cache, stage)) == 1
    # The other one waited for the lock (usual: they start together), or came late and found the entries.
    assert any("waiting for another build" in log or "finetune: cached" in log for log in logs)
    assert not list(cache.glob("*.partial"))
    side = out / "models" / "main" / "artifact.json"
    meta = json.loads(side.read_text(encoding="utf-8"))
    for rel in meta["deliverables"]:
        assert sha256_file(side.parent / rel) == meta["files"][rel]
    assert not list(out.glob(".models-*"))
    assert json.loads((out / "build.json").read_text(encoding="utf-8"))["recipe"] == "twice"
