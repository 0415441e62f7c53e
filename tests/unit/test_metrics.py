"""Parsing the entrypoint's metrics.tsv and Docker's stats into a series and a summary."""

from __future__ import annotations

import time

import pytest

from app.services.metrics import (
    SOURCE_CGROUP,
    SOURCE_DOCKER_STATS,
    SOURCE_NONE,
    MetricsReport,
    MetricsSample,
    parse_metrics_tsv,
    read_metrics,
    report_from_stats,
)

MiB = 1024 * 1024
SEC = 1_000_000_000  # ns


def tsv(*lines: str) -> str:
    """A metrics.tsv as the entrypoint writes it: every line ends with a newline."""
    return "".join(f"{line}\n" for line in lines)


def percents(report: MetricsReport) -> list[float]:
    return [round(s.cpu_percent, 6) for s in report.series]


# --------------------------------------------------------------------------- complete runs
def test_a_complete_run_gives_a_series_and_exact_totals() -> None:
    ms = SEC // 1000
    report = parse_metrics_tsv(
        tsv(
            f"start 100.00 {10 * ms}",
            f"s 100.00 {10 * ms} {10 * MiB}",
            f"s 100.50 {260 * ms} {20 * MiB}",  # 0.25 s of CPU in 0.5 s
            f"s 101.00 {760 * ms} {30 * MiB}",  # 0.5 s in 0.5 s
            f"f 101.20 {1000 * ms} {32 * MiB}",
            "exit 0",
        )
    )

    assert report.source == SOURCE_CGROUP
    assert report.exit_code == 0
    assert [s.t for s in report.series] == [0.0, 0.5, 1.0]
    assert [s.memory_bytes for s in report.series] == [10 * MiB, 20 * MiB, 30 * MiB]
    # The first sample has no earlier reading to take a rate against.
    assert percents(report) == [0.0, 50.0, 100.0]
    s = report.summary
    assert s.samples == 3
    # Counted from the start line: the 10 ms the container used before it are not the job's.
    assert s.cpu_seconds == pytest.approx(0.99)
    assert s.wall_seconds == pytest.approx(1.2)
    assert s.cpu_percent_avg == pytest.approx(82.5)
    # The last window (101.00 -> 101.20) used 0.24 s of CPU in 0.2 s.
    assert s.cpu_percent_max == pytest.approx(120.0)
    # `f` carries the kernel's exact peak, above every sample.
    assert s.peak_memory_bytes == 32 * MiB


def test_to_json_has_the_documented_shape() -> None:
    report = parse_metrics_tsv(
        tsv("start 5.00", "s 5.00 0 100", f"s 5.10 {SEC // 30} 200", f"f 5.20 {SEC // 10} 300")
    )

    document = report.to_json()

    assert document == {
        "series": [
            {"t": 0.0, "cpu_percent": 0.0, "memory_bytes": 100},
            {"t": 0.1, "cpu_percent": 33.33, "memory_bytes": 200},
        ],
        "summary": {
            "cpu_seconds": 0.1,
            "cpu_percent_avg": 50.0,
            "cpu_percent_max": 66.67,
            "peak_memory_bytes": 300,
            "wall_seconds": 0.2,
            "samples": 2,
        },
        "source": "cgroup",
    }


def test_a_short_run_with_only_the_first_sample_and_the_final_line_is_measured() -> None:
    report = parse_metrics_tsv(
        tsv(
            "start 700.00 30000000",
            "s 700.00 30000000 1200000",
            "f 700.05 34000000 1500000",
            "exit 0",
        )
    )

    s = report.summary
    assert report.exit_code == 0
    assert s.peak_memory_bytes == 1_500_000
    assert s.cpu_seconds == pytest.approx(0.004)
    assert s.wall_seconds == pytest.approx(0.05)
    assert s.cpu_percent_avg == pytest.approx(8.0)
    assert s.samples == 1


def test_sampling_off_leaves_start_and_final_and_the_average_is_the_only_window() -> None:
    report = parse_metrics_tsv(
        tsv(f"start 10.00 {SEC // 10}", f"f 12.00 {SEC + SEC // 10} {5 * MiB}", "exit 3")
    )

    s = report.summary
    assert report.series == []
    assert report.exit_code == 3
    assert s.samples == 0
    assert s.cpu_seconds == pytest.approx(1.0)
    assert s.cpu_percent_avg == pytest.approx(50.0)
    assert s.cpu_percent_max == s.cpu_percent_avg
    assert s.peak_memory_bytes == 5 * MiB


