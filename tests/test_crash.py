"""Crashes: a build killed at any point, or whose disk fills up, is re-run to completion and never takes a partial
output for a finished one.

Faults come from edgeres.faults (EDGERES_FAULT, a test-only hook): `kill` is a real SIGKILL of a build subprocess,
`crash` an in-process stand-in (cheaper: no interpreter start), `enospc` a write that fails as on a full disk. The
default suite kills a build once, at the commit's most deceptive point; a kill at every commit step of one stage and
the long sweep over every point of a whole recipe are marked slow (`make test-slow`).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    PYTHON,
    TINY_LATENCY,
    committed,
    run_cli,
    run_pipeline,
    subprocess_env,
    tiny_recipe,
    write_recipe,
)

from edgeres import faults
from edgeres.artifact import read_artifact

Completed = subprocess.CompletedProcess[str]
FINETUNE = {"type": "finetune", "epochs": 2, "batch_size": 32}


def build(recipe: Path, cache: Path, out: Path, *extra: str, fault: str | None = None) -> Completed:
    env = subprocess_env(recipe.parent)
    env.pop(faults.ENV, None)
    if fault is not None:
        env[faults.ENV] = fault
    cmd = [PYTHON, "-m", "edgeres", "build", str(recipe), "--cache", str(cache), "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def killed(proc: Completed) -> bool:
    return proc.returncode == -signal.SIGKILL


def files_of(cache: Path) -> dict[str, dict[str, str]]:
    """Each committed entry's name -> its hashed files: equal between two caches when the builds made the same."""
    out = {}
    for p in cache.iterdir():
        art = read_artifact(p) if p.is_dir() and "." not in p.name else None
        if art is not None:
            out[p.name] = art.files
    return out


def out_is_whole(out: Path) -> None:
    """Every delivered file in out/models is the file its sidecar hashed."""
    from edgeres.artifact import sha256_file

    for side in out.glob("models/*/artifact.json"):
        meta = json.loads(side.read_text(encoding="utf-8"))
        for rel in meta["deliverables"]:
            assert sha256_file(side.parent / rel) == meta["files"][rel], f"{side.parent / rel} is not the built file"
    assert not list(out.glob(".models-*"))


