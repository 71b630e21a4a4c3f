"""Fidelity checks (edgeres.fidelity): corruptions, saliency agreement, layer-by-layer comparison, profiles, and
that the checks have teeth both ways.

The probe for "decides differently" is a pair of hand-built classifiers on images that carry their class in both
halves (a colour, left and right): one reads only the left half, the other only the right. On every clean test
image both are right and they agree with each other, so clean top-1 and top-1 agreement cannot tell them apart;
they differ only in the evidence they use, which is exactly the "right for different reasons" failure an
explanation-agreement check exists to catch. A model that keeps top-1 but was trained on other features (a
pruned or quantized model leaning on texture instead of shape) is the same failure, less cleanly made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeres.errors import RecipeError
from edgeres.fidelity.corruptions import CORRUPTIONS, corrupted_set
from edgeres.fidelity.layerwise import compare_layers
from edgeres.fidelity.profile import layer_profile
from edgeres.fidelity.saliency import agreement, rank_correlation, top_overlap
from edgeres.fidelity.summary import robustness_row, saliency_row, set_labels
from edgeres.report.compare import compare_reports
from edgeres.runtimes.settings import RuntimeSettings
from edgeres.worker import run_spec

SIDE, CLASSES = 16, 3
LATENCY = {"warmup": 1, "min_queries": 3, "min_duration_s": 0}


def _onnx(path: Path, nodes: list[Any], inits: list[Any]) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def half_reader(path: Path, half: str) -> Path:
    """logits = 2 x per-channel mean of the left (or right) half of the image: a colour classifier that looks at one
    half only."""
    from onnx import numpy_helper as nh
    from onnx.helper import make_node

    lo, hi = (0, SIDE // 2) if half == "left" else (SIDE // 2, SIDE)
    inits = [
        nh.from_array(np.array([lo], dtype=np.int64), "starts"),
        nh.from_array(np.array([hi], dtype=np.int64), "ends"),
        nh.from_array(np.array([3], dtype=np.int64), "axes"),
        nh.from_array(np.array([2, 3], dtype=np.int64), "pool_axes"),
        nh.from_array(np.array(2.0, dtype=np.float32), "scale"),
    ]
    nodes = [
        make_node("Slice", ["x", "starts", "ends", "axes"], ["half"], name="slice"),
        make_node("ReduceMean", ["half", "pool_axes"], ["pooled"], name="pool", keepdims=0),
        make_node("Mul", ["pooled", "scale"], ["logits"], name="scale"),
    ]
    return _onnx(path, nodes, inits)


def colour_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose class is a colour channel lit in both halves, over noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % CLASSES
    x = rng.integers(0, 40, size=(n, 3, SIDE, SIDE))
    for i, c in enumerate(y):
        x[i, c] += 160
    return x.astype(np.uint8), y.astype(np.int64)


def measure(tmp: Path, model: Path, runtime: str, classes: list[int] | None = None) -> dict[str, Any]:
    """One artifact through the measuring worker's own path (in-process), fidelity included."""
    u8, y = colour_images(12)
    x = u8.astype(np.float32) / 255.0  # mean 0, std 1
    np.savez(tmp / "eval.npz", x=x, y=y)
    np.save(tmp / "sal.npy", x[:6])
    sets = corrupted_set(u8, ["gaussian_noise", "contrast"], [1, 5], seed=0)
    np.save(tmp / "rob.npy", np.concatenate([u8[None], sets]))
    np.save(tmp / "rob-y.npy", y)
    spec = {
        "runtime": runtime,
        "path": str(model),
        "format": "onnx",
        "threads": 1,
        "data": str(tmp / "eval.npz"),
        "batch": 64,
        "settings": RuntimeSettings(runtime).to_dict(),
        "latency": LATENCY,
        "offline": None,
        "fidelity": {
            "robustness": {
                "x": str(tmp / "rob.npy"),
                "y": str(tmp / "rob-y.npy"),
                "mean": [0.0, 0.0, 0.0],
                "std": [1.0, 1.0, 1.0],
                "labels": set_labels(["gaussian_noise", "contrast"], [1, 5]),
            },
            "saliency": {"x": str(tmp / "sal.npy"), "grid": 4, "classes": classes},
            "profile": {"runs": 2},
        },
    }
    return run_spec(spec)


# ------------------------------------------------------------------------------------------------- corruptions


