"""Benchmark harness and reports: validity of runs, the Pareto front, the Markdown and HTML renderings, the
`edgeres compare` CI gate, `edgeres bench`, and measuring in a child process.

Reports to compare come from the session's base build (ONNX Runtime and OpenVINO rows) and from `edgeres bench`;
renderings are checked on hand-made rows.
"""

from __future__ import annotations

import copy
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Build, CliResult, run_cli, subprocess_env

from edgeres.artifact import sha256_file
from edgeres.config import Latency, Offline
from edgeres.errors import StageError
from edgeres.measure import measure_offline, summarize_latency
from edgeres.report import REPORT_SCHEMA, pareto, render_html, render_markdown
from edgeres.runtimes.base import Runner
from edgeres.worker import measure_artifact

# ------------------------------------------------------------------------------------------------- helpers


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def base_report(build: Build) -> dict[str, Any]:
    return json.loads((build.out / "report.json").read_text(encoding="utf-8"))


def compare(base: Path, new: Path, *options: str) -> CliResult:
    return run_cli("compare", str(base), str(new), *options)


def row(variant: str, runtime: str, p50: float, top1: float | None, **extra: Any) -> dict[str, Any]:
    acc = {"split": "test", "images": 100} if top1 is None else {"split": "test", "images": 100, "top1": top1,
                                                                 "top5": min(1.0, top1 + 0.05)}  # fmt: skip
    return {
        "variant": variant,
        "runtime": runtime,
        "runtime_version": "1.0",
        "artifact": {"stage": "export", "format": "onnx", "file": "model.onnx", "sha256": "0" * 64, "bytes": 2_500_000},
        "accuracy": acc,
        "latency": {
            "scenario": "single-stream",
            "batch": 1,
            "queries": 50,
            "duration_s": 2.0,
            "p50_ms": p50,
            "p90_ms": p50 * 1.1,
            "p99_ms": p50 * 1.2,
            "valid": True,
            "invalid_reason": None,
        },
        "offline": None,
        "memory": {"peak_rss_mb": 200.0, "artifact_mb": 2.5},
        **extra,
    }


def hand_report(results: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "schema": REPORT_SCHEMA,
        "recipe": "hand",
        "created": "2026-01-01T00:00:00Z",
        "environment": {
            "cpu": "Test CPU",
            "cores": 2,
            "threads": 1,
            "python": "3.11",
            "versions": {"onnxruntime": "1.0", "tensorrt": "absent"},
        },
        "data": {"type": "synthetic", "split": "test"},
        "settings": {"offline": {"batch": 8}},
        "baseline": results[0]["variant"] if results else "none",
        "results": results,
        **extra,
    }


class SleepRunner(Runner):
    """A runner whose every query takes `seconds`, counting its calls."""

    def __init__(self, seconds: float = 0.0) -> None:
        super().__init__(path=Path("fake"), threads=1)
        self.seconds = seconds
        self.calls = 0

    def infer(self, batch: Any) -> Any:
        self.calls += 1
        if self.seconds:
            import time

            time.sleep(self.seconds)
        return batch


# ------------------------------------------------------------------------------------------ run validity


def test_offline_run_meeting_its_minimums_is_valid() -> None:
    runner = SleepRunner()
    res = measure_offline(runner, [1, 2, 3], Offline(batch=4, warmup=2, min_queries=6, min_duration_s=0))
    assert runner.calls == 8  # 2 warm-up + 6 counted
    assert res["scenario"] == "offline"
    assert res["batch"] == 4
    assert res["queries"] == 6
    assert res["samples"] == 24
    assert res["samples_per_s"] > 0
    assert res["valid"] is True
    assert res["invalid_reason"] is None


def test_offline_run_with_too_few_queries_is_invalid() -> None:
    runner = SleepRunner(0.01)
    res = measure_offline(runner, [1], Offline(batch=2, warmup=0, min_queries=10**6, min_duration_s=0,
                                               max_duration_s=0.05))  # fmt: skip
    assert res["valid"] is False
    assert 1 <= res["queries"] < 10**6
    assert res["invalid_reason"] == f"{res['queries']} queries < min_queries 1000000"
    assert res["samples"] == 2 * res["queries"]
    assert res["duration_s"] >= 0.05


