"""edgeres search (edgeres/search.py): trials decided on val, the test split sealed until one final reading, the
fair reference, the paired latency protocol per trial, a study that resumes. The tiny model on synthetic data: the
figures are not meaningful, the mechanics are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_FINETUNE, TINY_LATENCY, TINY_OFFLINE, Build, as_recipe, quiet_reporter, tiny_recipe

from edgeres import faults
from edgeres import search as search_module
from edgeres.artifact import read_artifact
from edgeres.errors import DataError
from edgeres.search import Search, extra_epochs, pareto

pytest.importorskip("optuna")

PRUNE = {"type": "prune", "steps": 1, "budget": {"type": "macs", "fraction": 0.5}, "recovery": {"epochs": 1}}
SPACE = {
    "params": {"stages.prune.budget.fraction": {"low": 0.3, "high": 0.8}},
    "trials": 2,
    "fidelity": {"path": "stages.prune.recovery.epochs", "rungs": [1, 2]},
    "pairs": 3,
    "max_drop": 0.5,
    "reference": {"lrs": [0.001]},
}


def search_recipe(**search: Any) -> dict[str, Any]:
    return tiny_recipe(
        stages=[
            TINY_FINETUNE,  # as in the base build: its entry is reused
            PRUNE,
            {"type": "export", "opset": 18, "exporter": "torchscript"},  # 0.3 s a trial instead of 2 s
            {"type": "compile"},
            {"type": "benchmark", "latency": TINY_LATENCY, "offline": TINY_OFFLINE, "isolate": False, "fidelity": None},
        ],
        search={**SPACE, **search},
    )


def test_pareto_front_and_the_space_rules() -> None:
    trials = [
        {"number": 0, "val_top1": 0.90, "latency_ratio": 0.50},
        {"number": 1, "val_top1": 0.85, "latency_ratio": 0.40},
        {"number": 2, "val_top1": 0.80, "latency_ratio": 0.45},  # beaten by 1 on both
        {"number": 3, "val_top1": 0.90, "latency_ratio": 0.60},  # beaten by 0
    ]
    assert [t["number"] for t in pareto(trials)] == [1, 0]
    r = as_recipe(search_recipe())
    assert extra_epochs(r, "main", r.search) == 2  # 1 pruning step x the last rung's 2 recovery epochs
    with pytest.raises(Exception, match="either low and high"):
        as_recipe(search_recipe(params={"stages.prune.steps": {"low": 1}}))


def test_the_test_split_is_sealed_its_size_readable() -> None:
    from edgeres.data import load_data, sealed_test, test_sealed

    data = load_data(as_recipe(tiny_recipe()).data, seed=0)
    n = len(data.test)
    with sealed_test("a search"):
        assert test_sealed() == "a search" and len(data.test) == n
        with pytest.raises(DataError, match=r"the test split is sealed \(a search\); reading its labels"):
            _ = data.test.labels
        with pytest.raises(DataError, match="sealed"):
            list(data.numpy_batches(data.split("test"), 8))
    assert test_sealed() is None and len(data.test.labels) == n


@pytest.fixture(scope="module")
def searched(base_build: Build, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A two-trial search over the base build's cache (its finetune is reused), with spies on when test is read."""
    root = tmp_path_factory.mktemp("search")
    cache = root / "cache"
    shutil.copytree(base_build.cache, cache)
    events: list[str] = []
    mp = pytest.MonkeyPatch()
    from edgeres.data import test_sealed

    real_trial, real_test = Search.run_trial, Search.read_test_once

    def trial(self: Search, t: Any, *a: Any) -> float:
        events.append(f"trial sealed={test_sealed() is not None}")
        return real_trial(self, t, *a)

    def test_once(self: Search, *a: Any) -> Any:
        events.append(f"test sealed={test_sealed() is not None}")
        return real_test(self, *a)

    # The tiny engines run in about half a millisecond: on a loaded host their A/A control can miss +-5% (a
    # trial timed then is never chosen: test_paired covers that rule); here the search's mechanics are under test.
    mp.setattr("edgeres.paired.AA_TOLERANCE", 10.0)
    mp.setattr(Search, "run_trial", trial)
    mp.setattr(Search, "read_test_once", test_once)
    try:
        out = Search(as_recipe(search_recipe()), cache_dir=cache, out_dir=root / "out", reporter=quiet_reporter()).run()
    finally:
        mp.undo()
    return {"out": out, "events": events, "cache": cache, "root": root}


