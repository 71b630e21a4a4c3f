"""Compile stage: deployable engines per target, their manifests, and the benchmark stage measuring them.

One recipe with three variants that differ only in target (cpu-onnxruntime, cpu-openvino, nvidia-gpu) is built once
over a copy of the session's base-build cache: finetune and export are reused, compile runs per target, and the
benchmark measures what this host can run (in-process, to keep the test short).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_FINETUNE, TINY_LATENCY, TINY_OFFLINE, Build, as_recipe, run_pipeline, statuses, tiny_recipe

from edgeres.artifact import Artifact, sha256_file
from edgeres.errors import StageError
from edgeres.runtimes import open_runner

FINETUNE = TINY_FINETUNE  # as in the base build: its entries are reused
EXPORT = {"type": "export", "opset": 18}
KIT_IMAGES = 16
BENCH = {"type": "benchmark", "latency": TINY_LATENCY, "offline": TINY_OFFLINE, "isolate": False, "fidelity": None}
RECIPE = tiny_recipe(
    stages=[FINETUNE, EXPORT, {"type": "compile", "tensorrt": {"kit_val_images": KIT_IMAGES}}, BENCH],
    variants={
        "ort": {},
        "ov": {"set": {"target": "cpu-openvino"}},
        "trt": {"set": {"target": "nvidia-gpu"}},
        "ovbf16": {"set": {"target": "cpu-openvino", "stages.compile.precision": "bf16"}},
    },
)


def openvino_runs(precision: str) -> bool:
    """Whether OpenVINO runs `precision` natively on this CPU (its own OPTIMIZATION_CAPABILITIES)."""
    import openvino as ov

    return {"bf16": "BF16"}[precision] in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


BF16_HERE = openvino_runs("bf16")
NO_BF16 = "this CPU has no AVX512_BF16 or AMX (OpenVINO does not list BF16 among its capabilities)"


@dataclass
class CBuild:
    cache: Path
    out: Path
    result: Any
    log: str

    def models(self, variant: str) -> Path:
        return self.out / "models" / variant

    @property
    def export(self) -> Artifact:
        return self.result.lineage["ort"][1]

    def compiled(self, variant: str) -> Artifact:
        return self.result.variants[variant]

    def report(self) -> dict[str, Any]:
        return json.loads((self.out / "report.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def build(base_build: Build, module_tmp: Any) -> CBuild:
    root = module_tmp("compile")
    cache, out = root / "cache", root / "out"
    shutil.copytree(base_build.cache, cache)
    result, log = run_pipeline(RECIPE, cache, out)
    return CBuild(cache, out, result, log)


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    from edgeres.data import load_data

    data = load_data(as_recipe(RECIPE).data, seed=0)
    return np.concatenate([x for x, _ in data.numpy_batches(data.test, 256)])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_compile_runs_once_per_target_over_shared_stages(build: CBuild) -> None:
    assert statuses(build.result) == [
        ("ort", "finetune", "cached"),
        ("ort", "export", "cached"),
        ("ort", "compile", "ran"),
        ("ov", "finetune", "cached"),
        ("ov", "export", "cached"),
        ("ov", "compile", "ran"),
        ("trt", "finetune", "cached"),
        ("trt", "export", "cached"),
        ("trt", "compile", "ran"),
        ("ovbf16", "finetune", "cached"),
        ("ovbf16", "export", "cached"),
        ("ovbf16", "compile", "ran"),
        ("*", "benchmark", "ran"),
    ]
    keys = {v: build.compiled(v).key for v in ("ort", "ov", "trt", "ovbf16")}
    assert len(set(keys.values())) == 4  # the target and the precision are part of the compile key


# ------------------------------------------------------------------------------------------ cpu-onnxruntime


def test_onnxruntime_engine_and_manifest(build: CBuild) -> None:
    import onnxruntime as ort

    art = build.compiled("ort")
    assert (art.format, art.primary) == ("onnx", "model.ort.onnx")
    folder = build.models("ort")
    assert sorted(p.name for p in folder.iterdir()) == [
        "artifact.json", "manifest.json", "model.json", "model.ort.onnx"
    ]  # fmt: skip
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["schema"] == "edgeres.manifest/1"
    assert manifest["target"] == "cpu-onnxruntime"
    assert manifest["target_spec"]["runtime"] == "onnxruntime"
    assert manifest["engine"] == "model.ort.onnx"
    assert manifest["format"] == "onnx"
    assert manifest["runtime"] == "onnxruntime"
    assert manifest["runtime_version"] == ort.__version__
    assert manifest["optimization_level"] == "extended"
    assert manifest["providers"] == ["CPUExecutionProvider"]
    assert manifest["precision"] == "fp32"
    assert manifest["runtime_settings"] == {
        "runtime": "onnxruntime", "precision": "fp32", "ort_optimization_level": "extended", "openvino_hint": "latency"
    }  # fmt: skip
    assert manifest["sha256"] == {name: sha256(folder / name) for name in ("model.json", "model.ort.onnx")}
    assert manifest["source_onnx_sha256"] == sha256(build.export.primary_path)
    assert manifest["source_onnx_sha256"] == build.export.files["model.onnx"]
    m = art.metadata["metrics"]
    assert m["target"] == "cpu-onnxruntime"
    assert m["engine"] == "model.ort.onnx"


def test_onnxruntime_engine_gives_the_source_top1(build: CBuild, test_images: np.ndarray) -> None:
    x = test_images[:8]
    engine = ort_logits(build.models("ort") / "model.ort.onnx", x)
    source = ort_logits(build.export.primary_path, x)
    assert engine.shape == (8, 4)
    assert engine.argmax(1).tolist() == source.argmax(1).tolist()
    np.testing.assert_allclose(engine, source, rtol=1e-4, atol=1e-4)
    # and through edgeres' own runner, which checks the manifest first
    with open_runner("onnxruntime", build.models("ort") / "model.ort.onnx", fmt="onnx", threads=1) as runner:
        assert runner.infer(x).argmax(1).tolist() == source.argmax(1).tolist()


# ---------------------------------------------------------------------------------------------- cpu-openvino


def test_openvino_ir_and_manifest(build: CBuild) -> None:
    import openvino as ov

    art = build.compiled("ov")
    assert (art.format, art.primary) == ("openvino", "model.xml")
    folder = build.models("ov")
    assert sorted(p.name for p in folder.iterdir()) == [
        "artifact.json", "manifest.json", "model.bin", "model.json", "model.xml"
    ]  # fmt: skip
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["target"] == "cpu-openvino"
    assert manifest["engine"] == "model.xml"
    assert manifest["format"] == "openvino"
    assert manifest["runtime"] == "openvino"
    assert manifest["runtime_version"] == ov.get_version()
    assert (manifest["hint"], manifest["fp16_weights"], manifest["device"]) == ("latency", False, "CPU")
    assert manifest["precision"] == "fp32"
    assert manifest["runtime_settings"]["precision"] == "fp32"
    # what OpenVINO is told: f32 and the ACCURACY mode, whatever this CPU would default to (bf16 with AVX512_BF16)
    assert manifest["openvino_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert manifest["openvino_config"]["EXECUTION_MODE_HINT"] == "ACCURACY"
    assert "INFERENCE_NUM_THREADS" not in manifest["openvino_config"]  # the host's choice, not the engine's
    assert "inference_precision_here" not in manifest  # checked on this host: in the sidecar's metrics
    side = json.loads((folder / "artifact.json").read_text(encoding="utf-8"))
    assert side["metrics"]["inference_precision_here"] == "f32"  # read back from the compiled model
    assert manifest["sha256"] == {n: sha256(folder / n) for n in ("model.bin", "model.json", "model.xml")}
    assert manifest["source_onnx_sha256"] == sha256(build.export.primary_path)


def test_openvino_ir_matches_the_onnx(build: CBuild, test_images: np.ndarray) -> None:
    """Through edgeres' runner (the manifest's settings), the fp32 IR is FP32 on any CPU: within 1e-4 of ONNX
    Runtime. OpenVINO's own default on a CPU with AVX512_BF16 or AMX is bf16 (measured there: 4e-3 apart)."""
    x = test_images[:8]
    with open_runner("openvino", build.models("ov") / "model.xml", fmt="openvino", threads=1) as runner:
        ir = runner.infer(x)
        assert runner.effective()["inference_precision"] == "f32"
        assert runner.effective()["config"]["INFERENCE_PRECISION_HINT"] == "f32"
    source = ort_logits(build.export.primary_path, x)
    assert ir.shape == (8, 4)
    np.testing.assert_allclose(ir, source, rtol=1e-4, atol=1e-4)
    assert ir.argmax(1).tolist() == source.argmax(1).tolist()