def test_offline_run_shorter_than_min_duration_is_invalid() -> None:
    runner = SleepRunner(0.01)
    res = measure_offline(runner, [1], Offline(batch=2, warmup=0, min_queries=1, min_duration_s=30,
                                               max_duration_s=0.05))  # fmt: skip
    assert res["valid"] is False
    m = re.fullmatch(r"(\d+\.\d\d) s < min_duration_s 30", res["invalid_reason"])
    assert m is not None, res["invalid_reason"]
    assert float(m.group(1)) == pytest.approx(res["duration_s"], abs=0.011)
    assert 0.05 <= res["duration_s"] < 30


def test_offline_run_missing_both_minimums_gives_both_reasons() -> None:
    res = measure_offline(SleepRunner(0.02), [1], Offline(batch=1, warmup=0, min_queries=1000, min_duration_s=60,
                                                          max_duration_s=0.05))  # fmt: skip
    assert res["valid"] is False
    assert re.fullmatch(rf"{res['queries']} queries < min_queries 1000; \d+\.\d\d s < min_duration_s 60",
                        res["invalid_reason"])  # fmt: skip


@pytest.mark.parametrize(
    ("n", "elapsed", "settings", "reason"),
    [
        (5, 2.0, Latency(min_queries=5, min_duration_s=2), None),
        (4, 2.0, Latency(min_queries=5, min_duration_s=2), "4 queries < min_queries 5"),
        (5, 1.994, Latency(min_queries=5, min_duration_s=2), "1.99 s < min_duration_s 2"),
        (
            1,
            0.5,
            Latency(min_queries=50, min_duration_s=2.5),
            "1 queries < min_queries 50; 0.50 s < min_duration_s 2.5",
        ),
    ],
)
def test_summarize_latency_validity(n: int, elapsed: float, settings: Latency, reason: str | None) -> None:
    s = summarize_latency([0.001] * n, elapsed, settings)
    assert s["valid"] is (reason is None)
    assert s["invalid_reason"] == reason
    assert s["queries"] == n


# --------------------------------------------------------------------------------------------------- pareto


def test_pareto_on_hand_made_rows() -> None:
    rows = [
        row("a", "onnxruntime", 1.0, 0.90),  # fastest
        row("b", "onnxruntime", 2.0, 0.95),  # most accurate
        row("c", "openvino", 2.0, 0.90),  # dominated by a (slower, not more accurate)
        row("d", "openvino", 3.0, 0.95),  # dominated by b (slower, as accurate)
        row("e", "torch", 1.0, 0.90),  # ties a exactly: neither beats the other
        row("f", "torch", 1.5, 0.92),  # between a and b: on the front
        row("g", "torch", 0.5, None),  # no accuracy (counts as 0) but fastest: on the front
    ]
    assert pareto(rows) == [0, 1, 4, 5, 6]


def test_pareto_edge_cases() -> None:
    assert pareto([]) == []
    assert pareto([row("only", "onnxruntime", 3.0, 0.5)]) == [0]
    # one row better on both: it alone is the front
    assert pareto([row("slow", "openvino", 3.0, 0.5), row("best", "onnxruntime", 1.0, 0.9)]) == [1]


# ------------------------------------------------------------------------------------------------ renderings


HAND_ROWS = [
    row("fp32", "onnxruntime", 4.0, 0.90),
    row("int8", "onnxruntime", 2.0, 0.89, ),
    row("int8", "openvino", 3.0, 0.85),
]  # fmt: skip


def test_render_markdown_has_one_row_per_result() -> None:
    report = hand_report(copy.deepcopy(HAND_ROWS))
    report["results"][1]["accuracy"].update(top1_drop=0.01, top1_agreement=0.97)
    report["results"][2]["latency"].update(valid=False, invalid_reason="3 queries < min_queries 50")
    md = render_markdown(report)
    lines = md.splitlines()
    assert lines[0] == "# edgeres report: hand"
    head = lines.index(
        "| variant | runtime | precision | top-1 % | top-5 % | drop (pts) | agreement % | p50 ms | p90 ms | p99 ms "
        "| offline img/s | load ms | first ms | peak RSS MB | size MB | valid |"
    )
    assert lines[head + 1] == "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    end = lines.index("", head)
    table = lines[head + 2 : end]
    assert len(table) == len(report["results"]) == 3
    # rows without a precision or cold start (older reports, hand-made rows) show "-" there
    assert (
        table[0]
        == "| fp32 ★ | onnxruntime | - | 90.00 | 95.00 | - | - | 4.00 | 4.40 | 4.80 | - | - | - | 200 | 2.5 | yes |"
    )
    assert table[1] == (
        "| int8 ★ | onnxruntime | - | 89.00 | 94.00 | +1.00 | 97.00 | 2.00 | 2.20 | 2.40 | - | - | - | 200 | 2.5 "
        "| yes |"
    )
    assert table[2].startswith("| int8 | openvino | - | 85.00 |")  # dominated by int8 on onnxruntime: no star
    assert table[2].endswith("| NO: latency: 3 queries < min_queries 50 |")
    assert "Versions: onnxruntime 1.0" in md
    assert "tensorrt" not in md.split("Versions:")[1]  # absent packages are left out


