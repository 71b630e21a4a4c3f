"""Fast unit tests of edgeres.recipe_yaml: the alias budget and depth limit at their exact bounds, alias sizes of
mappings and scalars, Python tags however they are spelt, and `--set` paths applied to the raw mapping
(tests/test_hostile_input.py and tests/test_recipe.py cover the same through whole recipes). Used by `make mutate`
(tests/MUTANTS.md)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from edgeres.errors import RecipeError
from edgeres.recipe_yaml import MAX_ALIAS_NODES, MAX_DEPTH, YamlLimitError, apply_override, load_yaml, parse_set


def limit_error(text: str) -> str:
    with pytest.raises(YamlLimitError) as err:
        load_yaml(text)
    return str(err.value)


def aliased_mappings(uses: int) -> str:
    """An anchored mapping of 100 nodes (itself, its key, a list and the list's 97 items), aliased `uses` times."""
    items = ", ".join(str(i) for i in range(97))
    return f"base: &x {{k: [{items}]}}\nuses: [{', '.join(['*x'] * uses)}]\n"


# ------------------------------------------------------------------------------------------------------- aliases


def test_the_alias_budget_counts_every_node_of_an_aliased_mapping_and_is_inclusive() -> None:
    assert MAX_ALIAS_NODES == 10_000
    data = load_yaml(aliased_mappings(100))  # 100 x 100 nodes: exactly the budget
    assert len(data["uses"]) == 100
    assert data["uses"][99] == {"k": list(range(97))}
    assert limit_error(aliased_mappings(101)) == (
        "line 2: aliases repeat 10100 nodes so far (*x alone 100); at most 10000 are allowed, so that aliases of "
        "aliases (a 'billion laughs') cannot expand to billions of values. Write the values out, or use fewer aliases"
    )


def test_the_alias_budget_counts_sequences_and_nested_mappings() -> None:
    # a sequence of 4 mappings of 1 key each: 1 + 4 x (1 + 1 + 1) = 13 nodes per alias
    anchor = "a: &s [{k: 1}, {k: 2}, {k: 3}, {k: 4}]\n"
    fits = MAX_ALIAS_NODES // 13
    load_yaml(anchor + f"b: [{', '.join(['*s'] * fits)}]\n")
    assert limit_error(anchor + f"b: [{', '.join(['*s'] * (fits + 1))}]\n").startswith(
        f"line 2: aliases repeat {13 * (fits + 1)} nodes so far (*s alone 13)"
    )


def test_aliases_of_scalars_and_of_aliases_work() -> None:
    assert load_yaml("a: &s 5\nb: *s\nc: &m {x: *s}\nd: [*m, *m]\n") == {
        "a": 5,
        "b": 5,
        "c": {"x": 5},
        "d": [{"x": 5}, {"x": 5}],
    }


def test_aliased_aliases_count_what_they_stand_for() -> None:
    """*m stands for its mapping (1 + key + the scalar the alias *s stands for) = 3 nodes."""
    text = "a: &s 5\nm: &m {x: *s}\n"
    fits = MAX_ALIAS_NODES - 1  # *s once inside &m
    uses = (fits // 3) + 1
    assert limit_error(text + f"u: [{', '.join(['*m'] * uses)}]\n").startswith(
        f"line 3: aliases repeat {1 + 3 * uses} nodes so far (*m alone 3)"
    )


def test_an_unknown_alias_is_pyyamls_own_error() -> None:
    with pytest.raises(yaml.composer.ComposerError, match="found undefined alias 'nope'"):
        load_yaml("a: *nope\n")


@pytest.mark.parametrize(
    ("text", "line"),
    [("x: &a [1, *a]\n", 1), ("x: 1\ny: &b\n  k:\n    - *b\n", 4)],
)
def test_a_recursive_alias_is_refused(text: str, line: int) -> None:
    anchor = "a" if "&a" in text else "b"
    assert limit_error(text) == (
        f"line {line}: alias *{anchor} refers to a node that contains it (a recursive alias), which stands for an "
        "infinitely deep value; write the value out instead"
    )


# --------------------------------------------------------------------------------------------------------- depth


def nested(levels: int) -> str:
    """`levels` nested lists around a scalar: levels + 1 values deep."""
    return "[" * levels + "1" + "]" * levels


def test_nesting_up_to_the_limit_is_read_and_one_more_level_is_refused() -> None:
    assert MAX_DEPTH == 64
    value = load_yaml(nested(MAX_DEPTH - 1))
    for _ in range(MAX_DEPTH - 1):
        value = value[0]
    assert value == 1
    assert limit_error(nested(MAX_DEPTH)) == (
        "line 1: values are nested deeper than 64 levels; a recipe needs fewer than 10. Flatten the structure"
    )


def test_depth_goes_back_up_exactly_after_each_value() -> None:
    """Siblings before a deep value do not change how deep it is (x is 3 deep; the nest beside it 3 to 65)."""
    assert "nested deeper than 64" in limit_error(f"[[x, {nested(MAX_DEPTH - 2)}]]")
    assert load_yaml(f"[[x, y, {nested(MAX_DEPTH - 3)}]]")[0][:2] == ["x", "y"]
    many = ", ".join(f"k{i}: [a, [b, [c]]]" for i in range(200))  # many shallow siblings: never deeper than 5
    assert len(load_yaml("{" + many + "}")) == 200


# ---------------------------------------------------------------------------------------------------------- tags


@pytest.mark.parametrize(
    ("text", "tag", "line"),
    [
        ("!!python/object:os.system x\n", "tag:yaml.org,2002:python/object:os.system", 1),
        ("a:\n  b: !!python/name:os.system\n", "tag:yaml.org,2002:python/name:os.system", 2),
        ("%TAG !p! !!python/\n--- !p!object:os.system x\n", "!!python/object:os.system", 2),
        ("%TAG !p! tag:yaml.org,2002:python/\n---\n[1, !p!name:os.system x]\n",
         "tag:yaml.org,2002:python/name:os.system", 3),
    ],
)  # fmt: skip
def test_python_tags_are_refused_however_they_are_spelt(text: str, tag: str, line: int) -> None:
    assert limit_error(text) == (
        f"line {line}: the tag {tag} would create a Python object; recipes are read with safe loading, which "
        "creates only plain values (mappings, lists, strings, numbers). Remove the tag"
    )


def test_other_tags_are_safe_loadings_business() -> None:
    assert load_yaml("a: !!str 5\nb: !!int '7'\n") == {"a": "5", "b": 7}
    with pytest.raises(yaml.constructor.ConstructorError):
        load_yaml("a: !foo x\n")


# ------------------------------------------------------------------------------------------------------ overrides


def raw() -> dict[str, Any]:
    return {
        "name": "r",
        "data": {"type": "synthetic"},
        "stages": [{"type": "finetune", "name": "ft"}, {"type": "export"}, {"type": "prune", "name": "slim"}],
    }


def override_error(d: Any, dotted: str, value: Any = 1, **kw: Any) -> str:
    with pytest.raises(RecipeError) as err:
        apply_override(d, dotted, value, **kw)
    return str(err.value)


def test_overrides_set_mapping_keys_list_items_and_make_missing_mappings() -> None:
    d = raw()
    apply_override(d, "stages.ft.epochs", 3)
    apply_override(d, "stages.export.opset", 17)
    apply_override(d, "stages.2", {"type": "prune", "name": "new"})
    apply_override(d, "stages.1.dynamic.batch", True)
    apply_override(d, "model.arch", "resnet50")
    apply_override(d, "data.type", None)
    assert d == {
        "name": "r",
        "data": {"type": None},
        "model": {"arch": "resnet50"},
        "stages": [
            {"type": "finetune", "name": "ft", "epochs": 3},
            {"type": "export", "opset": 17, "dynamic": {"batch": True}},
            {"type": "prune", "name": "new"},
        ],
    }


def test_an_override_through_a_null_makes_a_mapping() -> None:
    d = {"model": None}
    apply_override(d, "model.arch", "resnet18")
    assert d == {"model": {"arch": "resnet18"}}


def test_an_override_sets_a_list_item_by_index_or_name() -> None:
    d = {"xs": [1, 2, 3]}
    apply_override(d, "xs.2", "three")
    assert d == {"xs": [1, 2, "three"]}
    d = raw()
    apply_override(d, "stages.slim", None)
    assert d["stages"][2] is None


def test_a_missing_list_item_names_the_indexes_and_the_stage_names() -> None:
    assert override_error(raw(), "stages.nosuch.epochs") == (
        "--set 'stages.nosuch.epochs': no item 'nosuch' in stages; use an index (0-2) or a stage name "
        "(ft, export, slim)"
    )
    assert override_error(raw(), "stages.3", source="variant 'x' set") == (
        "variant 'x' set 'stages.3': no item '3' in stages; use an index (0-2) or a stage name (ft, export, slim)"
    )


def test_a_missing_item_of_a_nested_list_names_its_whole_path() -> None:
    d = {"a": {"b": [{"name": "n"}, 5]}}
    assert override_error(d, "a.b.zz.c") == (
        "--set 'a.b.zz.c': no item 'zz' in a.b; use an index (0-1) or a stage name (n)"
    )


def test_a_top_level_list_is_the_recipe() -> None:
    assert override_error([{"type": "t"}], "x") == (
        "--set 'x': no item 'x' in the recipe; use an index (0-0) or a stage name (t)"
    )


def test_a_path_through_a_value_names_the_value() -> None:
    d = {"a": {"b": {"c": 5}}}
    assert override_error(d, "a.b.c.d") == "--set 'a.b.c.d': a.b.c is a value, not a mapping or list"
    assert override_error({"s": [1, 2]}, "s.0.x") == "--set 's.0.x': s.0 is a value, not a mapping or list"


@pytest.mark.parametrize("dotted", ["", ".", "a.", ".a", "a..b"])
def test_an_empty_key_path_part_is_refused(dotted: str) -> None:
    assert override_error({}, dotted) == f"--set {dotted!r}: a key path like stages.finetune.epochs is needed"


# ----------------------------------------------------------------------------------------------------- parse_set


def test_parse_set_reads_values_as_yaml_and_strips_keys() -> None:
    assert parse_set([" seed = 3", "model.arch=resnet50", "x=", "y=  ", "z=[1, {a: b}]", "w=a=b"]) == [
        ("seed", 3),
        ("model.arch", "resnet50"),
        ("x", ""),
        ("y", ""),
        ("z", [1, {"a": "b"}]),
        ("w", "a=b"),
    ]


def test_parse_set_refuses_python_tags_in_values() -> None:
    with pytest.raises(RecipeError) as err:
        parse_set(["seed=!!python/name:os.system"])
    assert str(err.value) == (
        "--set 'seed=!!python/name:os.system': the value is refused: line 1: the tag "
        "tag:yaml.org,2002:python/name:os.system would create a Python object; recipes are read with safe loading, "
        "which creates only plain values (mappings, lists, strings, numbers). Remove the tag"
    )
