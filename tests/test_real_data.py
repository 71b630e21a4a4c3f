"""Real data (opt-in, `make test-slow`): quantize and prune a trained CIFAR-10 ResNet-50 through the public pipeline.

Needs ../shared beside the repository (skipped without it): `data/cifar10-jpeg.tar.gz` (60,000 CIFAR-10 JPEGs) and
`models/resnet50-cifar10.pt`, a ResNet-50 trained on the first 4,500 train files of each class: 81.73% top-1 on the
10,000 test images, 82.40% on the 500 last train files per class, held out as val here (`val_rule: last`). Nothing
is trained (finetune `epochs: 0` loads and evaluates the checkpoint), so every accuracy below is the checkpoint's
and can be held to its published numbers.

Two builds share one cache (finetune and the decoded splits are reused): finetune -> export -> quantize -> compile
for `cpu-onnxruntime` and `cpu-openvino` (variants), and finetune -> prune (MACs <= 0.5, no recovery, OpenVINO's
round_to 16) -> export. Most of the time is evaluation (every stage measures top-1 on val and test), not pruning or
quantization.

Measured here (2-core AMD EPYC, threads 2, torch 2.14.1, onnxruntime 1.32, openvino 2026.4, nncf 3.4; pytest
--durations and the sidecars' seconds). Quiet machine, nothing else running: 433 s for the whole module.
- unpacking the archive ~20 s; hashing the 60,000 files into the data fingerprint 5-12 s per build (twice).
- finetune (epochs 0) 65 s: decoding the 60,000 JPEGs once (16 s; the prune build loads the decoded splits from the
  cache) and torch top-1 on val and test (15,000 images, ~3 ms each). Export (dynamo, parity on 256 images) 15 s.
- quantize 119 s for ONNX Runtime, 70 s for OpenVINO: FP32 and INT8 top-1 through the runtime on val and test
  (30,000 inferences per target, ORT FP32 ~2.3 ms an image), NNCF PTQ on 300 images 26-28 s. Compile 0.2 s (ORT),
  2.3 s (OpenVINO IR). The quantize fixture, unpacking included: 310 s.
- prune 75 s: MAC search and pruning 34 s (12 trial prunings), the rest torch top-1 on val and test before and after
  (the "before" numbers repeat finetune's). Export of the pruned model 13 s. The prune fixture: 92 s.
- the checks beside the builds (decoding 6,000 JPEGs, two engines on 1,000 test images, the pruned model on val)
  15 s; removing the unpacked files at the end 13 s.
The test split is all 10,000 images (it cannot be subset through the recipe): about 130 s of the 433 by the
per-image costs above, kept so the FP32 numbers can be held to the checkpoint's published 81.73%. On the same
machine shared with another build or test suite, the module took 14-20 minutes: stage times rise 2-4x under
contention.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_pipeline

from edgeres.artifact import sha256_file

pytestmark = pytest.mark.slow

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ARCHIVE = SHARED / "data" / "cifar10-jpeg.tar.gz"
CHECKPOINT = SHARED / "models" / "resnet50-cifar10.pt"
# From ../shared/data/README.md and ../shared/models/README.md: the numbers below hold for these exact files.
ARCHIVE_SHA256 = "45b041e867f5a40f79bfde38d3dd1fd511103d50068c1afecf6445e25234d4db"
CHECKPOINT_SHA256 = "8a76c5476966a6685e08931f048a0abdb18ea01131ee25968de0a6fbf81904d9"
CHECKPOINT_TEST_TOP1 = 0.8173  # 10,000 test images
CHECKPOINT_VAL_TOP1 = 0.8240  # the last 500 train files per class
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
THREADS = 2
# Engines are compared with the ONNX they were compiled from on the first 100 test images of each class.
ENGINE_IMAGES_PER_CLASS = 100
ENGINE_BATCH = 100

DATA: dict[str, Any] = {
    "type": "imagefolder",
    "val_fraction": 0.1,  # 500 of each class's 5,000 train files ...
    "val_rule": "last",  # ... the last by name: the files the checkpoint never trained on
    "image_size": None,  # 32x32, as trained
    "mean": [0.4914, 0.4822, 0.4465],
    "std": [0.2470, 0.2435, 0.2616],
    "augment": "crop-flip",  # as trained; unused with epochs 0, but part of finetune's cache key
}
# epochs 0: load the checkpoint and evaluate it. One epoch of FP32 training takes 12-20 minutes on 2 cores.
FINETUNE: dict[str, Any] = {"type": "finetune", "epochs": 0, "batch_size": 128}
EXPORT: dict[str, Any] = {"type": "export", "exporter": "dynamo", "opset": 18}


def cifar_recipe(root: Path, stages: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {
        "name": "cifar10-real",
        "seed": 0,
        "threads": THREADS,
        "data": {**DATA, "root": str(root)},
        "model": {"arch": "resnet50"},
        "stages": [{**FINETUNE, "weights": str(CHECKPOINT)}, *stages],
        **top,
    }


def decode(files: list[Path], preprocessing: dict[str, Any]) -> np.ndarray:
    """JPEGs -> float32 NCHW, normalised as the model's recorded preprocessing says (what a deployment does)."""
    from torchvision.io import ImageReadMode, decode_image

    assert preprocessing["layout"] == "NCHW" and preprocessing["color"] == "RGB"
    assert preprocessing["scale"] == "pixel / 255"
    x = np.stack([decode_image(str(p), mode=ImageReadMode.RGB).numpy() for p in files]).astype(np.float32) / 255.0
    mean = np.asarray(preprocessing["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(preprocessing["std"], dtype=np.float32).reshape(1, 3, 1, 1)
    return (x - mean) / std


def labelled_files(root: Path, split: str, *, first: int | None = None, last: int | None = None) -> list[Path]:
    """The first or last files by name of each class folder, class by class in sorted order."""
    out = []
    for c in CLASSES:
        files = sorted((root / split / c).glob("*.jpg"))
        out += files[:first] if first is not None else files[len(files) - (last or 0) :]
    return out


def labels_of(files: list[Path]) -> np.ndarray:
    return np.array([CLASSES.index(p.parent.name) for p in files])


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + ENGINE_BATCH]})[0] for i in range(0, len(x), ENGINE_BATCH)])


