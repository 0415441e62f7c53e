"""Turns a run's raw CPU and memory readings into a time series and a summary."""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

SOURCE_CGROUP = "cgroup"
SOURCE_DOCKER_STATS = "docker_stats"
SOURCE_NONE = "none"

# /proc/uptime, the entrypoint's clock, ticks in hundredths of a second.
CLOCK_RESOLUTION_SECONDS = 0.01
# A window this short is mostly clock rounding (up to 20 % off), so it never sets the peak rate.
MIN_RATE_WINDOW_SECONDS = 0.05

_NS_PER_SECOND = 1_000_000_000
# Strict shapes: int() and float() would also take "1_0", "nan" or "inf".
_INT = re.compile(r"\d+")
_SECONDS = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True)
class MetricsSample:
    """One reading. `cpu_percent` covers the time since the previous sample (100 = one full CPU);
    the first sample has no previous one and carries 0.0."""

    t: float
    cpu_percent: float
    memory_bytes: int


@dataclass(frozen=True)
class MetricsSummary:
    """Whole-run figures: CPU time and rates, peak memory, duration, number of samples."""

    cpu_seconds: float
    cpu_percent_avg: float
    cpu_percent_max: float
    peak_memory_bytes: int
    wall_seconds: float
    samples: int


@dataclass(frozen=True)
class MetricsReport:
    """A run's metrics as stored next to its logs (`metrics.json`)."""

    series: list[MetricsSample]
    summary: MetricsSummary
    exit_code: int | None
    source: str

    def to_json(self) -> dict[str, Any]:
        """The JSON document of the report, rounded to what the clocks can resolve."""
        s = self.summary
        return {
            "series": [
                {
                    "t": round(p.t, 3),
                    "cpu_percent": round(p.cpu_percent, 2),
                    "memory_bytes": p.memory_bytes,
                }
                for p in self.series
            ],
            "summary": {
                "cpu_seconds": round(s.cpu_seconds, 6),
                "cpu_percent_avg": round(s.cpu_percent_avg, 2),
                "cpu_percent_max": round(s.cpu_percent_max, 2),
                "peak_memory_bytes": s.peak_memory_bytes,
                "wall_seconds": round(s.wall_seconds, 3),
                "samples": s.samples,
            },
            "source": self.source,
        }


@dataclass(frozen=True)
class _Reading:
    t: float
    cpu_ns: int
    memory_bytes: int


def parse_metrics_tsv(text: str) -> MetricsReport:
    """Parse the `metrics.tsv` written by `app/assets/entrypoint.sh`.

    Lines, fields separated by blanks:
        start T CPU_NS   once, just before the command starts (T: /proc/uptime seconds; CPU_NS:
                         the cgroup's CPU time so far, left out when there is no cgroup)
        s T CPU_NS MEM   a sample: cgroup CPU time (ns, since the container started), memory bytes
        f T CPU_NS PEAK  after the command: exact CPU time and peak memory
        exit CODE        the command's exit status, written last
        nocgroup         no cgroup counters were readable: no s or f lines follow

    CPU time counts from the start line (or the first sample), so the container's own start-up
    (runc, the init, the shell: some 30 ms) does not weigh on short runs.

    Anything else is ignored: a last line without its newline (cut short), unknown or malformed
    lines, repeated start/f/exit lines (the first counts) and samples that do not move forward in
    time. Without an `f` line (the container was killed) the last sample's CPU time and the
    largest sample's memory stand in. A CPU counter that goes backwards counts as no change.
    """
    start: float | None = None
    start_cpu_ns: int | None = None
    samples: list[_Reading] = []
    final: _Reading | None = None
    exit_code: int | None = None
    nocgroup = False

    # The entrypoint ends every line with a newline, so whatever follows the last one was cut.
    for line in text.split("\n")[:-1]:
        fields = line.split()
        match fields:
            case ["start", t] if start is None:
                start = _seconds(t)
            case ["start", t, cpu] if start is None and _INT.fullmatch(cpu):
                start = _seconds(t)
                start_cpu_ns = int(cpu) if start is not None else None
            case ["s", t, cpu, mem]:
                reading = _reading(t, cpu, mem)
                if reading is not None and (not samples or reading.t > samples[-1].t):
                    samples.append(reading)
            case ["f", t, cpu, peak] if final is None:
                final = _reading(t, cpu, peak)
            case ["exit", code] if exit_code is None and _INT.fullmatch(code):
                exit_code = int(code)
            case ["nocgroup"]:
                nocgroup = True
            case _:
                pass

    first = samples[0] if samples else final
    origin = start if start is not None else first.t if first is not None else 0.0
    # Readings from before the start line, or an `f` older than a sample, are not this run's.
    samples = [s for s in samples if s.t >= origin]
    if final is not None and final.t < (samples[-1].t if samples else origin):
        final = None
    if nocgroup or (not samples and final is None):
        return MetricsReport([], _empty_summary(), exit_code, SOURCE_NONE)
    if start_cpu_ns is None and samples:
        start_cpu_ns = samples[0].cpu_ns
    return _report(origin, start_cpu_ns or 0, samples, final, exit_code, SOURCE_CGROUP)


