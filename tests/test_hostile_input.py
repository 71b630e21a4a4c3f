"""Hostile and broken input: YAML bombs, recursive aliases, Python tags, unsafe folder names, pickled checkpoints.

Each is refused with its exit code and an exact message, quickly, without running code or writing anything.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    PYTHON,
    REPO,
    Payload,
    committed,
    finetune_only,
    run_cli,
    run_pipeline,
    subprocess_env,
    tiny_recipe,
    write_recipe,
)

from edgeres.errors import RecipeError, StageError
from edgeres.recipe import recipe_from_text
from edgeres.recipe_yaml import MAX_ALIAS_NODES, MAX_DEPTH, parse_set

QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def billion_laughs() -> str:
    """Nine levels of nine aliases each: 9**9 (387 million) strings once expanded, in 342 bytes."""
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for c in "bcdefghi":
        text += f"{c}: &{c} [{','.join(['*' + prev] * 9)}]\n"
        prev = c
    return text


LAUGHS_ERROR = (
    "r.yaml: refused: line 5: aliases repeat 15670 nodes so far (*d alone 7381); at most 10000 are allowed, so that "
    "aliases of aliases (a 'billion laughs') cannot expand to billions of values. Write the values out, or use "
    "fewer aliases"
)
RECURSIVE_ERROR = (
    "r.yaml: refused: line 1: alias *a refers to a node that contains it (a recursive alias), which stands for an "
    "infinitely deep value; write the value out instead"
)


def recipe_error(text: str) -> tuple[str, float]:
    t0 = time.monotonic()
    with pytest.raises(RecipeError) as info:
        recipe_from_text(text, source="r.yaml")
    return str(info.value), time.monotonic() - t0


# ------------------------------------------------------------------------------------------------------- YAML


def test_billion_laughs_is_refused_before_expanding() -> None:
    text = billion_laughs()
    msg, seconds = recipe_error(text)
    assert msg == LAUGHS_ERROR
    assert seconds < 1.0
    assert MAX_ALIAS_NODES == 10_000


@pytest.mark.parametrize(
    "text", ["x: &a [*a, *a]\n", "x: &a {y: *a}\n", "x: &a\n  - 1\n  - *a\n", "x: &a {k: [1, {j: *a}]}\n"]
)
def test_recursive_alias_is_refused(text: str) -> None:
    msg, seconds = recipe_error(text)
    assert msg == RECURSIVE_ERROR.replace("line 1", f"line {1 + text.count(chr(10), 0, text.index('*a'))}")
    assert seconds < 1.0


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 3000, 100_000])
def test_deep_nesting_is_refused(depth: int) -> None:
    msg, seconds = recipe_error("x: " + "[" * depth + "]" * depth + "\n")
    assert msg == (
        f"r.yaml: refused: line 1: values are nested deeper than {MAX_DEPTH} levels; a recipe needs fewer than 10. "
        "Flatten the structure"
    )
    assert seconds < 1.0  # PyYAML's scanner looks ahead at most 1024 characters: about 0.5 s here at worst


def test_aliases_within_the_budget_still_work_and_lines_still_point_right() -> None:
    text = (
        "name: tiny\n"
        "data: {type: synthetic}\n"
        "x-opt: &opt {type: sgd, lr: 0.01}\n"  # an unknown key, on line 3
        "stages:\n"
        "  - type: finetune\n"
        "    optimizer: *opt\n"
        "  - type: prune\n"
        "    budget: {type: ratio, ratio: 0.5}\n"
        "    recovery: {optimizer: *opt}\n"
        "    steps: 0\n"  # out of range, on line 10
    )
    msg, _ = recipe_error(text)
    assert msg.splitlines()[1:] == [
        "  - stages[1].steps (line 10): got 0; Input should be greater than or equal to 1",
        "  - x-opt (line 3): unknown key 'x-opt'; allowed keys here: name, seed, threads, distributed, cache, "
        "search, lock_timeout_s, target, targets, data, model, stages, variants",
    ]
    shared = recipe_from_text(
        "name: tiny\ndata: {type: synthetic}\nstages:\n  - type: finetune\n    optimizer: &opt {type: sgd, lr: 0.01}\n"
        "  - type: prune\n    budget: {type: ratio, ratio: 0.5}\n    recovery: {optimizer: *opt}\n",
        source="r.yaml",
    )
    assert shared.stage("prune").recovery.optimizer == shared.stage("finetune").optimizer


def test_set_value_bomb_is_refused() -> None:
    with pytest.raises(RecipeError) as info:
        parse_set(["seed=&a [*a]"])
    assert str(info.value) == (
        "--set 'seed=&a [*a]': the value is refused: line 1: alias *a refers to a node that contains it (a "
        "recursive alias), which stands for an infinitely deep value; write the value out instead"
    )


PYTHON_TAGS = [
    ("!!python/object/apply:os.system ['touch {m}']", "tag:yaml.org,2002:python/object/apply:os.system"),
    ("!!python/object/apply:builtins.open ['{m}', 'w']", "tag:yaml.org,2002:python/object/apply:builtins.open"),
    ("!!python/object/new:pathlib.Path ['{m}']", "tag:yaml.org,2002:python/object/new:pathlib.Path"),
    ("!!python/name:os.system", "tag:yaml.org,2002:python/name:os.system"),
]


@pytest.mark.parametrize(("payload", "tag"), PYTHON_TAGS)
def test_python_tags_are_refused_and_run_nothing(tmp_path: Path, payload: str, tag: str) -> None:
    marker = tmp_path / "marker"
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe())
    path.write_text(path.read_text(encoding="utf-8") + f"x: {payload.format(m=marker)}\n", encoding="utf-8")
    line = path.read_text(encoding="utf-8").count("\n")
    res = run_cli("validate", str(path))
    assert (res.code, res.stdout) == (2, "")
    assert res.stderr == (
        f"edgeres: recipe error: {path}: refused: line {line}: the tag {tag} would create a Python object; recipes "
        "are read with safe loading, which creates only plain values (mappings, lists, strings, numbers). Remove "
        "the tag\n"
    )
    assert not marker.exists()


# `python -m edgeres validate PATH`, writing the process's peak resident memory (VmHWM, reset at exec, unlike
# ru_maxrss, which a forked child inherits from pytest) to a file when it exits.
VALIDATE = """
import atexit, runpy, sys
hwm_file = sys.argv.pop(1)
def hwm():
    with open("/proc/self/status") as f, open(hwm_file, "w") as out:
        out.write(next(line for line in f if line.startswith("VmHWM:")).split()[1])
