"""The content-addressed cache: reuse, invalidation, --force/--from/--until, dry runs and the atomic commit."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    Build,
    as_recipe,
    committed,
    entries,
    finetune_only,
    run_cli,
    run_pipeline,
    statuses,
    tiny_recipe,
    write_recipe,
)

import edgeres.stages.finetune
from edgeres.artifact import SIDECAR, read_artifact
from edgeres.errors import CacheError, RecipeError
from edgeres.pipeline import Pipeline

ALL_CACHED = [("main", "finetune", "cached"), ("main", "export", "cached"), ("*", "benchmark", "cached")]


def with_stage(recipe: dict[str, Any], index: int, **changes: Any) -> dict[str, Any]:
    recipe["stages"][index] = {**recipe["stages"][index], **changes}
    return recipe


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under folder with its size and mtime, to show nothing was written."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def planned_key(recipe: dict[str, Any], cache: Path) -> str:
    """The finetune cache key, from a dry run (which writes nothing)."""
    result, _ = run_pipeline(recipe, cache, dry_run=True)
    rec = result.records[0]
    assert rec.stage == "finetune"
    return rec.key


# ------------------------------------------------------------------------------------------------------ reuse


def test_same_recipe_again_runs_nothing(base_build: Build) -> None:
    before = snapshot(base_build.cache)
    result, _ = run_pipeline(base_build.recipe, base_build.cache)
    assert statuses(result) == ALL_CACHED
    assert result.report is not None
    assert {k: v for k, v in snapshot(base_build.cache).items() if k in before} == before


def test_downstream_change_reruns_only_export_and_benchmark(base_build: Build, tmp_path: Path) -> None:
    # A second recipe (another name) that shares the finetune stage and changes the export opset.
    recipe = with_stage(tiny_recipe(name="tiny-opset17"), 1, opset=17)
    result, _ = run_pipeline(recipe, base_build.cache, out=tmp_path / "out")
    assert statuses(result) == [
        ("main", "finetune", "cached"),
        ("main", "export", "ran"),
        ("*", "benchmark", "ran"),
    ]
    base_ft = read_artifact(Path(json.loads((base_build.out / "build.json").read_text())["stages"][0]["path"]))
    assert base_ft is not None
    assert result.records[0].path == str(base_ft.path)
    export = result.variants["main"]
    assert export.metadata["config"]["opset"] == 17
    assert export.metadata["inputs"] == {"input": base_ft.content_sha256}
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["recipe"] == "tiny-opset17"


def test_seed_change_reruns_everything(base_build: Build) -> None:
    result, _ = run_pipeline(tiny_recipe(seed=1), base_build.cache)
    assert statuses(result) == [("main", "finetune", "ran"), ("main", "export", "ran"), ("*", "benchmark", "ran")]
    base = json.loads((base_build.out / "build.json").read_text(encoding="utf-8"))["stages"]
    assert not {r.key for r in result.records} & {s["key"] for s in base}


def test_seed_is_in_every_stage_key(base_build: Build) -> None:
    """Even with identical inputs, each stage's key changes with the seed."""
    from edgeres.keys import stage_key

    def key(recipe: Any, st: Any) -> str:
        return stage_key(Pipeline(recipe, cache_dir=base_build.cache).plan("main", st, {"input": "0" * 64})[1])

    r0, r1 = as_recipe(tiny_recipe()), as_recipe(tiny_recipe(seed=1))
    for st0, st1 in zip(r0.stages, r1.stages, strict=True):
        assert key(r0, st0) != key(r1, st1)
        assert key(r0, st0) == key(as_recipe(tiny_recipe()), st0)


def test_stage_name_does_not_change_the_key(base_build: Build) -> None:
    """A renamed stage reuses its output; only the report, which lists stage names, is measured again."""
    recipe = with_stage(tiny_recipe(), 1, name="onnx")
    result, _ = run_pipeline(recipe, base_build.cache)
    assert statuses(result) == [
        ("main", "finetune", "cached"),
        ("main", "onnx", "cached"),
        ("*", "benchmark", "ran"),
    ]