@pytest.mark.parametrize(
    ("text", "cpu_seconds"),
    [
        # No CPU figure on the start line: the first sample is the baseline.
        (tsv("start 1.0", f"s 1.0 {SEC // 2} 1", f"f 2.0 {SEC} 1"), 0.5),
        # Neither: the counter is taken whole, container start-up included.
        (tsv("start 1.0", f"f 2.0 {SEC} 1"), 1.0),
        # A start figure above the final one is a glitch, not negative time.
        (tsv(f"start 1.0 {2 * SEC}", f"f 2.0 {SEC} 1"), 0.0),
    ],
)
def test_cpu_time_counts_from_the_best_baseline_there_is(text: str, cpu_seconds: float) -> None:
    assert parse_metrics_tsv(text).summary.cpu_seconds == cpu_seconds


def test_a_run_within_one_clock_tick_still_has_finite_rates() -> None:
    report = parse_metrics_tsv(tsv("start 9.00 1000000", "f 9.00 3000000 900000", "exit 0"))

    s = report.summary
    assert s.wall_seconds == 0.0
    assert s.cpu_seconds == pytest.approx(0.002)
    # Divided by one tick (10 ms), not by zero.
    assert s.cpu_percent_avg == pytest.approx(20.0)
    assert s.peak_memory_bytes == 900_000


def test_a_window_too_short_for_the_clock_does_not_set_the_peak_rate() -> None:
    # 0.03 s of CPU between 3.00 and 3.01 would read as 300 %: mostly clock rounding.
    report = parse_metrics_tsv(
        tsv(
            "start 1.00",
            "s 1.00 0 1",
            f"s 2.00 {SEC // 2} 1",
            f"s 3.00 {SEC} 1",
            "f 3.01 1030000000 1",
        )
    )

    assert report.summary.cpu_percent_max == pytest.approx(50.0)


def test_peak_memory_is_the_highest_sample_when_the_final_peak_is_lower() -> None:
    # cgroup v2 before Linux 5.19 has no memory.peak: the entrypoint writes the current usage.
    report = parse_metrics_tsv(tsv("start 1.0", "s 1.0 0 100", "s 2.0 0 900", "f 3.0 0 200"))

    assert report.summary.peak_memory_bytes == 900


# --------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize(
    "cut",
    [
        "s 103.0 3000",  # too few fields
        "s 103.0 3000000000 5",  # looks whole, but the memory figure may be cut short
        "exi",
        "f 103.0 300",
    ],
)
def test_a_last_line_without_its_newline_is_ignored(cut: str) -> None:
    text = tsv("start 100.0", "s 100.0 0 10", f"s 101.0 {SEC} 20", f"s 102.0 {2 * SEC} 30") + cut

    report = parse_metrics_tsv(text)

    assert [s.memory_bytes for s in report.series] == [10, 20, 30]
    assert report.summary.peak_memory_bytes == 30
    assert report.summary.cpu_seconds == 2.0
    assert report.exit_code is None


def test_without_a_final_line_the_last_sample_and_the_largest_memory_stand_in() -> None:
    # The container was killed: no f, no exit.
    report = parse_metrics_tsv(
        tsv(
            "start 50.00",
            "s 50.00 0 100",
            f"s 51.00 {SEC} 700",
            f"s 52.00 {SEC + SEC // 2} 400",
        )
    )

    s = report.summary
    assert report.exit_code is None
    assert report.source == SOURCE_CGROUP
    assert s.cpu_seconds == 1.5
    assert s.peak_memory_bytes == 700
    assert s.wall_seconds == 2.0
    assert s.cpu_percent_avg == pytest.approx(75.0)
    assert s.cpu_percent_max == pytest.approx(100.0)