def report_from_stats(samples: list[tuple[float, int, int]]) -> MetricsReport:
    """Build a report from Docker's stats stream, for images the entrypoint cannot run in.

    Each sample is (t: seconds since the run started, cumulative CPU ns of the container,
    memory bytes). Samples that do not move forward in time are ignored. With no reading at the
    start, CPU time counts from zero: the container's start-up is included.
    """
    readings: list[_Reading] = []
    for t, cpu_ns, memory_bytes in samples:
        if t >= 0 and (not readings or t > readings[-1].t):
            readings.append(_Reading(float(t), max(cpu_ns, 0), max(memory_bytes, 0)))
    if not readings:
        return MetricsReport([], _empty_summary(), None, SOURCE_NONE)
    return _report(0.0, 0, readings, None, None, SOURCE_DOCKER_STATS)


def _report(
    origin: float,
    origin_cpu_ns: int,
    samples: list[_Reading],
    final: _Reading | None,
    exit_code: int | None,
    source: str,
) -> MetricsReport:
    # Callers pass at least one reading. The CPU counter only grows, so a reading below an
    # earlier one is a glitch: holding the highest value so far makes that window count as no
    # change without turning the next window into a spike.
    readings: list[_Reading] = []
    for r in [*samples, final] if final is not None else samples:
        highest = max(r.cpu_ns, readings[-1].cpu_ns) if readings else r.cpu_ns
        readings.append(_Reading(r.t, highest, r.memory_bytes))

    series = [
        MetricsSample(
            t=r.t - origin,
            cpu_percent=_cpu_percent(readings[i - 1], r) if i else 0.0,
            memory_bytes=r.memory_bytes,
        )
        for i, r in enumerate(readings[: len(samples)])
    ]
    wall = max(readings[-1].t - origin, 0.0)
    cpu_seconds = max(readings[-1].cpu_ns - origin_cpu_ns, 0) / _NS_PER_SECOND
    # A run shorter than one clock tick still ran for some time: avoid dividing by zero.
    cpu_avg = cpu_seconds / max(wall, CLOCK_RESOLUTION_SECONDS) * 100
    rates = [
        _cpu_percent(a, b) for a, b in pairwise(readings) if b.t - a.t >= MIN_RATE_WINDOW_SECONDS
    ]
    summary = MetricsSummary(
        cpu_seconds=cpu_seconds,
        cpu_percent_avg=cpu_avg,
        # No window long enough (say only `start` and `f`): the whole run is the one window.
        cpu_percent_max=max(rates) if rates else cpu_avg,
        # The `f` peak is exact where the kernel keeps one; elsewhere a sample may be higher.
        peak_memory_bytes=max(r.memory_bytes for r in readings),
        wall_seconds=wall,
        samples=len(series),
    )
    return MetricsReport(series, summary, exit_code, source)


def _cpu_percent(before: _Reading, after: _Reading) -> float:
    elapsed = after.t - before.t
    if elapsed <= 0:
        return 0.0
    return (after.cpu_ns - before.cpu_ns) / _NS_PER_SECOND / elapsed * 100


def _empty_summary() -> MetricsSummary:
    return MetricsSummary(0.0, 0.0, 0.0, 0, 0.0, 0)


def _seconds(text: str) -> float | None:
    return float(text) if _SECONDS.fullmatch(text) else None


def _reading(t: str, cpu_ns: str, memory_bytes: str) -> _Reading | None:
    seconds = _seconds(t)
    if seconds is None or not _INT.fullmatch(cpu_ns) or not _INT.fullmatch(memory_bytes):
        return None
    return _Reading(seconds, int(cpu_ns), int(memory_bytes))
