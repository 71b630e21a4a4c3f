"""Stage `prune` on a tiny ResNet-18: each criterion and budget, round_to, and the save/reload round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import run_pipeline, tiny_recipe

from edgeres.errors import StageError

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")


def prune_recipe(prune: dict[str, Any], **top: Any) -> dict[str, Any]:
    stage = {"type": "prune", "steps": 1, "recovery": {"epochs": 0}, **prune}
    # epochs 0: a randomly initialised model, evaluated only; pruning itself needs no training here.
    return tiny_recipe(stages=[{"type": "finetune", "epochs": 0}, stage], **top)


def assert_onnx_computes_the_torch_logits(pruned_art: Any, onnx_art: Any) -> None:
    """The exported pruned model gives the pruned torch model's logits, compared on random images. (Export's own
    parity runs on real val images, where a randomly initialised or heavily pruned ResNet answers one class for every
    image: its top-1 agreement of 1.0 holds whatever the export did.)"""
    import numpy as np
    import onnxruntime as ort

    from edgeres.models import load_model

    model, _ = load_model(pruned_art.path)
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(onnx_art.primary_path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    spread = float(np.ptp(ref, axis=0).max())  # how much the logits vary between images
    assert spread > 0
    assert float(np.abs(got - ref).max()) <= 1e-4 * spread


def pruned(tmp_path: Path, prune: dict[str, Any], **top: Any) -> Any:
    from conftest import as_recipe

    result, _ = run_pipeline(as_recipe(prune_recipe(prune, **top)), tmp_path / "cache")
    return result.variants["main"]


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn", "taylor"])
def test_each_criterion_removes_channels(tmp_path: Path, criterion: str) -> None:
    art = pruned(tmp_path, {"criterion": criterion, "budget": {"type": "ratio", "ratio": 0.5}, "round_to": 1})
    m = art.metadata["metrics"]
    assert m["criterion"] == criterion
    assert m["macs_after"] < m["macs_before"]
    assert m["params_after"] < m["params_before"]
    assert m["kept_channels"]  # some layers changed
    spec = json.loads((art.path / "model.json").read_text())
    assert spec["channels"]["fc"][1] == 4  # the classifier's outputs are never pruned


def test_global_scope_and_distillation_with_recovery(tmp_path: Path) -> None:
    art = pruned(
        tmp_path,
        {
            "scope": "global",
            "budget": {"type": "ratio", "ratio": 0.3},
            "steps": 2,
            "recovery": {"epochs": 1, "batch_size": 32},
            "distill": {"temperature": 2.0, "weight": 0.5},
        },
    )
    m = art.metadata["metrics"]
    assert [h["step"] for h in m["history"]] == [1, 2]
    assert all("val_top1_recovered" in h for h in m["history"])
    assert m["history"][1]["macs"] < m["history"][0]["macs"] < m["macs_before"]


def test_mac_budget_is_met(tmp_path: Path) -> None:
    art = pruned(tmp_path, {"budget": {"type": "macs", "fraction": 0.6}, "round_to": 1})
    m = art.metadata["metrics"]  # (macs_after <= 0.6 x before is the stage's own gate: it raised otherwise)
    assert 0 < m["ratio"] <= 0.9
    # no more channels removed than the budget needs: a ratio one bisection step lower misses it
    from edgeres.stages.prune import MAX_RATIO, REFINE_MACS, SEARCH_STEPS

    lower = m["ratio"] - MAX_RATIO / SEARCH_STEPS / 2**REFINE_MACS
    less = pruned(tmp_path / "lower", {"budget": {"type": "ratio", "ratio": lower}, "round_to": 1})
    assert less.metadata["metrics"]["macs_after"] > 0.6 * m["macs_before"]


def test_round_to_makes_kept_channels_multiples(tmp_path: Path) -> None:
    art = pruned(tmp_path, {"budget": {"type": "ratio", "ratio": 0.4}, "round_to": 8})
    channels = json.loads((art.path / "model.json").read_text())["channels"]
    convs = {k: v for k, v in channels.items() if len(v) == 3 and k != "conv1"}
    assert convs and all(v[1] % 8 == 0 for v in convs.values())
    assert art.metadata["metrics"]["round_to"] == 8


def test_round_to_defaults_to_the_target(tmp_path: Path) -> None:
    art = pruned(tmp_path, {"budget": {"type": "ratio", "ratio": 0.4}}, target="cpu-openvino")
    assert art.metadata["metrics"]["round_to"] == 16


def test_latency_budget_measures_on_the_target_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A generous budget the unpruned model meets already: nothing is pruned, latency is measured before and after
    # by the real probe, the paired protocol on ONNX Runtime (few short pairs here, as no figure is compared).
    import edgeres.paired
    from edgeres.stages import prune

    calls: list[dict[str, Any]] = []
    real = edgeres.paired.paired_latency

    def spy(*a: Any, **kw: Any) -> dict[str, Any]:
        calls.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(edgeres.paired, "paired_latency", spy)
    monkeypatch.setattr(prune, "PROBE_PAIRS", 6)
    monkeypatch.setattr(prune, "PROBE_BLOCK", 3)
    art = pruned(tmp_path, {"budget": {"type": "latency", "ms": 1000.0}})
    m = art.metadata["metrics"]
    assert m["latency_runtime"] == "onnxruntime"
    assert m["latency_int8"] is False
    assert m["after"]["latency_ms"] > 0
    assert m["before"]["latency_ms"] > 0 and m["speedup"] > 0
    assert len(calls) == 2 and all(kw["pairs"] == 6 and kw["block"] == 3 for kw in calls)  # before and after
    probes = m["latency_probes"]  # each probe's paired reading: ratio, interval, A/A control
    assert len(probes) == 2 and all(p["pairs"] == 6 and p["ci95"][0] <= p["ratio"] <= p["ci95"][1] for p in probes)
    assert all(p["control"] > 0 and isinstance(p["control_ok"], bool) for p in probes)
    assert m["ratio"] == 0.0 and m["macs_after"] == m["macs_before"] and m["history"] == []


def test_latency_budget_search_prunes_until_the_measurement_meets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a stand-in probe whose latency is proportional to MACs (real timings are too noisy to test), the search
    finds the smallest ratio that meets the budget and the re-measured model meets it."""
    from edgeres.stages import prune

    measured: list[float] = []

    def fake_latency(self: Any, model: Any) -> float:
        ms = prune.macs_of(model, torch.zeros(1, 3, 16, 16)) / 1e6 / 10
        measured.append(ms)
        return ms

    monkeypatch.setattr(prune.LatencyProbe, "__call__", fake_latency)
    from edgeres.models import build_model

    dense_ms = fake_latency(None, build_model("resnet18", 4))
    budget = 0.6 * dense_ms
    art = pruned(tmp_path / "budget", {"budget": {"type": "latency", "ms": budget}, "round_to": 1})
    m = art.metadata["metrics"]
    assert m["before"]["latency_ms"] == dense_ms
    assert m["after"]["latency_ms"] <= budget < dense_ms
    assert m["speedup"] == pytest.approx(dense_ms / m["after"]["latency_ms"])
    assert 0 < m["ratio"] < 0.9 and m["macs_after"] < m["macs_before"]
    lower = m["ratio"] - prune.MAX_RATIO / prune.SEARCH_STEPS / 2**prune.REFINE_LATENCY
    less = pruned(tmp_path / "lower", {"budget": {"type": "ratio", "ratio": lower}, "round_to": 1})
    # the search aims 5% (search_margin) below the budget; one bisection step less pruning misses that aim
    assert less.metadata["metrics"]["macs_after"] / 1e7 > 0.95 * budget
    assert m["after"]["latency_ms"] <= 0.95 * budget