def test_a_search_decides_on_val_and_reads_test_once_at_the_end(searched: dict[str, Any]) -> None:
    out, events = searched["out"], searched["events"]
    assert events == ["trial sealed=True", "trial sealed=True", "test sealed=False"]
    assert [t["state"] for t in out["trials"]].count("COMPLETE") >= 1 and len(out["trials"]) == 2
    chosen = out["chosen"]
    assert chosen is not None and out["reference"]["val_top1"] - chosen["val_top1"] <= 0.5
    assert chosen["number"] in out["front"]
    assert out["test"]["split"] == "test" and out["test"]["images"] == 32
    # stages that ran under the seal skipped their test figures: a prune entry of the search says so
    prunes = [read_artifact(p) for p in searched["cache"].glob("prune-*") if p.is_dir()]
    assert prunes and all(a is not None and a.metadata["metrics"]["after"]["test_top1"] is None for a in prunes)
    folder = searched["root"] / "out" / "search"
    assert {"search.json", "search.md", "search.html"} <= {p.name for p in folder.iterdir()}
    md = (folder / "search.md").read_text(encoding="utf-8")
    assert "## Test, read once" in md and "start" in md and "extra1" in md


def test_the_reference_is_the_best_on_val_of_the_start_and_its_extra_epochs(searched: dict[str, Any]) -> None:
    ref = searched["out"]["reference"]
    rows = {r["variant"]: r for r in ref["candidates"]}
    assert set(rows) == {"start", "extra1"} and rows["extra1"]["extra_epochs"] == 2 and rows["extra1"]["lr"] == 0.001
    best = max(rows.values(), key=lambda r: r["val_top1"])
    assert ref["val_top1"] == best["val_top1"] and [r["variant"] for r in rows.values() if r.get("chosen")]


