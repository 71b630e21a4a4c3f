"""benchmarks/peers.py's parts that run without ../shared: a model at another size (what its 224x224 column times),
peers run with their runtime's defaults (as read back from the runtime), the pre-registered verdict and its table.

The benchmark itself needs the CIFAR-10 data and checkpoint (`make bench-peers`); these tests do not run it.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from edgeres.paired import peer_spec
from edgeres.resize import at_size, images_at
from edgeres.runtimes import open_runner
from edgeres.runtimes.settings import RuntimeSettings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def peers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("peers", REPO / "benchmarks" / "peers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["peers"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_export(module_tmp: Any, peers: ModuleType) -> tuple[Any, Path]:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    path = peers.plain_export(model, module_tmp("plain") / "model.onnx")
    return model, path


def test_resized_onnx_computes_what_the_torch_model_does_at_the_new_size(
    tiny_export: tuple[Any, Path], tmp_path: Path
) -> None:
    import torch

    model, path = tiny_export
    resized = at_size(path, 64, tmp_path)
    assert resized != path and at_size(path, 64, tmp_path) == resized  # made once
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    settings = RuntimeSettings("onnxruntime")
    with open_runner("onnxruntime", resized, fmt="onnx", threads=1, settings=settings) as r:
        np.testing.assert_allclose(r.infer(x), want, rtol=1e-4, atol=1e-4)
    assert at_size(path, 32, tmp_path) == path  # already that size: itself


def test_resized_openvino_ir_computes_what_the_torch_model_does(tiny_export: tuple[Any, Path], tmp_path: Path) -> None:
    import openvino as ov
    import torch

    model, path = tiny_export
    ir = tmp_path / "ir" / "model.xml"
    ir.parent.mkdir()
    ov.save_model(ov.convert_model(str(path)), str(ir), compress_to_fp16=False)
    resized = at_size(ir, 64, tmp_path)
    assert resized.suffix == ".xml" and resized.with_suffix(".bin").is_file()
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    with open_runner("openvino", resized, fmt="openvino", threads=1, settings=RuntimeSettings("openvino")) as r:
        np.testing.assert_allclose(r.infer(x), want, rtol=1e-3, atol=1e-3)


def test_images_at_another_size_keep_their_batch_and_channels() -> None:
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    y = images_at(x, 8)
    assert y.shape == (2, 3, 8, 8) and y.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(y[:, :, ::2, ::2], x)  # nearest neighbour: each pixel twice in each direction


def test_a_peer_runs_with_its_runtime_s_defaults_as_read_back(peers: ModuleType, tiny_export: tuple[Any, Path]) -> None:
    """Peers are timed as their users run them: ONNX Runtime's own graph level (all) and OpenVINO's own precision
    (the CPU's choice, which this test does not predict), both read back from the runtime; edgeres' engines keep
    their explicit settings, and a settings dict without the flag is what it was before it existed (cache keys)."""
    import openvino as ov

    _, path = tiny_export
    x = np.zeros((1, 3, 32, 32), dtype=np.float32)
    ort_peer = peer_spec(path, label="peer", runtime="onnxruntime")
    assert ort_peer.settings["runtime_defaults"] is True
    settings = RuntimeSettings.from_dict(ort_peer.settings)
    with open_runner("onnxruntime", path, fmt="onnx", threads=1, settings=settings) as r:
        r.infer(x)
        assert r.effective()["session_options"]["graph_optimization_level"] == "ORT_ENABLE_ALL"
    with open_runner("onnxruntime", path, fmt="onnx", threads=1, settings=RuntimeSettings("onnxruntime")) as r:
        assert r.effective()["session_options"]["graph_optimization_level"] == "ORT_ENABLE_EXTENDED"
    ov_peer = RuntimeSettings.from_dict(peer_spec(path, label="peer", runtime="openvino").settings)
    assert ov_peer.openvino_config(2) == {"INFERENCE_NUM_THREADS": 2}
    with open_runner("openvino", path, fmt="onnx", threads=1, settings=ov_peer) as r:
        r.infer(x)
        got = r.effective()["inference_precision"]
        compiled = r.effective()["compiled"]
    # Whatever this CPU makes OpenVINO choose (bf16 with AVX512_BF16 or AMX, f16 on some Arm, else f32), the peer
    # gets that choice and the runner reports it: compared with OpenVINO's own compile given the threads alone.
    model = ov.Core().read_model(str(path))
    model.reshape({model.input(0): [1, 3, 32, 32]})
    own = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1})
    assert got == str(own.get_property("INFERENCE_PRECISION_HINT").get_type_name())
    assert compiled["INFERENCE_NUM_THREADS"] == "1" and "EXECUTION_MODE_HINT" in compiled
    assert RuntimeSettings("openvino").to_dict() == {
        "runtime": "openvino", "precision": "fp32", "ort_optimization_level": "extended", "openvino_hint": "latency",
    }  # fmt: skip


def _latency(low: float, median: float, control_ok: bool = True) -> dict[str, Any]:
    return {
        "speedup": {"median": median, "ci95": [low, median + 0.2]},
        "control": {"median": 1.0 if control_ok else 1.2, "ci95": [0.98, 1.02]},
        "control_ok": control_ok,
        "p50_ms": {"candidate": 1.0, "against": 2.5},
    }


def _report(low32: float, low224: float, chosen_top1: float, control_ok: bool = True) -> dict[str, Any]:
    test = {"chosen_top1": chosen_top1, "reference_top1": 0.82, "difference_points": 100 * (chosen_top1 - 0.82),
            "difference_ci95_points": [-1.5, 0.3], "readings": 1}  # fmt: skip
    rows = [
        {"model": "NNCF", "group": "peer", "how": "", "runtime": "openvino", "top1_test": 0.81, "size_mb": 24.0,
         "latency": {"32": None, "224": None}},
        {"model": "edgeres reference", "group": "edgeres", "how": "", "runtime": "openvino", "top1_test": 0.82,
         "size_mb": 94.0, "latency": {"32": _latency(0.4, 0.5), "224": _latency(0.4, 0.5)}},
        {"model": "edgeres chosen", "group": "edgeres", "how": "", "runtime": "openvino", "top1_test": chosen_top1,
         "size_mb": 7.0, "latency": {"32": _latency(low32, low32 + 0.3, control_ok), "224": _latency(low224, 3.0)}},
    ]  # fmt: skip
    return {"rows": rows, "test": test}


def test_the_verdict_needs_the_lower_bound_at_both_sizes_and_a_point_on_test(peers: ModuleType) -> None:
    met = _report(2.6, 2.5, 0.815)
    assert peers.judge(met["rows"], met["test"])["met"] is True
    assert peers.judge(*_report(2.6, 2.49, 0.815).values())["met"] is False  # 224x224's lower bound under 2.5x
    assert peers.judge(*_report(2.49, 2.6, 0.815).values())["met"] is False
    missed = peers.judge(*_report(3.0, 3.0, 0.809).values())  # 1.1 points under the reference on test
    assert missed["met"] is False and "outside 1.0 point" in missed["why"]
    noisy = peers.judge(*_report(3.0, 3.0, 0.815, control_ok=False).values())
    assert noisy["met"] is False and "too noisy" in noisy["why"]
    exact = _report(3.0, 3.0, 0.8072)  # 100 of 10,000 images under the reference: 1.0 point, within the rule
    exact["test"]["reference_top1"] = 0.8172  # 100 * (0.8172 - 0.8072) is 1.0000000000000009 in floating point
    assert peers.judge(*exact.values())["met"] is True
    aa_off = {"32": _latency(0.9, 1.08), "224": _latency(0.97, 1.0)}  # the A/A row itself reads 1.08 at 32x32
    off = peers.judge(met["rows"], met["test"], aa_off)
    assert off["met"] is False and "too noisy" in off["why"] and "at 32" in off["why"]
    rows = [r for r in met["rows"] if r["model"] != "edgeres chosen"]
    assert peers.judge(rows, None) == {"met": False, "why": "the search chose nothing within its val budget"}


def test_the_table_has_the_a_a_row_every_interval_and_the_verdict(peers: ModuleType) -> None:
    base = _report(2.6, 2.5, 0.815)
    aa = {s: _latency(0.97, 1.0) for s in ("32", "224")}
    report = {
        "environment": {"cpu": "a CPU"},
        "versions": {"openvino": "2026.4.1"},
        "threads": 2,
        "protocol": "benchmarks/README.md",
        "fastest_peer": {"32": "NNCF", "224": "NNCF"},
        "aa_control": aa,
        "rows": base["rows"],
        "search": {"study": "s", "trials": [], "front": [], "seconds": 1.0, "test": base["test"], "max_drop": 0.01,
                   "reference": {"val_top1": 0.83, "candidates": [{"variant": "extra1", "chosen": True}]}},
        "verdict": peers.judge(base["rows"], base["test"]),
        "notes": ["a note"],
        "seconds": 2.0,
    }  # fmt: skip
    md = peers.markdown(copy.deepcopy(report))
    assert "): MET.**" in md and "| A/A control |" in md
    assert "| edgeres chosen |  | openvino | 81.50 | 2.90 (2.60-3.10) | 3.00 (2.50-3.20) |" in md
    assert "1.00 (the fastest)" in md and "Test, read once by the search: chosen 81.50%" in md
    report["verdict"] = peers.judge(*_report(2.6, 2.4, 0.815).values())
    assert "NOT MET" in peers.markdown(report)


def test_each_row_s_sessions_go_round_the_table(
    peers: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Session k of every row runs before session k+1 of any (so a row's sessions straddle the host's changes over
    the table), who goes first rotates, and each row's interval pools its sessions in two stages. The paired
    protocol itself is tests/test_paired.py's; a stand-in returns each row's ratio per session here."""
    from types import SimpleNamespace

    from edgeres.paired import EngineSpec

    order: list[tuple[str, int]] = []
    by_label = {"peer": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5], "fast": [0.4] * 6}

    def stand_in(against: Any, candidate: Any, samples: Any, **kw: Any) -> dict[str, Any]:
        order.append((candidate.label, kw["seed"]))
        assert kw["pairs"] == 6  # 18 pairs over 3 sessions: one rotation of the three processes each
        ratios = [r * (1.0 + 0.1 * kw["seed"]) for r in by_label[candidate.label]]  # the host drifts per session
        return {"latency_ratio": {"ratios": ratios, "median": float(np.median(ratios))},
                "control": {"ratios": [1.0] * 6}, "candidate": {"p50_ms": 1.0}, "reference": {"p50_ms": 2.0},
                "seconds": 0.1, "configuration": {"candidate": {"version": "x"}}}  # fmt: skip

    monkeypatch.setattr(peers, "paired_latency", stand_in)
    monkeypatch.setattr(EngineSpec, "at_size", lambda spec, size, work: spec)
    spec = lambda label: EngineSpec("onnxruntime", "m.onnx", "onnx", {}, label=label)  # noqa: E731
    args = SimpleNamespace(pairs=18, sessions=3, threads=1)
    out = peers.spread(spec("top"), {"peer": spec("peer"), "fast": spec("fast")}, 32, args, tmp_path, {32: None})
    assert order == [("peer", 0), ("fast", 0), ("fast", 1), ("peer", 1), ("peer", 2), ("fast", 2)]
    fast = out["fast"]
    assert fast["latency_ratio"]["pairs"] == 18 and fast["sessions"] == 3
    assert fast["speedup"]["session_medians"] == pytest.approx([2.5, 2.5 / 1.1, 2.5 / 1.2])
    assert fast["speedup"]["ci95"][0] <= 2.5 / 1.2 + 1e-9 and fast["speedup"]["ci95"][1] >= 2.5 - 1e-9
    assert fast["control_ok"] is True and fast["configuration"] == {"candidate": {"version": "x"}}
