"""The e2e probe's arithmetic: quantiles from Prometheus histogram deltas."""

from __future__ import annotations

import math

import pytest

from tests.e2e.probe import histogram_buckets, histogram_quantile

SCRAPE = """\
# TYPE taskdeploy_event_loop_lag_seconds histogram
taskdeploy_event_loop_lag_seconds_bucket{le="0.001"} 90.0
taskdeploy_event_loop_lag_seconds_bucket{le="0.01"} 99.0
taskdeploy_event_loop_lag_seconds_bucket{le="0.1"} 100.0
taskdeploy_event_loop_lag_seconds_bucket{le="+Inf"} 100.0
taskdeploy_event_loop_lag_seconds_count 100.0
other_bucket{le="0.1"} 5.0
"""


def test_buckets_are_read_from_the_text_format() -> None:
    assert histogram_buckets(SCRAPE, "taskdeploy_event_loop_lag_seconds") == {
        0.001: 90.0,
        0.01: 99.0,
        0.1: 100.0,
        math.inf: 100.0,
    }


def test_a_missing_histogram_fails_loudly() -> None:
    with pytest.raises(AssertionError):
        histogram_buckets(SCRAPE, "absent")


def test_the_quantile_counts_only_what_happened_between_the_scrapes() -> None:
    before = {0.001: 90.0, 0.01: 99.0, 0.1: 100.0, math.inf: 100.0}
    # 100 new observations: 50 under 1 ms, 40 in (1, 10] ms, 10 in (10, 100] ms.
    after = {0.001: 140.0, 0.01: 189.0, 0.1: 200.0, math.inf: 200.0}
    # rank 99 of 100 lies in the (0.01, 0.1] bucket, 9 of its 10 observations in.
    assert histogram_quantile(0.99, before, after) == pytest.approx(0.01 + 0.09 * 0.9)
    assert histogram_quantile(0.5, before, after) == pytest.approx(0.001)


def test_observations_past_the_last_bound_report_that_bound() -> None:
    before = {0.1: 0.0, 1.0: 0.0, math.inf: 0.0}
    after = {0.1: 90.0, 1.0: 95.0, math.inf: 100.0}
    assert histogram_quantile(0.99, before, after) == 1.0


def test_no_observations_give_zero() -> None:
    same = {0.1: 3.0, math.inf: 3.0}
    assert histogram_quantile(0.99, same, same) == 0.0
