"""Fast unit tests of edgeres.bundle.manifest: the canonical bytes and the seal that firmware re-computes, parsing
with its own digest, schema and field checks, and the file checks against a folder (tests/test_bundle.py covers
the same code through whole bundles). Used by `make mutate` (tests/MUTANTS.md)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from edgeres.bundle import manifest as mf
from edgeres.errors import BundleError

SOURCE = "/x/b.tar"
WHERE = f"{SOURCE}: manifest.json"


def entry(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


FILES = {"engine/model.onnx": b"onnx bytes", "labels.txt": b"a\nb\n", "golden/inputs.f32": b"\0" * 12}


def manifest_dict(**changes: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "schema": "edgeres.bundle/1",
        "version": 3,
        "name": "tiny",
        "variant": "main",
        "target": {"name": "cpu-onnxruntime"},
        "engine": {"format": "onnx", "runtime": "onnxruntime", "precision": "fp32", "primary": "engine/model.onnx",
                   "files": ["engine/model.onnx"], "manifest": None},
        "input": {"name": "input", "shape": ["batch", 3, 8, 8], "dtype": "float32", "height": 8, "width": 8,
                  "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "layout": "NCHW", "color": "RGB"},
        "classes": ["a", "b"],
        "golden": None,
        "files": {name: entry(data) for name, data in FILES.items()},
        "note": "ü",
    }  # fmt: skip
    d.update(changes)
    return d


def bad(raw: bytes) -> str:
    with pytest.raises(BundleError) as err:
        mf.parse(raw, source=SOURCE)
    return str(err.value)


# -------------------------------------------------------------------------------------------- canonical and seal


def test_canonical_is_sorted_compact_ascii_json() -> None:
    assert mf.canonical({"b": [1, 2.5, None], "a": {"z": "é", "y": True}}) == (
        b'{"a":{"y":true,"z":"\\u00e9"},"b":[1,2.5,null]}'
    )


def test_seal_writes_sorted_indented_ascii_json_with_the_digest_of_the_rest() -> None:
    body = {"b": 1, "a": ["é"], "manifest_sha256": "stale"}
    raw = mf.seal(body)
    digest = hashlib.sha256(b'{"a":["\\u00e9"],"b":1}').hexdigest()
    assert raw == ('{\n "a": [\n  "\\u00e9"\n ],\n "b": 1,\n "manifest_sha256": "' + digest + '"\n}\n').encode()
    assert body["manifest_sha256"] == "stale"  # the caller's mapping is left alone


def test_seal_then_parse_round_trips() -> None:
    d = manifest_dict()
    m, data = mf.parse(mf.seal(d), source=SOURCE)
    assert data == {**d, "manifest_sha256": data["manifest_sha256"]}
    assert m.version == 3
    assert m.schema_ == "edgeres.bundle/1"
    assert m.engine.primary == "engine/model.onnx"
    assert m.files["labels.txt"].size == 4


# ------------------------------------------------------------------------------------------------------ parsing


def test_manifest_size_limit_is_inclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = mf.seal(manifest_dict())
    monkeypatch.setattr(mf, "MAX_MANIFEST_BYTES", len(raw))
    mf.parse(raw, source=SOURCE)
    monkeypatch.setattr(mf, "MAX_MANIFEST_BYTES", len(raw) - 1)
    assert bad(raw) == f"{WHERE} is {len(raw)} bytes, more than {len(raw) - 1}; not an edgeres manifest"


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"[" * 100_000])
def test_not_json_is_refused(raw: bytes) -> None:
    msg = bad(raw)
    assert msg.startswith(f"{WHERE} is not valid JSON (")
    assert msg.endswith("): the file was changed or damaged")


@pytest.mark.parametrize("raw", [b"[]", b"3", b'"manifest"', b"null"])
def test_json_that_is_not_an_object_is_refused(raw: bytes) -> None:
    assert bad(raw) == f"{WHERE} is not a JSON object: the file was changed or damaged"


def test_a_changed_value_breaks_the_digest() -> None:
    raw = mf.seal(manifest_dict())
    data = json.loads(raw)
    data["version"] = 4
    assert bad(json.dumps(data).encode()) == (
        f"{WHERE} does not match its own digest (manifest_sha256): the file was changed or damaged after it was written"
    )
    del data["manifest_sha256"]
    assert "does not match its own digest" in bad(json.dumps(data).encode())


def test_the_digest_ignores_formatting() -> None:
    data = json.loads(mf.seal(manifest_dict()))
    m, _ = mf.parse(json.dumps(data, indent=4).encode(), source=SOURCE)
    assert m.name == "tiny"


@pytest.mark.parametrize(("schema", "shown"), [("edgeres.bundle/2", "'edgeres.bundle/2'"), (None, "None")])
def test_another_schema_is_refused_naming_it(schema: str | None, shown: str) -> None:
    d = manifest_dict(schema=schema)
    if schema is None:
        del d["schema"]
    assert bad(mf.seal(d)) == f"{WHERE} has schema {shown}; this edgeres reads 'edgeres.bundle/1'"


@pytest.mark.parametrize(
    ("change", "field", "msg"),
    [
        ({"version": -1}, "version", "Input should be greater than or equal to 0"),
        ({"version": 2**32}, "version", "Input should be less than or equal to 4294967295"),
        ({"classes": []}, "classes", "List should have at least 1 item after validation, not 0"),
        ({"files": {"a": {"sha256": "0" * 63, "size": 1}}}, "files.a.sha256", "String should match pattern"),
        ({"files": {"a": {"sha256": "0" * 64, "size": 1, "x": 1}}}, "files.a.x", "Extra inputs are not permitted"),
    ],
)
def test_a_bad_field_is_refused_naming_the_first(change: dict[str, Any], field: str, msg: str) -> None:
    text = bad(mf.seal(manifest_dict(**change)))
    assert text.startswith(f"{WHERE}: field {field}: {msg}")
    assert text.endswith("; not a manifest edgeres wrote")


def test_nested_field_errors_name_the_path() -> None:
    d = manifest_dict()
    d["engine"] = {**d["engine"], "runtime": "tflite"}
    d["input"] = {**d["input"], "shape": [1, 3, 8]}
    assert bad(mf.seal(d)) == (
        f"{WHERE}: field engine.runtime: Input should be 'onnxruntime', 'openvino' or 'tensorrt'; not a manifest "
        "edgeres wrote"
    )
    d = manifest_dict()
    d["input"] = {**d["input"], "shape": [1, 3, 8]}
    assert bad(mf.seal(d)) == (
        f"{WHERE}: field input.shape: Value error, shape [1, 3, 8] is not N x C x H x W with fixed C, H, W; not a "
        "manifest edgeres wrote"
    )


# --------------------------------------------------------------------------------------------------- file checks


def bundle_folder(root: Path) -> tuple[mf.Manifest, list[str]]:
    for name, data in FILES.items():
        f = root.joinpath(*name.split("/"))
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    (root / "manifest.json").write_bytes(b"{}")
    m, _ = mf.parse(mf.seal(manifest_dict()), source=SOURCE)
    return m, ["manifest.json", *FILES]


def files_refusal(root: Path, m: mf.Manifest, present: list[str]) -> str:
    with pytest.raises(BundleError) as err:
        mf.check_files(root, m, present, source=SOURCE)
    return str(err.value)


def test_matching_files_pass(tmp_path: Path) -> None:
    m, present = bundle_folder(tmp_path)
    mf.check_files(tmp_path, m, present, source=SOURCE)


def test_every_difference_is_named(tmp_path: Path) -> None:
    m, present = bundle_folder(tmp_path)
    (tmp_path / "engine" / "model.onnx").write_bytes(b"onnx bytez")  # same size, other content
    (tmp_path / "labels.txt").write_bytes(b"a\nb\nc\n")  # other size
    present.remove("golden/inputs.f32")
    present += ["engine/extra.so", "zz.txt"]
    assert files_refusal(tmp_path, m, present) == (
        f"{SOURCE}: bundle files do not match manifest.json: changed: engine/model.onnx, labels.txt (sha256 or size "
        "differs from manifest.json); missing: golden/inputs.f32; not in manifest.json: engine/extra.so, zz.txt. "
        "Refused"
    )


def test_missing_files_alone_are_named(tmp_path: Path) -> None:
    m, _ = bundle_folder(tmp_path)
    assert files_refusal(tmp_path, m, ["manifest.json", "labels.txt"]) == (
        f"{SOURCE}: bundle files do not match manifest.json: missing: engine/model.onnx, golden/inputs.f32. Refused"
    )


def test_extra_files_alone_are_named(tmp_path: Path) -> None:
    m, present = bundle_folder(tmp_path)
    assert files_refusal(tmp_path, m, [*present, "x"]) == (
        f"{SOURCE}: bundle files do not match manifest.json: not in manifest.json: x. Refused"
    )


@pytest.mark.parametrize("field", ["primary", "files"])
def test_an_engine_file_the_manifest_does_not_list_is_refused(tmp_path: Path, field: str) -> None:
    _, present = bundle_folder(tmp_path)
    d = copy.deepcopy(manifest_dict())
    d["engine"][field] = "engine/model.bin" if field == "primary" else ["engine/model.onnx", "engine/model.bin"]
    m, _ = mf.parse(mf.seal(d), source=SOURCE)
    assert files_refusal(tmp_path, m, present) == (
        f"{SOURCE}: manifest.json names the engine file 'engine/model.bin', which it does not list; refused"
    )