def test_latency_budget_refused_where_the_target_cannot_be_measured(tmp_path: Path) -> None:
    with pytest.raises(StageError) as info:
        pruned(tmp_path, {"budget": {"type": "latency", "ms": 1.0}}, target="nvidia-gpu")
    assert str(info.value) == (
        "a latency budget is measured on the target's runtime, and target nvidia-gpu runs tensorrt, which cannot be "
        "measured on this host. Use the ratio or macs budget here, or run the build on the device"
    )


def test_pruned_model_reloads_in_a_fresh_process_and_exports(tmp_path: Path) -> None:
    from conftest import as_recipe

    recipe = prune_recipe({"budget": {"type": "ratio", "ratio": 0.5}, "round_to": 1})
    recipe["stages"].append({"type": "export", "parity": {"samples": 8}})
    result, _ = run_pipeline(as_recipe(recipe), tmp_path / "cache")
    lineage = result.lineage["main"]
    pruned_art, onnx_art = lineage[1], lineage[2]
    assert_onnx_computes_the_torch_logits(pruned_art, onnx_art)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from edgeres.models import load_model\n"
        "m, _ = load_model(Path(sys.argv[1]))\n"
        "x = torch.load(sys.argv[2], weights_only=True)\n"
        "with torch.no_grad():\n"
        "    torch.save(m(x), sys.argv[3])\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(pruned_art.path), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        check=True,
    )
    from edgeres.models import load_model

    model, _ = load_model(pruned_art.path)
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(torch.load(tmp_path / "y.pt", weights_only=True), expected)


