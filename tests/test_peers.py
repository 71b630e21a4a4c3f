"""benchmarks/peers.py's parts that can run without ../shared: the fair-reference rule on its recipe, running a
32x32 model at another size (what its 224x224 latency column measures), and how the goal is judged.

The benchmark itself needs the CIFAR-10 data and checkpoint (`make bench-peers`); these tests do not run it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def peers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("peers", REPO / "benchmarks" / "peers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["peers"] = module
    spec.loader.exec_module(module)
    return module


def test_the_fair_reference_has_the_most_extra_training(peers: ModuleType) -> None:
    from edgeres.recipe import load_recipe

    most, extra = peers.fair_check(load_recipe(REPO / "recipes" / "cifar10-peers.yaml"), ["fp32-fair"])
    assert most == 4
    assert extra["fp32-fair"] == 4  # finetune epochs
    assert extra["int8"] == 0
    assert extra["pruned50-int8"] == extra["pruned30-fp32"] == 3  # recovery
    assert extra["pruned30-int8-qat"] == 4  # recovery + QAT
    assert extra["pruned30r4-int8"] == 4  # one more recovery epoch, as many as the reference
    assert extra["depth5-int8"] == extra["depth4-fp32"] == 4  # blocks removed: one step, 4 recovery epochs
    assert extra["depth4lr05-int8"] == extra["depth4kd09-int8"] == extra["depth5s2-int8"] == 4  # lr, distill, blocks
    assert extra["depth5s2kd03-int8"] == extra["depth5s2lr1-fp32"] == 4
    assert extra["depth5s2f31-int8"] == extra["depth6-int8"] == 4  # a larger budget, six blocks
    assert extra["fp32-fair-lr05"] == 4  # a second fair candidate, at the learning rate of the depth recovery


def test_the_how_column_names_the_blocks_a_depth_pruned_model_kept(peers: ModuleType) -> None:
    class Art:
        def __init__(self, metrics: dict[str, Any]) -> None:
            self.metadata = {"metrics": metrics}

    cut = {
        "macs_before": 100,
        "macs_after": 30,
        "depth": {"blocks_before": [3, 4, 6, 3], "kept": [[0], [0], [0, 4], [0]]},
    }
    assert peers._depth(Art(cut)) == " (5 of 16 blocks)"
    assert peers._depth(Art({"macs_before": 100, "macs_after": 30, "depth": None})) == ""
    assert peers._macs_fraction(Art(cut)) == 0.3


def test_a_reference_with_less_training_is_refused(peers: ModuleType) -> None:
    from edgeres.recipe import load_recipe

    recipe = load_recipe(
        REPO / "recipes" / "cifar10-peers.yaml", overrides=[("variants.fp32-fair.set", {"stages.finetune.epochs": 3})]
    )
    with pytest.raises(SystemExit) as exc:
        peers.fair_check(recipe, ["fp32-fair"])
    assert str(exc.value) == (
        "the fair FP32 reference 'fp32-fair' has 3 extra epochs but a variant has 4: give it as many "
        "(variants.fp32-fair.set stages.finetune.epochs)"
    )


@pytest.fixture(scope="module")
def tiny_export(module_tmp: Any, peers: ModuleType) -> tuple[Any, Path]:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    path = peers.plain_export(model, module_tmp("plain") / "model.onnx")
    return model, path


def test_resized_onnx_computes_what_the_torch_model_does_at_the_new_size(
    peers: ModuleType, tiny_export: tuple[Any, Path], tmp_path: Path
) -> None:
    import torch

    model, path = tiny_export
    resized = peers.at_size(path, 64, tmp_path)
    assert resized != path and peers.at_size(path, 64, tmp_path) == resized  # made once
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    got = peers.DefaultOnnxRuntime(resized, threads=1).infer(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert peers.at_size(path, 32, tmp_path) == path


def test_resized_openvino_ir_computes_what_the_torch_model_does(
    peers: ModuleType, tiny_export: tuple[Any, Path], tmp_path: Path
) -> None:
    import openvino as ov
    import torch

    model, path = tiny_export
    ir = tmp_path / "ir" / "model.xml"
    ir.parent.mkdir()
    ov.save_model(ov.convert_model(str(path)), str(ir), compress_to_fp16=False)
    resized = peers.at_size(ir, 64, tmp_path)
    assert resized.suffix == ".xml" and resized.with_suffix(".bin").is_file()
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    from edgeres.runtimes import open_runner
    from edgeres.runtimes.settings import RuntimeSettings

    with open_runner("openvino", resized, fmt="openvino", threads=1, settings=RuntimeSettings("openvino")) as r:
        np.testing.assert_allclose(r.infer(x), want, rtol=1e-3, atol=1e-3)


def _row(peers: ModuleType, name: str, group: str, top1: float, p50_32: float, p50_224: float) -> Any:
    row = peers.Row(name, group, "", "openvino", [], lambda size: None, lambda: None)
    row.results.update({"top1": top1, "p50_ms_32": p50_32, "p50_ms_224": p50_224})
    return row


def _summary(peers: ModuleType, rows: list[Any], references: tuple[str, ...] = ("fp32-fair",)) -> dict[str, Any]:
    from edgeres.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "cifar10-peers.yaml")
    return peers.summarize(rows, recipe, list(references), {}, 4, [], 1)


def test_the_goal_needs_the_speed_at_both_sizes_within_a_point_of_the_fair_model(peers: ModuleType) -> None:
    rows = [
        _row(peers, "NNCF", "peer", 0.817, 2.0, 20.0),
        _row(peers, "slower peer", "peer", 0.818, 3.0, 30.0),
        _row(peers, "edgeres fp32-fair", "edgeres", 0.820, 4.0, 40.0),
        _row(peers, "edgeres fast but wrong", "edgeres", 0.805, 0.5, 5.0),  # 1.5 points below: not counted
        _row(peers, "edgeres pruned", "edgeres", 0.812, 0.7, 9.0),  # 2.86x at 32, 2.22x at 224
    ]
    goal = _summary(peers, rows)["goal"]
    assert goal["fastest_peer_32"] == goal["fastest_peer_224"] == "NNCF"
    assert goal["best"] == "edgeres pruned"
    assert goal["status"] == (
        "NOT met: edgeres pruned is 2.86x (32x32) and 2.22x (224x224) the fastest peer at -0.80 points against the "
        "fair FP32 (fp32-fair)"
    )
    rows[-1].results["p50_ms_224"] = 8.0
    assert _summary(peers, rows)["goal"]["status"].startswith("met: edgeres pruned is 2.86x (32x32) and 2.50x")


def test_of_several_fair_models_the_best_on_test_sets_the_bar(peers: ModuleType) -> None:
    rows = [
        _row(peers, "NNCF", "peer", 0.817, 2.0, 20.0),
        _row(peers, "edgeres fp32-fair", "edgeres", 0.815, 4.0, 40.0),
        _row(peers, "edgeres fp32-fair-lr05", "edgeres", 0.822, 4.0, 40.0),
        _row(peers, "edgeres pruned", "edgeres", 0.810, 0.7, 7.0),  # within a point of the first, not the second
    ]
    goal = _summary(peers, rows, ("fp32-fair", "fp32-fair-lr05"))["goal"]
    assert goal["reference"] == "edgeres fp32-fair-lr05"
    assert goal["best"] == "edgeres fp32-fair"  # the pruned model is 1.2 points under the better fair model
    assert goal["status"].endswith("at -0.70 points against the fair FP32 (fp32-fair-lr05)")
    goal = _summary(peers, rows, ("fp32-fair", "fp32-fair-8"))["goal"]
    assert goal["status"] == "not judged: the fair FP32 reference (fp32-fair-8) is not built yet"


def test_the_fair_candidates_default_to_the_fp32_fair_variants(peers: ModuleType) -> None:
    from edgeres.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "cifar10-peers.yaml")
    assert peers.fair_references(recipe, None) == [v for v in recipe.variant_names() if v.startswith("fp32-fair")]
    assert "fp32-fair" in peers.fair_references(recipe, None)
    with pytest.raises(SystemExit, match="no fair FP32 reference: 'nope' in the recipe's variants"):
        peers.fair_references(recipe, ["nope"])


def test_without_the_fair_model_the_goal_is_not_judged(peers: ModuleType) -> None:
    goal = _summary(peers, [_row(peers, "NNCF", "peer", 0.8, 2.0, 20.0)])["goal"]
    assert goal["status"] == "not judged: the fair FP32 reference (fp32-fair) is not built yet"


def test_openvino_defaults_report_the_precision_this_cpu_gave_them(
    peers: ModuleType, tiny_export: tuple[Any, Path]
) -> None:
    """OpenVINO's default float precision follows the CPU (bf16 with AVX512_BF16 or AMX): the peer row says which."""
    import openvino as ov

    _, path = tiny_export
    runner = peers.DefaultOpenVino(path, threads=1)
    runner.infer(np.zeros((1, 3, 32, 32), dtype=np.float32))
    caps = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    got = runner.effective()["inference_precision"]
    # a CPU without native bf16/fp16 runs f32; one with it may run either, which is why the row reports it
    assert got == "f32" if not caps & {"BF16", "FP16"} else got in ("f32", "bf16", "f16")
    assert peers._float_precision({"effective": {"inference_precision": "bf16"}}) == " (bf16)"
    assert peers._float_precision({"effective": {"inference_precision": "f32"}}) == ""
    assert peers._float_precision({}) == ""