def test_render_markdown_lists_unmeasured_and_stages() -> None:
    report = hand_report(
        copy.deepcopy(HAND_ROWS),
        unmeasured=[{"variant": "trt", "format": "tensorrt-kit", "reason": "a kit"}],
        stages=[{"variant": "fp32", "stage": "export", "seconds": 1.25, "key": "ab" * 32,
                 "metrics": {"opset": 18, "parity_max_abs_diff": 1.5e-07}}],
    )  # fmt: skip
    md = render_markdown(report)
    assert "Not measured on this host: variant `trt` (tensorrt-kit): a kit." in md
    assert "| fp32 | export | 1.2 | opset 18, parity_max_abs_diff 1.5e-07 | abababababab |" in md


def test_render_html_has_the_plot_and_the_table() -> None:
    report = hand_report(copy.deepcopy(HAND_ROWS))
    report["results"][0]["variant"] = "fp32<b>"  # names are escaped
    page = render_html(report)
    assert page.startswith("<!doctype html>")
    assert "<svg" in page
    assert "Plot unavailable" not in page
    assert "<title>edgeres report: hand</title>" in page
    assert "<th>variant</th><th>runtime</th><th>precision</th><th>top-1 %</th>" in page
    body = page.split("<h2>Measurements</h2>", 1)[1].split("</tbody>", 1)[0]
    assert body.count("<tr><td>") == 3
    assert "<tr><td>fp32&lt;b&gt; ★</td><td>onnxruntime</td><td>-</td><td>90.00</td>" in body
    assert "<tr><td>int8</td><td>openvino</td><td>-</td><td>85.00</td>" in body  # dominated: no star
    assert "<tr><td>int8 ★</td><td>onnxruntime</td><td>-</td><td>89.00</td>" in body
    assert "<td>4.00</td><td>4.40</td><td>4.80</td>" in body
    assert "fp32<b>" not in page.split("<svg", 1)[0]


def test_render_html_without_matplotlib_keeps_the_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeres.report as report_module

    monkeypatch.setattr(report_module, "available", lambda name: False)
    page = render_html(hand_report(copy.deepcopy(HAND_ROWS)))
    assert "<svg" not in page
    assert "<p><i>Plot unavailable: install the report extra (matplotlib).</i></p>" in page
    assert page.count("<tr><td>") == 3


# ---------------------------------------------------------------------------------------------- edgeres compare


@pytest.fixture
def base_json(base_build: Build, tmp_path: Path) -> tuple[dict[str, Any], Path]:
    report = base_report(base_build)
    assert [(r["variant"], r["runtime"]) for r in report["results"]] == [
        ("main", "onnxruntime"), ("main", "openvino")
    ]  # fmt: skip
    return report, write_json(tmp_path / "base.json", report)