def test_onnxruntime_runner_loads_with_the_manifest_level(build: CBuild, tmp_path: Path) -> None:
    """The runner runs what compile built: the optimisation level comes from the manifest, not a fixed default."""
    with open_runner("onnxruntime", build.models("ort") / "model.ort.onnx", fmt="onnx", threads=1) as runner:
        assert runner.effective()["optimization_level"] == "extended"
    folder = tmp_path / "ort"
    shutil.copytree(build.models("ort"), folder)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    manifest["runtime_settings"]["ort_optimization_level"] = "basic"
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with open_runner("onnxruntime", folder / "model.ort.onnx", fmt="onnx", threads=1) as runner:
        assert runner.effective()["optimization_level"] == "basic"


def test_bf16_engine_manifest(build: CBuild) -> None:
    """The IR is portable, so the bf16 engine is built on any host; its manifest says bf16 and whether this host
    could check it."""
    manifest = json.loads((build.models("ovbf16") / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["precision"] == "bf16"
    assert manifest["runtime_settings"]["precision"] == "bf16"
    assert manifest["openvino_config"]["INFERENCE_PRECISION_HINT"] == "bf16"
    metrics = json.loads((build.models("ovbf16") / "artifact.json").read_text(encoding="utf-8"))["metrics"]
    if BF16_HERE:
        assert metrics["inference_precision_here"] == "bf16"
    else:
        assert metrics["inference_precision_here"] is None
        assert "AVX512_BF16 or AMX" in metrics["not_checked_here"]


@pytest.mark.skipif(not BF16_HERE, reason=NO_BF16)
def test_bf16_engine_runs_in_bf16_where_the_cpu_has_it(build: CBuild, test_images: np.ndarray) -> None:
    x = test_images[:8]
    with open_runner("openvino", build.models("ovbf16") / "model.xml", fmt="openvino", threads=1) as runner:
        got = runner.infer(x)
        assert runner.effective()["inference_precision"] == "bf16"
    source = ort_logits(build.export.primary_path, x)
    assert np.abs(got - source).max() > 1e-6  # not silently FP32
    np.testing.assert_allclose(got, source, rtol=0.1, atol=0.1)


@pytest.mark.skipif(BF16_HERE, reason="this CPU runs bf16: the refusal cannot happen here")
def test_bf16_is_refused_where_the_cpu_lacks_it(build: CBuild) -> None:
    """OpenVINO silently compiles a bf16 request as f32 on such a CPU; edgeres reads the precision back and refuses."""
    from edgeres.runtimes.settings import PrecisionUnsupported, RuntimeSettings

    settings = RuntimeSettings("openvino", precision="bf16")
    assert "AVX512_BF16 or AMX" in str(settings.unsupported_reason())
    with pytest.raises(PrecisionUnsupported) as exc:
        open_runner("openvino", build.models("ovbf16") / "model.xml", fmt="openvino", threads=1)
    assert "OpenVINO compiled the model in f32 although bf16 (bf16) was asked for" in str(exc.value)


# ------------------------------------------------------------------------------------------------ benchmark


def test_benchmark_measures_both_engines(build: CBuild) -> None:
    report = build.report()
    rows = report["results"]
    measured = [("ort", "onnxruntime"), ("ov", "openvino")] + ([("ovbf16", "openvino")] if BF16_HERE else [])
    assert [(r["variant"], r["runtime"]) for r in rows] == measured
    assert [r["precision"] for r in rows] == ["fp32", "fp32"] + (["bf16"] if BF16_HERE else [])
    if not BF16_HERE:
        (bf16,) = [u for u in report["unmeasured"] if u["variant"] == "ovbf16"]
        assert bf16["precision"] == "bf16" and "AVX512_BF16 or AMX" in bf16["reason"]
    for r in rows:
        assert r["cold_start"]["load_ms"] > 0 and r["cold_start"]["first_inference_ms"] > 0
        assert r["runtime_settings"]["precision"] == r["precision"]
    rows = rows[:2]
    for r, variant in zip(rows, ("ort", "ov"), strict=True):
        art = build.compiled(variant)
        assert r["artifact"]["stage"] == "compile"
        assert r["artifact"]["format"] == art.format
        assert r["artifact"]["file"] == art.primary
        assert r["artifact"]["sha256"] == art.files[art.primary]
        # every engine file counts, JSON descriptions do not (an IR is .xml + .bin)
        shipped = [f for f in art.files if not f.endswith(".json")]
        assert r["artifact"]["bytes"] == sum((art.path / f).stat().st_size for f in shipped)
        lat = r["latency"]
        assert lat["p50_ms"] > 0
        assert lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        assert lat["queries"] >= TINY_LATENCY["min_queries"]
        assert lat["valid"] is True
        assert r["accuracy"]["images"] == 32
        assert r["accuracy"]["split"] == "test"
        assert r["accuracy"]["reference"] == "ort on onnxruntime"
        assert r["offline"]["valid"] is True
        assert r["memory"]["peak_rss_mb"] > 0
    assert rows[0]["runtime_version"] == build.compiled("ort").metadata["metrics"]["runtime_version"]
    assert rows[1]["runtime_version"] == build.compiled("ov").metadata["metrics"]["runtime_version"]
    # the same FP32 network compiled two ways: the same answers
    assert rows[1]["accuracy"]["top1"] == rows[0]["accuracy"]["top1"]
    assert rows[1]["accuracy"]["top1_agreement"] == 1.0
    assert report["settings"]["runtimes"] == []
    assert report["settings"]["isolated_processes"] is False


# ------------------------------------------------------------------------------------------------ tampering


@pytest.mark.parametrize(
    ("variant", "runtime", "engine", "tampered"),
    [
        ("ort", "onnxruntime", "model.ort.onnx", "model.ort.onnx"),
        ("ov", "openvino", "model.xml", "model.bin"),
        ("ov", "openvino", "model.xml", "model.xml"),
    ],
)
def test_tampered_engine_is_refused(
    build: CBuild, tmp_path: Path, variant: str, runtime: str, engine: str, tampered: str
) -> None:
    folder = tmp_path / variant
    shutil.copytree(build.models(variant), folder)
    fmt = build.compiled(variant).format
    with open_runner(runtime, folder / engine, fmt=fmt, threads=1):
        pass  # the untouched copy loads
    before = sha256_file(folder / tampered)
    offset = None if tampered != "model.xml" else (folder / tampered).read_bytes().index(b"<net") + 1
    flip_byte(folder / tampered, offset)
    with pytest.raises(StageError) as exc:
        open_runner(runtime, folder / engine, fmt=fmt, threads=1)
    msg = str(exc.value)
    assert msg.startswith(f"{folder / tampered} does not match its manifest (sha256 ")
    assert f"manifest says {before[:16]}...): it changed after it was built" in msg
    assert msg.endswith("Refusing to load it; rebuild it with `edgeres build RECIPE --force compile`")
    assert exc.value.exit_code == 3


def test_missing_engine_file_is_refused(build: CBuild, tmp_path: Path) -> None:
    folder = tmp_path / "ov"
    shutil.copytree(build.models("ov"), folder)
    (folder / "model.bin").unlink()
    with pytest.raises(StageError, match=r"model\.bin does not match its manifest \(sha256 missing\.\.\., "):
        open_runner("openvino", folder / "model.xml", fmt="openvino", threads=1)


# --------------------------------------------------------------------------------------- TensorRT (no TensorRT)


def _tensorrt_here() -> bool:
    from edgeres.tensorrt.facts import probe_device_facts

    return importlib.util.find_spec("tensorrt") is not None and probe_device_facts(cuda_context=False).trt_version


@pytest.fixture(scope="module")
def no_tensorrt() -> None:
    if _tensorrt_here():
        pytest.skip("TensorRT is installed here: compile builds an engine instead of a kit")


def test_tensorrt_target_writes_a_device_kit(build: CBuild, no_tensorrt: None) -> None:
    art = build.compiled("trt")
    assert (art.format, art.primary) == ("tensorrt-kit", "build.sh")
    folder = build.models("trt")
    names = {p.name for p in folder.iterdir()}
    assert {"build.sh", "kit.json", "val.npz", "model.onnx", "README.txt", "manifest.json"} <= names
    assert folder.joinpath("build.sh").read_text(encoding="utf-8").startswith("#!/usr/bin/env bash\n")
    # the kit carries the FP32 ONNX as exported
    assert sha256(folder / "model.onnx") == sha256(build.export.primary_path)
    kit = json.loads((folder / "kit.json").read_text(encoding="utf-8"))
    assert kit["schema"] == "edgeres.device-kit/1"
    assert kit["variant"] == "trt"
    assert kit["onnx"] == {
        "file": "model.onnx",
        "sha256": sha256(folder / "model.onnx"),
        "input": "input",
        "shape": ["batch", 3, 16, 16],
    }
    assert kit["val"] == {"file": "val.npz", "sha256": sha256(folder / "val.npz"), "images": KIT_IMAGES}
    assert kit["settings"]["precision"] == "fp16"  # FP32 ONNX: no Q/DQ nodes
    assert kit["target"]["name"] == "nvidia-gpu"
    assert kit["target"]["tensorrt_major"] == [10, 11]
    with np.load(folder / "val.npz") as val:
        assert val["x"].shape == (KIT_IMAGES, 3, 16, 16)
        assert val["x"].dtype == np.float32
        assert val["y"].shape == (KIT_IMAGES,)
        assert val["y"].dtype == np.int64
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["format"] == "tensorrt-kit"
    assert manifest["engine"] == "build.sh"
    assert manifest["runtime"] == "tensorrt"
    assert manifest["built"] == "kit"
    assert manifest["reason"] == "TensorRT is not installed here"
    assert manifest["runtime_version"] is None
    assert manifest["source_onnx_sha256"] == build.export.files["model.onnx"]
    assert set(manifest["sha256"]) == names - {"artifact.json", "manifest.json"}
    assert "TensorRT is not installed here: wrote a device kit; copy models/trt from the build output" in build.log


def test_kit_script_is_executable_in_the_cache(build: CBuild, no_tensorrt: None) -> None:
    assert (build.compiled("trt").path / "build.sh").stat().st_mode & 0o777 == 0o755


def test_delivered_kit_script_is_executable(build: CBuild, no_tensorrt: None) -> None:
    assert build.models("trt").joinpath("build.sh").stat().st_mode & stat.S_IXUSR


def test_benchmark_lists_the_kit_as_unmeasured(build: CBuild, no_tensorrt: None) -> None:
    report = build.report()
    assert [u for u in report["unmeasured"] if u["variant"] == "trt"] == [
        {
            "variant": "trt",
            "format": "tensorrt-kit",
            "reason": "a TensorRT device build kit; run its build.sh on the device, which writes "
            "device-report.json for `edgeres compare`",
        }
    ]
    assert "trt" not in {r["variant"] for r in report["results"]}
    md = (build.out / "report.md").read_text(encoding="utf-8")
    assert "Not measured on this host: variant `trt` (tensorrt-kit): a TensorRT device build kit;" in md
    assert "benchmark trt: a tensorrt-kit artifact cannot be measured on this host" in build.log


# ------------------------------------------------------------------------------------------- fixed batch size


def test_fixed_batch_engine_is_benchmarked(base_build: Build, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(base_build.cache, cache)
    recipe = tiny_recipe(
        stages=[
            FINETUNE,
            {"type": "export", "opset": 18, "exporter": "torchscript", "dynamic_batch": False},
            {"type": "compile"},
            BENCH,
        ]
    )
    result, _ = run_pipeline(recipe, cache, tmp_path / "out")
    compiled = result.variants["main"]
    assert compiled.metadata["metrics"].get("input", {}).get("shape") == [1, 3, 16, 16]
    row = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))["results"][0]
    assert row["accuracy"]["images"] == 32
    assert row["offline"] == {"scenario": "offline", "skipped": "the model has a fixed batch size of 1"}


def test_each_variant_is_measured_with_its_own_data_settings(base_build: Build, tmp_path: Path) -> None:
    """A variant that overrides data.* (here its normalisation) is benchmarked on images preprocessed its way, not
    the base recipe's: its row's accuracy is what its model gives on its own preprocessing. (Variant a is the base
    build's model: its finetune and export come from a copy of that cache.)"""
    from conftest import as_recipe

    from edgeres.data import load_data
    from edgeres.recipe import variant_recipe

    raw = tiny_recipe(
        stages=[FINETUNE, EXPORT, BENCH],
        variants={"a": {}, "b": {"set": {"data.mean": [0.2, 0.2, 0.2], "data.std": [0.5, 0.5, 0.5]}}},
    )
    shutil.copytree(base_build.cache, tmp_path / "cache")
    result, _ = run_pipeline(raw, tmp_path / "cache", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    recipe = as_recipe(raw)
    for vname in ("a", "b"):
        data = load_data(variant_recipe(recipe, vname).data, seed=0)
        x, y = (np.concatenate(p) for p in zip(*data.numpy_batches(data.test, 256), strict=True))
        logits = ort_logits(result.variants[vname].primary_path, x)
        (row,) = [r for r in report["results"] if r["variant"] == vname and r["runtime"] == "onnxruntime"]
        assert row["accuracy"]["top1"] == float((logits.argmax(1) == y).mean())
    base = load_data(recipe.data, seed=0)
    other = load_data(variant_recipe(recipe, "b").data, seed=0)
    xa = next(base.numpy_batches(base.test, 8))[0]
    xb = next(other.numpy_batches(other.test, 8))[0]
    assert not np.allclose(xa, xb)  # the two variants really see differently preprocessed images
