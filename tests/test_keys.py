"""Cache keys from declared reads (edgeres.keys): every leaf of the recipe schema is walked, changed, and exactly the
keys of the stages that declare it, and those downstream of them, must change.

Keys are computed by dry runs over an empty cache, where every stage is planned and a stage's input is identified
by its upstream key, so a change propagates downstream exactly as a real build's content hashes would.

What this proves: every leaf of the schema is read by some stage's key (or is listed below as structural, with the
reason), and a key changes with exactly what its stage declares. What it cannot prove on its own: that a stage's
code reads nothing it does not declare; `test_stages_read_only_what_they_declare` checks that for the recipe
attributes stage code reads through its context, on a real tiny build.
"""

from __future__ import annotations

import copy
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_DATA, TINY_LATENCY, TINY_OFFLINE, quiet_reporter
from pydantic import BaseModel

from edgeres.errors import RecipeError
from edgeres.pipeline import Pipeline
from edgeres.recipe import Recipe, recipe_from_text

# Leaves the walk does not change, and why.
STRUCTURAL = {
    "name": "the recipe's name names the output folder; no stage output depends on it",
    "stages[].name": "a stage's name is how variants and the CLI refer to it; renaming keeps its output",
    "variants": "variants select stages and overrides; each variant's keys follow from its own recipe",
    "targets": "target definitions; stages read the resolved spec of the chosen target through `target`",
    "data.root": "where the images lie; their content is keyed by the data fingerprint (test below)",
    "data.max_memory_gb": "a memory budget: above it the splits are streamed, giving the same batches",
    "distributed.batch": "multi-process training only: then the training stages' keys name it (test_distributed.py)",
    "distributed.sync_batchnorm": "multi-process training only: then the training stages' keys name it",
    "distributed.timeout_minutes": "multi-process training only: how long a barrier waits; shapes no output",
    "lock_timeout_s": "how long a build waits for another's lock; shapes no output",
    "data.stream": "in memory or streamed from disk: the same batches bit for bit (tests/test_stream.py)",
    "data.workers": "how many processes decode streamed batches: the same batches whatever the number",
    "data.type": "which kind of data set: each kind's leaves are walked in a base recipe of its own",
    "stages[].prune.budget.type": "which kind of budget: each kind's leaves are walked in a base recipe of its own",
}

STAGES_LATENCY: list[dict[str, Any]] = [
    {"type": "finetune", "epochs": 1, "batch_size": 32},
    {
        "type": "prune",
        "budget": {"type": "latency", "ms": 3.0},
        "distill": {"temperature": 4.0, "weight": 0.5},
    },
    {"type": "export", "opset": 18},
    {
        "type": "quantize",
        "max_accuracy_drop": 0.01,
        "qat": {"when": "if-ptq-misses", "distill": {"temperature": 4.0, "weight": 0.5}, "max_steps": 3},
    },
    {"type": "compile"},
    {"type": "benchmark", "latency": TINY_LATENCY, "offline": TINY_OFFLINE},
    {"type": "package", "version": 3, "golden": {"images": 2, "max_abs_diff": 0.01}},
]


def base_recipes(tmp: Path) -> dict[str, dict[str, Any]]:
    """Recipes that together hold every leaf of the schema: each budget type, each data type, optional blocks set."""
    folder = tmp / "images"
    for split in ("train", "test", "val", "train2", "test2"):
        for c in ("a", "b"):
            (folder / split / c).mkdir(parents=True, exist_ok=True)
            (folder / split / c / "0.png").write_bytes(b"not decoded by a dry run")
    ratio = copy.deepcopy(STAGES_LATENCY)[:-1]  # the dry-run test below lists this recipe's rows
    ratio[1] = {"type": "prune", "budget": {"type": "ratio", "ratio": 0.3}}
    ratio[3] = {"type": "quantize", "calibration_size": 8}
    ratio[4] = {"type": "compile", "tensorrt": {"opt_batch": 2}}
    macs = copy.deepcopy(STAGES_LATENCY)
    macs[1] = {
        "type": "prune",
        "budget": {"type": "macs", "fraction": 0.5},
        "measure_latency": True,
        "depth": {"blocks": [1, 1, 1, 1]},
    }
    return {
        "latency": {"name": "k", "threads": 1, "data": dict(TINY_DATA), "stages": STAGES_LATENCY},
        "ratio": {
            "name": "k",
            "threads": 1,
            "data": {"type": "imagefolder", "root": str(folder), "val": None},
            "stages": ratio,
        },
        "macs": {"name": "k", "data": {"type": "digits"}, "stages": macs, "target": "cpu-openvino"},
    }


