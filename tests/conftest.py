"""Shared helpers and fixtures for the edgeres test suite.

Every build runs on the CPU on a tiny synthetic data set (16x16 images, 64/32/32 images, 4 classes) with a
ResNet-18, in a cache and an output folder under pytest's tmp_path. Nothing touches the user's cache, the network
or ../shared. Expensive builds are shared through session-scoped fixtures; tests that change a cache work on a copy.
"""

from __future__ import annotations

import copy
import io
import os
import shutil
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# The TensorRT stand-in's `install` fixture (tests/fake_tensorrt.py), for every test file that builds on it.
pytest_plugins = ["fake_tensorrt"]

TINY_DATA: dict[str, Any] = {
    "type": "synthetic",
    "image_size": 16,
    "train_size": 64,
    "val_size": 32,
    "test_size": 32,
    "num_classes": 4,
    # The classes are 4x4 patterns upsampled to the grid: a 4-pixel crop shift (the default `crop`) moves them by a
    # whole cell. With it the tiny model learned late: one seed in six ended at test top-1 0.875 (see TINY_FINETUNE).
    "augment": "none",
}
TINY_LATENCY: dict[str, Any] = {"warmup": 1, "min_queries": 5, "min_duration_s": 0}
TINY_OFFLINE: dict[str, Any] = {"batch": 8, "warmup": 1, "min_queries": 2, "min_duration_s": 0}
# Long enough for the tiny model to tell the classes apart (24 steps, ~3 s): test top-1 1.0 for seeds 0-9 with
# torch's AVX-512 kernels and 0-5 with its AVX2 ones (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2); one epoch
# (the recipe before) answered one class for every image, which lets every agreement and accuracy-drop check pass
# whatever the code does (tests/test_build.py checks it learns). Test files that build the tiny chain copy this dict
# so that their builds reuse the shared finetune and export entries.
TINY_FINETUNE: dict[str, Any] = {
    "type": "finetune",
    "epochs": 6,
    "batch_size": 16,
    "optimizer": {"type": "sgd", "lr": 0.01},
}

_TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    # One thread: on a 2-core runner (often shared) two OpenMP threads per process oversubscribe and run ~2x slower;
    # it also keeps CPU numerics single-threaded. `threads` is not part of any cache key.
    "threads": 1,
    "data": TINY_DATA,
    "model": {"arch": "resnet18"},
    "stages": [
        TINY_FINETUNE,
        {"type": "export", "opset": 18},
        {
            "type": "benchmark",
            "runtimes": ["onnxruntime", "openvino"],
            "latency": TINY_LATENCY,
            "offline": TINY_OFFLINE,
            # In-process, no fidelity checks: 0.5 s instead of 3.5 s per tiny benchmark. The session's base build
            # (base_build) turns both on, and tests/test_build.py checks what they report.
            "isolate": False,
            "fidelity": None,
        },
    ],
}


def tiny_recipe(**changes: Any) -> dict[str, Any]:
    """A fresh copy of the tiny three-stage recipe as a mapping, with top-level keys replaced by `changes`."""
    d = copy.deepcopy(_TINY)
    d.update(copy.deepcopy(changes))
    return d


def finetune_only(**finetune: Any) -> dict[str, Any]:
    """The tiny recipe with only a finetune stage (the cheapest complete build)."""
    stage = {"type": "finetune", "epochs": 1, "batch_size": 32, **finetune}
    return tiny_recipe(stages=[stage])


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def as_recipe(d: dict[str, Any]) -> Any:
    from edgeres.recipe import recipe_from_text

    return recipe_from_text(yaml.safe_dump(d, sort_keys=False), source="test-recipe")


def quiet_reporter() -> Any:
    from edgeres.progress import Reporter

    return Reporter(stream=io.StringIO(), rich=False)


def run_pipeline(recipe: Any, cache: Path, out: Path | None = None, **kw: Any) -> tuple[Any, str]:
    """Run a Pipeline in-process; returns (BuildResult, log text)."""
    from edgeres.pipeline import Pipeline

    if isinstance(recipe, dict):
        recipe = as_recipe(recipe)
    reporter = quiet_reporter()
    result = Pipeline(recipe, cache_dir=cache, out_dir=out, reporter=reporter, **kw).run()
    return result, reporter.stream.getvalue()


def statuses(result: Any) -> list[tuple[str, str, str]]:
    """(variant, stage, status) of every record of a build, in order."""
    return [(r.variant, r.stage, r.status) for r in result.records]


@dataclass
class CliResult:
    code: int | None
    stdout: str
    stderr: str


def run_cli(*args: str) -> CliResult:
    """Call edgeres.cli.main in-process (it always ends in sys.exit) and capture its output."""
    from edgeres.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: int | None = None
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code  # type: ignore[assignment]
    return CliResult(code, out.getvalue(), err.getvalue())


def entries(cache: Path) -> set[str]:
    """Names in a cache folder, lock files left out."""
    if not cache.is_dir():
        return set()
    return {p.name for p in cache.iterdir() if not p.name.endswith(".lock")}


def committed(cache: Path, stage_type: str) -> list[Path]:
    from edgeres.artifact import read_artifact

    return sorted(
        p for p in cache.glob(f"{stage_type}-*") if p.is_dir() and "." not in p.name and read_artifact(p) is not None
    )