def test_garbage_and_repeated_lines_are_ignored() -> None:
    report = parse_metrics_tsv(
        tsv(
            "start 10.00",
            "",
            "hello world",
            "\x00\xff binary junk",
            "s 10.00 0 100",
            "s 10.00 0 999",  # the same instant again
            "s 9.50 0 999",  # back in time
            "s 10.50 x 999",
            "s 10.50 1_000 999",
            "s nan 1 999",
            "s 10.50 -5 999",
            "s 10.50 1 2 3",
            f"s 11.00 {SEC // 2} 200",
            "start 11.50",
            f"f 12.00 {SEC} 300",
            "f 13.00 99999999999 99999999",
            "exit 4",
            "exit 5",
            "exit -1",
        )
    )

    assert [(s.t, s.memory_bytes) for s in report.series] == [(0.0, 100), (1.0, 200)]
    assert report.summary.cpu_seconds == 1.0
    assert report.summary.peak_memory_bytes == 300
    assert report.summary.wall_seconds == 2.0
    assert report.exit_code == 4


def test_a_cpu_counter_going_backwards_counts_as_no_change() -> None:
    report = parse_metrics_tsv(
        tsv(
            f"start 0.0 {SEC}",
            f"s 0.0 {SEC} 1",
            f"s 1.0 {2 * SEC} 1",
            f"s 2.0 {SEC} 1",  # glitch: below the previous reading
            f"s 3.0 {3 * SEC} 1",
            f"f 4.0 {3 * SEC} 1",
        )
    )

    # The window after the glitch is measured from the highest reading, not from the glitch.
    assert percents(report) == [0.0, 100.0, 0.0, 100.0]
    assert report.summary.cpu_seconds == 2.0
    assert report.summary.cpu_percent_max == pytest.approx(100.0)


def test_samples_before_the_start_line_or_a_final_line_before_them_are_dropped() -> None:
    report = parse_metrics_tsv(
        tsv("start 20.0", "s 19.0 0 999", "s 20.0 0 10", f"s 21.0 {SEC} 20", "f 20.5 5 9999")
    )

    assert [s.memory_bytes for s in report.series] == [10, 20]
    assert report.summary.peak_memory_bytes == 20
    assert report.summary.cpu_seconds == 1.0


def test_without_a_start_line_the_first_reading_is_the_origin() -> None:
    report = parse_metrics_tsv(tsv("s 30.0 0 1", f"s 31.0 {SEC // 4} 2", f"f 32.0 {SEC // 2} 3"))

    assert [s.t for s in report.series] == [0.0, 1.0]
    assert report.summary.wall_seconds == 2.0


# --------------------------------------------------------------------------- nothing measured
def test_nocgroup_reports_no_source_but_keeps_the_exit_code() -> None:
    report = parse_metrics_tsv(tsv("start 1.00", "nocgroup", "exit 127"))

    assert report.source == SOURCE_NONE
    assert report.series == []
    assert report.exit_code == 127
    assert report.summary.samples == 0
    assert report.summary.peak_memory_bytes == 0


@pytest.mark.parametrize("text", ["", "start 1.0\n", "start 1.0", "garbage\n\n", "s 1 2 3"])
def test_a_file_without_readings_reports_no_source(text: str) -> None:
    report = parse_metrics_tsv(text)

    assert report.source == SOURCE_NONE
    assert report.exit_code is None
    assert report.to_json()["series"] == []


