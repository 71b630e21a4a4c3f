"""Reading a recipe's YAML safely, and `--set` overrides, before anything is validated.

Recipes are YAML read with safe loading; aliases, nesting and Python tags are bounded or refused while the document
is composed, before anything is expanded. `--set key.path=value` and a variant's `set:` are applied to the raw
mapping, so they are validated exactly like the file (edgeres.recipe).
"""

from __future__ import annotations

from typing import Any

import yaml

from edgeres.errors import RecipeError

# What a recipe's YAML may do. Aliases are allowed (a recipe may share an optimizer block), but the nodes they repeat
# are counted as the document is composed, before anything is expanded: a "billion laughs" (aliases of aliases,
# a few hundred bytes) would otherwise expand to billions of values in whatever walks the data, and a recursive
# alias to an infinite one. Nesting is bounded too: every reader of the data recurses.
MAX_ALIAS_NODES = 10_000
MAX_DEPTH = 64


class YamlLimitError(yaml.YAMLError):
    """The YAML is well-formed but refused: an alias budget, a recursive alias, deep nesting or a Python tag."""


class RecipeLoader(yaml.SafeLoader):
    """SafeLoader that refuses, while composing (before any expansion), aliases that repeat more than
    MAX_ALIAS_NODES nodes in all, recursive aliases, nesting deeper than MAX_DEPTH and Python tags."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        # id(node) -> how many nodes it stands for with its aliases expanded (counted, never built). A node gets its
        # count when it is complete, so an alias to an anchored node without one is inside that node: recursive.
        self._sizes: dict[int, int] = {}
        self._alias_nodes = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:
                    raise YamlLimitError(
                        f"line {line}: alias *{event.anchor} refers to a node that contains it (a recursive "
                        "alias), which stands for an infinitely deep value; write the value out instead"
                    )
                self._alias_nodes += size
                if self._alias_nodes > MAX_ALIAS_NODES:
                    raise YamlLimitError(
                        f"line {line}: aliases repeat {self._alias_nodes} nodes so far (*{event.anchor} alone "
                        f"{size}); at most {MAX_ALIAS_NODES} are allowed, so that aliases of aliases (a 'billion "
                        "laughs') cannot expand to billions of values. Write the values out, or use fewer aliases"
                    )
            return super().compose_node(parent, index)  # an unknown alias: PyYAML's own error
        tag = getattr(event, "tag", None)
        if isinstance(tag, str) and tag.startswith(("!!python/", "tag:yaml.org,2002:python/")):
            raise YamlLimitError(
                f"line {line}: the tag {tag} would create a Python object; recipes are read with safe loading, which "
                "creates only plain values (mappings, lists, strings, numbers). Remove the tag"
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlLimitError(
                    f"line {line}: values are nested deeper than {MAX_DEPTH} levels; a recipe needs fewer than 10. "
                    "Flatten the structure"
                )
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.SequenceNode):
            self._sizes[id(node)] = 1 + sum(self._sizes.get(id(c), 1) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            self._sizes[id(node)] = 1 + sum(self._sizes.get(id(c), 1) for kv in node.value for c in kv)
        elif node is not None:
            self._sizes[id(node)] = 1
        return node


def load_yaml(text: str) -> Any:
    """Parse YAML with RecipeLoader (safe, aliases and depth bounded); raises yaml.YAMLError."""
    loader = RecipeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def apply_override(raw: dict[str, Any], dotted: str, value: Any, *, source: str = "--set") -> None:
    """Set key.path=value in the raw mapping; list items are addressed by stage name or index."""
    parts = dotted.split(".")
    if not dotted or any(not p for p in parts):
        raise RecipeError(f"{source} {dotted!r}: a key path like stages.finetune.epochs is needed")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = _list_index(node, part)
            if idx is None:
                names = [str(x.get("name") or x.get("type")) for x in node if isinstance(x, dict)]
                raise RecipeError(
                    f"{source} {dotted!r}: no item {part!r} in {'.'.join(parts[:i]) or 'the recipe'}; "
                    f"use an index (0-{len(node) - 1}) or a stage name ({', '.join(names)})"
                )
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise RecipeError(f"{source} {dotted!r}: {'.'.join(parts[:i])} is a value, not a mapping or list")


def _list_index(node: list[Any], part: str) -> int | None:
    if part.isdigit():
        return int(part) if int(part) < len(node) else None
    for i, item in enumerate(node):
        if isinstance(item, dict) and (item.get("name") or item.get("type")) == part:
            return i
    return None


def parse_set(items: tuple[str, ...] | list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set {item!r}: expected key.path=value, e.g. --set stages.finetune.epochs=3")
        try:
            parsed = load_yaml(value) if value.strip() else ""
        except YamlLimitError as exc:
            raise RecipeError(f"--set {item!r}: the value is refused: {exc}") from None
        except yaml.YAMLError as exc:
            raise RecipeError(f"--set {item!r}: the value is not valid YAML: {exc}") from exc
        out.append((key.strip(), parsed))
    return out