def planned_keys(raw: dict[str, Any], cache: Path) -> dict[tuple[str, str], str]:
    import yaml

    recipe = recipe_from_text(yaml.safe_dump(raw, sort_keys=False), source="key-test")
    result = Pipeline(recipe, cache_dir=cache, reporter=quiet_reporter(), dry_run=True).run()
    return {(r.variant, r.stage): r.key for r in result.records}


def declared(recipe: Recipe, variant: str, stage: Any, path: str) -> bool:
    """Whether the stage declares a read covering `path` (the path itself, a prefix of it, or the whole recipe)."""
    reads = stage.reads(recipe, variant)
    parts = path.split(".")
    if parts[0] == "stages":
        idx = int(parts[1])
        parts = ["stages", recipe.stages[idx].id, *parts[2:]]
    dotted = ".".join(parts)
    return "*" in reads or any(dotted == r or dotted.startswith(r + ".") for r in reads)


# ------------------------------------------------------------------------------------------ the schema's leaves


def _models_of(annotation: Any) -> list[type[BaseModel]]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_of(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        return [m for a in typing.get_args(annotation) for m in _models_of(a)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def schema_leaves(model: type[BaseModel] = Recipe, prefix: str = "") -> set[str]:
    """Every leaf field path of the recipe schema, stages as `stages[].<type>.<field>`."""
    leaves: set[str] = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        if path in STRUCTURAL:
            continue
        models = _models_of(field.annotation)
        if name == "stages" and not prefix:
            for m in models:
                stage_type = typing.get_args(m.model_fields["type"].annotation)[0]
                leaves |= schema_leaves(m, f"stages[].{stage_type}.")
        elif name == "data" and not prefix:
            for m in models:
                leaves |= schema_leaves(m, "data.")
        elif models:
            for m in models:
                leaves |= schema_leaves(m, f"{path}.")
            if type(None) in typing.get_args(field.annotation) or field.default is None:
                leaves.add(path)  # an optional block: setting or clearing it is a change too
        else:
            leaves.add(path)
    return {
        leaf
        for leaf in leaves
        if leaf not in STRUCTURAL
        and not (leaf.startswith("stages[].") and leaf.count(".") == 2 and leaf.endswith((".type", ".name")))
    }


def walk(raw: Any, prefix: str = "", path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    """(path in the raw mapping, schema path) of every leaf present in a resolved recipe dump."""
    out: list[tuple[tuple[Any, ...], str]] = []
    if isinstance(raw, dict):
        for k, v in raw.items():
            if not path and k == "stages":
                for i, st in enumerate(v):
                    out += walk(st, f"stages[].{st['type']}.", ("stages", i))
                continue
            schema = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                out.append(((*path, k), schema))  # the block itself: cleared where it is optional
                out += walk(v, f"{schema}.", (*path, k))
            else:
                out.append(((*path, k), schema))
    return out


# Leaves whose other values must name something that exists (split folders made by base_recipes).
SPECIAL = {"data.train": ["train2"], "data.test": ["test2"], "data.val": ["val"]}


def mutations(value: Any, schema: str = "") -> list[Any]:
    """Candidate new values for a leaf; the first that validates is used."""
    if schema in SPECIAL:
        return SPECIAL[schema]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, 2]
    if isinstance(value, float):
        return [value * 0.5, value * 1.1, value + 0.1, 0.3]
    if isinstance(value, str):
        return ["cpu-openvino", "cpu-onnxruntime", "sgd", "adamw", "l2", "bn", "global", "cosine", "constant",
                "onecycle", "torchscript", "dynamo", "mixed", "performance", "all", "basic", "throughput", "fp32",
                "bf16", "val", "random", "none", "crop-flip", "crop", "always", "imagenet-v1", "resnet18", "skip",
                "10", "test2", "per-process"]  # fmt: skip
    if isinstance(value, list):
        return [
            ["onnxruntime"],
            ["openvino"],
            ["contrast"],  # benchmark.fidelity.robustness.corruptions
            [2],  # benchmark.fidelity.robustness.severities
            [*value, 1.0][:3] if value and isinstance(value[0], float) else [],
            [v + 1 for v in value] if value and all(type(v) is int for v in value) else [],  # prune.depth.blocks
        ]
    if value is None:
        return [2, 1, 16, 0.5, "main", "fp32", [0.5, 0.5, 0.5], {"temperature": 2.0, "weight": 0.3}, {"when": "always"}]
    if isinstance(value, dict):
        return [None]  # only optional blocks validate without their values
    return []


def _set(raw: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = raw
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def _mutated(raw: dict[str, Any], path: tuple[Any, ...], old: Any, schema: str) -> tuple[dict[str, Any], Any] | None:
    import yaml

    for new in mutations(old, schema):
        if new == old:
            continue
        candidate = copy.deepcopy(raw)
        _set(candidate, path, new)
        try:
            recipe_from_text(yaml.safe_dump(candidate, sort_keys=False), source="mutant")
        except RecipeError:
            continue
        return candidate, new
    return None


def test_every_leaf_changes_exactly_the_keys_that_declare_it(tmp_path: Path) -> None:
    import yaml

    walked: set[str] = set()
    failures: list[str] = []
    unchangeable: list[tuple[str, str]] = []  # (leaf, where): fine where another base recipe changed the leaf
    for label, base in base_recipes(tmp_path).items():
        recipe = recipe_from_text(yaml.safe_dump(base, sort_keys=False), source=label)
        resolved = recipe.model_dump(mode="json")
        base_keys = planned_keys(resolved, tmp_path / "cache")
        chain = [s for s in recipe.stages if s.type != "benchmark"]
        for path, schema in walk(resolved):
            if schema in STRUCTURAL or schema.startswith(("variants", "targets")):
                continue
            if schema.startswith("stages[].") and schema.count(".") == 2 and schema.endswith(".name"):
                continue
            if schema.startswith("stages[].") and schema.count(".") == 2 and schema.endswith(".type"):
                continue  # a stage's type is which stage it is
            if schema.startswith("data.") and schema.split(".")[1] in (
                "root",
                "max_memory_gb",
                "stream",
                "workers",
                "type",
            ):
                continue
            if schema == "stages[].prune.budget.type":
                continue
            node: Any = resolved
            for p in path:
                node = node[p]
            found = _mutated(resolved, path, node, schema)
            if found is None:
                if not isinstance(node, dict):  # a required block is walked through its leaves
                    unchangeable.append((schema, f"{label}: {schema} = {node!r}"))
                continue
            mutant, new = found
            walked.add(schema)
            keys = planned_keys(mutant, tmp_path / "cache")
            dotted = ".".join(str(p) for p in path)
            mutant_recipe = recipe_from_text(yaml.safe_dump(mutant, sort_keys=False), source="mutant")
            expected: set[str] = set()
            for i, st in enumerate(chain):
                mst = mutant_recipe.stages[i]
                if declared(recipe, "main", st, dotted) or declared(mutant_recipe, "main", mst, dotted):
                    expected |= {s.id for s in chain[i:]}  # it and everything downstream
            expected.add("benchmark")  # the report names the whole recipe
            changed = {stage for (_, stage), key in keys.items() if base_keys.get(("main", stage)) != key}
            if changed != expected:
                failures.append(
                    f"{label}: {schema} {node!r} -> {new!r}: keys changed for {sorted(changed)}, "
                    f"declared by and downstream of {sorted(expected)}"
                )
    assert not failures, "\n".join(failures)
    stuck = [where for leaf, where in unchangeable if leaf not in walked]
    assert not stuck, "the walk found no valid other value for:\n" + "\n".join(stuck)
    missing = schema_leaves() - walked
    assert not missing, f"schema leaves no base recipe holds (add them, or to STRUCTURAL with a reason): {missing}"


def test_data_content_not_location_is_keyed(tmp_path: Path) -> None:
    """Moving the images keeps every key but the report's, which names the recipe (root included); changing one
    image's bytes changes them."""
    import shutil

    raw = base_recipes(tmp_path)["ratio"]
    before = planned_keys(raw, tmp_path / "cache")
    moved = tmp_path / "moved"
    shutil.copytree(raw["data"]["root"], moved)
    after = planned_keys({**raw, "data": {**raw["data"], "root": str(moved)}}, tmp_path / "cache")
    assert {k: v for k, v in after.items() if k[1] != "benchmark"} == {
        k: v for k, v in before.items() if k[1] != "benchmark"
    }
    (moved / "train" / "a" / "0.png").write_bytes(b"other bytes")
    changed = planned_keys({**raw, "data": {**raw["data"], "root": str(moved)}}, tmp_path / "cache")
    assert changed[("main", "finetune")] != before[("main", "finetune")]
    assert changed[("main", "compile")] != before[("main", "compile")]  # downstream of finetune


def test_prune_latency_key_follows_whether_the_variant_quantizes(tmp_path: Path) -> None:
    """The README's fp32/int8 variants with a latency budget: the probe times FP32 for one and INT8 for the other,
    so they must not share one prune entry; with a ratio budget (no probe) they do."""
    raw = base_recipes(tmp_path)["latency"]
    raw = {**raw, "variants": {"fp32": {"skip": ["quantize"]}, "int8": {}}}
    keys = planned_keys(raw, tmp_path / "cache")
    assert keys[("fp32", "finetune")] == keys[("int8", "finetune")]
    assert keys[("fp32", "prune")] != keys[("int8", "prune")]
    ratio = copy.deepcopy(raw)
    ratio["stages"][1] = {"type": "prune", "budget": {"type": "ratio", "ratio": 0.3}}
    keys = planned_keys(ratio, tmp_path / "cache")
    assert keys[("fp32", "prune")] == keys[("int8", "prune")]


def test_tensorrt_quantize_key_follows_the_float_islands_precision(tmp_path: Path) -> None:
    """For a TensorRT target quantize writes the INT8 model's float parts in stages.compile.precision (fp16 by
    default): a change there is a new quantize entry, and finetune and export are shared."""
    raw = {
        "name": "k",
        "threads": 1,
        "target": "nvidia-gpu",
        "data": dict(TINY_DATA),
        "stages": [{"type": "finetune", "epochs": 1}, {"type": "export"}, {"type": "quantize"}, {"type": "compile"}],
    }
    recipe = recipe_from_text(yaml_dump(raw), source="k")
    quantize = recipe.stage("quantize")
    assert "stages.compile.precision" in quantize.reads(recipe, "main")
    fp16 = planned_keys(raw, tmp_path / "cache")  # null: the target's float precision, fp16
    raw["stages"][3] = {"type": "compile", "precision": "fp32"}
    fp32 = planned_keys(raw, tmp_path / "cache")
    assert fp32[("main", "finetune")] == fp16[("main", "finetune")]
    assert fp32[("main", "export")] == fp16[("main", "export")]
    assert fp32[("main", "quantize")] != fp16[("main", "quantize")]


def yaml_dump(raw: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(raw, sort_keys=False)


def test_benchmark_key_names_the_host_and_the_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A measurement is never reused on another machine or by other code; training is kept across both."""
    from edgeres import keys

    raw = base_recipes(tmp_path)["latency"]
    before = planned_keys(raw, tmp_path / "cache")
    monkeypatch.setattr(keys, "host_facts", lambda: {"cpu": "another CPU"})
    other_host = planned_keys(raw, tmp_path / "cache")
    monkeypatch.undo()
    monkeypatch.setattr(keys, "source_digest", lambda: "0" * 64)
    other_code = planned_keys(raw, tmp_path / "cache")
    for changed in (other_host, other_code):
        assert changed[("*", "benchmark")] != before[("*", "benchmark")]
        for stage in ("finetune", "prune", "export", "quantize", "compile"):
            assert changed[("main", stage)] == before[("main", stage)], stage


def test_dry_run_prints_a_planned_key_for_every_stage_of_every_variant(tmp_path: Path) -> None:
    from conftest import run_cli, write_recipe

    raw = {**base_recipes(tmp_path)["ratio"], "variants": {"a": {"skip": ["quantize"]}, "b": {}}}
    path = write_recipe(tmp_path / "r.yaml", raw)
    res = run_cli("build", str(path), "--dry-run", "--cache", str(tmp_path / "cache"), "--quiet")
    assert res.code == 0, res.stderr
    rows = [r for r in (line.split() for line in res.stdout.splitlines()) if len(r) == 5 and r[2] == "planned"]
    assert [(r[0], r[1]) for r in rows] == [
        ("a", "finetune"), ("a", "prune"), ("a", "export"), ("a", "compile"),
        ("b", "finetune"), ("b", "prune"), ("b", "export"), ("b", "quantize"), ("b", "compile"),
        ("*", "benchmark"),
    ]  # fmt: skip
    assert all(len(r[-1]) == 16 for r in rows)


# --------------------------------------------------------------------------- what stage code really reads


class Traced:
    """A read-only view of a recipe (or a part of it) that records the path of every attribute stage code reads."""

    def __init__(self, obj: Any, path: str, log: list[str]) -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_log", log)

    def _wrap(self, value: Any, path: str) -> Any:
        if isinstance(value, BaseModel):
            return Traced(value, path, self._log)
        if isinstance(value, list) and path == "stages":
            return [Traced(s, f"stages.{s.id}", self._log) for s in value]
        self._log.append(path)
        return value

    def __getattr__(self, name: str) -> Any:
        obj, path = self._obj, self._path
        value = getattr(obj, name)
        here = f"{path}.{name}" if path else name
        if name in ("type", "id", "name"):  # which stage or data kind this is: structure, not a value
            return value
        if name == "target_spec":
            return lambda: (self._log.append("target"), value())[1]
        if name == "chain":
            return lambda v: [Traced(s, f"stages.{s.id}", self._log) for s in value(v)]
        if callable(value):  # anything else called on a model (model_dump, model_copy...) reads all of it
            return lambda *a, **k: (self._log.append(path or "*"), value(*a, **k))[1]
        return self._wrap(value, here)


def test_stages_read_only_what_they_declare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real tiny build (prune with its latency probe, QAT, compile, benchmark) with each stage handed a recipe
    that records every attribute the stage's code reads: each read must be covered by what the stage declares."""
    from conftest import as_recipe, run_pipeline, tiny_recipe

    from edgeres import pipeline

    seen: list[tuple[Any, Any, str, list[str]]] = []
    real_load = pipeline.load_stage

    def load_stage(name: str) -> Any:
        module = real_load(name)

        class Recorded:
            @staticmethod
            def run(ctx: Any, cfg: Any, inp: Any) -> Any:
                log: list[str] = []
                recipe = ctx.recipe
                ctx.recipe = Traced(recipe, "", log)
                seen.append((recipe, cfg, ctx.variant, log))
                return module.run(ctx, cfg, inp)

        return Recorded

    monkeypatch.setattr(pipeline, "load_stage", load_stage)
    raw = tiny_recipe(
        stages=[
            {"type": "finetune", "epochs": 1, "batch_size": 32},
            {
                "type": "prune",
                "budget": {"type": "ratio", "ratio": 0.3},
                "steps": 1,
                "round_to": 1,
                "measure_latency": True,
                "recovery": {"epochs": 1, "batch_size": 32},
            },
            {"type": "export", "opset": 18},
            {"type": "quantize", "qat": {"when": "always", "max_steps": 1, "batch_size": 32}},
            {"type": "compile"},
            {"type": "benchmark", "latency": TINY_LATENCY, "offline": None, "isolate": False},
            {"type": "package"},
        ],
        target="cpu-openvino",
    )
    run_pipeline(as_recipe(raw), tmp_path / "cache")
    assert [cfg.type for _, cfg, _, _ in seen] == [
        "finetune", "prune", "export", "quantize", "compile", "benchmark", "package"
    ]  # fmt: skip
    undeclared = []
    for recipe, cfg, variant, log in seen:
        reads = cfg.reads(recipe, variant)
        for path in dict.fromkeys(log):
            if not ("*" in reads or any(path == r or path.startswith(r + ".") for r in reads)):
                undeclared.append(f"{cfg.type} reads {path}, which it does not declare ({reads})")
    assert not undeclared, "\n".join(undeclared)
    logs = {cfg.type: log for _, cfg, _, log in seen}
    assert "data.augment" in logs["quantize"]  # QAT trains with the recipe's augmentation (declared)
    assert "stages.compile.precision" in logs["prune"]  # the probe loads with the engine's settings (declared)
