"""Recipe validation: every error message is asserted exactly (key path, YAML line, value seen, what is allowed)."""

from __future__ import annotations

import subprocess
import typing
from pathlib import Path

import pytest
import yaml
from conftest import PYTHON, run_cli, subprocess_env
from pydantic import BaseModel

from edgeres.config import (
    BenchmarkStage,
    DataConfig,
    FinetuneStage,
    Latency,
    RuntimeName,
    StageConfig,
    SyntheticData,
)
from edgeres.errors import RecipeError
from edgeres.recipe import (
    Recipe,
    Variant,
    dump_recipe,
    load_recipe,
    recipe_from_text,
    variant_recipe,
)
from edgeres.recipe_yaml import parse_set

REPO = Path(__file__).resolve().parents[1]

# Line numbers in the expected messages refer to this text (line 1 is `name: tiny`).
BASE = """\
name: tiny
seed: 0
data:
  type: synthetic
  image_size: 16
  train_size: 64
  val_size: 32
  test_size: 32
  num_classes: 4
model:
  arch: resnet18
stages:
  - type: finetune
    epochs: 1
    batch_size: 32
  - type: export
  - type: benchmark
    runtimes: [onnxruntime, openvino]
    latency: {warmup: 1, min_queries: 5, min_duration_s: 0}
"""

HEAD = "r.yaml: 1 problem, nothing has run:\n"


def keys(model: type[BaseModel]) -> str:
    """The allowed-keys list an unknown-key message must give: the model's fields, in order."""
    return ", ".join(model.model_fields)


def tags(union: object) -> str:
    """The `type` tags of a discriminated union, as pydantic lists them."""
    members = typing.get_args(typing.get_args(union)[0])
    return ", ".join(repr(typing.get_args(m.model_fields["type"].annotation)[0]) for m in members)


# The schema grows (new stages, new fields); the key lists below are taken from the models, the rest is literal.
assert keys(Recipe).startswith("name, seed, threads, ")
assert tags(DataConfig) == "'digits', 'imagefolder', 'synthetic'"
assert tags(StageConfig).startswith("'finetune', ")


def error_of(text: str, overrides: list[str] | None = None) -> str:
    with pytest.raises(RecipeError) as info:
        recipe_from_text(text, source="r.yaml", overrides=parse_set(overrides or []))
    return str(info.value)


def edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


# --------------------------------------------------------------------------------------------------- valid input


def test_base_recipe_is_valid_and_has_defaults() -> None:
    r = recipe_from_text(BASE, source="r.yaml")
    assert [s.id for s in r.stages] == ["finetune", "export", "benchmark"]
    assert r.variant_names() == ["main"]
    assert r.stage("export").opset == 18
    assert r.stage("export").exporter == "dynamo"
    assert r.stage("finetune").weights == "none"
    assert r.threads is None


def test_dump_recipe_round_trips() -> None:
    r = recipe_from_text(BASE, source="r.yaml")
    again = recipe_from_text(dump_recipe(r), source="dumped")
    assert again == r


def test_quickstart_recipe_is_valid() -> None:
    r = load_recipe(REPO / "recipes" / "quickstart.yaml")
    assert r.name == "quickstart"
    assert r.stages[0].type == "finetune"
    assert [s.type for s in r.stages[-2:]] == ["benchmark", "package"]


def test_set_overrides_by_stage_name_and_index() -> None:
    r = recipe_from_text(
        BASE,
        source="r.yaml",
        overrides=parse_set(["stages.finetune.epochs=3", "stages.1.opset=17", "seed=7", "data.augment=none"]),
    )
    assert r.stage("finetune").epochs == 3
    assert r.stage("export").opset == 17
    assert r.seed == 7
    assert r.data.augment == "none"


def test_set_values_are_parsed_as_yaml() -> None:
    assert parse_set(["a.b=3", "c=[1, 2]", "d=", "e=x=y", " f =true"]) == [
        ("a.b", 3),
        ("c", [1, 2]),
        ("d", ""),
        ("e", "x=y"),
        ("f", True),
    ]