atexit.register(hwm)
sys.argv[0] = "edgeres"
runpy.run_module("edgeres", run_name="__main__", alter_sys=True)
"""


def run_validate(path: Path, tmp: Path) -> tuple[int, str, float, float]:
    """`python -m edgeres validate PATH` in a child: (exit code, stderr, peak RSS in MB, seconds). Its address
    space is capped at 4 GiB, so a regression fails here instead of growing until the kernel kills something."""
    hwm = tmp / f"{path.stem}.hwm"

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    t0 = time.monotonic()
    proc = subprocess.run(
        [PYTHON, "-c", VALIDATE, str(hwm), "validate", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp,
        env=subprocess_env(tmp),
        preexec_fn=cap,
        timeout=120,
    )
    seconds = time.monotonic() - t0
    return proc.returncode, proc.stderr, int(hwm.read_text()) / 1024, seconds


def test_bombs_cost_less_than_20_mb_and_a_second_over_validating_the_quickstart(tmp_path: Path) -> None:
    code, _, base_mb, base_s = run_validate(QUICKSTART, tmp_path)
    assert code == 0
    figures = {"quickstart": (round(base_mb, 1), round(base_s, 2))}
    for name, text, expected in [
        ("laughs", billion_laughs(), LAUGHS_ERROR),
        ("recursive", "x: &a [*a, *a]\n", RECURSIVE_ERROR),
    ]:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        code, stderr, mb, seconds = run_validate(path, tmp_path)
        figures[name] = (round(mb, 1), round(seconds, 2))
        assert code == 2, stderr[-2000:]
        assert stderr == "edgeres: recipe error: " + expected.replace("r.yaml", str(path)) + "\n"
        assert mb - base_mb < 20, figures
        assert seconds < base_s + 1.0, figures
    print(f"peak RSS MB, seconds: {figures}")


# ------------------------------------------------------------------------------------------------ folder names


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".", ".hidden", "-x", "/abs", "a\\b", "", "x" * 101])
def test_variant_names_must_be_safe_folder_names(name: str) -> None:
    text = (
        "name: tiny\ndata: {type: synthetic}\nstages: [{type: finetune}]\nvariants:\n"
        f"  ok: {{}}\n  {name!r}: {{}}\n".replace("'", '"')
    )
    msg, _ = recipe_error(text)
    assert msg == (
        "r.yaml: 1 problem, nothing has run:\n"
        f"  - variants (line 4): variant name {name!r} cannot be used as a folder name (its deliverables go to "
        "out/<recipe>/models/<variant>/); use at most 100 letters, digits, '_', '.' and '-', starting with a "
        "letter or digit"
    )


def test_safe_variant_names_are_accepted() -> None:
    text = (
        'name: tiny\ndata: {type: synthetic}\nstages: [{type: finetune}]\nvariants: {int8.v2: {}, A_b-1: {}, "9": {}}\n'
    )
    assert recipe_from_text(text).variant_names() == ["int8.v2", "A_b-1", "9"]


# ------------------------------------------------------------------------------------------------- checkpoints


class SystemPayload:
    """Unpickling this would run a shell command through os.system."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {marker}"

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