# --------------------------------------------------------------------------- Docker stats
def test_docker_stats_give_rates_between_samples_and_the_counter_as_total() -> None:
    report = report_from_stats(
        [(1.0, SEC // 10, 100), (2.0, SEC // 10 + SEC // 2, 300), (3.0, 2 * SEC, 200)]
    )

    assert report.source == SOURCE_DOCKER_STATS
    assert report.exit_code is None
    assert report.series == [
        MetricsSample(t=1.0, cpu_percent=0.0, memory_bytes=100),
        MetricsSample(t=2.0, cpu_percent=pytest.approx(50.0), memory_bytes=300),  # type: ignore[arg-type]
        MetricsSample(t=3.0, cpu_percent=pytest.approx(140.0), memory_bytes=200),  # type: ignore[arg-type]
    ]
    s = report.summary
    assert s.cpu_seconds == 2.0
    assert s.wall_seconds == 3.0  # t counts from the run's start
    assert s.cpu_percent_avg == pytest.approx(200 / 3)
    assert s.cpu_percent_max == pytest.approx(140.0)
    assert s.peak_memory_bytes == 300


def test_docker_stats_ignore_samples_that_do_not_move_forward() -> None:
    report = report_from_stats([(1.0, 0, 10), (1.0, 5, 20), (0.5, 5, 30), (2.0, SEC, 40)])

    assert [s.memory_bytes for s in report.series] == [10, 40]


def test_no_docker_stats_means_no_source() -> None:
    report = report_from_stats([])

    assert report.source == SOURCE_NONE
    assert report.summary.samples == 0


# --------------------------------------------------------------------------- caps on a hostile file
def sample_lines(count: int, start: float = 100.0) -> list[str]:
    """`count` one-second samples using half a CPU and growing memory."""
    return [f"s {start + i:.2f} {i * SEC // 2} {MiB + i}" for i in range(count)]


def test_a_short_file_is_read_whole_and_its_series_kept_as_is() -> None:
    text = tsv("start 100.00 0", *sample_lines(50), "f 150.00 25000000000 99", "exit 0")
    head = text.encode()
    report, notes = read_metrics(head, b"", size=len(head), complete=True)
    assert notes == []
    assert report == parse_metrics_tsv(text)
    assert report.summary.samples == 50 and len(report.series) == 50


def test_head_and_tail_of_a_long_file_give_the_start_and_the_exact_end() -> None:
    text = tsv("start 100.00 0", *sample_lines(100_000), "f 100100.00 50000000000000 7", "exit 3")
    data = text.encode()
    head, tail = data[: 64 * 1024], data[-64 * 1024 :]
    report, notes = read_metrics(head, tail, size=len(data), complete=True, parsed_lines=500)
    assert notes == [f"metrics.tsv is {len(data)} bytes: kept its first 65536 and last 65536 bytes"]
    assert report.exit_code == 3
    s = report.summary
    # The start line and the final line bound the run: CPU time and wall time are exact.
    assert s.wall_seconds == pytest.approx(100_000.0)
    assert s.cpu_seconds == pytest.approx(50_000.0)
    assert s.peak_memory_bytes == MiB + 99_999
    # At most 500 lines of each part were parsed, spread over it.
    assert s.samples <= 1000
    assert report.series[0].t == 0.0 and report.series[-1].t > 99_000


def test_a_file_larger_than_the_read_cap_keeps_its_head_with_a_note() -> None:
    data = tsv("start 100.00 0", *sample_lines(5000)).encode()
    report, notes = read_metrics(data[:4096], b"", size=10**9, complete=False)
    assert "larger than the read cap" in notes[0]
    assert 0 < report.summary.samples < 5000
    assert report.exit_code is None


def test_millions_of_tiny_junk_lines_parse_in_bounded_work() -> None:
    junk = b"x\n" * 1_000_000 + tsv("exit 0").encode()
    started = time.process_time()
    report, _ = read_metrics(junk[: 2 * MiB], junk[-2 * MiB :], size=len(junk), complete=True)
    assert time.process_time() - started < 1.0  # a few ms here: only ~5000 lines are looked at
    assert report.source == SOURCE_NONE and report.exit_code == 0


def test_numbers_too_long_for_a_counter_are_ignored_not_raised() -> None:
    digits = "9" * 5000  # int() refuses to parse this many
    text = tsv(
        "start 100.00 0",
        f"s 101.00 {digits} 1",
        f"s 1{digits} 1 1",
        f"exit {digits}",
        "s 102.00 1000000000 5",
        "exit 0",
    )
    report = parse_metrics_tsv(text)
    assert report.exit_code == 0
    assert [s.memory_bytes for s in report.series] == [5]


def test_the_series_is_downsampled_to_the_cap_with_average_rates_and_peak_memory() -> None:
    # 2000 one-second samples: a full CPU in the first half, none in the second; one memory
    # spike in the middle.
    lines = ["start 0.00 0"]
    cpu = 0
    for i in range(1, 2001):
        cpu += SEC if i <= 1000 else 0
        memory = 10 * MiB if i == 1500 else MiB
        lines.append(f"s {i:.2f} {cpu} {memory}")
    report = parse_metrics_tsv(tsv(*lines), max_points=100)
    assert len(report.series) == 100
    assert report.summary.samples == 2000
    assert max(s.memory_bytes for s in report.series) == 10 * MiB  # the spike is kept
    rates = [round(s.cpu_percent) for s in report.series[1:]]
    assert set(rates[:49]) == {100} and set(rates[-49:]) == {0}
    assert report.series[-1].t == 2000.0