def test_variant_recipe_applies_its_set() -> None:
    text = BASE + "variants:\n  a: {}\n  b: {set: {stages.export.opset: 17}}\n"
    r = recipe_from_text(text, source="r.yaml")
    assert r.variant_names() == ["a", "b"]
    assert variant_recipe(r, "a").stage("export").opset == 18
    assert variant_recipe(r, "b").stage("export").opset == 17
    assert r.stage("export").opset == 18  # the recipe itself is untouched


def test_relative_weights_path_resolves_against_recipe_folder(tmp_path: Path) -> None:
    text = edit("    epochs: 1\n", "    epochs: 0\n    weights: ckpt/w.pt\n")
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "r.yaml"
    path.write_text(text, encoding="utf-8")
    r = load_recipe(path)
    assert r.stage("finetune").weights == str((tmp_path / "sub" / "ckpt" / "w.pt").resolve())


# ---------------------------------------------------------------------------------------------- schema problems


def test_unknown_top_level_key_lists_allowed_keys_and_line() -> None:
    msg = error_of(edit("seed: 0\n", "seed: 0\nsede: 1\n"))
    assert msg == HEAD + f"  - sede (line 3): unknown key 'sede'; allowed keys here: {keys(Recipe)}"


def test_unknown_key_in_first_stage() -> None:
    msg = error_of(edit("    epochs: 1\n", "    epochs: 1\n    epoch: 2\n"))
    assert keys(FinetuneStage) == (
        "name, type, weights, epochs, batch_size, optimizer, schedule, label_smoothing, freeze_backbone_epochs"
    )
    assert msg == HEAD + f"  - stages[0].epoch (line 15): unknown key 'epoch'; allowed keys here: {keys(FinetuneStage)}"


def test_unknown_key_in_data() -> None:
    msg = error_of(edit("  image_size: 16\n", "  image_sise: 16\n"))
    assert keys(SyntheticData) == (
        "mean, std, augment, calibration_size, type, num_classes, image_size, train_size, val_size, test_size"
    )
    assert (
        msg
        == HEAD + f"  - data.image_sise (line 5): unknown key 'image_sise'; allowed keys here: {keys(SyntheticData)}"
    )


def test_unknown_key_in_later_stage_lists_that_stages_keys() -> None:
    msg = error_of(edit("  - type: benchmark\n", "  - type: benchmark\n    foo: 1\n"))
    assert msg == HEAD + f"  - stages[2].foo (line 18): unknown key 'foo'; allowed keys here: {keys(BenchmarkStage)}"


def test_unknown_key_nested_in_later_stage() -> None:
    msg = error_of(edit("{warmup: 1,", "{warmpu: 1,"))
    assert keys(Latency) == "warmup, min_queries, min_duration_s, max_duration_s"
    assert msg == HEAD + (
        f"  - stages[2].latency.warmpu (line 19): unknown key 'warmpu'; allowed keys here: {keys(Latency)}"
    )


def test_unknown_key_in_variant() -> None:
    msg = error_of(BASE + "variants:\n  a: {skip: [export], sikp: []}\n")
    assert msg == HEAD + f"  - variants.a.sikp (line 21): unknown key 'sikp'; allowed keys here: {keys(Variant)}"


def test_wrong_type() -> None:
    msg = error_of(edit("epochs: 1", "epochs: many"))
    assert msg == HEAD + (
        "  - stages[0].epochs (line 14): got 'many'; Input should be a valid integer, unable to parse string as an "
        "integer"
    )


def test_out_of_range_value() -> None:
    msg = error_of(edit("epochs: 1", "epochs: -1"))
    assert msg == HEAD + "  - stages[0].epochs (line 14): got -1; Input should be greater than or equal to 0"


def test_out_of_range_data_value() -> None:
    msg = error_of(edit("  image_size: 16", "  image_size: 4"))
    assert msg == HEAD + "  - data.image_size (line 5): got 4; Input should be greater than or equal to 8"


def test_literal_choice() -> None:
    msg = error_of(edit("arch: resnet18", "arch: vgg16"))
    assert msg == HEAD + (
        "  - model.arch (line 11): got 'vgg16'; Input should be 'resnet18', 'resnet34', 'resnet50', 'resnet101', "
        "'resnet152', 'resnext50_32x4d' or 'wide_resnet50_2'"
    )