def test_corruptions_are_seeded_and_grow_with_severity() -> None:
    u8, _ = colour_images(4)
    a = corrupted_set(u8, list(CORRUPTIONS), [1, 3, 5], seed=0)
    assert a.shape == (len(CORRUPTIONS) * 3, 4, 3, SIDE, SIDE) and a.dtype == np.uint8
    assert np.array_equal(a, corrupted_set(u8, list(CORRUPTIONS), [1, 3, 5], seed=0))
    assert not np.array_equal(a[0], corrupted_set(u8, ["gaussian_noise"], [1], seed=1)[0])
    for k, name in enumerate(CORRUPTIONS):
        diffs = [float(np.abs(a[3 * k + s].astype(float) - u8).mean()) for s in range(3)]
        assert diffs[2] > 0, name
        assert diffs[0] <= diffs[1] <= diffs[2] + 1e-9, (name, diffs)


def test_recipe_refuses_bad_fidelity_settings() -> None:
    from edgeres.config import Robustness, Saliency

    for bad in ({"severities": [0]}, {"severities": [6]}, {"corruptions": ["fog"]}, {"corruptions": []}):
        with pytest.raises(ValueError):
            Robustness(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Saliency(grid=1)


def test_recipe_with_fidelity_off_and_unknown_key(tmp_path: Path) -> None:
    import yaml
    from conftest import tiny_recipe

    from edgeres.recipe import recipe_from_text

    raw = tiny_recipe()
    raw["stages"][-1]["fidelity"] = None
    assert recipe_from_text(yaml.safe_dump(raw), source="t").stages[-1].fidelity is None  # type: ignore[union-attr]
    raw["stages"][-1]["fidelity"] = {"robustness": {"imgs": 5}}
    with pytest.raises(RecipeError, match="imgs"):
        recipe_from_text(yaml.safe_dump(raw), source="t")


# ------------------------------------------------------------------------------------------- saliency metrics


def test_rank_correlation_and_overlap_on_hand_made_maps() -> None:
    a = np.arange(16, dtype=float).reshape(4, 4)
    assert rank_correlation(a, a) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, 3 * a + 1) == pytest.approx(1.0)  # ranks, not values
    assert top_overlap(a, a, 0.2) == 1.0
    assert top_overlap(a, -a, 0.2) == 0.0
    flat = np.zeros((4, 4))
    assert rank_correlation(flat, flat) == 1.0 and rank_correlation(flat, a) == 0.0
    ties = np.array([0.0, 0.0, 1.0, 2.0])
    assert rank_correlation(ties, np.array([0.0, 0.0, 1.0, 2.0])) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------- teeth, both ways


@pytest.fixture(scope="module")
def probe(module_tmp: Any) -> dict[str, Any]:
    tmp = module_tmp("probe")
    left, right = half_reader(tmp / "left.onnx", "left"), half_reader(tmp / "right.onnx", "right")
    base = measure(tmp, left, "onnxruntime")
    classes = base["fidelity"]["saliency"]["classes"]
    return {
        "base": base,
        "left_openvino": measure(tmp, left, "openvino", classes),
        "right": measure(tmp, right, "onnxruntime", classes),
        "left": left,
        "right_path": right,
    }


def test_fp32_against_itself_through_another_runtime_agrees(probe: dict[str, Any]) -> None:
    base, other = probe["base"], probe["left_openvino"]
    assert base["accuracy"]["top1"] == other["accuracy"]["top1"] == 1.0
    sal = saliency_row(other["fidelity"]["saliency"], base["fidelity"]["saliency"], fraction=0.2,
                       min_rank_correlation=0.5)  # fmt: skip
    assert sal["rank_correlation"] > 0.95
    assert sal["top_overlap"] == 1.0
    assert sal["flagged"] is False
    rob = robustness_row(other["fidelity"]["robustness"], base["fidelity"]["robustness"], 12)
    assert rob["agreement_under_corruption"] == 1.0
    assert rob["relative_drop"] == pytest.approx(0.0)
    assert set(rob["corruptions"]) == {"gaussian_noise", "contrast"}


def test_model_that_looks_elsewhere_is_flagged_though_top1_and_agreement_match(probe: dict[str, Any]) -> None:
    base, right = probe["base"], probe["right"]
    # What top-1 sees: nothing. Both are right on every clean image and agree on all of them.
    assert right["accuracy"]["top1"] == base["accuracy"]["top1"] == 1.0
    assert right["predictions"] == base["predictions"]
    sal = saliency_row(right["fidelity"]["saliency"], base["fidelity"]["saliency"], fraction=0.2,
                       min_rank_correlation=0.5)  # fmt: skip
    assert sal["rank_correlation"] < 0.0
    assert sal["top_overlap"] == 0.0
    assert sal["flagged"] is True
    # The maps say where: the base model's saliency lies in the left half, the probe's in the right.
    maps = np.asarray(right["fidelity"]["saliency"]["maps"])
    assert (maps[:, :, 2:] > 0).all() and np.allclose(maps[:, :, :2], 0)