def subprocess_env(tmp: Path) -> dict[str, str]:
    """Environment for `python -m edgeres` subprocesses: default cache pointed into tmp, no user site."""
    env = dict(os.environ)
    env["EDGERES_CACHE"] = str(tmp / "default-cache-must-not-be-used")
    env["XDG_CACHE_HOME"] = str(tmp / "xdg-cache")
    env["PYTHONNOUSERSITE"] = "1"
    # The edgeres next to these tests, also where the venv has another checkout installed (a git worktree).
    env["PYTHONPATH"] = str(REPO)
    return env


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session", autouse=True)
def _isolated_default_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Point the default cache (used only when a test forgets --cache) into tmp, and check nothing used it."""
    root = tmp_path_factory.mktemp("default-cache")
    saved = {k: os.environ.get(k) for k in ("EDGERES_CACHE", "XDG_CACHE_HOME", "TORCH_HOME")}
    os.environ["EDGERES_CACHE"] = str(root / "edgeres")
    os.environ["XDG_CACHE_HOME"] = str(root / "xdg")
    os.environ["TORCH_HOME"] = str(root / "torch")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    assert not (root / "edgeres").exists(), "a test used the default cache instead of its own tmp cache"


# Processes multiprocessing keeps for the whole interpreter by design (the fork server DataLoader workers start from,
# its resource tracker): owned by the test session, not by any one test.
SESSION_HELPERS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")


def _leaked_children(before: set[int]) -> list[Any]:
    import psutil

    left = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.pid in before or p.status() == psutil.STATUS_ZOMBIE:
                continue
            # the helpers themselves are this process's children; workers forked from the fork server share its
            # command line but are its children, and are checked like any other process
            if p.ppid() == os.getpid() and any(h in " ".join(p.cmdline()) for h in SESSION_HELPERS):
                continue
        except psutil.Error:  # exited meanwhile
            continue
        left.append(p)
    return left


@pytest.fixture(autouse=True)
def _no_leaks() -> Any:
    """Fail a test that leaves child processes (DataLoader workers, builds, servers) or open runners behind: a
    process that forks after a test left threads or workers around is how a suite crashes far from the cause."""
    import gc
    import time

    import psutil

    from edgeres.runtimes import base

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    open_before = {id(r) for r in base.OPEN}
    yield
    deadline = time.monotonic() + 10.0  # workers told to stop exit within moments; a build's child may take longer
    while (left := _leaked_children(before)) and time.monotonic() < deadline:
        time.sleep(0.1)
    runners = [r for r in list(base.OPEN) if id(r) not in open_before]
    if runners:  # a runner nobody references any more is not a leak: its session goes with it (gc is slow: only now)
        del runners
        gc.collect()
        runners = [r for r in list(base.OPEN) if id(r) not in open_before]
    problems = [f"child process {p.pid} ({' '.join(p.cmdline())[:120]}) still runs" for p in left]
    problems += [
        f"a {r.name} runner of {r.path} was left open (use `with open_runner(...)` or close())" for r in runners
    ]
    for r in runners:
        r.close()
    for p in left:
        p.kill()
    if problems:
        pytest.fail("the test leaked:\n  " + "\n  ".join(problems))


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """mktemp for module-scoped builds: the folders are removed when the module's tests are done.

    A ResNet-18 build with its caches is 100-1,000 MB; kept to the end of the session they added up to ~10 GB,
    more than some CI machines have free. Session-scoped builds stay; per-test tmp_path folders go when the test
    passes (tmp_path_retention_policy = "failed" in pyproject.toml).
    """
    made: list[Path] = []

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Build:
    recipe: dict[str, Any]
    recipe_path: Path
    cache: Path
    out: Path
    cli: CliResult


@pytest.fixture(scope="session")
def base_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """The tiny recipe built once through the CLI (finetune -> export -> benchmark on ORT and OpenVINO), its benchmark
    as a user's recipe has it by default: each artifact in its own process, fidelity checks on."""
    root = tmp_path_factory.mktemp("base")
    recipe = tiny_recipe()
    bench = recipe["stages"][2]
    del bench["isolate"], bench["fidelity"]
    path = write_recipe(root / "tiny.yaml", recipe)
    cache, out = root / "cache", root / "out"
    res = run_cli("build", str(path), "--cache", str(cache), "--out", str(out))
    assert res.code == 0, res.stderr[-3000:]
    return Build(recipe, path, cache, out, res)


@pytest.fixture
def base_cache_copy(base_build: Build, tmp_path: Path) -> Path:
    """A private copy of the base build's cache, for tests that change or damage entries."""
    dst = tmp_path / "cache"
    shutil.copytree(base_build.cache, dst)
    return dst


@pytest.fixture(scope="session")
def finetune_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A fresh cache after `--until finetune` of the tiny recipe; returns (cache, result)."""
    cache = tmp_path_factory.mktemp("ft") / "cache"
    result, _ = run_pipeline(tiny_recipe(), cache, until_stage="finetune")
    return cache, result


@pytest.fixture
def finetune_cache_copy(finetune_cache: tuple[Path, Any], tmp_path: Path) -> Path:
    dst = tmp_path / "cache"
    shutil.copytree(finetune_cache[0], dst)
    return dst


PYTHON = sys.executable


def _touch(path: str) -> None:
    Path(path).write_text("code ran", encoding="utf-8")


class Payload:
    """An object whose unpickling would run code (it creates a marker file): checkpoints carrying one are refused."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_touch, (self.marker,))