def test_list_item_choice() -> None:
    msg = error_of(edit("[onnxruntime, openvino]", "[onnxruntime, tflite]"))
    runtimes = [repr(r) for r in typing.get_args(RuntimeName)]
    assert runtimes[:3] == ["'onnxruntime'", "'openvino'", "'torch'"]
    allowed = ", ".join(runtimes[:-1]) + " or " + runtimes[-1]
    assert msg == HEAD + f"  - stages[2].runtimes[1] (line 18): got 'tflite'; Input should be {allowed}"


def test_pattern_mismatch() -> None:
    msg = error_of(edit("name: tiny", "name: 'bad name'"))
    assert msg == HEAD + "  - name (line 1): got 'bad name'; String should match pattern '^[A-Za-z0-9][A-Za-z0-9_.-]*$'"


def test_unknown_data_type() -> None:
    msg = error_of(edit("type: synthetic", "type: mnist"))
    assert msg == HEAD + (
        "  - data (line 3): got {'type': 'mnist', 'image_size': 16, 'train_size': 64, 'val_size': 32, "
        "'test_size': 32, 'num_classes': 4}; Input tag 'mnist' found using 'type' does not match any of the "
        f"expected tags: {tags(DataConfig)}"
    )


def test_unknown_stage_type() -> None:
    msg = error_of(edit("  - type: export\n", "  - type: frobnicate\n"))
    assert msg == HEAD + (
        "  - stages[1] (line 16): got {'type': 'frobnicate'}; Input tag 'frobnicate' found using 'type' does not "
        f"match any of the expected tags: {tags(StageConfig)}"
    )


def test_missing_required_key() -> None:
    assert error_of(edit("name: tiny\n", "")) == HEAD + "  - name: required key is missing"
    assert error_of("name: x\nstages:\n  - type: finetune\n") == HEAD + "  - data: required key is missing"


def test_missing_required_nested_key_points_at_parent_line() -> None:
    msg = error_of(
        edit("  type: synthetic\n", "  type: imagefolder\n").replace(
            "  image_size: 16\n  train_size: 64\n  val_size: 32\n  test_size: 32\n  num_classes: 4\n", ""
        )
    )
    assert msg == HEAD + "  - data.root (line 3): required key is missing"


def test_every_problem_is_listed() -> None:
    msg = error_of(edit("epochs: 1", "epochs: -1").replace("seed: 0", "seed: x"))
    assert msg == (
        "r.yaml: 2 problems, nothing has run:\n"
        "  - seed (line 2): got 'x'; Input should be a valid integer, unable to parse string as an integer\n"
        "  - stages[0].epochs (line 14): got -1; Input should be greater than or equal to 0"
    )


def test_freeze_longer_than_epochs() -> None:
    msg = error_of(edit("epochs: 1", "epochs: 1\n    freeze_backbone_epochs: 3"))
    assert msg == HEAD + (
        "  - stages[0] (line 13): freeze_backbone_epochs is 3 but epochs is 1; it must not exceed epochs"
    )


# ----------------------------------------------------------------------------------------------- stage structure


def test_duplicate_stage_names() -> None:
    msg = error_of(edit("  - type: export\n", "  - type: export\n  - type: export\n"))
    assert msg == HEAD + ("  - (top level): stage names must be unique; export appear more than once (set `name:`)")


def test_benchmark_not_last() -> None:
    msg = error_of(edit("  - type: export\n", "") + "  - type: export\n")
    assert msg == HEAD + (
        "  - (top level): benchmark must be the last stage (only package may follow it) and appear at most once"
    )


def test_two_benchmarks() -> None:
    msg = error_of(BASE + "  - type: benchmark\n    name: bench2\n")
    assert msg == HEAD + (
        "  - (top level): benchmark must be the last stage (only package may follow it) and appear at most once"
    )


def test_first_stage_must_be_finetune() -> None:
    text = edit(
        "  - type: finetune\n    epochs: 1\n    batch_size: 32\n  - type: export\n",
        "  - type: export\n  - type: finetune\n",
    )
    assert error_of(text) == HEAD + (
        "  - (top level): the first stage must be finetune (it builds the model); got export. Use finetune with "
        "epochs: 0 and weights: <path> to start from a checkpoint"
    )