def test_compare_identical_reports_exits_0(base_json: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    report, base = base_json
    res = compare(base, write_json(tmp_path / "new.json", report))
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    corruption = [line for line in lines if ": mean corruption top-1 " in line]  # one per row (fidelity on)
    assert len(corruption) == len(report["results"]) and all("(+0.00 pts)" in line for line in corruption)
    same = [line for line in lines if ": same engine (sha256 " in line]  # one per row: the same files
    assert same == [f"main on {r['runtime']}: same engine (sha256 {r['artifact']['sha256'][:12]})"
                    for r in report["results"]]  # fmt: skip
    lines = [line for line in lines if line not in corruption and line not in same]
    for line, r in zip(lines, report["results"], strict=False):
        p50, top1 = r["latency"]["p50_ms"], 100 * r["accuracy"]["top1"]
        assert re.fullmatch(
            re.escape(
                f"main on {r['runtime']}: p50 {p50:.3f} -> {p50:.3f} ms (+0.0%), top-1 {top1:.2f} -> {top1:.2f} ("
            )
            + r"[+-]0\.00"
            + re.escape(" pts), peak RSS +0.0%"),
            line,
        ), line
    assert lines[2:] == ["no regression beyond the thresholds"]
    assert res.stderr == ""


def test_compare_unchanged_top1_is_shown_as_plus_zero(base_json: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    report, base = base_json
    res = compare(base, write_json(tmp_path / "new.json", report))
    assert res.code == 0
    first = res.stdout.splitlines()[0]
    assert "(+0.00 pts)" in first, first


def test_compare_slower_by_20_percent_exits_7(base_json: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    report, base = base_json
    slower = copy.deepcopy(report)
    for r in slower["results"]:
        r["latency"]["p50_ms"] *= 1.2
    new = write_json(tmp_path / "new.json", slower)
    res = compare(base, new)
    assert res.code == 7
    assert res.stderr == (
        "edgeres: regression: 2 beyond the thresholds:\n"
        "  - main on onnxruntime: p50 latency +20.0% exceeds --max-latency-regression 10%\n"
        "  - main on openvino: p50 latency +20.0% exceeds --max-latency-regression 10%\n"
    )
    assert "(+20.0%)" in res.stdout.splitlines()[0]
    assert "no regression" not in res.stdout
    # a looser threshold lets it through
    assert compare(base, new, "--max-latency-regression", "0.25").code == 0


def test_compare_faster_is_no_regression(base_json: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    report, base = base_json
    faster = copy.deepcopy(report)
    for r in faster["results"]:
        r["latency"]["p50_ms"] *= 0.5
    res = compare(base, write_json(tmp_path / "new.json", faster))
    assert res.code == 0
    assert "(-50.0%)" in res.stdout


def test_compare_accuracy_drop_exits_7(base_json: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    report, base = base_json
    worse = copy.deepcopy(report)
    worse["results"][0]["accuracy"]["top1"] -= 0.0625
    new = write_json(tmp_path / "new.json", worse)
    res = compare(base, new, "--max-accuracy-drop", "0.01")
    assert res.code == 7
    assert res.stderr == (
        "edgeres: regression: 1 beyond the thresholds:\n"
        "  - main on onnxruntime: top-1 dropped 6.25 pts, more than --max-accuracy-drop 1 pts\n"
    )
    assert "(-6.25 pts)" in res.stdout.splitlines()[0]
    assert compare(base, new, "--max-accuracy-drop", "0.07").code == 0


def test_compare_missing_row_exits_7(base_json: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    report, base = base_json
    fewer = copy.deepcopy(report)
    del fewer["results"][1]
    res = compare(base, write_json(tmp_path / "new.json", fewer))
    assert res.code == 7
    assert res.stderr == (
        "edgeres: regression: 1 beyond the thresholds:\n  - main on openvino: measured in the base report, missing in "
        "the new one; name the new run's row with `edgeres bench --name`, or pass --allow-missing to compare only the "
        "rows both have\n"
    )


def test_compare_new_row_is_listed_not_a_regression(base_json: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    report, base = base_json
    more = copy.deepcopy(report)
    extra = copy.deepcopy(more["results"][0])
    extra["variant"] = "int8"
    more["results"].append(extra)
    res = compare(base, write_json(tmp_path / "new.json", more))
    assert res.code == 0
    assert "int8 on onnxruntime: new (not in the base report)" in res.stdout.splitlines()


def test_compare_memory_growth_exits_7(base_json: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    report, base = base_json
    bigger = copy.deepcopy(report)
    bigger["results"][1]["memory"]["peak_rss_mb"] *= 1.5
    res = compare(base, write_json(tmp_path / "new.json", bigger))
    assert res.code == 7
    assert res.stderr == (
        "edgeres: regression: 1 beyond the thresholds:\n"
        "  - main on openvino: peak RSS +50.0% exceeds --max-memory-growth 10%\n"
    )


def test_compare_invalid_new_run_exits_7_unless_allowed(base_json: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    report, base = base_json
    invalid = copy.deepcopy(report)
    invalid["results"][0]["latency"].update(valid=False, invalid_reason="3 queries < min_queries 50")
    new = write_json(tmp_path / "new.json", invalid)
    res = compare(base, new)
    assert res.code == 7
    assert res.stderr == (
        "edgeres: regression: 1 beyond the thresholds:\n"
        "  - main on onnxruntime: the new latency run is invalid (3 queries < min_queries 50); raise the run's "
        "minimums or pass --allow-invalid\n"
    )
    assert compare(base, new, "--allow-invalid").code == 0


def test_compare_other_schema_exits_2(base_json: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    report, base = base_json
    other = copy.deepcopy(report)
    other["schema"] = "edgeres.report/2"
    new = write_json(tmp_path / "new.json", other)
    res = compare(base, new)
    assert res.code == 2
    assert res.stderr == (
        f"edgeres: usage error: {str(new)!r} has schema 'edgeres.report/2'; "
        "edgeres compare reads 'edgeres.report/1' reports\n"
    )
    assert res.stdout == ""
    # either side
    assert compare(new, base).code == 2


def test_compare_unreadable_reports_exit_2(base_json: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    _, base = base_json
    missing = tmp_path / "nope.json"
    res = compare(base, missing)
    assert res.code == 2
    assert res.stderr == f"edgeres: usage error: report {str(missing)!r} does not exist\n"
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    res = compare(base, broken)
    assert res.code == 2
    assert res.stderr.startswith(f"edgeres: usage error: report {str(broken)!r} is not readable JSON: ")
    res = compare(base, write_json(tmp_path / "list.json", [1, 2]))
    assert res.code == 2
    assert "has schema 'list'; edgeres compare reads 'edgeres.report/1' reports" in res.stderr


def test_compare_exit_code_through_python_m(base_json: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    report, base = base_json
    slower = copy.deepcopy(report)
    slower["results"][0]["latency"]["p50_ms"] *= 1.2
    new = write_json(tmp_path / "new.json", slower)
    proc = subprocess.run(
        [sys.executable, "-m", "edgeres", "compare", str(base), str(new)],
        capture_output=True,
        text=True,
        env=subprocess_env(tmp_path),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 7
    assert "main on onnxruntime: p50 latency +20.0% exceeds --max-latency-regression 10%" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------- edgeres bench


@pytest.fixture(scope="module")
def bench_run(base_build: Build, module_tmp: Any) -> tuple[CliResult, Path, Path]:
    onnx_path = base_build.out / "models" / "main" / "model.onnx"
    out = module_tmp("bench") / "out.json"
    res = run_cli(
        "bench", str(onnx_path), "--min-queries", "5", "--min-duration", "0", "--threads", "1", "--json", str(out)
    )
    return res, onnx_path, out


def test_bench_writes_a_valid_report(bench_run: tuple[CliResult, Path, Path]) -> None:
    import onnxruntime as ort

    res, onnx_path, out = bench_run
    assert res.code == 0, res.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["schema"] == REPORT_SCHEMA
    assert report["recipe"] == "main"  # the models/<variant>/ folder it came from, not the file's stem
    assert report["baseline"] == "main"
    assert report["data"] == {"type": "random", "split": "none"}
    assert report["settings"]["latency"]["min_queries"] == 5
    assert report["settings"]["latency"]["min_duration_s"] == 0.0
    assert report["settings"]["runtimes"] == ["onnxruntime"]
    assert report["settings"]["isolated_processes"] is True
    assert report["environment"]["threads"] == 1
    (r,) = report["results"]
    assert (r["variant"], r["runtime"], r["runtime_version"]) == ("main", "onnxruntime", ort.__version__)
    assert r["precision"] == "fp32"  # no Q/DQ node in the graph
    assert r["artifact"]["file"] == "model.onnx"
    assert r["artifact"]["format"] == "onnx"
    assert r["artifact"]["sha256"] == sha256_file(onnx_path)
    assert r["artifact"]["bytes"] == onnx_path.stat().st_size
    assert r["accuracy"] == {"split": "none"}  # random inputs: latency and memory only
    lat = r["latency"]
    assert lat["queries"] == 5
    assert lat["valid"] is True
    assert lat["p50_ms"] > 0
    assert r["memory"]["peak_rss_mb"] > 0
    assert res.stdout == (
        f"main on onnxruntime (fp32, engine sha256 {r['artifact']['sha256'][:12]}): no accuracy (no --recipe), "
        f"p50 {lat['p50_ms']:.3f} ms, p90 {lat['p90_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms "
        f"(5 queries, valid), peak RSS {r['memory']['peak_rss_mb']} MB\n"
    )
    # the renderings read it too
    assert "| main ★ | onnxruntime | fp32 | - |" in render_markdown(report)
    assert "<svg" in render_html(report)


def test_compare_accepts_a_bench_report(bench_run: tuple[CliResult, Path, Path]) -> None:
    _, _, out = bench_run
    res = compare(out, out)
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert re.fullmatch(r"main on onnxruntime: p50 (\d+\.\d{3}) -> \1 ms \(\+0\.0%\), top-1 n/a, peak RSS \+0\.0%",
                        lines[0])  # fmt: skip
    assert re.fullmatch(r"main on onnxruntime: same engine \(sha256 [0-9a-f]{12}\)", lines[1])
    assert lines[2:] == ["no regression beyond the thresholds"]


def test_bench_measures_offline_for_a_dynamic_batch_model(bench_run: tuple[CliResult, Path, Path]) -> None:
    res, _, out = bench_run
    assert res.code == 0
    (r,) = json.loads(out.read_text(encoding="utf-8"))["results"]
    assert r["offline"]["scenario"] == "offline"
    assert "skipped" not in r["offline"]
    assert r["offline"]["samples_per_s"] > 0


def test_bench_with_recipe_measures_the_test_split(base_build: Build, tmp_path: Path) -> None:
    """With --recipe, accuracy is on the recipe's test split: the build's report for the same file agrees."""
    onnx_path = base_build.out / "models" / "main" / "model.onnx"
    out = tmp_path / "out.json"
    res = run_cli("bench", str(onnx_path), "--recipe", str(base_build.recipe_path), "--min-queries", "3",
                  "--min-duration", "0", "--threads", "1", "--json", str(out))  # fmt: skip
    assert res.code == 0, res.stderr
    (r,) = json.loads(out.read_text(encoding="utf-8"))["results"]
    built = next(b for b in base_report(base_build)["results"] if b["runtime"] == "onnxruntime")
    assert r["accuracy"]["split"] == "test"
    assert r["accuracy"]["images"] == 32
    assert r["accuracy"]["top1"] == built["accuracy"]["top1"]
    assert r["accuracy"]["top5"] == built["accuracy"]["top5"]
    assert res.stdout.startswith(
        f"main on onnxruntime (fp32, engine sha256 {r['artifact']['sha256'][:12]}): top-1 "
        f"{100 * r['accuracy']['top1']:.2f}%, p50 "
    )


def test_bench_refuses_what_it_cannot_measure(tmp_path: Path) -> None:
    res = run_cli("bench", str(tmp_path))
    assert res.code == 2
    assert res.stderr == (
        f"edgeres: usage error: {str(tmp_path)!r} is not something edgeres can measure: pass a compiled engine "
        "(model.ort.onnx, model.xml, engine.plan), a models/<variant>/ folder, a bundle .tar, an exported model.onnx "
        "or its folder, or a torch model folder (model.json + model.pt)\n"
    )


def test_compare_a_build_against_a_bench_run_matches_the_variant(
    base_build: Build, bench_run: tuple[CliResult, Path, Path]
) -> None:
    """A bench run of a build's deliverable is named like the build's row for it: compare matches them (one engine,
    same sha256); the build's other row and its accuracy are missing in the bench run, which fails the gate unless
    --allow-missing says to compare only what both have."""
    _, _, bench_json = bench_run
    build_json = base_build.out / "report.json"
    strict = compare(build_json, bench_json, "--max-latency-regression", "100")  # latency: two runs, one noisy machine
    assert strict.code == 7
    assert strict.stderr.splitlines()[1:] == [
        "  - main on onnxruntime: top-1 measured in the base report, not in the new one (a bench run without --recipe "
        "measures no accuracy); measure it, or pass --allow-missing",
        "  - main on openvino: measured in the base report, missing in the new one; name the new run's row with "
        "`edgeres bench --name`, or pass --allow-missing to compare only the rows both have",
    ]
    loose = compare(build_json, bench_json, "--allow-missing", "--max-latency-regression", "100")
    assert loose.code == 0, loose.stderr
    out = loose.stdout.splitlines()
    build_sha = next(r for r in base_report(base_build)["results"] if r["runtime"] == "onnxruntime")["artifact"]
    assert f"main on onnxruntime: same engine (sha256 {build_sha['sha256'][:12]})" in out
    assert (
        "main on onnxruntime: top-1 measured in the base report, not in the new one: not gated (--allow-missing)" in out
    )
    assert "main on openvino: measured in the base report, missing in the new one (--allow-missing)" in out


def test_compare_says_when_one_name_covers_two_engines(base_json: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    report, base = base_json
    other = copy.deepcopy(report)
    other["results"][0]["artifact"]["sha256"] = "f" * 64
    res = compare(base, write_json(tmp_path / "new.json", other))
    assert res.code == 0
    old = report["results"][0]["artifact"]["sha256"][:12]
    assert f"main on onnxruntime: note: two different engines under one name (sha256 {old} -> ffffffffffff)" in (
        res.stdout.splitlines()
    )


@pytest.fixture(scope="module")
def deliverables(module_tmp: Any) -> dict[str, Path]:
    """What edgeres writes, small: an ONNX Runtime engine folder and an OpenVINO one as compile writes them
    (models/<variant>/), and a bundle of each."""
    from bundle_fixtures import compiled_folder, make_bundle

    root = module_tmp("deliverables")
    ort_folder, source = compiled_folder(root / "models" / "int8", seed=3)
    ov_folder, _ = compiled_folder(root / "models" / "int8-openvino", seed=4, runtime="openvino")
    for folder in (ort_folder, ov_folder):  # as if quantized: the manifest's precision is what the row reports
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        (folder / "manifest.json").write_text(json.dumps({**manifest, "precision": "int8"}), encoding="utf-8")
    return {
        "ort": ort_folder,
        "ov": ov_folder,
        "source": source,
        "ort_bundle": make_bundle(root / "bundles" / "b1.tar", seed=5, info={"variant": "release-a"}),
        "ov_bundle": make_bundle(root / "bundles" / "b2.tar", seed=6, runtime="openvino", info={"variant": "ov-b"}),
    }


@pytest.mark.parametrize(
    ("what", "options", "variant", "runtime", "file", "precision"),
    [
        ("ort", (), "int8", "onnxruntime", "model.ort.onnx", "int8"),
        ("ort/model.ort.onnx", (), "int8", "onnxruntime", "model.ort.onnx", "int8"),
        ("ov", (), "int8-openvino", "openvino", "model.xml", "int8"),
        ("ov/model.xml", (), "int8-openvino", "openvino", "model.xml", "int8"),
        ("ov/model.xml", ("--name", "candidate"), "candidate", "openvino", "model.xml", "int8"),
        ("ort_bundle", ("--integrity-only",), "release-a", "onnxruntime", "model.ort.onnx", "fp32"),
        ("ov_bundle", ("--integrity-only",), "ov-b", "openvino", "model.xml", "fp32"),
    ],
)
def test_bench_measures_every_deliverable_named_by_variant(
    deliverables: dict[str, Path],
    tmp_path: Path,
    what: str,
    options: tuple[str, ...],
    variant: str,
    runtime: str,
    file: str,
    precision: str,
) -> None:
    """Engine files, models/<variant>/ folders and bundles (verified first): the row is named by variant (the
    bundle's, the folder's, or --name), runs on the runtime the manifest names, and reports the manifest's precision
    (the folders' manifests say int8 although the tiny model is float: read, not guessed)."""
    head, _, rest = what.partition("/")
    path = deliverables[head] / rest if rest else deliverables[head]
    out = tmp_path / "bench.json"
    res = run_cli("bench", str(path), *options, "--min-queries", "3", "--min-duration", "0", "--threads", "1",
                  "--json", str(out))  # fmt: skip
    assert res.code == 0, res.stderr
    (r,) = json.loads(out.read_text(encoding="utf-8"))["results"]
    assert (r["variant"], r["runtime"], r["artifact"]["file"], r["precision"]) == (variant, runtime, file, precision)
    if not head.endswith("bundle"):
        assert r["artifact"]["sha256"] == sha256_file(deliverables[head] / file)
    assert r["runtime_settings"]["runtime"] == runtime


def test_bench_refuses_an_engine_on_a_runtime_it_does_not_ship_to(deliverables: dict[str, Path]) -> None:
    res = run_cli("bench", str(deliverables["ort"] / "model.ort.onnx"), "--runtime", "openvino")
    assert res.code == 2
    assert res.stderr.startswith("edgeres: usage error: ")
    assert "an engine compiled for onnxruntime" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.splitlines()) == 1  # one sentence, not a converter's dump


def test_bench_verifies_a_bundle_before_opening_it(deliverables: dict[str, Path], tmp_path: Path) -> None:
    """A bundle is verified first: without a key it is refused (nothing measured), and a changed file is found."""
    res = run_cli("bench", str(deliverables["ort_bundle"]))
    assert res.code == 2 and "no public key given" in res.stderr
    import tarfile

    tampered = tmp_path / "t.tar"
    with tarfile.open(deliverables["ort_bundle"]) as src, tarfile.open(tampered, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name == "labels.txt" and data is not None:
                data = data.replace(b"zero", b"Zero")
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    res = run_cli("bench", str(tampered), "--integrity-only")
    assert res.code == 9, res.stderr
    assert "labels.txt" in res.stderr


# -------------------------------------------------------------------------------------------- worker process


def _spec(base_build: Build, tmp_path: Path, path: Path | None = None) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    npz = tmp_path / "eval.npz"
    np.savez(npz, x=rng.standard_normal((16, 3, 16, 16)).astype(np.float32), y=rng.integers(0, 4, 16))
    return {
        "runtime": "onnxruntime",
        "path": str(path or base_build.out / "models" / "main" / "model.onnx"),
        "format": "onnx",
        "threads": 1,
        "data": str(npz),
        "batch": 8,
        "latency": Latency(warmup=1, min_queries=4, min_duration_s=0).model_dump(),
        "offline": Offline(batch=8, warmup=0, min_queries=2, min_duration_s=0).model_dump(),
    }


def test_measure_artifact_in_a_child_process(base_build: Build, tmp_path: Path) -> None:
    import onnxruntime as ort

    out = measure_artifact(_spec(base_build, tmp_path), isolate=True)
    mem = out["memory"]
    assert mem["peak_rss_mb"] > 0
    assert mem["process_base_rss_mb"] > 0
    assert mem["note"].startswith("peak resident set of the inference process")
    assert out["runtime_version"] == ort.__version__
    assert out["latency"]["queries"] == 4
    assert out["latency"]["valid"] is True
    assert out["offline"]["queries"] == 2
    assert out["offline"]["samples"] == 16
    assert out["accuracy"]["images"] == 16
    assert len(out["predictions"]) == 16
    assert set(out["predictions"]) <= {0, 1, 2, 3}


def test_measure_artifact_child_failure_is_a_stage_error(base_build: Build, tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    with pytest.raises(StageError) as exc:
        measure_artifact(_spec(base_build, tmp_path, missing), isolate=True)
    assert str(exc.value).startswith(
        f"measuring {missing} on onnxruntime failed in its child process with exit code 1:\n"
    )


def test_bench_refuses_a_precision_this_cpu_cannot_run_saying_why(
    deliverables: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bf16 engine on a CPU without AVX512_BF16 or AMX is refused with the reason, nothing measured. This machine
    may have bf16, so the CPU's answer is stood in (RuntimeSettings.unsupported_reason, which edgeres.load and the
    benchmark stage ask too); what is tested is that bench asks it, with the manifest's settings, and stops."""
    from edgeres.runtimes.settings import RuntimeSettings

    asked: list[RuntimeSettings] = []

    def no_bf16(self: RuntimeSettings) -> str | None:
        asked.append(self)
        return "bf16 needs AVX512_BF16 or AMX, which this CPU lacks" if self.precision == "bf16" else None

    monkeypatch.setattr(RuntimeSettings, "unsupported_reason", no_bf16)
    folder = deliverables["ov"]
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    bf16 = folder.parent / "bf16-openvino"
    import shutil

    shutil.copytree(folder, bf16)
    settings = {**manifest["runtime_settings"], "precision": "bf16"}
    (bf16 / "manifest.json").write_text(json.dumps({**manifest, "runtime_settings": settings}), encoding="utf-8")
    res = run_cli("bench", str(bf16), "--min-queries", "3", "--min-duration", "0")
    assert res.code == 3
    assert res.stderr == (
        "edgeres: stage failed: bf16-openvino on openvino: not measured here: bf16 needs AVX512_BF16 or AMX, which "
        "this CPU lacks\n"
    )
    assert [s.precision for s in asked] == ["bf16"]