@pytest.fixture
def fault_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set EDGERES_FAULT for in-process builds (arrival counts reset)."""

    def set_fault(spec: str | None) -> None:
        faults.reset()
        if spec is None:
            monkeypatch.delenv(faults.ENV, raising=False)
        else:
            monkeypatch.setenv(faults.ENV, spec)

    yield set_fault
    faults.reset()


def test_fault_spec_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENV, "commit:renamed/finetune@2:enospc")
    assert faults._spec() == ("commit:renamed/finetune", 2, "enospc")
    monkeypatch.setenv(faults.ENV, "epoch:qat")
    assert faults._spec() == ("epoch:qat", 1, "kill")
    monkeypatch.delenv(faults.ENV)
    faults.point("stage:ran", "finetune")  # no spec: nothing happens


def test_killed_with_a_whole_sidecar_in_the_partial_folder_a_rerun_completes_and_matches(tmp_path: Path) -> None:
    """The default suite's SIGKILL: killed after the sidecar was written but before the rename that commits, the
    folder looks finished; the re-run must not take it, and ends with the uninterrupted build's files. (Every other
    commit step: the slow test below.)"""
    recipe = tiny_recipe(name="crash", stages=[FINETUNE])
    path = write_recipe(tmp_path / "crash.yaml", recipe)
    ref_cache = tmp_path / "ref"
    run_pipeline(recipe, ref_cache)
    cache, out = tmp_path / "cache", tmp_path / "out"
    r = build(path, cache, out, fault="commit:sidecar-written/finetune")
    assert killed(r) and committed(cache, "finetune") == []
    (partial,) = cache.glob("finetune-*.partial")
    assert (partial / "artifact.json").is_file()
    r = build(path, cache, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "finetune: running" in r.stderr
    assert files_of(cache) == files_of(ref_cache)
    out_is_whole(out)
    assert not list(cache.glob("*.partial"))


@pytest.mark.slow  # nine builds, each a fresh interpreter that imports torch: ~20 s
def test_killed_at_every_commit_step_a_rerun_completes_and_matches(tmp_path: Path) -> None:
    """SIGKILL inside the stage, after its files, after the sidecar, after the rename, between the two renames of a
    --force swap and while delivering: each re-run goes on, nothing half-written is reused, and the end state is the
    uninterrupted build's, byte for byte."""
    recipe = tiny_recipe(name="crash", stages=[FINETUNE])
    path = write_recipe(tmp_path / "crash.yaml", recipe)
    ref_cache = tmp_path / "ref"
    run_pipeline(recipe, ref_cache)
    reference = files_of(ref_cache)
    cache, out = tmp_path / "cache", tmp_path / "out"

    r = build(path, cache, out, fault="epoch:finetune@1")
    assert killed(r) and committed(cache, "finetune") == []
    r = build(path, cache, out, fault="stage:ran/finetune")
    assert killed(r) and committed(cache, "finetune") == []
    assert "resuming from the checkpoint after epoch 1 of 2" in r.stderr
    r = build(path, cache, out, fault="commit:sidecar-written/finetune")
    assert killed(r) and committed(cache, "finetune") == []
    (partial,) = cache.glob("finetune-*.partial")
    assert (partial / "artifact.json").is_file()  # a whole sidecar, in a folder that is not the entry
    r = build(path, cache, out, fault="commit:renamed/finetune")
    assert killed(r) and files_of(cache) == reference  # the rename is the commit: done, though the build died
    assert not out.exists()

    r = build(path, cache, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "finetune: cached" in r.stderr
    out_is_whole(out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and "lock" not in p.name}

    r = build(path, cache, out, "--force", "finetune", fault="commit:swapped-out/finetune")
    assert killed(r) and committed(cache, "finetune") == []  # the old entry aside, the new one not yet in
    r = build(path, cache, out, fault="deliver:staged")
    assert killed(r)
    assert "finetune: running" in r.stderr  # the swapped-out entry and the sidecar'd .partial were not reused
    after_kill = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and "lock" not in p.name}
    assert {k: v for k, v in after_kill.items() if not str(k).startswith(".models-")} == before

    r = build(path, cache, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert files_of(cache) == reference
    out_is_whole(out)
    assert not list(cache.glob("*.partial"))


def crash_then_resume(recipe: Any, tmp: Path, fault_env: Any, fault: str, stage: str | None = None) -> str:
    """Build `recipe` cleanly into tmp/ref; then into tmp/cache with `fault` (a crash), checking that `stage` (if
    given) committed nothing; then again without it. Returns the resumed build's log; the caches must match."""
    fault_env(None)
    run_pipeline(recipe, tmp / "ref")
    cache = tmp / "cache"
    fault_env(fault)
    with pytest.raises(faults.InjectedCrash):
        run_pipeline(recipe, cache)
    if stage is not None:
        assert committed(cache, stage) == []
    fault_env(None)
    _, log = run_pipeline(recipe, cache)
    assert files_of(cache) == files_of(tmp / "ref")
    return str(log)


def test_prune_recovery_resumes_after_a_crash(tmp_path: Path, fault_env: Any) -> None:
    prune = {
        "type": "prune",
        "budget": {"type": "ratio", "ratio": 0.25},
        "steps": 2,
        "recovery": {"epochs": 2, "batch_size": 32},
    }
    recipe = tiny_recipe(name="prune-crash", stages=[{**FINETUNE, "epochs": 1}, prune])
    # step 2, first recovery epoch: step 1 and one epoch are checkpointed
    log = crash_then_resume(recipe, tmp_path, fault_env, "epoch:recovery@3:crash", "prune")
    assert "resuming after pruning step 1" in log
    assert "resuming recovery from the checkpoint after epoch 1 of 2" in log
    assert log.count("recovery 2.2") >= 1 and "recovery 1.1" not in log


def test_a_depth_prune_resumed_after_a_crash_cuts_the_blocks_the_killed_run_chose(
    tmp_path: Path, fault_env: Any
) -> None:
    prune = {
        "type": "prune",
        "budget": {"type": "ratio", "ratio": 0.25},
        "steps": 1,
        "depth": {"blocks": [1, 2, 1, 2], "select_images": 32},
        "recovery": {"epochs": 2, "batch_size": 32},
    }
    recipe = tiny_recipe(name="depth-crash", stages=[{**FINETUNE, "epochs": 1}, prune])
    log = crash_then_resume(recipe, tmp_path, fault_env, "epoch:recovery@1:crash")
    assert "resuming with the blocks a killed run kept" in log and "depth: without" not in log
    assert "resuming recovery from the checkpoint after epoch 1 of 2" in log


@pytest.mark.slow  # about a minute; prune recovery's resume (same epoch checkpoints) stays in the default suite
def test_qat_resumes_after_a_crash(tmp_path: Path, fault_env: Any) -> None:
    quantize = {"type": "quantize", "qat": {"when": "always", "epochs": 2, "batch_size": 32}}
    recipe = tiny_recipe(name="qat-crash", stages=[{**FINETUNE, "epochs": 1}, {"type": "export"}, quantize])
    log = crash_then_resume(recipe, tmp_path, fault_env, "epoch:qat@1:crash", "quantize")
    assert "resuming qat from the checkpoint after epoch 1 of 2" in log


def test_a_full_disk_fails_the_write_names_it_and_keeps_what_was_built(tmp_path: Path, fault_env: Any) -> None:
    recipe = tiny_recipe(name="full", stages=[{**FINETUNE, "epochs": 1}, {"type": "export"}])
    path = write_recipe(tmp_path / "full.yaml", recipe)
    cache, out = tmp_path / "cache", tmp_path / "out"
    fault_env(None)
    assert run_cli("build", str(path), "--cache", str(cache), "--out", str(out)).code == 0
    built = files_of(cache)
    delivered = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "lock" not in p.name}

    fault_env("write/model.onnx:enospc")  # export's atomic write of the ONNX, half-way through
    res = run_cli("build", str(path), "--cache", str(cache), "--out", str(out), "--force", "export")
    assert res.code == 8, res.stderr[-2000:]
    assert "could not write model.onnx: No space left on device" in res.stderr
    assert "stage export of variant main" in res.stderr
    assert files_of(cache) == built  # the old export entry is still there, whole
    for art in map(read_artifact, cache.iterdir()):
        if art is not None:
            art.verify()
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "lock" not in p.name} == delivered
    assert not [p for p in cache.rglob(".model.onnx.*")]  # the half-written temporary file is gone

    fault_env("write/build.json:enospc")  # delivering: the out folder keeps its previous build.json
    res = run_cli("build", str(path), "--cache", str(cache), "--out", str(out))
    assert res.code == 8 and "delivering to" in res.stderr and "build.json" in res.stderr
    assert (out / "build.json").read_bytes() == delivered[out / "build.json"]

    fault_env(None)
    assert run_cli("build", str(path), "--cache", str(cache), "--out", str(out)).code == 0