@pytest.mark.parametrize("payload", [Payload, SystemPayload])
def test_finetune_refuses_a_pickle_payload_checkpoint_and_runs_nothing(tmp_path: Path, payload: type) -> None:
    marker = tmp_path / "marker"
    weights = tmp_path / "evil.pt"
    state = torch.nn.Linear(2, 2).state_dict()
    torch.save({**state, "evil": payload(marker)}, weights)
    path = write_recipe(tmp_path / "r.yaml", finetune_only(weights=str(weights), epochs=0))
    cache, out = tmp_path / "cache", tmp_path / "out"
    res = run_cli("build", str(path), "--cache", str(cache), "--out", str(out), "--quiet")
    assert res.code == 3
    assert res.stderr.startswith(
        f"edgeres: stage failed: cannot load {str(weights)!r} as a tensors-only checkpoint (UnpicklingError: "
    )
    assert res.stderr.endswith(
        "edgeres never unpickles code: save a plain state dict with torch.save(model.state_dict(), path)\n"
    )
    assert not marker.exists()
    assert not out.exists()
    assert committed(cache, "finetune") == []


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    from edgeres.models import build_model, read_state_dict

    whole = tmp_path / "whole.pt"
    torch.save(build_model("resnet18", 4).state_dict(), whole)
    data = whole.read_bytes()
    for cut in (len(data) // 2, len(data) - 100, 10):
        part = tmp_path / f"cut{cut}.pt"
        part.write_bytes(data[:cut])
        with pytest.raises(StageError) as info:
            read_state_dict(part)
        msg = str(info.value)
        assert msg.startswith(f"cannot load {str(part)!r} as a tensors-only checkpoint (")
        assert msg.endswith("save a plain state dict with torch.save(model.state_dict(), path)")


def test_checkpoint_of_another_architecture_fails_the_build_with_exit_3(tmp_path: Path) -> None:
    from edgeres.models import build_model

    weights = tmp_path / "r34.pt"
    torch.save(build_model("resnet34", 4).state_dict(), weights)
    path = write_recipe(tmp_path / "r.yaml", finetune_only(weights=str(weights), epochs=0))
    res = run_cli("build", str(path), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--quiet")
    assert res.code == 3
    assert res.stderr.startswith(f"edgeres: stage failed: weights from {weights} do not fit this architecture: ")
    assert res.stderr.endswith("; check model.arch\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncated", "payload", "not-a-checkpoint"])
def test_unreadable_resume_checkpoint_restarts_training(
    tmp_path: Path, finetune_cache: tuple[Path, object], damage: str
) -> None:
    """A killed run's epoch checkpoint that cannot be read is discarded (nothing in it runs): the stage trains from
    the first epoch and ends with the same weights as a build that was never interrupted."""
    from edgeres.stages.base import SCRATCH

    (reference,) = committed(finetune_cache[0], "finetune")
    cache = tmp_path / "cache"
    last = cache / f"{reference.name}.partial" / SCRATCH / "last.pt"
    last.parent.mkdir(parents=True)
    marker = tmp_path / "marker"
    if damage == "truncated":
        torch.save({"epoch": 1, "model": torch.nn.Linear(2, 2).state_dict()}, last)
        last.write_bytes(last.read_bytes()[:100])
    elif damage == "payload":
        torch.save({"epoch": 1, "model": Payload(marker)}, last)
    else:
        torch.save([torch.zeros(1)], last)
    (last.parent / "best.pt").write_bytes(b"stale")
    result, log = run_pipeline(tiny_recipe(), cache, until_stage="finetune")
    assert [r.status for r in result.records] == ["ran"]
    assert f"the checkpoint {last} cannot be resumed from (" in log
    assert "); starting over" in log
    assert not marker.exists()
    (entry,) = committed(cache, "finetune")
    assert entry.name == reference.name
    assert (entry / "model.pt").read_bytes() == (reference / "model.pt").read_bytes()