def test_kept_channels_record_in_and_out_before_and_after(tmp_path: Path) -> None:
    """Uniform 50% on a ResNet-18 halves every prunable channel count (torchvision's widths: 64/128/256/512); the
    sidecar records each changed layer's input and output channels before and after, and leaves the rest out."""
    art = pruned(tmp_path, {"budget": {"type": "ratio", "ratio": 0.5}, "round_to": 1, "steps": 1})
    kept = art.metadata["metrics"]["kept_channels"]
    assert kept["conv1"] == {"in": [3, 3], "out": [64, 32]}  # the image's 3 channels are never pruned
    assert kept["bn1"] == {"in": [64, 32], "out": [64, 32]}
    assert kept["layer1.0.conv1"] == {"in": [64, 32], "out": [64, 32]}
    assert kept["layer2.0.downsample.0"] == {"in": [64, 32], "out": [128, 64]}
    assert kept["layer3.1.conv2"] == {"in": [256, 128], "out": [256, 128]}
    assert kept["layer4.1.conv2"] == {"in": [512, 256], "out": [512, 256]}
    assert kept["fc"] == {"in": [512, 256], "out": [4, 4]}  # the classifier's outputs are never pruned
    spec = json.loads((art.path / "model.json").read_text())["channels"]
    assert len(kept) == len(spec)  # at 50% uniform, every layer of a ResNet-18 changes


def test_kept_channels_lists_only_changed_layers() -> None:
    from edgeres.stages.prune import kept_channels

    before = {"conv1": [3, 64, 1], "bn1": [64], "fc": [512, 10], "layer1.0.conv1": [64, 64, 1]}
    after = {"conv1": [3, 48, 1], "bn1": [48], "fc": [512, 10], "layer1.0.conv1": [48, 64, 1]}
    assert kept_channels(before, after) == {
        "conv1": {"in": [3, 3], "out": [64, 48]},
        "bn1": {"in": [64, 48], "out": [64, 48]},
        "layer1.0.conv1": {"in": [64, 48], "out": [64, 64]},
    }


