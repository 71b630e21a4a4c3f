"""The package stage in a real tiny build: one bundle per variant after the benchmark, carrying its figures; the
report in its key; `edgeres.load(bundle)` answering exactly what the benchmark measured; a device kit's bundle, and
the bundle of the engine a kit built on its device."""

from __future__ import annotations

import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    TINY_FINETUNE,
    TINY_LATENCY,
    Build,
    as_recipe,
    run_cli,
    run_pipeline,
    statuses,
    tiny_recipe,
    write_recipe,
)

from edgeres.artifact import sha256_file
from edgeres.errors import BundleError, RecipeError

FINETUNE = TINY_FINETUNE  # as in the base build: its entries are reused
EXPORT = {"type": "export", "opset": 18}
COMPILE = {"type": "compile", "tensorrt": {"kit_val_images": 16}}
BENCH = {"type": "benchmark", "latency": TINY_LATENCY, "offline": None, "isolate": False, "fidelity": None}
RECIPE = tiny_recipe(
    stages=[FINETUNE, EXPORT, COMPILE, BENCH, {"type": "package", "version": 2}],
    variants={
        "ort": {},  # include_onnx: auto, so no source ONNX beside an ONNX Runtime engine
        "ov": {"set": {"target": "cpu-openvino", "stages.package.include_onnx": True}},
        "trt": {"set": {"target": "nvidia-gpu"}},
    },
)