@pytest.mark.slow  # about a minute; the simulated ENOSPC tests of the same path stay in the default suite
def test_a_real_write_limit_is_reported_and_a_rerun_completes(tmp_path: Path) -> None:
    """No hook: the kernel refuses writes past a file-size limit (RLIMIT_FSIZE, EFBIG), as it would on a full
    disk. The ONNX export (megabytes) cannot be written; the finetune entry stays whole; a re-run goes on."""
    recipe = tiny_recipe(name="rlimit", stages=[{**FINETUNE, "epochs": 1}, {"type": "export"}])
    path = write_recipe(tmp_path / "rlimit.yaml", recipe)
    cache, out = tmp_path / "cache", tmp_path / "out"
    r = build(path, cache, out, "--until", "finetune")
    assert r.returncode == 0, r.stderr[-2000:]
    built = files_of(cache)
    limit = 1 << 20  # 1 MiB: the exported ResNet-18's ONNX is ~45 MB

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = subprocess_env(tmp_path)
    cmd = [PYTHON, "-m", "edgeres", "build", str(path), "--cache", str(cache), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, preexec_fn=limited)
    assert r.returncode == 8, r.stderr[-3000:]
    assert "could not write" in r.stderr and "File too large" in r.stderr
    assert {k: v for k, v in files_of(cache).items() if k.startswith("finetune-")} == built
    assert committed(cache, "export") == []
    r = build(path, cache, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(committed(cache, "export")) == 1


# ------------------------------------------------------------------------------------------------ the long sweep

SWEEP_STAGES: list[dict[str, Any]] = [
    {"type": "finetune", "epochs": 2, "batch_size": 32},
    {
        "type": "prune",
        "budget": {"type": "ratio", "ratio": 0.25},
        "steps": 2,
        "recovery": {"epochs": 2, "batch_size": 32},
    },
    {"type": "export"},
    {"type": "quantize", "qat": {"when": "always", "epochs": 2, "batch_size": 32}},
    {"type": "compile"},
    {
        "type": "benchmark",
        "runtimes": ["onnxruntime"],
        "latency": TINY_LATENCY,
        "offline": None,
        "isolate": False,
        "fidelity": None,
    },
]
SWEEP_POINTS = [
    "epoch:finetune@1",
    "stage:ran/finetune",
    "commit:sidecar-written/finetune",
    "commit:renamed/finetune",
    "stage:started/prune",
    "epoch:recovery@1",
    "prune:step@1",
    "epoch:recovery@1",  # step 2's first epoch (step 1 now resumes whole, without epochs)
    "stage:ran/prune",
    "commit:sidecar-written/prune",
    "export:written",
    "commit:renamed/export",
    "epoch:qat@1",
    "quantize:candidate",  # QAT's candidate judged (QAT resumes whole, without epochs)
    "commit:sidecar-written/quantize",
    "compile:written",
    "commit:renamed/compile",
    "benchmark:variant",
    "commit:sidecar-written/benchmark",
    "deliver:staged",
]


@pytest.mark.slow
def test_kill_point_sweep_over_a_whole_recipe(tmp_path: Path) -> None:
    """One build killed at each point in turn, every stage and commit step of finetune, prune (inside recovery),
    export, quantize (inside QAT), compile and benchmark: each run goes on from where the last died; the end
    state equals an uninterrupted build's (benchmark timings aside: same key, same files listed)."""
    recipe = tiny_recipe(name="sweep", stages=SWEEP_STAGES)
    path = write_recipe(tmp_path / "sweep.yaml", recipe)
    ref = build(path, tmp_path / "ref", tmp_path / "ref-out")
    assert ref.returncode == 0, ref.stderr[-3000:]
    cache, out = tmp_path / "cache", tmp_path / "out"
    fired = []
    for point in SWEEP_POINTS:
        r = build(path, cache, out, fault=point)
        if killed(r):
            fired.append(point)
        else:
            assert r.returncode == 0, f"{point}: {r.stderr[-3000:]}"
    r = build(path, cache, out)
    assert r.returncode == 0, r.stderr[-3000:]
    missed = sorted(set(SWEEP_POINTS) - set(fired))
    assert missed == [], f"these kill points were never reached: {missed}"
    got, want = files_of(cache), files_of(tmp_path / "ref")
    assert sorted(got) == sorted(want)  # same keys: every entry was made from the same inputs
    for name in want:
        if not name.startswith("benchmark-"):
            assert got[name] == want[name], f"{name} differs from the uninterrupted build"
    out_is_whole(out)
    assert not list(cache.glob("*.partial"))
    assert os.listdir(out / "models") == os.listdir(tmp_path / "ref-out" / "models")