def test_variant_skips_unknown_stage() -> None:
    msg = error_of(BASE + "variants:\n  a: {skip: [frobnicate]}\n")
    assert msg == HEAD + (
        "  - (top level): variants.a.skip names frobnicate, which is not a stage; stages: finetune, export, benchmark"
    )


def test_variant_skips_benchmark() -> None:
    msg = error_of(BASE + "variants:\n  a: {skip: [benchmark]}\n")
    assert msg == HEAD + "  - (top level): variants.a skips the benchmark stage; benchmark measures every variant"


def test_variant_with_impossible_order_skipping_finetune() -> None:
    msg = error_of(BASE + "variants:\n  a: {}\n  b: {skip: [finetune]}\n")
    assert msg == HEAD + (
        "  - (top level): in variant b, stage export (export) needs a torch model but gets nothing; reorder the "
        "stages or change what the variant skips"
    )


def test_impossible_order_export_after_export() -> None:
    two = edit("  - type: export\n", "  - type: export\n    name: e1\n  - type: export\n    name: e2\n")
    # Each variant keeping one export is fine; the variant keeping both feeds ONNX to an export.
    recipe_from_text(two + "variants:\n  a: {skip: [e2]}\n  b: {skip: [e1]}\n", source="r.yaml")
    msg = error_of(two + "variants:\n  a: {skip: [e2]}\n  c: {}\n")
    assert msg == HEAD + (
        "  - (top level): in variant c, stage e2 (export) needs a torch model but gets onnx; reorder the stages or "
        "change what the variant skips"
    )


def test_second_finetune_message_is_readable() -> None:
    msg = error_of(edit("  - type: export\n", "  - type: finetune\n    name: ft2\n  - type: export\n"))
    assert msg.startswith(HEAD + "  - (top level): in variant main, stage ft2 (finetune) ")
    assert "None" not in msg


def test_baseline_must_be_a_variant() -> None:
    msg = error_of(edit("    runtimes:", "    baseline: zz\n    runtimes:"))
    assert msg == HEAD + "  - (top level): benchmark.baseline is 'zz', not a variant; variants: main"


def test_variant_set_is_validated_at_load() -> None:
    msg = error_of(BASE + "variants:\n  a: {}\n  b: {set: {stages.export.opset: 99}}\n")
    assert msg == (
        "variant b: 1 problem, nothing has run:\n  - stages[1].opset: got 99; Input should be less than or equal to 23"
    )


def test_variant_set_unknown_path() -> None:
    msg = error_of(BASE + "variants:\n  a: {}\n  b: {set: {stages.nosuch.opset: 17}}\n")
    assert msg == (
        "variants.b.set 'stages.nosuch.opset': no item 'nosuch' in stages; use an index (0-2) or a stage name "
        "(finetune, export, benchmark)"
    )


# ------------------------------------------------------------------------------------------------------- --set


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("foo", "--set 'foo': expected key.path=value, e.g. --set stages.finetune.epochs=3"),
        ("=3", "--set '=3': expected key.path=value, e.g. --set stages.finetune.epochs=3"),
        (" =3", "--set ' =3': expected key.path=value, e.g. --set stages.finetune.epochs=3"),
    ],
)
def test_bad_set_syntax(item: str, expected: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_set([item])
    assert str(info.value) == expected


def test_set_value_not_yaml() -> None:
    with pytest.raises(RecipeError) as info:
        parse_set(["seed=[1"])
    assert str(info.value) == (
        "--set 'seed=[1': the value is not valid YAML: while parsing a flow sequence\n"
        '  in "<unicode string>", line 1, column 1:\n'
        "    [1\n"
        "    ^\n"
        "expected ',' or ']', but got '<stream end>'\n"
        '  in "<unicode string>", line 1, column 3:\n'
        "    [1\n"
        "      ^"
    )


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (
            "stages.nosuch.epochs=3",
            "--set 'stages.nosuch.epochs': no item 'nosuch' in stages; use an index (0-2) or a stage name "
            "(finetune, export, benchmark)",
        ),
        (
            "stages.5.epochs=3",
            "--set 'stages.5.epochs': no item '5' in stages; use an index (0-2) or a stage name "
            "(finetune, export, benchmark)",
        ),
        ("name.x=1", "--set 'name.x': name is a value, not a mapping or list"),
        ("stages..epochs=1", "--set 'stages..epochs': a key path like stages.finetune.epochs is needed"),
        (
            "foo.bar=1",
            HEAD + f"  - foo: unknown key 'foo'; allowed keys here: {keys(Recipe)}",
        ),
        (
            "stages.finetune.epochs=abc",
            HEAD + "  - stages[0].epochs (line 14): got 'abc'; Input should be a valid integer, unable to parse "
            "string as an integer",
        ),
    ],
)
def test_bad_set_path(item: str, expected: str) -> None:
    assert error_of(BASE, [item]) == expected