@pytest.mark.slow
def test_a_killed_search_resumes_with_the_same_trial(
    searched: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crashed as its third trial starts: the journal keeps two trials and the running one; the re-run tries that
    one's values again and ends with three, reusing every cached build."""
    cache = tmp_path / "cache"
    shutil.copytree(searched["cache"], cache)
    recipe = as_recipe(search_recipe())
    monkeypatch.setenv(faults.ENV, "search:trial@1:crash")
    faults.reset()
    with pytest.raises(faults.InjectedCrash):
        Search(recipe, cache_dir=cache, out_dir=tmp_path / "out", reporter=quiet_reporter(), trials=3).run()
    monkeypatch.delenv(faults.ENV)
    monkeypatch.setattr(search_module, "_alive", lambda pid: False)  # the crashed process (this one, here) is gone
    search = Search(recipe, cache_dir=cache, out_dir=tmp_path / "out", reporter=quiet_reporter(), trials=3)
    running = [t for t in _study(search).trials if t.state.name == "RUNNING"]
    assert len(running) == 1 and len([t for t in _study(search).trials if t.state.name != "RUNNING"]) == 2
    out = search.run()
    done = [t for t in out["trials"] if t["state"] in ("COMPLETE", "PRUNED")]
    assert len(done) == 3 and done[-1]["params"] == running[0].params  # the crashed trial's values, tried again
    assert len({json.dumps(t["params"], sort_keys=True) for t in done}) == 3  # a resumed sampler draws anew
    assert [t.state.name for t in _study(search).trials].count("FAIL") == 1


def _study(search: Search) -> Any:
    import optuna

    journal = search.cache_dir / "search" / f"{search.study_name}.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=search.study_name, storage=storage)


def test_a_trial_whose_build_fails_is_recorded_and_the_search_goes_on(
    searched: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial's build that fails a check (quantize missing its own budget, say) scores as failed; the search goes
    on, chooses nothing from it and reads no test."""
    from edgeres.errors import StageError

    cache = tmp_path / "cache"
    shutil.copytree(searched["cache"], cache)
    real = Search.build

    def build(self: Search, recipe: Any) -> Any:
        if recipe.name.endswith("-trial"):
            raise StageError("quantize: the accuracy budget cannot be held")
        return real(self, recipe)

    monkeypatch.setattr(Search, "build", build)
    recipe = as_recipe(search_recipe(max_drop=0.01, seed=7))  # another study: no trial of the fixture's
    out = Search(recipe, cache_dir=cache, out_dir=tmp_path / "out", reporter=quiet_reporter()).run()
    assert [t["failed"] for t in out["trials"]] == ["quantize: the accuracy budget cannot be held"] * 2
    assert out["chosen"] is None and out["test"] is None


def test_a_trial_timed_on_a_noisy_host_is_never_chosen(
    searched: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An A/A control outside 1.00 +- 0.05 twice (measured again once): the trial keeps its readings but is never
    chosen, so no test is read. The protocol's reading stands in here (edgeres.paired.paired_latency)."""
    import edgeres.paired

    calls: list[int] = []

    def noisy(*a: Any, **kw: Any) -> dict[str, Any]:
        calls.append(1)
        ratio = {"median": 0.5, "ci95": [0.4, 0.6], "pairs": 6}
        return {"latency_ratio": ratio, "speedup": {"median": 2.0, "ci95": [1.7, 2.5]},
                "control": {"median": 1.2, "ci95": [1.1, 1.3]}, "control_ok": False}  # fmt: skip

    monkeypatch.setattr(edgeres.paired, "paired_latency", noisy)
    cache = tmp_path / "cache"
    shutil.copytree(searched["cache"], cache)
    recipe = as_recipe(search_recipe(fidelity=None, trials=1, seed=3))
    out = Search(recipe, cache_dir=cache, out_dir=tmp_path / "out", reporter=quiet_reporter()).run()
    (trial,) = out["trials"]
    assert trial["control_ok"] is False and trial["speedup"] == 2.0 and len(calls) == 2
    assert out["chosen"] is None and out["test"] is None


def test_the_command_reports_a_finished_search_without_running_it_again(
    searched: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`edgeres search` on the fixture's recipe and cache: its trials are done and test was read, so the command
    builds nothing new, reads no test and prints the stored choice."""
    from conftest import run_cli, write_recipe

    from edgeres import search as search_module

    monkeypatch.setattr("edgeres.paired.AA_TOLERANCE", 10.0)
    read: list[int] = []
    monkeypatch.setattr(search_module.Search, "read_test_once", lambda *a: read.append(1))
    recipe = write_recipe(tmp_path / "search.yaml", search_recipe())
    res = run_cli("search", str(recipe), "--cache", str(searched["cache"]), "--out", str(tmp_path / "out"), "--quiet")
    assert res.code == 0, res.stderr
    chosen = searched["out"]["chosen"]
    assert "search tiny: 2 trials" in res.stdout and f"chosen: trial {chosen['number']}" in res.stdout
    assert read == [] and (tmp_path / "out" / "search" / "search.md").is_file()


@pytest.mark.slow  # 11 s: the default suite is at its 6-minute budget; `make test-slow` runs it
def test_a_search_at_two_sizes_against_a_peer_scores_its_slower_size(
    searched: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`search.sizes` and `search.against`: each trial is timed by the paired protocol against the peer's engine at
    every size (both engines resized, timing only), its score is the worst size's ratio (the smallest speed-up),
    the peer runs with its runtime's defaults as read back from the runtime, and the study is another one."""
    monkeypatch.setattr("edgeres.paired.AA_TOLERANCE", 10.0)  # the mechanics are under test (see `searched`)
    cache = tmp_path / "cache"
    shutil.copytree(searched["cache"], cache)
    peer = tmp_path / "peer" / "model.onnx"  # a model from elsewhere: a copy of the tiny export
    peer.parent.mkdir()
    shutil.copy(next(cache.glob("export-*/model.onnx")), peer)
    plain = as_recipe(search_recipe(fidelity=None, trials=1, seed=5))
    recipe = as_recipe(search_recipe(fidelity=None, trials=1, seed=5, sizes=[16, 32], against={"path": str(peer)}))
    search = Search(recipe, cache_dir=cache, out_dir=tmp_path / "out", reporter=quiet_reporter())
    assert search.study_name != Search(plain, cache_dir=cache, out_dir=tmp_path, reporter=quiet_reporter()).study_name
    out = search.run()
    (trial,) = out["trials"]
    by = trial["by_size"]
    assert set(by) == {"16", "32"} and all(b["against"].startswith("peer model.onnx") for b in by.values())
    assert trial["latency_ratio"] == max(b["latency_ratio"]["median"] for b in by.values())
    peer_config = by["32"]["configuration"]["reference"]["session_options"]
    engine_config = by["32"]["configuration"]["candidate"]["session_options"]
    assert peer_config["graph_optimization_level"] == "ORT_ENABLE_ALL"  # ONNX Runtime's default
    assert engine_config["graph_optimization_level"] == "ORT_ENABLE_EXTENDED"  # what the engine ships with
    assert list((cache / "search" / "resized").glob("*-32/model.onnx"))  # the 16x16 engines at 32x32
    assert out["latency"]["sizes"] == [16, 32] and out["latency"]["against"] == {"*": "peer model.onnx"}
    md = (tmp_path / "out" / "search" / "search.md").read_text(encoding="utf-8")
    assert "peer model.onnx at 16x16, 32x32" in md and "16: " in md and "32: " in md


def test_a_study_without_sizes_or_a_peer_keeps_the_name_it_had_before_they_existed() -> None:
    """The name a search's journal is found by: the same recipe named its study this before `search.sizes` and
    `search.against` existed (commit b59df7f), so a search started then resumes now."""
    search = Search(as_recipe(search_recipe()), cache_dir=Path("unused"), out_dir=Path("unused"),
                    reporter=quiet_reporter())  # fmt: skip
    assert search.study_name == "tiny-b2c449a5de2f"


def test_search_sizes_are_increasing_and_plausible() -> None:
    from edgeres.errors import RecipeError

    for bad, why in (([32, 16], "sizes must be increasing"), ([32, 32], "sizes must be increasing"),
                     ([0], "greater than or equal to 8")):  # fmt: skip
        with pytest.raises(RecipeError, match=why):
            as_recipe(search_recipe(sizes=bad))
