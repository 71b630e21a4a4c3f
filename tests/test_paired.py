"""The paired latency protocol (edgeres.paired, edgeres.measure's bootstrap): its statistics, its processes and
`edgeres bench B --against A`. No speed target is asserted: only that a model doing eight times the work of another
reads as slower (the direction of the ratio), which no host's noise reverses."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper

from edgeres.measure import bootstrap_median_ci, paired_summary
from edgeres.paired import EngineSpec, paired_latency
from edgeres.runtimes.settings import RuntimeSettings


def gemm_chain(path: Path, layers: int, width: int = 256) -> Path:
    """An ONNX classifier of `layers` square MatMul+Relu layers on a (N, 1, 16, 16) input: work grows with layers."""
    rng = np.random.default_rng(layers)
    nodes = [helper.make_node("Flatten", ["input"], ["h0"])]
    inits = []
    for i in range(layers):
        w = numpy_helper.from_array((rng.standard_normal((width, width)) / 16).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes += [
            helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]),
            helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"]),
        ]
    nodes.append(helper.make_node("Identity", [f"h{layers}"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_bootstrap_interval_is_seeded_and_holds_the_median() -> None:
    rng = np.random.default_rng(1)
    values = list(1.0 + 0.05 * rng.standard_normal(40))
    lo, hi = bootstrap_median_ci(values, seed=3)
    assert (lo, hi) == bootstrap_median_ci(values, seed=3)
    assert lo < statistics.median(values) < hi
    wider = bootstrap_median_ci(values[:10], seed=3)
    assert wider[1] - wider[0] > hi - lo  # fewer pairs, a wider interval
    assert bootstrap_median_ci([2.0] * 5) == (2.0, 2.0)
    with pytest.raises(ValueError, match="at least two"):
        bootstrap_median_ci([1.0])
    s = paired_summary([0.5, 0.6, 0.55, 0.52])
    assert s["median"] == pytest.approx(0.535) and s["pairs"] == 4 and s["min"] == 0.5 and s["max"] == 0.6


def test_a_two_stage_interval_carries_the_spread_between_sessions() -> None:
    """Three sessions whose ratios sit at 1.0, 1.1 and 1.2 (tight within each): pooled, the median's interval stays
    between them; resampling sessions first widens it to span them."""
    rng = np.random.default_rng(0)
    values = [m + 0.002 * rng.standard_normal() for m in (1.0, 1.1, 1.2) for _ in range(10)]
    groups = [k for k in range(3) for _ in range(10)]
    lo1, hi1 = bootstrap_median_ci(values, seed=1)
    lo2, hi2 = bootstrap_median_ci(values, seed=1, groups=groups)
    assert lo1 > 1.03 and hi1 < 1.17  # pooled: the outer sessions never move the median to their level
    assert lo2 < 1.01 and hi2 > 1.19  # sessions resampled: a draw of mostly one outer session can
    assert bootstrap_median_ci(values, seed=1, groups=[0] * 30) == (lo1, hi1)  # one session: the plain bootstrap
    s = paired_summary(values, sessions=groups)
    assert [round(m, 1) for m in s["session_medians"]] == [1.0, 1.1, 1.2]


def test_paired_latency_runs_each_engine_in_its_own_process_in_alternation(tmp_path: Path) -> None:
    light = gemm_chain(tmp_path / "light.onnx", 2)
    heavy = gemm_chain(tmp_path / "heavy.onnx", 16)
    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.random.default_rng(0).standard_normal((4, 1, 16, 16)).astype(np.float32))
    settings = RuntimeSettings("onnxruntime").to_dict()
    out = paired_latency(
        EngineSpec("onnxruntime", str(light), "onnx", settings, label="light"),
        EngineSpec("onnxruntime", str(heavy), "onnx", settings, label="heavy"),
        npz,
        threads=1,
        pairs=6,
        block=5,
        warmup=2,
        cores=[0],
    )
    ratio = out["latency_ratio"]
    assert ratio["pairs"] == 6 and len(ratio["ratios"]) == 6
    assert ratio["median"] > 1.0 and ratio["ci95"][0] > 1.0  # eight times the work reads slower
    assert out["speedup"]["median"] == pytest.approx(1 / ratio["median"])
    assert out["control"]["pairs"] == 6 and out["control"]["median"] > 0
    assert out["control_ok"] == (abs(out["control"]["median"] - 1) <= 0.05)
    assert out["protocol"]["cores"] == [0] and out["protocol"]["block_queries"] == 5
    # each engine's settings as its runtime reports them back, kernel choices left out
    config = out["configuration"]
    assert set(config) == {"reference", "candidate", "control"} and "kernels" not in config["reference"]
    assert config["candidate"]["session_options"]["graph_optimization_level"] == "ORT_ENABLE_EXTENDED"


def test_a_broken_engine_is_named(tmp_path: Path) -> None:
    from edgeres.errors import StageError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.zeros((1, 1, 16, 16), np.float32))
    settings = RuntimeSettings("onnxruntime").to_dict()
    good = gemm_chain(tmp_path / "good.onnx", 1)
    with pytest.raises(StageError, match=r"bad\.onnx on onnxruntime could not be loaded for timing"):
        paired_latency(
            EngineSpec("onnxruntime", str(good), "onnx", settings),
            EngineSpec("onnxruntime", str(bad), "onnx", settings),
            npz,
            threads=1,
            pairs=2,
            block=1,
        )


def test_bench_against_prints_the_ratio_its_interval_and_the_control(tmp_path: Path) -> None:
    light = gemm_chain(tmp_path / "light.onnx", 2)
    heavy = gemm_chain(tmp_path / "heavy.onnx", 16)
    res = run_cli(
        "bench",
        str(heavy),
        "--against",
        str(light),
        "--pairs",
        "4",
        "--threads",
        "1",
        "--json",
        str(tmp_path / "p.json"),
    )
    assert res.code == 0, res.stderr
    assert "heavy (onnxruntime) against light (onnxruntime), 6 pairs of 20 queries" in res.stdout  # whole rotations
    assert (
        "latency ratio" in res.stdout and "95% CI" in res.stdout and "A/A control (light against itself)" in res.stdout
    )
    import json

    report = json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))
    assert report["schema"] == "edgeres.paired/1" and report["input_shape"] == [1, 16, 16]
    other = gemm_chain(tmp_path / "wide.onnx", 1, width=16 * 16)
    other_shape = tmp_path / "other.onnx"
    m = onnx.load(str(other))
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 8
    onnx.save(m, str(other_shape))
    res = run_cli("bench", str(other_shape), "--against", str(light), "--pairs", "2")
    assert res.code == 2 and "take different inputs" in res.stderr


def test_benchmark_paired_times_each_variant_against_the_baseline(base_build: Any, tmp_path: Path) -> None:
    """benchmark.paired in a build: the OpenVINO variant's engine against the baseline's ONNX Runtime engine, a row
    field and a report section; the baseline itself gets none."""
    import json
    import shutil

    from conftest import TINY_FINETUNE, TINY_LATENCY, TINY_OFFLINE, run_pipeline, tiny_recipe

    cache = tmp_path / "cache"
    shutil.copytree(base_build.cache, cache)
    bench = {"type": "benchmark", "latency": TINY_LATENCY, "offline": TINY_OFFLINE, "isolate": False,
             "fidelity": None, "paired": {"pairs": 3, "block": 2}}  # fmt: skip
    recipe = tiny_recipe(
        stages=[TINY_FINETUNE, {"type": "export", "opset": 18}, {"type": "compile"}, bench],
        variants={"ort": {}, "ov": {"set": {"target": "cpu-openvino"}}},
    )
    _, log = run_pipeline(recipe, cache, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    rows = {r["variant"]: r for r in report["results"]}
    assert "paired" not in rows["ort"]
    p = rows["ov"]["paired"]
    assert p["against"] == "ort on onnxruntime" and p["latency_ratio"]["pairs"] == 6  # 3, rounded to rotations
    assert p["speedup"]["median"] > 0 and "control_ok" in p and p["protocol"]["block_queries"] == 2
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "## Paired latency against the baseline" in md and "| ov | openvino | ort on onnxruntime |" in md
    assert "paired: ov on openvino against ort on onnxruntime" in log


def test_sessions_start_fresh_processes_and_split_the_pairs(tmp_path: Path) -> None:
    light = gemm_chain(tmp_path / "light.onnx", 2)
    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32))
    settings = RuntimeSettings("onnxruntime").to_dict()
    spec = EngineSpec("onnxruntime", str(light), "onnx", settings, label="light")
    out = paired_latency(spec, spec, npz, threads=1, pairs=7, block=1, warmup=1, cores=[0], sessions=2)
    assert out["protocol"]["sessions"] == 2 and out["protocol"]["pairs"] == 12  # 7 -> 2 sessions of one rotation
    assert len(out["latency_ratio"]["session_medians"]) == 2 and "two-stage" in out["protocol"]["statistic"]


def test_a_timing_process_whose_ready_line_is_not_its_configuration_is_stopped_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child's `ready` line carries its configuration as JSON; a line that does not parse is a StageError that
    names the engine, and the process is ended (not left running beside the next comparison)."""
    import edgeres.paired as paired
    from edgeres.errors import StageError

    model = gemm_chain(tmp_path / "m.onnx", 1)
    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.zeros((1, 1, 16, 16), dtype=np.float32))
    started: list[Any] = []
    real_reply = paired._Child.reply

    def garbled(self: Any, what: str) -> str:
        started.append(self.proc)
        line = real_reply(self, what)
        return "ready {not json\n" if line.startswith("ready") else line

    monkeypatch.setattr(paired._Child, "reply", garbled)
    spec = EngineSpec("onnxruntime", str(model), "onnx", RuntimeSettings("onnxruntime").to_dict(), label="garbled")
    with pytest.raises(StageError, match=r"garbled.*answered 'ready"):
        paired._start(spec, npz, threads=1, cores=[0], warmup=1)
    assert started and started[0].poll() is not None  # ended