# ----------------------------------------------------------------------------------------------- file and YAML


def test_yaml_syntax_error() -> None:
    msg = error_of(edit("seed: 0", "seed: [0"))
    assert msg == (
        "r.yaml: not valid YAML: while parsing a flow sequence\n"
        '  in "<unicode string>", line 2, column 7:\n'
        "    seed: [0\n"
        "          ^\n"
        "expected ',' or ']', but got ':'\n"
        '  in "<unicode string>", line 3, column 5:\n'
        "    data:\n"
        "        ^"
    )


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("", "NoneType"), ("hello\n", "str")])
def test_recipe_must_be_a_mapping(text: str, kind: str) -> None:
    assert error_of(text) == f"r.yaml: a recipe is a mapping with keys name, data, stages...; got {kind}"


def test_missing_recipe_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == f"recipe file {str(path)!r} does not exist; pass the path of a .yaml recipe"


def test_error_source_is_the_file_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(edit("epochs: 1", "epochs: -1"), encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == (
        f"{path}: 1 problem, nothing has run:\n"
        "  - stages[0].epochs (line 14): got -1; Input should be greater than or equal to 0"
    )


# -------------------------------------------------------------------------------------------------------- CLI


def test_cli_validate_valid_recipe(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(BASE, encoding="utf-8")
    res = run_cli("validate", str(path), "--set", "stages.export.opset=17")
    assert res.code == 0
    resolved = yaml.safe_load(res.stdout)
    assert resolved["stages"][1]["opset"] == 17
    assert res.stderr == f"# {path}: valid; variants: main\n"


def test_cli_validate_bad_recipe_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(edit("seed: 0\n", "seed: 0\nsede: 1\n"), encoding="utf-8")
    proc = subprocess.run(
        [PYTHON, "-m", "edgeres", "validate", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        f"edgeres: recipe error: {path}: 1 problem, nothing has run:\n"
        f"  - sede (line 3): unknown key 'sede'; allowed keys here: {keys(Recipe)}\n"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--set", "foo"],
            "edgeres: recipe error: --set 'foo': expected key.path=value, e.g. --set stages.finetune.epochs=3\n",
        ),
        (
            ["--set", "stages.nosuch.epochs=1"],
            "edgeres: recipe error: --set 'stages.nosuch.epochs': no item 'nosuch' "
            "in stages; use an index (0-2) or a stage name (finetune, export, benchmark)\n",
        ),
    ],
)
def test_cli_bad_set_exits_2(tmp_path: Path, args: list[str], expected: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(BASE, encoding="utf-8")
    res = run_cli("validate", str(path), *args)
    assert (res.code, res.stdout, res.stderr) == (2, "", expected)


def test_cli_missing_recipe_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    res = run_cli("build", str(path), "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o"))
    assert res.code == 2
    assert res.stderr == (
        f"edgeres: recipe error: recipe file {str(path)!r} does not exist; pass the path of a .yaml recipe\n"
    )
    assert not (tmp_path / "c").exists()
    assert not (tmp_path / "o").exists()


def test_cli_build_bad_recipe_runs_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(edit("epochs: 1", "epochs: -1"), encoding="utf-8")
    res = run_cli("build", str(path), "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o"))
    assert res.code == 2
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "c").exists()
    assert not (tmp_path / "o").exists()


def test_cli_usage_error_exits_2() -> None:
    res = run_cli("build")
    assert res.code == 2
    assert "Missing argument 'RECIPE'" in res.stderr