@pytest.fixture(scope="module")
def variants_build(module_tmp: Any) -> tuple[Any, Path, Path]:
    cache = module_tmp("variants") / "cache"
    out = cache.parent / "out"
    recipe = with_stage(tiny_recipe(), 2, runtimes=["onnxruntime"], isolate=False)
    recipe["variants"] = {"a": {}, "b": {"set": {"stages.export.opset": 17}}}
    result, _ = run_pipeline(recipe, cache, out=out)
    return result, cache, out


def test_variants_share_stages(variants_build: tuple[Any, Path, Path]) -> None:
    result, cache, _ = variants_build
    assert statuses(result) == [
        ("a", "finetune", "ran"),
        ("a", "export", "ran"),
        ("b", "finetune", "cached"),
        ("b", "export", "ran"),
        ("*", "benchmark", "ran"),
    ]
    assert len(committed(cache, "finetune")) == 1
    assert len(committed(cache, "export")) == 2
    assert len(committed(cache, "benchmark")) == 1
    a, b = result.variants["a"], result.variants["b"]
    assert (a.metadata["config"]["opset"], b.metadata["config"]["opset"]) == (18, 17)
    assert a.metadata["inputs"] == b.metadata["inputs"]


def test_variants_report_and_deliverables(variants_build: tuple[Any, Path, Path]) -> None:
    _, _, out = variants_build
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["baseline"] == "a"
    assert [(r["variant"], r["runtime"]) for r in report["results"]] == [("a", "onnxruntime"), ("b", "onnxruntime")]
    assert report["settings"]["isolated_processes"] is False
    b = report["results"][1]["accuracy"]
    assert b["top1_drop"] == pytest.approx(report["results"][0]["accuracy"]["top1"] - b["top1"])
    # agreement recomputed here: both variants' models on the test split, through ONNX Runtime
    import onnxruntime as ort

    from edgeres.data import load_data

    recipe = with_stage(tiny_recipe(), 2, runtimes=["onnxruntime"], isolate=False)
    data = load_data(as_recipe(recipe).data, seed=0)
    x = np.concatenate([batch for batch, _ in data.numpy_batches(data.test, 64)])
    preds = {
        v: ort.InferenceSession(str(out / "models" / v / "model.onnx"), providers=["CPUExecutionProvider"])
        .run(None, {"input": x})[0]
        .argmax(1)
        for v in ("a", "b")
    }
    assert b["top1_agreement"] == float(np.mean(preds["a"] == preds["b"]))
    assert report["results"][0]["accuracy"]["top1"] == float(np.mean(preds["a"] == data.test.labels.numpy()))
    for v in ("a", "b"):
        assert (out / "models" / v / "model.onnx").is_file()
        assert (out / "models" / v / SIDECAR).is_file()


# ------------------------------------------------------------------------------------------ --force, --from, --until


def test_force_export_reruns_export_only(base_build: Build, base_cache_copy: Path) -> None:
    before = {p.name for p in committed(base_cache_copy, "export")}
    result, log = run_pipeline(base_build.recipe, base_cache_copy, force=("export",))
    # The export is deterministic, so the re-exported ONNX has the same content and the report stays cached.
    assert statuses(result) == [("main", "finetune", "cached"), ("main", "export", "ran"), ("*", "benchmark", "cached")]
    assert {p.name for p in committed(base_cache_copy, "export")} == before
    assert not [n for n in entries(base_cache_copy) if ".old-" in n or n.endswith(".partial")]
    result.variants["main"].verify()
    assert "[main] export: running" in log