@dataclass
class PBuild:
    cache: Path
    out: Path
    result: Any

    def manifest(self, variant: str) -> dict[str, Any]:
        with tarfile.open(self.out / "bundles" / f"{variant}.tar", "r:") as tf:
            f = tf.extractfile("manifest.json")
            assert f is not None
            return dict(json.loads(f.read()))

    def report(self) -> dict[str, Any]:
        return dict(json.loads((self.out / "report.json").read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def build(base_build: Build, module_tmp: Any) -> PBuild:
    root = module_tmp("package")
    shutil.copytree(base_build.cache, root / "cache")
    result, _ = run_pipeline(RECIPE, root / "cache", root / "out")
    return PBuild(root / "cache", root / "out", result)


def test_package_runs_per_variant_after_the_benchmark(build: PBuild) -> None:
    rows = statuses(build.result)
    assert rows[-4:] == [
        ("*", "benchmark", "ran"),
        ("ort", "package", "ran"),
        ("ov", "package", "ran"),
        ("trt", "package", "ran"),
    ]
    assert sorted(p.name for p in (build.out / "bundles").iterdir()) == ["ort.tar", "ov.tar", "trt.tar"]
    for v in ("ort", "ov", "trt"):
        assert sha256_file(build.out / "bundles" / f"{v}.tar") == build.result.bundles[v].files["bundle.tar"]


def test_bundle_carries_the_reports_figures(build: PBuild) -> None:
    report = build.report()  # the hashes: test_the_manifest_hashes_are_what_the_readme_says
    for variant in ("ort", "ov"):
        m = build.manifest(variant)
        (row,) = [r for r in report["results"] if r["variant"] == variant]
        (carried,) = m["measured"]["results"]
        assert carried["accuracy"] == row["accuracy"]
        assert carried["latency"] == row["latency"]
        assert carried["memory"] == row["memory"]
        assert (m["version"], m["name"], m["variant"]) == (2, "tiny", variant)
        assert m["classes"] == ["class0", "class1", "class2", "class3"]
        assert m["input"]["shape"] == ["batch", 3, 16, 16]
        assert m["input"]["resize"]["method"] == "none: the images already have this size"
        assert m["golden"]["max_abs_diff"] == 1e-3
        assert m["golden"]["reference"].startswith(f"the engine on {'onnxruntime' if variant == 'ort' else 'openvino'}")
    m = build.manifest("ov")
    assert m["source_onnx"]["sha256"] == build.result.lineage["ov"][1].files["model.onnx"]  # include_onnx: true
    assert build.manifest("ort")["source_onnx"] is None  # auto: the engine is itself an ONNX (issue 26, item 10)
    with tarfile.open(build.out / "bundles" / "ort.tar", "r:") as tf:
        assert "source/model.onnx" not in tf.getnames()
    assert build.manifest("ov")["engine"]["files"] == ["engine/model.xml", "engine/model.bin"]
    trt = build.manifest("trt")
    assert trt["engine"]["format"] == "tensorrt-kit"
    assert trt["engine"]["files"] == []
    assert trt["source_onnx"] is None  # the kit carries its ONNX
    assert trt["measured"]["unmeasured"][0]["format"] == "tensorrt-kit"
    assert trt["golden"]["reference"].startswith("ONNX Runtime fp32 on the source ONNX (a TensorRT device kit")
    with tarfile.open(build.out / "bundles" / "trt.tar", "r:") as tf:
        assert tf.getmember("engine/build.sh").mode == 0o755


def test_the_manifest_hashes_are_what_the_readme_says(build: PBuild) -> None:
    """`inputs_sha256` is the sha256 of the benchmark stage's keyed inputs (as its sidecar records them, what
    `--dry-run --explain benchmark` compares), not of the recipe file; `measured.report_sha256` is the sha256 of the
    report.json written to --out."""
    from edgeres.artifact import read_artifact, sha256_json

    bench = read_artifact(build.result.report.path)
    assert bench is not None
    inputs = bench.metadata["key_material"]["inputs"]
    for variant in ("ort", "ov", "trt"):
        m = build.manifest(variant)
        assert m["inputs_sha256"] == sha256_json(inputs)
        assert m["measured"]["report_sha256"] == sha256_file(build.out / "report.json")
    assert "recipe_sha256" not in build.manifest("ort")


def test_predict_gives_what_the_benchmark_measured(build: PBuild) -> None:
    """The bundle's predict (its own preprocessing of uint8 pixels) gives the report's top-1 on the test split, and
    the very logits the engine gives on the training loader's preprocessing."""
    import edgeres
    from edgeres.data import load_data
    from edgeres.runtimes import open_runner

    recipe = as_recipe(RECIPE)
    data = load_data(recipe.data, seed=0)
    pixels = data.test.images.numpy()
    labels = data.test.labels.numpy()
    report = build.report()
    for variant in ("ort", "ov"):
        with edgeres.load(build.out / "bundles" / f"{variant}.tar", integrity_only=True) as model:
            pred = model.predict(pixels.transpose(0, 2, 3, 1))
        (row,) = [r for r in report["results"] if r["variant"] == variant]
        assert float(np.mean(pred.indices == labels)) == row["accuracy"]["top1"]
        art = build.result.variants[variant]
        x = np.concatenate([b for b, _ in data.numpy_batches(data.test, 64)])
        runtime = "onnxruntime" if art.format == "onnx" else "openvino"
        with open_runner(runtime, art.primary_path, fmt=art.format, threads=1) as runner:
            want = np.concatenate([runner.infer(x[i : i + 64]) for i in range(0, len(x), 64)])
        np.testing.assert_array_equal(pred.logits, want)


def test_eval_reproduces_the_reports_count_from_the_bundle(build: PBuild, tmp_path: Path) -> None:
    """`edgeres eval` and its Python equivalent (edgeres.split_images + edgeres.evaluate) count the correct test
    images through the bundle (uint8 pixels, its own preprocessing) and find the report's count on this machine."""
    import edgeres

    recipe_file = write_recipe(tmp_path / "tiny.yaml", RECIPE)
    report = build.report()
    for variant in ("ort", "ov"):
        (row,) = [r for r in report["results"] if r["variant"] == variant]
        n = row["accuracy"]["images"]
        correct = round(row["accuracy"]["top1"] * n)
        bundle = build.out / "bundles" / f"{variant}.tar"
        res = run_cli("eval", str(bundle), "--recipe", str(recipe_file), "--integrity-only")
        assert res.code == 0, res.stderr
        assert res.stdout == (
            f"{variant}: {correct}/{n} correct on test (top-1 {100 * correct / n:.2f}%)\n"
            f"the same as the build measured: {correct}/{n}\n"
        )
        split = edgeres.split_images(recipe_file, "test")
        assert split.images.dtype == np.uint8 and split.images.shape[0] == n == len(split.labels)
        with edgeres.load(bundle, integrity_only=True) as model:
            result = edgeres.evaluate(model, recipe_file, batch=7)  # batches that do not divide the split
        assert (result.correct, result.images, result.matches) == (correct, n, True)


def test_eval_fails_beyond_its_tolerance_and_says_so() -> None:
    from edgeres.evaluation import Evaluation, describe

    off = Evaluation(split="test", images=100, correct=90, measured_top1=0.92, measured_images=100)
    assert (off.measured_correct, off.matches) == (92, False)
    assert describe("int8", off) == [
        "int8: 90/100 correct on test (top-1 90.00%)",
        "the build measured 92/100 (top-1 92.00%): -2 images",
    ]
    none = Evaluation(split="val", images=10, correct=9, measured_top1=None, measured_images=None)
    assert none.matches is None
    assert describe("x", none)[1] == "the bundle records no top-1 on val to compare with"


def test_the_report_is_in_the_package_key(build: PBuild, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(build.cache, cache)
    again, _ = run_pipeline(RECIPE, cache)
    assert {s for _, _, s in statuses(again)} == {"cached"}
    forced, _ = run_pipeline(RECIPE, cache, force=("benchmark",))
    assert [(v, st, s) for v, st, s in statuses(forced) if st in ("benchmark", "package")] == [
        ("*", "benchmark", "ran"),
        ("ort", "package", "ran"),
        ("ov", "package", "ran"),
        ("trt", "package", "ran"),
    ]
    old = {r.variant: r.key for r in build.result.records if r.stage == "package"}
    new = {r.variant: r.key for r in forced.records if r.stage == "package"}
    assert all(old[v] != new[v] for v in old)


def test_preprocessing_is_bit_identical_to_the_training_loader() -> None:
    from edgeres.data import load_data
    from edgeres.preprocess import Preprocessing, model_input

    data = load_data(as_recipe(RECIPE).data, seed=0)
    torch_way = np.concatenate([x for x, _ in data.numpy_batches(data.val, 16)])
    ours = model_input(data.val.images.numpy(), Preprocessing.from_spec(data.preprocessing()))
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, torch_way)


@pytest.mark.parametrize(
    ("stages", "variants", "message"),
    [
        ([FINETUNE, EXPORT, COMPILE, {"type": "package"}, BENCH], {}, "benchmark must be the last stage (only package"),
        ([FINETUNE, EXPORT, COMPILE, {"type": "package"}], {}, "package must be the last stage, right after benchmark"),
        (
            [FINETUNE, EXPORT, COMPILE, BENCH, {"type": "package"}],
            {"onnx": {"skip": ["compile"]}},
            "variant onnx packages a bundle but skips compile, so it has no engine to ship; add package to "
            "variants.onnx.skip",
        ),
    ],
)
def test_package_placement_is_validated(stages: list[Any], variants: dict[str, Any], message: str) -> None:
    with pytest.raises(RecipeError, match="nothing has run") as err:
        as_recipe(tiny_recipe(stages=stages, variants=variants))
    assert message in str(err.value)


def test_dry_run_plans_a_package_per_variant(tmp_path: Path) -> None:
    from conftest import write_recipe

    path = write_recipe(tmp_path / "r.yaml", RECIPE)
    res = run_cli("build", str(path), "--dry-run", "--cache", str(tmp_path / "cache"), "--quiet")
    assert res.code == 0, res.stderr
    rows = [r[:3] for r in (line.split() for line in res.stdout.splitlines()) if len(r) == 5 and r[2] == "planned"]
    assert rows[-4:] == [["*", "benchmark", "planned"], ["ort", "package", "planned"],
                         ["ov", "package", "planned"], ["trt", "package", "planned"]]  # fmt: skip


def test_a_kit_bundles_the_engine_it_built_and_another_device_refuses_it(
    build: PBuild, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the device, after build.sh: `edgeres package KIT` bundles engine.plan with golden logits the engine
    computed there. This host (no TensorRT) then refuses the bundle, naming what differs, and can embed it.
    The engine and its runner are stand-ins (bundle_fixtures.FakeTensorRTRunner: ONNX Runtime + 1.0), so the golden
    logits are checked to be the runner's, not ONNX Runtime's on the same ONNX."""
    from edgeres import runtimes
    from edgeres.tensorrt.facts import DeviceFacts
    from edgeres.tensorrt.manifest import EngineSettings, make_manifest, plan_build, write_manifest

    kit = tmp_path / "kit"
    shutil.copytree(build.out / "models" / "trt", kit)
    engine = kit / "engine.plan"
    engine.write_bytes(b"serialized engine, built on the device" * 10)
    settings = EngineSettings(precision="fp16", max_batch=8)
    facts = DeviceFacts(trt_version="10.3.0.30", gpu_name="Orin", compute_capability="8.7", l4t="36.4.0")
    manifest = make_manifest(
        engine, onnx_path=kit / "model.onnx", timing_cache=None, facts=facts, trt_version="10.3.0.30",
        settings=settings, plan=plan_build(settings, qdq_nodes=0, trt_major=10), input_name="input",
        input_shape=["batch", 3, 16, 16],
    )  # fmt: skip
    write_manifest(engine, manifest)
    (kit / "device-report.json").write_text(json.dumps({"results": [{"variant": "trt", "latency": {"p50_ms": 0.5}}]}))
    monkeypatch.setitem(runtimes.RUNTIMES, "tensorrt", ("bundle_fixtures", "FakeTensorRTRunner", ("tensorrt",)))
    dest = tmp_path / "device.tar"
    res = run_cli("package", str(kit), "--out", str(dest), "--version", "4")
    assert res.code == 0, res.stderr
    assert f"bundle {dest}: tensorrt engine, version 4" in res.stdout
    ok = run_cli("verify", str(dest), "--integrity-only")
    assert ok.code == 0, ok.stderr
    with tarfile.open(dest, "r:") as tf:
        m = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert m["engine"]["files"] == ["engine/engine.plan"]
    assert m["engine"]["runtime_version"] == "10.3.0.30"
    assert m["measured"]["results"] == [{"variant": "trt", "latency": {"p50_ms": 0.5}}]
    assert m["golden"]["reference"] == "the engine on TensorRT 10.3.0.30 (fp16) on Orin"
    assert m["golden"]["images"] is None  # a kit has preprocessed val images only
    from bundle_fixtures import FakeTensorRTRunner

    with tarfile.open(dest, "r:") as tf:
        golden_in = np.frombuffer(tf.extractfile("golden/inputs.f32").read(), dtype="<f4")  # type: ignore[union-attr]
        golden_out = np.frombuffer(tf.extractfile("golden/logits.f32").read(), dtype="<f4")  # type: ignore[union-attr]
    golden_in = golden_in.reshape(m["golden"]["count"], 3, 16, 16)
    import onnxruntime as ort

    session = ort.InferenceSession(str(kit / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"input": golden_in})[0]
    np.testing.assert_allclose(
        golden_out.reshape(onnx_logits.shape), onnx_logits + FakeTensorRTRunner.OFFSET, rtol=0, atol=1e-5
    )
    import edgeres

    with pytest.raises(BundleError) as err:
        edgeres.load(dest, integrity_only=True)
    assert "was not built for this device: device: engine" in str(err.value)
    assert "TensorRT version: engine built with 10.3.0.30, this device has no TensorRT" in str(err.value)
    out = tmp_path / "fw"
    res = run_cli("embed", str(dest), "--format", "bin", "--out", str(out), "--integrity-only")
    assert res.code == 0, res.stderr
    from edgeres.bundle.embed import parse_bin_header

    assert parse_bin_header((out / "model_engine_plan.bin").read_bytes())["payload"] == engine.read_bytes()


def test_package_refuses_a_kit_without_an_engine(build: PBuild, tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    shutil.copytree(build.out / "models" / "trt", kit)
    res = run_cli("package", str(kit), "--out", str(tmp_path / "k.tar"))
    assert res.code == 9
    assert "has no engine.plan: run `bash build.sh` in the kit on the device first" in res.stderr


def test_package_command_adds_the_stage_to_a_recipe_without_one(build: PBuild, tmp_path: Path) -> None:
    from conftest import write_recipe

    cache = tmp_path / "cache"
    shutil.copytree(build.cache, cache)
    raw = tiny_recipe(stages=[FINETUNE, EXPORT, COMPILE, BENCH])  # the ort variant's chain: all of it cached
    path = write_recipe(tmp_path / "r.yaml", raw)
    out = tmp_path / "out"
    res = run_cli("package", str(path), "--version", "9", "--cache", str(cache), "--out", str(out), "--quiet")
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == f"bundle {out / 'bundles' / 'main.tar'}"
    with tarfile.open(out / "bundles" / "main.tar", "r:") as tf:
        assert json.loads(tf.extractfile("manifest.json").read())["version"] == 9  # type: ignore[union-attr]