def test_profile_names_layers_and_precisions(probe: dict[str, Any], tmp_path: Path) -> None:
    """Through the worker (ONNX Runtime on the probe model), and on both runtimes for a model with a convolution.
    The probe model (a slice, a pool, a matmul) is no test of OpenVINO's profile: its CPU plugin fuses such a graph
    away and reports 0 or 1 executed layers depending on what it compiled before in the process (seen: 0, 1 and 2)."""
    from onnx_models import images, tiny_classifier

    prof = probe["base"]["fidelity"]["profile"]
    assert prof["layers"] >= 1 and prof["total_ms"] > 0
    assert set(prof["ms_by_precision"]) <= {"fp32", "int8", "?"}
    model = tiny_classifier(tmp_path / "conv.onnx")
    for runtime in ("onnxruntime", "openvino"):
        prof = layer_profile(runtime, str(model), RuntimeSettings(runtime), threads=1, runs=2, sample=images(1))
        assert prof["layers"] >= 1 and prof["total_ms"] > 0, (runtime, prof)
        assert "Conv" in " ".join(f"{r['op']} {r['layer']}" for r in prof["top"]), (runtime, prof["top"])
        assert set(prof["ms_by_precision"]) <= {"fp32", "int8", "?"}
    assert layer_profile("torch", "m", RuntimeSettings("torch"), threads=1, runs=1, sample=None)["skipped"]


def test_layerwise_names_the_layer_where_the_error_grows(tmp_path: Path) -> None:
    from onnx import numpy_helper as nh
    from onnx.helper import make_node

    def chain(path: Path, s2: float) -> Path:
        inits = [
            nh.from_array(np.array(1.5, dtype=np.float32), "s1"),
            nh.from_array(np.array(s2, dtype=np.float32), "s2"),
            nh.from_array(np.array([2, 3], dtype=np.int64), "pool_axes"),
        ]
        nodes = [
            make_node("Mul", ["x", "s1"], ["a"], name="scale1"),
            make_node("Relu", ["a"], ["b"], name="relu"),
            make_node("Mul", ["b", "s2"], ["c"], name="scale2"),
            make_node("ReduceMean", ["c", "pool_axes"], ["logits"], name="pool", keepdims=0),
        ]
        return _onnx(path, nodes, inits)

    x = colour_images(2)[0].astype(np.float32) / 255.0
    same = compare_layers(chain(tmp_path / "a.onnx", 1.0), chain(tmp_path / "b.onnx", 1.0), x, threads=1)
    assert same["final_rel_error"] == 0.0
    out = compare_layers(chain(tmp_path / "a.onnx", 1.0), chain(tmp_path / "c.onnx", 1.25), x, threads=1)
    assert out["compared"] == 4
    assert out["largest_growth"][0]["node"] == "Mul scale2"
    assert out["largest_growth"][0]["rel_error"] == pytest.approx(0.25, rel=1e-4)
    assert out["final_rel_error"] == pytest.approx(0.25, rel=1e-4)


def test_agreement_per_image_lists() -> None:
    a = np.random.default_rng(0).random((3, 4, 4))
    out = agreement(a, a, 0.2)
    assert out["rank_correlation"] == pytest.approx(1.0) and out["per_image_top_overlap"] == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------------------------------------ compare gate


def _report(mc: float) -> dict[str, Any]:
    row = {
        "variant": "int8",
        "runtime": "onnxruntime",
        "accuracy": {"top1": 0.9},
        "latency": {"p50_ms": 1.0, "valid": True},
        "memory": {"peak_rss_mb": 100},
        "robustness": {"mean_corruption_top1": mc, "images": 500, "corruptions": {"contrast": {"1": mc}}},
    }
    return {"results": [row]}


def test_compare_gates_on_corruption_accuracy() -> None:
    kw = {"max_latency_regression": 0.1, "max_accuracy_drop": 0.005, "max_memory_growth": 0.1}
    assert not compare_reports(_report(0.80), _report(0.795), max_corruption_drop=0.01, **kw).regressions
    bad = compare_reports(_report(0.80), _report(0.75), max_corruption_drop=0.01, **kw)
    assert any("mean corruption top-1 dropped 5.00 pts" in r for r in bad.regressions)
    assert not compare_reports(_report(0.80), _report(0.75), max_corruption_drop=None, **kw).regressions


def test_report_json_is_plain_json(probe: dict[str, Any]) -> None:
    json.dumps(probe["base"])  # the child's output crosses a process boundary as JSON
