"""The bench's gateway ratios and the explanation built from the run's own figures (no I/O)."""

from __future__ import annotations

from typing import Any

from lab.bench.gateway import explain, median_pair, ratios


def _run(**extra: Any) -> dict[str, Any]:
    return {
        "webhooks_per_s": 1500.0,
        "bare_http_per_s": 5000.0,
        "paced": {"ack_p99_ms": 30.0},
        "kafka_ack_floor": {"rate_per_s": 3000.0, "ack_p50_ms": 3.6, "ack_p99_ms": 10.0},
        **extra,
    }


def test_ratios_are_closed_over_bare_and_open_p99_over_the_floor() -> None:
    assert ratios(_run()) == {"closed_vs_bare": 0.3, "open_p99_vs_floor": 3.0}


def test_a_missing_figure_leaves_its_ratio_empty_instead_of_failing() -> None:
    assert ratios({"webhooks_per_s": 100.0}) == {"closed_vs_bare": None, "open_p99_vs_floor": None}
    assert ratios(_run(bare_http_per_s=0.0))["closed_vs_bare"] is None


def test_a_busy_loop_thread_is_explained_as_cpu_bound_with_its_cost_against_the_bare_app() -> None:
    busy = {
        "on_cpu_share": 0.6,
        "waiting_for_cpu_share": 0.35,
        "asleep_share": 0.05,
        "cpu_ms_per_request": 0.5,
    }
    bare = {
        "on_cpu_share": 0.6,
        "waiting_for_cpu_share": 0.35,
        "asleep_share": 0.05,
        "cpu_ms_per_request": 0.2,
    }
    out = explain(_run(loop_thread=busy, bare_http={"loop_thread": bare}))
    assert out["cpu_per_request_vs_bare"] == 2.5
    assert "bound by that thread's CPU" in out["summary"]
    assert "0.500 ms of CPU per webhook" in out["summary"]
    assert "3.6 ms p50" in out["summary"]


def test_an_idle_loop_thread_is_explained_as_waiting() -> None:
    idle = {"on_cpu_share": 0.3, "waiting_for_cpu_share": 0.1, "asleep_share": 0.6, "cpu_ms_per_request": 0.5}
    out = explain(_run(loop_thread=idle))
    assert "sat idle" in out["summary"]
    assert "cpu_per_request_vs_bare" not in out


def test_without_scheduler_statistics_the_explanation_says_so() -> None:
    assert "not measured" in explain(_run())["summary"]


def test_the_reported_open_loop_is_the_pair_with_the_median_ratio_and_a_pair_without_one_ranks_last() -> None:
    def pair(p99: float | None, floor: float) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"ack_p99_ms": p99}, {"ack_p99_ms": floor}

    runs = [pair(46.0, 5.8), pair(8.7, 5.6), pair(22.1, 11.0)]  # ratios 7.9, 1.6, 2.0
    assert median_pair(runs) == runs[2]
    assert median_pair([pair(None, 5.0), pair(9.0, 6.0), pair(30.0, 6.0)]) == pair(30.0, 6.0)
    assert median_pair([pair(12.0, 6.0), pair(9.0, 6.0)]) == pair(9.0, 6.0)  # even count: the lower middle