def ov_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape([ENGINE_BATCH, *x.shape[1:]])
    # f32 spelled out: OpenVINO runs FP32 parts in bf16 by default on CPUs with AVX512_BF16 or AMX.
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": THREADS, "INFERENCE_PRECISION_HINT": "f32"})
    return np.concatenate(
        [compiled(x[i : i + ENGINE_BATCH])[compiled.output(0)] for i in range(0, len(x), ENGINE_BATCH)]
    )


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def cifar10(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """CIFAR-10 unpacked once per session into tmp (train/<class>/*.jpg, test/<class>/*.jpg)."""
    missing = [str(p) for p in (ARCHIVE, CHECKPOINT) if not p.is_file()]
    if missing:
        pytest.skip(f"real-data tests need the shared data and checkpoint beside the repository; missing: {missing}")
    for path, expected in ((ARCHIVE, ARCHIVE_SHA256), (CHECKPOINT, CHECKPOINT_SHA256)):
        assert sha256_file(path) == expected, f"{path} is not the file these tests' numbers were measured on"
    root = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(ARCHIVE) as tf:
        tf.extractall(root, filter="data")
    yield root
    shutil.rmtree(root, ignore_errors=True)  # 60,000 files; the caches beside it stay for a look after a failure


@pytest.fixture(scope="module")
def cache(module_tmp: Any) -> Path:
    """One cache for both builds: the decoded splits and the finetune entry are made once."""
    return module_tmp("real-cache") / "cache"


@pytest.fixture(scope="module")
def test_images(cifar10: Path) -> tuple[np.ndarray, np.ndarray]:
    files = labelled_files(cifar10, "test", first=ENGINE_IMAGES_PER_CLASS)
    preprocessing = {"layout": "NCHW", "color": "RGB", "scale": "pixel / 255", "mean": DATA["mean"], "std": DATA["std"]}
    return decode(files, preprocessing), labels_of(files)


@dataclass
class RealBuild:
    result: Any
    log: str

    def stage(self, variant: str, stage: str) -> Any:
        return next(a for a in self.result.lineage[variant] if a.metadata["stage"] == stage)

    def metrics(self, variant: str, stage: str) -> dict[str, Any]:
        return self.stage(variant, stage).metadata["metrics"]


@pytest.fixture(scope="module")
def quantized(cifar10: Path, cache: Path) -> RealBuild:
    recipe = cifar_recipe(
        cifar10,
        [
            EXPORT,
            {"type": "quantize", "calibration_size": 300, "max_accuracy_drop": 0.01},
            {"type": "compile"},
        ],
        variants={"ort": {}, "ov": {"set": {"target": "cpu-openvino"}}},
    )
    result, log = run_pipeline(recipe, cache)
    return RealBuild(result, log)


@pytest.fixture(scope="module")
def pruned(cifar10: Path, cache: Path) -> RealBuild:
    prune = {
        "type": "prune",
        "criterion": "l1",
        "budget": {"type": "macs", "fraction": 0.5},
        "steps": 1,
        "recovery": {"epochs": 0},
    }
    # cpu-openvino: round_to comes from the target (16), not from the recipe.
    result, log = run_pipeline(cifar_recipe(cifar10, [prune, EXPORT], target="cpu-openvino"), cache)
    return RealBuild(result, log)


# ------------------------------------------------------------------------------------------------------ quantize


def test_the_checkpoint_loads_with_its_published_accuracy(quantized: RealBuild) -> None:
    m = quantized.metrics("ort", "finetune")
    assert m["epochs"] == 0 and m["head_replaced"] is False
    assert m["test_top1"] == pytest.approx(CHECKPOINT_TEST_TOP1, abs=0.002)
    assert m["val_top1"] == pytest.approx(CHECKPOINT_VAL_TOP1, abs=0.002)  # val is the 500 files it never saw


def test_variants_share_finetune_and_export(quantized: RealBuild) -> None:
    by_variant = {(r.variant, r.stage): r.status for r in quantized.result.records}
    assert by_variant[("ov", "finetune")] == by_variant[("ov", "export")] == "cached"
    assert by_variant[("ort", "quantize")] == by_variant[("ov", "quantize")] == "ran"
    assert quantized.stage("ort", "export").path == quantized.stage("ov", "export").path


@pytest.mark.parametrize(("variant", "runtime"), [("ort", "onnxruntime"), ("ov", "openvino")])
def test_int8_keeps_the_accuracy_on_real_data(quantized: RealBuild, variant: str, runtime: str) -> None:
    m = quantized.metrics(variant, "quantize")
    assert m["runtime"] == runtime
    assert m["calibration"]["images"] == 300 and m["calibration"]["split"] == "val"
    assert m["method"] == "ptq" and m["kept_fp32_layers"] == []  # plain PTQ met the budget: nothing kept in FP32
    test, val = m["test"], m["val"]
    assert test["fp32_top1"] == pytest.approx(CHECKPOINT_TEST_TOP1, abs=0.01)
    assert val["fp32_top1"] == pytest.approx(CHECKPOINT_VAL_TOP1, abs=0.01)
    for split in (val, test):
        assert split["drop"] == pytest.approx(split["fp32_top1"] - split["int8_top1"])
        assert split["agreement"] >= 0.95
    assert test["drop"] <= 0.01  # val's drop is the stage's own gate (max_accuracy_drop); test is not gated


def test_one_calibration_set_for_both_targets(quantized: RealBuild) -> None:
    ort_m, ov_m = quantized.metrics("ort", "quantize"), quantized.metrics("ov", "quantize")
    assert ort_m["calibration"]["sha256"] == ov_m["calibration"]["sha256"]
    # Both CPU targets use NNCF's mixed preset on the same ONNX and images: the same scales.
    assert ort_m["scales_sha256"] == ov_m["scales_sha256"]


@pytest.mark.parametrize(
    ("variant", "engine", "logits"),
    [("ort", "model.ort.onnx", ort_logits), ("ov", "model.xml", ov_logits)],
)
def test_compiled_engine_predicts_as_the_quantized_model(
    quantized: RealBuild, test_images: tuple[np.ndarray, np.ndarray], variant: str, engine: str, logits: Any
) -> None:
    compiled, qdq = quantized.stage(variant, "compile"), quantized.stage(variant, "quantize")
    assert compiled.primary == engine
    manifest = json.loads((compiled.path / "manifest.json").read_text())
    assert manifest["source_onnx_sha256"] == qdq.files["model.onnx"]
    assert manifest["sha256"][engine] == compiled.files[engine]
    x, y = test_images
    got, expected = logits(compiled.path / engine, x).argmax(1), logits(qdq.primary_path, x).argmax(1)
    assert float(np.mean(got == expected)) >= 0.99
    # On 1,000 of the 10,000 test images the engine's top-1 is near the INT8 top-1 the quantize stage measured on all
    # of them (0.812 against 0.817 here, on both runtimes).
    assert float(np.mean(got == y)) == pytest.approx(
        quantized.metrics(variant, "quantize")["test"]["int8_top1"], abs=0.02
    )


# --------------------------------------------------------------------------------------------------------- prune


def test_prune_meets_the_mac_budget_with_the_targets_rounding(pruned: RealBuild) -> None:
    m = pruned.metrics("main", "prune")
    assert m["round_to"] == 16  # OpenVINO's, from the target
    assert m["macs_after"] <= 0.5 * m["macs_before"]
    # The search takes the smallest ratio that meets the budget; with channels in steps of 16 the MACs jump, so
    # "smallest" lands somewhat below 0.5 (0.451 measured), never far below.
    assert m["macs_after"] >= 0.4 * m["macs_before"]
    assert m["params_after"] < m["params_before"]
    assert m["kept_channels"]


def test_pruned_channels_are_multiples_of_16(pruned: RealBuild) -> None:
    channels = json.loads((pruned.stage("main", "prune").path / "model.json").read_text())["channels"]
    counts = []
    for name, dims in channels.items():
        if name == "fc":
            assert dims[1] == 10  # the classifier's outputs are never pruned
            counts.append(dims[0])
        elif len(dims) == 3:  # Conv2d: in, out, groups
            assert dims[2] == 1
            counts += dims[1:2] if name == "conv1" else dims[:2]
            if name == "conv1":
                assert dims[0] == 3  # the stem reads RGB
        else:  # BatchNorm2d
            counts += dims
    assert len(counts) > 100  # every convolution, BatchNorm and the classifier of a ResNet-50
    assert [c for c in counts if c % 16] == []


def test_prune_records_accuracy_before_and_after(pruned: RealBuild) -> None:
    m = pruned.metrics("main", "prune")
    before, after = m["before"], m["after"]
    finetune = pruned.metrics("main", "finetune")
    assert before["test_top1"] == pytest.approx(finetune["test_top1"], abs=0.0005)
    assert before["val_top1"] == pytest.approx(finetune["val_top1"], abs=0.0005)
    assert before["test_top1"] == pytest.approx(CHECKPOINT_TEST_TOP1, abs=0.01)
    # Half the MACs gone and no recovery: far below the checkpoint, far above chance (0.10); 0.467 val measured.
    for split in ("val_top1", "test_top1"):
        assert 0.2 < after[split] < before[split] - 0.1
    assert m["after_pruning_val_top1"] == after["val_top1"]  # no recovery: the same model


def test_pruned_model_reloads_and_scores_as_recorded(pruned: RealBuild, cifar10: Path) -> None:
    import torch

    from edgeres.models import load_model

    art = pruned.stage("main", "prune")
    m = art.metadata["metrics"]
    torch.set_num_threads(THREADS)
    model, spec = load_model(art.path)
    again, _ = load_model(art.path)
    assert spec["channels"] == json.loads((art.path / "model.json").read_text())["channels"]
    val_files = labelled_files(cifar10, "train", last=500)  # val_rule last, val_fraction 0.1
    x = torch.from_numpy(decode(val_files, spec["preprocessing"]))
    y = labels_of(val_files)
    with torch.inference_mode():
        logits = torch.cat([model(x[i : i + 250]) for i in range(0, len(x), 250)])
        assert torch.equal(again(x[:64]), logits[:64])  # two reloads, one model
    assert float((logits.argmax(1).numpy() == y).mean()) == pytest.approx(m["after"]["val_top1"], abs=0.0004)


def test_pruned_model_exports_with_parity(pruned: RealBuild, test_images: tuple[np.ndarray, np.ndarray]) -> None:
    import torch

    from edgeres.models import load_model

    exported = pruned.stage("main", "export")
    m = exported.metadata["metrics"]
    assert m["parity"]["samples"] == 256
    params = pruned.metrics("main", "prune")
    # FP32 weights embedded: about 4 bytes per parameter, about half the dense model's 94 MB (23.5M parameters)
    assert m["bytes"] == pytest.approx(4 * params["params_after"], rel=0.05)
    assert m["bytes"] < 0.6 * 4 * params["params_before"]
    model, _ = load_model(pruned.stage("main", "prune").path)
    x = test_images[0][:ENGINE_BATCH]
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert float(np.abs(ort_logits(exported.primary_path, x) - expected).max()) <= 1e-3