def test_from_with_empty_cache_raises_cache_error(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    key = planned_key(tiny_recipe(), cache)
    with pytest.raises(CacheError) as info:
        run_pipeline(tiny_recipe(), cache, from_stage="export")
    assert str(info.value) == (
        f"--from export needs finetune's output in the cache for variant main, but there is no entry "
        f"finetune-{key}; run the build once without --from (or from an earlier stage)"
    )
    assert entries(cache) == set()


def test_from_on_the_cli_exits_6(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe())
    res = run_cli("build", str(path), "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--from", "export")
    assert res.code == 6
    assert res.stderr.startswith("edgeres: cache error: --from export needs finetune's output in the cache")
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("option", ["from_stage", "until_stage"])
def test_unknown_stage_option(tmp_path: Path, option: str) -> None:
    with pytest.raises(RecipeError) as info:
        Pipeline(as_recipe(tiny_recipe()), cache_dir=tmp_path, **{option: "quantize"})
    flag = "--from" if option == "from_stage" else "--until"
    assert str(info.value) == f"{flag} 'quantize' is not a stage of this recipe; stages: finetune, export, benchmark"


def test_unknown_force_stage(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as info:
        Pipeline(as_recipe(tiny_recipe()), cache_dir=tmp_path, force=("finetune", "nope"))
    assert str(info.value) == "--force 'nope' is not a stage of this recipe; stages: finetune, export, benchmark"


def test_until_finetune_runs_only_finetune(finetune_cache: tuple[Path, Any]) -> None:
    cache, result = finetune_cache
    assert statuses(result) == [("main", "finetune", "ran")]
    assert result.report is None
    assert {n.split("-")[0] for n in entries(cache)} == {"finetune"}
    assert len(committed(cache, "finetune")) == 1


def test_until_finetune_shares_the_full_builds_entry(base_build: Build, finetune_cache: tuple[Path, Any]) -> None:
    base = json.loads((base_build.out / "build.json").read_text(encoding="utf-8"))["stages"][0]
    assert finetune_cache[1].records[0].key == base["key"]


def test_from_export_uses_the_cached_finetune(finetune_cache_copy: Path) -> None:
    result, _ = run_pipeline(tiny_recipe(), finetune_cache_copy, from_stage="finetune", until_stage="finetune")
    assert statuses(result) == [("main", "finetune", "cached")]


# --------------------------------------------------------------------------------------------------- dry runs


def test_dry_run_on_empty_cache_runs_and_writes_nothing(tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    result, log = run_pipeline(tiny_recipe(), cache, out=out, dry_run=True)
    # every stage gets a planned key: the export's input is identified by the finetune's key
    assert statuses(result) == [("main", "finetune", "planned"), ("main", "export", "planned"),
                                ("*", "benchmark", "planned")]  # fmt: skip
    assert result.report is None
    assert not cache.exists()
    assert not out.exists()
    assert "[main] finetune: would run" in log


def test_dry_run_cli(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe())
    cache, out = tmp_path / "cache", tmp_path / "out"
    res = run_cli("build", str(path), "--cache", str(cache), "--out", str(out), "--dry-run")
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["main", "finetune", "planned"]
    assert lines[-1] == (
        "dry run: nothing was run. A planned stage after one that would run is keyed here by that stage's key; "
        "once its input exists the key hashes the input's content instead"
    )
    assert not cache.exists()
    assert not out.exists()


def test_dry_run_on_full_cache_writes_nothing(base_build: Build, tmp_path: Path) -> None:
    before = snapshot(base_build.cache)
    result, _ = run_pipeline(base_build.recipe, base_build.cache, out=tmp_path / "out", dry_run=True)
    assert statuses(result)[:2] == [("main", "finetune", "cached"), ("main", "export", "cached")]
    assert snapshot(base_build.cache) == before
    assert not (tmp_path / "out").exists()


def test_dry_run_lists_a_benchmark_that_would_run(base_build: Build) -> None:
    recipe = with_stage(tiny_recipe(), 2, latency={"warmup": 2, "min_queries": 5, "min_duration_s": 0})
    result, _ = run_pipeline(recipe, base_build.cache, dry_run=True)
    assert statuses(result) == [
        ("main", "finetune", "cached"),
        ("main", "export", "cached"),
        ("*", "benchmark", "planned"),
    ]


def cheap() -> dict[str, Any]:
    """A one-epoch finetune of the tiny data: the entries the tests below damage and rebuild need no model that
    learned (a rebuild of the shared 6-epoch entry took 2.5 s each)."""
    return finetune_only()


@pytest.fixture(scope="module")
def cheap_cache(module_tmp: Any) -> Path:
    cache = module_tmp("cheap") / "cache"
    run_pipeline(cheap(), cache)
    return cache


@pytest.fixture
def cheap_cache_copy(cheap_cache: Path, tmp_path: Path) -> Path:
    """A private copy of a cache holding one committed finetune entry (cheap())."""
    dst = tmp_path / "cache"
    shutil.copytree(cheap_cache, dst)
    return dst


# ---------------------------------------------------------------------------------------------- atomic commit


def only_entry(cache: Path) -> Path:
    (entry,) = committed(cache, "finetune")
    return entry


def test_partial_folder_is_never_taken_as_done(cheap_cache_copy: Path) -> None:
    # A finished-looking folder (files and a valid sidecar) that was never renamed into place.
    final = only_entry(cheap_cache_copy)
    partial = final.with_name(final.name + ".partial")
    os.rename(final, partial)
    result, _ = run_pipeline(cheap(), cheap_cache_copy, until_stage="finetune")
    assert statuses(result) == [("main", "finetune", "ran")]
    assert read_artifact(final) is not None
    read_artifact(final).verify()  # type: ignore[union-attr]
    assert not partial.exists()


@pytest.mark.parametrize("damage", ["missing", "truncated", "wrong-schema"])
def test_entry_without_valid_sidecar_is_rerun(cheap_cache_copy: Path, damage: str) -> None:
    final = only_entry(cheap_cache_copy)
    side = final / SIDECAR
    if damage == "missing":
        side.unlink()
    elif damage == "truncated":
        side.write_text(side.read_text(encoding="utf-8")[:100], encoding="utf-8")
    else:
        meta = json.loads(side.read_text(encoding="utf-8"))
        side.write_text(json.dumps({**meta, "schema": 99}), encoding="utf-8")
    assert read_artifact(final) is None
    result, _ = run_pipeline(cheap(), cheap_cache_copy, until_stage="finetune")
    assert statuses(result) == [("main", "finetune", "ran")]
    art = read_artifact(final)
    assert art is not None
    art.verify()
    assert sorted(entries(cheap_cache_copy)) == [final.name]


def test_tampered_entry_fails_the_build(cheap_cache_copy: Path) -> None:
    final = only_entry(cheap_cache_copy)
    with open(final / "model.pt", "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\x00" * 8)
    expected = (
        f"artifact {final} does not match its sidecar (changed, missing or extra: model.pt); it was modified after it "
        "was written. Remove it with `edgeres cache clean` and rebuild."
    )
    art = read_artifact(final)
    assert art is not None
    with pytest.raises(CacheError) as info:
        art.verify()
    assert str(info.value) == expected
    with pytest.raises(CacheError) as info:
        run_pipeline(cheap(), cheap_cache_copy, until_stage="finetune")
    assert str(info.value) == expected


def test_tampered_entry_exits_6_on_the_cli(cheap_cache_copy: Path, tmp_path: Path) -> None:
    final = only_entry(cheap_cache_copy)
    (final / "model.json").write_text("{}", encoding="utf-8")
    path = write_recipe(tmp_path / "r.yaml", cheap())
    res = run_cli("build", str(path), "--cache", str(cheap_cache_copy), "--out", str(tmp_path / "o"))
    assert res.code == 6
    assert res.stderr == (
        f"edgeres: cache error: artifact {final} does not match its sidecar (changed, missing or extra: model.json); "
        "it was modified after it was written. Remove it with `edgeres cache clean` and rebuild.\n"
    )


def test_force_replaces_a_tampered_entry(cheap_cache_copy: Path) -> None:
    final = only_entry(cheap_cache_copy)
    (final / "extra.txt").write_text("x", encoding="utf-8")
    result, _ = run_pipeline(cheap(), cheap_cache_copy, until_stage="finetune", force=("finetune",))
    assert statuses(result) == [("main", "finetune", "ran")]
    art = read_artifact(final)
    assert art is not None
    art.verify()
    assert not (final / "extra.txt").exists()
    assert sorted(entries(cheap_cache_copy)) == [final.name]


def test_a_missing_weights_file_fails_before_any_stage_and_commits_nothing(tmp_path: Path) -> None:
    """Its content is keyed, so a missing file is found while the build is planned, before anything runs."""
    cache = tmp_path / "cache"
    missing = tmp_path / "missing.pt"
    recipe = with_stage(cheap(), 0, weights=str(missing), epochs=0)
    with pytest.raises(RecipeError) as info:
        run_pipeline(recipe, cache)
    assert str(info.value) == (
        f"stages.finetune.weights: {missing} cannot be read (No such file or directory); give the path of an "
        "existing file (relative paths are resolved against the recipe file's folder)"
    )
    assert committed(cache, "finetune") == []
    assert [n for n in entries(cache) if "." not in n] == []


def test_stage_that_raises_after_writing_its_output_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    key = planned_key(cheap(), cache)
    final = cache / f"finetune-{key}"

    def boom(ctx: Any, cfg: Any, inp: Any) -> Any:
        (ctx.workdir / "model.pt").write_bytes(b"half-written")
        (ctx.workdir / "model.json").write_text("{}", encoding="utf-8")
        raise RuntimeError("killed mid-stage")

    monkeypatch.setattr(edgeres.stages.finetune, "run", boom)
    with pytest.raises(RuntimeError, match="killed mid-stage"):
        run_pipeline(cheap(), cache, until_stage="finetune")
    assert not final.exists()
    assert read_artifact(final) is None
    assert read_artifact(final.with_name(final.name + ".partial")) is None
    monkeypatch.undo()

    # The next build runs the stage for real and commits it.
    result, _ = run_pipeline(cheap(), cache, until_stage="finetune")
    assert statuses(result) == [("main", "finetune", "ran")]
    art = read_artifact(final)
    assert art is not None
    art.verify()
    assert (final / "model.pt").read_bytes() != b"half-written"


def test_cache_clean_partial_keeps_committed_entries(cheap_cache_copy: Path) -> None:
    final = only_entry(cheap_cache_copy)
    stale = final.with_name("export-" + "a" * 64 + ".partial")
    shutil.copytree(final, stale)
    res = run_cli("cache", "ls", "--cache", str(cheap_cache_copy))
    assert res.code == 0
    states = sorted(line.split()[:3:2] for line in res.stdout.splitlines()[:-1])
    assert states == [["export", "partial"], ["finetune", "done"]]
    res = run_cli("cache", "clean", "--partial", "--cache", str(cheap_cache_copy))
    assert res.code == 0
    assert res.stdout.startswith("removed 1 entries")
    assert not stale.exists()
    assert read_artifact(final) is not None


def test_stray_files_in_a_leftover_partial_are_not_committed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    key = planned_key(cheap(), cache)
    partial = cache / f"finetune-{key}.partial"
    partial.mkdir(parents=True)
    (partial / ".model.pt.k3j2h1").write_bytes(b"temporary of a write that was killed")
    result, _ = run_pipeline(cheap(), cache, until_stage="finetune")
    assert statuses(result) == [("main", "finetune", "ran")]
    art = result.variants["main"]
    assert sorted(art.files) == ["model.json", "model.pt"]


# ------------------------------------------------------------------------------------------ tampered sidecars


@pytest.mark.parametrize(
    "deliverable", ["../../etc/passwd", "/etc/passwd", "model.pt/../../../x", "model.pt\\..\\x", "not-hashed.bin"]
)
def test_deliverables_outside_the_hashed_files_are_refused(
    cheap_cache_copy: Path, tmp_path: Path, deliverable: str
) -> None:
    final = only_entry(cheap_cache_copy)
    side = final / SIDECAR
    meta = json.loads(side.read_text(encoding="utf-8"))
    assert meta["deliverables"] == ["model.pt", "model.json"]
    side.write_text(json.dumps({**meta, "deliverables": ["model.pt", deliverable]}), encoding="utf-8")
    path = write_recipe(tmp_path / "r.yaml", cheap())
    out = tmp_path / "out"
    args = ["build", str(path), "--cache", str(cheap_cache_copy), "--out", str(out), "--until", "finetune"]
    res = run_cli(*args, "--quiet")
    assert res.code == 6
    assert res.stderr == (
        f"edgeres: cache error: cache entry {final} is corrupt: its sidecar names {deliverable!r} as a deliverable, "
        "which is not one of the files it hashed (model.json, model.pt). Rebuild it with `edgeres build RECIPE --force "
        "finetune`, or remove it with `edgeres cache clean`.\n"
    )
    assert not out.exists()  # checked before anything is written
    if deliverable != "../../etc/passwd":
        return
    # The entry's files still match their hashes (only the sidecar was changed): --force rebuilds it, and delivers.
    res = run_cli(*args, "--quiet", "--force", "finetune")
    assert res.code == 0, res.stderr
    assert json.loads(side.read_text(encoding="utf-8"))["deliverables"] == ["model.pt", "model.json"]
    assert sorted(p.name for p in (out / "models" / "main").iterdir()) == ["artifact.json", "model.json", "model.pt"]


@pytest.mark.parametrize("deliverables", [[], "model.pt", None, [3]])
def test_deliverables_that_are_not_a_list_of_files_are_refused(cheap_cache_copy: Path, deliverables: Any) -> None:
    final = only_entry(cheap_cache_copy)
    side = final / SIDECAR
    meta = json.loads(side.read_text(encoding="utf-8"))
    side.write_text(json.dumps({**meta, "deliverables": deliverables}), encoding="utf-8")
    art = read_artifact(final)
    assert art is not None
    with pytest.raises(CacheError) as info:
        art.deliverables()
    what = (
        f"its sidecar names {deliverables[0]!r} as a deliverable, which is not one of the files it hashed "
        "(model.json, model.pt)."
        if deliverables == [3]
        else f"its sidecar's deliverables are {deliverables!r}, not a list of its files."
    )
    assert str(info.value) == (
        f"cache entry {final} is corrupt: {what} Rebuild it with `edgeres build RECIPE --force finetune`, or remove "
        "it with `edgeres cache clean`."
    )


def test_a_tampered_file_is_found_by_rehashing_and_rebuilt_with_force(cheap_cache_copy: Path, tmp_path: Path) -> None:
    final = only_entry(cheap_cache_copy)
    before = (final / "model.pt").read_bytes()
    (final / "model.pt").write_bytes(before[:-4] + b"\xff\xff\xff\xff")
    path = write_recipe(tmp_path / "r.yaml", cheap())
    out = tmp_path / "out"
    args = ["build", str(path), "--cache", str(cheap_cache_copy), "--out", str(out), "--until", "finetune"]
    res = run_cli(*args, "--quiet")
    assert res.code == 6
    assert "does not match its sidecar (changed, missing or extra: model.pt)" in res.stderr
    res = run_cli(*args, "--quiet", "--force", "finetune")
    assert res.code == 0, res.stderr
    read_artifact(final).verify()  # type: ignore[union-attr]
    assert (out / "models" / "main" / "model.pt").read_bytes() == (final / "model.pt").read_bytes()
    assert (final / "model.pt").read_bytes() == before  # training is deterministic: the same weights again