def test_depth_removes_blocks_then_channels_to_a_mac_budget_of_the_original(tmp_path: Path) -> None:
    """depth [1, 2, 1, 1] on a ResNet-18 ([2, 2, 2, 2]): three blocks go, then channels until the MACs are at most
    0.4 of the unpruned model's; recovery runs; model.json carries the depth, and the saved model reloads and exports
    with parity."""
    from conftest import as_recipe

    from edgeres.models import block_counts, load_model

    prune = {
        "budget": {"type": "macs", "fraction": 0.4},
        "round_to": 1,
        "depth": {"blocks": [1, 2, 1, 1], "select_images": 32},
        "recovery": {"epochs": 1, "batch_size": 32},
        "distill": {"temperature": 2.0, "weight": 0.5},
    }
    recipe = prune_recipe(prune)
    recipe["stages"].append({"type": "export", "parity": {"samples": 8}})
    result, _ = run_pipeline(as_recipe(recipe), tmp_path / "cache")
    pruned_art, onnx_art = result.lineage["main"][1], result.lineage["main"][2]
    m = pruned_art.metadata["metrics"]
    assert m["depth"]["blocks_before"] == [2, 2, 2, 2]
    assert m["depth"]["kept"] == [[0], [0, 1], [0], [0]]
    assert m["depth"]["macs_after_cut"] < m["macs_before"]
    assert m["macs_after"] < m["depth"]["macs_after_cut"]  # channels went too, after the blocks
    assert m["ratio"] > 0 and "val_top1_recovered" in m["history"][0]
    spec = json.loads((pruned_art.path / "model.json").read_text())
    assert spec["depth"] == [1, 2, 1, 1]
    model, _ = load_model(pruned_art.path)
    assert block_counts(model) == [1, 2, 1, 1]
    assert_onnx_computes_the_torch_logits(pruned_art, onnx_art)


def test_depth_alone_still_recovers(tmp_path: Path) -> None:
    """A MAC budget the cut model already meets: no channels pruned, but the removed blocks are recovered from."""
    art = pruned(
        tmp_path,
        {
            "budget": {"type": "macs", "fraction": 0.99},
            "depth": {"blocks": [1, 1, 1, 1], "select_images": 16},
            "recovery": {"epochs": 1, "batch_size": 32},
        },
    )
    m = art.metadata["metrics"]
    assert m["ratio"] == 0.0 and m["kept_channels"] == {}
    assert m["macs_after"] == m["depth"]["macs_after_cut"] < m["macs_before"]
    assert [h["step"] for h in m["history"]] == [1] and "val_top1_recovered" in m["history"][0]


def test_select_blocks_removes_the_block_whose_removal_hurts_least() -> None:
    """ResNet-50 with one block of layer3 sabotaged (its last BatchNorm scaled 50x, so its output swamps the rest):
    asked to drop one of layer3's five removable blocks, the loss-driven choice drops that one, whatever its index."""
    from edgeres.models import build_model
    from edgeres.stages.prune import select_blocks

    torch.manual_seed(0)
    model = build_model("resnet50", 4).eval()
    with torch.no_grad():
        model.layer3[3].bn3.weight.mul_(50.0)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 4, (32,), generator=g))]
    logs: list[str] = []
    kept = select_blocks(model, [3, 4, 5, 3], batches, logs.append)
    assert kept == [[0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 4, 5], [0, 1, 2]]
    assert len(logs) == 1 and "layer3.3" in logs[0]
    assert len(model.layer3) == 6  # the model given is not changed; the caller cuts it


def test_depth_asking_for_more_blocks_than_the_model_has_is_refused() -> None:
    from edgeres.models import build_model
    from edgeres.stages.prune import select_blocks

    with pytest.raises(StageError, match=r"keeps more blocks than the model has \(\[2, 2, 2, 2\]\)"):
        select_blocks(build_model("resnet18", 4), [3, 2, 2, 2], [], print)


def test_an_unset_depth_leaves_the_stage_config_and_so_its_cache_key_as_before() -> None:
    from edgeres.config import PruneStage

    stage = PruneStage(type="prune", budget={"type": "ratio", "ratio": 0.5})
    assert "depth" not in stage.model_dump(mode="json")
    deep = PruneStage(type="prune", budget={"type": "ratio", "ratio": 0.5}, depth={"blocks": [1, 1, 2, 1]})
    assert deep.model_dump(mode="json")["depth"] == {"blocks": [1, 1, 2, 1], "select_images": 512}
