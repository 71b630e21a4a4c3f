"""Property-based tests (hypothesis): whatever the input, the recipe loader, the kit reader, the cache-entry reader and
the bundle reader end in a result or an EdgeresError (a message and an exit code), never another exception (exit 1, a
traceback).

Each property runs a bounded number of examples (EXAMPLES, no deadline) so the default suite stays fast; the
counts are printed (pytest -s) and checked to have run. EDGERES_FUZZ_EXAMPLES=5000 runs a longer hunt.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from conftest import tiny_recipe
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgeres.artifact import SCHEMA_VERSION, SIDECAR, hash_files, read_artifact, sha256_file
from edgeres.errors import EdgeresError
from edgeres.recipe import recipe_from_text
from edgeres.recipe_yaml import parse_set
from edgeres.tensorrt.kit import KIT_JSON, KIT_SCHEMA, read_kit

EXAMPLES = int(os.environ.get("EDGERES_FUZZ_EXAMPLES", "200"))  # more for a longer hunt
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=10), c, max_size=5), max_leaves=25
)
# Text made mostly of YAML's own punctuation (anchors, aliases, tags, flow and block collections, quotes).
yamlish = st.text(alphabet=st.sampled_from(list("&*!<>[]{}:,-?|'\"#%@` \n\tab01.")), max_size=200)


def paths_of(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths_of(v, (*prefix, i))
    return out


def put(root: Any, path: tuple[Any, ...], value: Any) -> Any:
    """root with the value at path replaced (root itself replaced for the empty path)."""
    if not path:
        return value
    node = root
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return root


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """`base` with one to three values replaced by arbitrary ones, keys added or removed."""
    doc = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths_of(doc)))
        action = draw(st.sampled_from(["replace", "add", "delete"]))
        target = doc
        for part in path:
            target = target[part]
        if action == "add" and isinstance(target, dict):
            target[draw(st.text(max_size=10))] = draw(values)
        elif action == "delete" and path:
            parent = doc
            for part in path[:-1]:
                parent = parent[part]
            del parent[path[-1]]
        else:
            doc = put(doc, path, draw(values))
    return doc


class Count:
    def __init__(self) -> None:
        self.n = 0
        self.kinds: dict[str, int] = {}

    def add(self, kind: str) -> None:
        self.n += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


def load_any(text: str, overrides: list[tuple[str, Any]] | None = None) -> str:
    try:
        recipe_from_text(text, source="fuzz.yaml", overrides=overrides)
    except EdgeresError as exc:
        assert str(exc)
        return type(exc).__name__
    return "recipe"


# ---------------------------------------------------------------------------------------------------- recipes


def test_recipe_loader_on_arbitrary_text() -> None:
    count = Count()

    @FUZZ
    @given(st.text(max_size=300) | yamlish)
    def check(text: str) -> None:
        count.add(load_any(text))

    check()
    print(f"recipe text: {count.n} examples {count.kinds}")
    assert count.n >= EXAMPLES // 2


def test_recipe_loader_on_arbitrary_yaml_structures() -> None:
    count = Count()

    @FUZZ
    @given(values)
    def check(doc: Any) -> None:
        count.add(load_any(yaml.safe_dump(doc)))

    check()
    print(f"recipe structures: {count.n} examples {count.kinds}")
    assert count.n >= EXAMPLES // 2


def test_recipe_loader_on_mutated_recipes_and_overrides() -> None:
    base = tiny_recipe(variants={"fp32": {"skip": ["export"]}, "b": {"set": {"stages.finetune.epochs": 2}}})
    base["stages"][1] = {"type": "export"}
    base["stages"][2] = {"type": "benchmark"}
    keys = [".".join(map(str, p)) for p in paths_of(base) if p]
    count = Count()

    @FUZZ
    @given(mutated(base), st.lists(st.tuples(st.sampled_from(keys) | st.text(max_size=15), values), max_size=2))
    def check(doc: Any, sets: list[tuple[str, Any]]) -> None:
        text = yaml.safe_dump(doc, sort_keys=False)
        try:
            overrides = parse_set([f"{k}={json.dumps(v)}" for k, v in sets])
        except EdgeresError:
            overrides = []
        count.add(load_any(text, overrides))

    check()
    print(f"mutated recipes: {count.n} examples {count.kinds}")
    assert count.kinds.get("recipe", 0) > 0 and count.kinds.get("RecipeError", 0) > 0


# -------------------------------------------------------------------------------------------------------- kits


def valid_kit(folder: Path) -> dict[str, Any]:
    (folder / "model.onnx").write_bytes(b"onnx")
    (folder / "val.npz").write_bytes(b"val")
    return {
        "schema": KIT_SCHEMA,
        "name": "tiny",
        "variant": "fp16",
        "onnx": {"file": "model.onnx", "sha256": sha256_file(folder / "model.onnx"), "input": "input"},
        "val": {"file": "val.npz", "sha256": sha256_file(folder / "val.npz"), "images": 1},
        "settings": {"precision": "fp16"},
        "target": {"device": "jetson"},
        "latency": {"warmup": 1},
    }


def test_kit_reader_on_arbitrary_and_mutated_kit_json() -> None:
    count = Count()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = valid_kit(folder)
        (folder / KIT_JSON).write_text(json.dumps(base))
        assert read_kit(folder) == base

        @FUZZ
        @given(values | mutated(base) | st.text(max_size=100).map(lambda t: {"raw": t}))
        def check(doc: Any) -> None:
            text = doc["raw"] if isinstance(doc, dict) and set(doc) == {"raw"} else json.dumps(doc)
            (folder / KIT_JSON).write_text(text, encoding="utf-8")
            try:
                kit = read_kit(folder)
            except EdgeresError as exc:
                assert str(exc)
                count.add(type(exc).__name__)
                return
            for part in ("onnx", "val"):
                assert (folder / kit[part]["file"]).resolve().parent == folder.resolve()
            count.add("kit")

        check()
    print(f"kit.json: {count.n} examples {count.kinds}")
    assert count.kinds.get("kit", 0) > 0 and count.kinds.get("DataError", 0) > 0


# ------------------------------------------------------------------------------------------------ cache entries


def test_cache_entry_reader_on_arbitrary_and_mutated_sidecars() -> None:
    count = Count()
    with tempfile.TemporaryDirectory() as tmp:
        entry = Path(tmp) / ("export-" + "a" * 64)
        entry.mkdir()
        (entry / "model.onnx").write_bytes(b"onnx")
        (entry / "notes.txt").write_text("x")
        base = {
            "schema": SCHEMA_VERSION,
            "stage": "export",
            "stage_type": "export",
            "key": "a" * 64,
            "format": "onnx",
            "primary": "model.onnx",
            "deliverables": ["model.onnx"],
            "files": hash_files(entry),
        }
        (entry / SIDECAR).write_text(json.dumps(base))
        art = read_artifact(entry)
        assert art is not None and art.deliverables() == ["model.onnx"]
        art.verify()

        @FUZZ
        @given(values | mutated(base))
        @example(base)  # the valid sidecar, always: random draws need not include one (the count below asks for it)
        def check(doc: Any) -> None:
            (entry / SIDECAR).write_text(json.dumps(doc), encoding="utf-8")
            try:
                art = read_artifact(entry)
                if art is None:
                    count.add("not done")
                    return
                art.verify()
                for rel in art.deliverables():
                    assert (entry / rel).resolve().parent == entry.resolve()
                count.add("artifact")
            except EdgeresError as exc:
                assert str(exc)
                count.add(type(exc).__name__)

        check()
    print(f"sidecars: {count.n} examples {count.kinds}")
    assert count.kinds.get("artifact", 0) > 0 and count.kinds.get("CacheError", 0) > 0


# ----------------------------------------------------------------------------------------------- bundle manifests


def test_bundle_reader_on_arbitrary_and_mutated_manifests() -> None:
    """A manifest edgeres did not write (resealed with its own digest, as an attacker of an unsigned bundle would)
    ends in a verified bundle whose loader checks, golden data and C embedding run, or in an EdgeresError."""
    import shutil

    from bundle_fixtures import make_bundle

    from edgeres.bundle.embed import embed_c
    from edgeres.bundle.load import device_differences
    from edgeres.bundle.manifest import MANIFEST, seal
    from edgeres.bundle.tarsafe import extract, write_tar
    from edgeres.bundle.verify import open_bundle, read_golden
    from edgeres.preprocess import Preprocessing

    count = Count()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = make_bundle(root / "base.tar")
        files = root / "files"
        files.mkdir()
        names = extract(bundle, files)
        base = json.loads((files / MANIFEST).read_text())

        # A quarter of the examples: each one writes, extracts and embeds a bundle (~0.1 s).
        @settings(FUZZ, max_examples=max(EXAMPLES // 4, 10))
        @given(values | mutated(base) | st.text(max_size=100).map(lambda t: {"raw": t}))
        # The valid manifest, always: 50 random draws held no valid bundle in 1 of 3 runs ({'BundleError': 50}), and
        # the count below asks for one.
        @example(base)
        def check(doc: Any) -> None:
            raw = doc["raw"].encode() if isinstance(doc, dict) and set(doc) == {"raw"} else None
            (files / MANIFEST).write_bytes(raw if raw is not None else seal(doc) if isinstance(doc, dict) else b"[]")
            work = Path(tempfile.mkdtemp(dir=root))
            try:
                path = work / "fuzz.tar"
                write_tar(path, [(n, files / n) for n in names])
                (work / "open").mkdir()
                opened = open_bundle(path, work / "open", integrity_only=True)
                device_differences(opened, target="cpu-onnxruntime")
                Preprocessing.from_spec(opened.manifest.input.model_dump())
                read_golden(opened)
                embed_c(opened, work / "c")
                count.add("bundle")
            except EdgeresError as exc:
                assert str(exc)
                count.add(type(exc).__name__)
            finally:
                shutil.rmtree(work, ignore_errors=True)

        check()
    print(f"bundle manifests: {count.n} examples {count.kinds}")
    assert count.kinds.get("bundle", 0) > 0 and count.kinds.get("BundleError", 0) > 0
