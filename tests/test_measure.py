"""Latency statistics: nearest-rank percentiles and the MLPerf-style validity rule."""

from __future__ import annotations

import math

import pytest

from edgeres.config import Latency
from edgeres.measure import measure_latency, percentile, summarize_latency
from edgeres.runtimes.base import Runner

TEN = [float(i) for i in range(1, 11)]
HUNDRED = [float(i) for i in range(1, 101)]


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        (TEN, 50, 5.0),
        (TEN, 90, 9.0),  # 90 * 10 / 100 is 9.000000000000002 in floats: the epsilon keeps rank 9
        (TEN, 99, 10.0),
        (TEN, 100, 10.0),
        (TEN, 0, 1.0),
        (TEN, 10, 1.0),
        (TEN, 11, 2.0),
        (HUNDRED, 50, 50.0),
        (HUNDRED, 90, 90.0),
        (HUNDRED, 99, 99.0),
        (HUNDRED, 99.5, 100.0),
        ([7.0], 50, 7.0),
        ([7.0], 99, 7.0),
        ([1.0, 2.0], 50, 1.0),
        ([1.0, 2.0], 51, 2.0),
        ([1.0, 2.0, 3.0], 50, 2.0),
    ],
)
def test_percentile_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 50))


def test_valid_run() -> None:
    s = summarize_latency([0.003, 0.001, 0.002, 0.004, 0.005], 2.5, Latency(min_queries=5, min_duration_s=2.0))
    assert s["valid"] is True
    assert s["invalid_reason"] is None
    assert s["queries"] == 5
    assert s["scenario"] == "single-stream"
    assert s["batch"] == 1
    assert s["duration_s"] == 2.5
    assert s["p50_ms"] == pytest.approx(3.0)
    assert s["p90_ms"] == pytest.approx(5.0)
    assert s["p99_ms"] == pytest.approx(5.0)
    assert s["min_ms"] == pytest.approx(1.0)
    assert s["max_ms"] == pytest.approx(5.0)
    assert s["mean_ms"] == pytest.approx(3.0)


def test_too_few_queries_is_invalid() -> None:
    s = summarize_latency([0.001] * 3, 5.0, Latency(min_queries=5, min_duration_s=2.0))
    assert s["valid"] is False
    assert s["invalid_reason"] == "3 queries < min_queries 5"


def test_too_short_is_invalid() -> None:
    s = summarize_latency([0.001] * 10, 0.5, Latency(min_queries=5, min_duration_s=2.0))
    assert s["valid"] is False
    assert s["invalid_reason"] == "0.50 s < min_duration_s 2"


def test_both_reasons_are_given() -> None:
    s = summarize_latency([0.001] * 2, 0.25, Latency(min_queries=5, min_duration_s=1.5))
    assert s["valid"] is False
    assert s["invalid_reason"] == "2 queries < min_queries 5; 0.25 s < min_duration_s 1.5"


def test_exact_minimums_are_valid() -> None:
    s = summarize_latency([0.001] * 5, 2.0, Latency(min_queries=5, min_duration_s=2.0))
    assert s["valid"] is True


def test_no_queries() -> None:
    s = summarize_latency([], 0.0, Latency(min_queries=1, min_duration_s=0))
    assert s["valid"] is False
    assert s["invalid_reason"] == "0 queries < min_queries 1"
    assert math.isnan(s["p50_ms"]) and math.isnan(s["mean_ms"])


class _CountingRunner(Runner):
    def __init__(self) -> None:
        super().__init__(path=None, threads=1)  # type: ignore[arg-type]
        self.calls = 0

    def infer(self, batch: object) -> object:
        self.calls += 1
        return batch


def test_measure_latency_counts_warmup_apart() -> None:
    runner = _CountingRunner()
    s = measure_latency(runner, [1, 2, 3], Latency(warmup=4, min_queries=7, min_duration_s=0))
    assert s["queries"] == 7
    assert runner.calls == 11
    assert s["valid"] is True


def test_measure_latency_stops_at_max_duration_and_says_invalid() -> None:
    runner = _CountingRunner()
    s = measure_latency(runner, [1], Latency(warmup=0, min_queries=10**9, min_duration_s=0, max_duration_s=0.05))
    assert s["valid"] is False
    assert s["invalid_reason"] == f"{s['queries']} queries < min_queries {10**9}"
    assert s["duration_s"] >= 0.05
