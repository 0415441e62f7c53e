"""Turns a run's raw CPU and memory readings into a time series and a summary."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

SOURCE_CGROUP = "cgroup"
SOURCE_DOCKER_STATS = "docker_stats"
SOURCE_NONE = "none"

# /proc/uptime, the entrypoint's clock, ticks in hundredths of a second.
CLOCK_RESOLUTION_SECONDS = 0.01
# A window this short is mostly clock rounding (up to 20 % off), so it never sets the peak rate.
MIN_RATE_WINDOW_SECONDS = 0.05

# Bounds on a file the job can write (it owns metrics.tsv as much as the wrapper does): of the
# head and of the tail that were kept (see app/adapters/wrapper_files.py) at most this many lines
# each are parsed, spread evenly (the first and last few always). The counters are cumulative,
# so CPU time and the rates between parsed samples stay exact averages. Python work per line
# is what holds the GIL (and so the event loop): this keeps a parse near 30 ms.
PARSED_LINES_PER_PART = 2_500
EDGE_LINES = 8  # start and nocgroup open the file; f and exit close it
# The series shown is downsampled to at most this many points.
MAX_SERIES_POINTS = 1000

_NS_PER_SECOND = 1_000_000_000
# Strict shapes: int() and float() would also take "1_0", "nan", "inf" or other scripts' digits,
# and a number of 5000 digits makes int() raise. A 64-bit counter has at most 20 digits.
_MAX_INT_DIGITS = 20
_MAX_SECONDS_DIGITS = 12
_SAMPLE_LINE = re.compile(
    r"\s*s\s+(\d{1,12}(?:\.\d{1,12})?)\s+(\d{1,20})\s+(\d{1,20})\s*", re.ASCII
)


@dataclass(frozen=True)
class MetricsSample:
    """One reading. `cpu_percent` covers the time since the previous sample (100 = one full CPU);
    the first sample has no previous one and carries 0.0."""

    t: float
    cpu_percent: float
    memory_bytes: int


@dataclass(frozen=True)
class MetricsSummary:
    """Whole-run figures: CPU time and rates, peak memory, duration, and the number of samples
    they rest on (a long series is parsed in part, see `read_metrics`)."""

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


class _Reading(NamedTuple):  # a tuple: cheap to make by the hundred thousand
    t: float
    cpu_ns: int
    memory_bytes: int


def parse_metrics_tsv(text: str, *, max_points: int = MAX_SERIES_POINTS) -> MetricsReport:
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
    The series is downsampled to at most `max_points` points (see `downsample`).
    """
    # The entrypoint ends every line with a newline, so whatever follows the last one was cut.
    return _parse_lines(text.split("\n")[:-1], max_points)


def read_metrics(
    head: bytes,
    tail: bytes,
    *,
    size: int,
    complete: bool,
    parsed_lines: int = PARSED_LINES_PER_PART,
    max_points: int = MAX_SERIES_POINTS,
) -> tuple[MetricsReport, list[str]]:
    """The report from what was kept of a metrics.tsv of `size` bytes: its first bytes
    (`head`) and its last (`tail`, contiguous with the head when the two cover the whole file),
    with notes on what was left out. `complete` is false when the file was not read to its
    end (it was larger than the read cap): its tail is unknown then.

    Of each part at most `parsed_lines` lines are parsed, spread evenly by position, the
    first lines of the head (the start line) and the last of the tail (the final sample and
    the exit line) always; lines are found with string searches, never all split, so the
    work is bounded whatever the parts hold. Blocking (some 30 ms at the caps): callers run
    it in a thread.
    """
    notes: list[str] = []
    if complete and len(head) + len(tail) >= size:
        parts = [_whole_lines((head + tail).decode(errors="replace"), from_line_start=True)]
    else:
        parts = [_whole_lines(head.decode(errors="replace"), from_line_start=True)]
        if complete:
            parts.append(_whole_lines(tail.decode(errors="replace"), from_line_start=False))
            kept = f"its first {len(head)} and last {len(tail)} bytes"
        else:
            kept = (
                f"its first {len(head)} bytes: it is larger than the read cap, and its final "
                "sample was not read"
            )
        notes.append(f"metrics.tsv is {size} bytes: kept {kept}")
    per_part = parsed_lines * 2 // len(parts)  # a whole file gets both parts' share
    lines = [line for part in parts for line in _spread(part, per_part)]
    return _parse_lines(lines, max_points), notes


def _whole_lines(text: str, *, from_line_start: bool) -> str:
    """`text` from its first whole line to its last newline: a line cut at either end of a
    kept part is dropped, as is a last line without its newline."""
    start = 0 if from_line_start else text.find("\n") + 1
    return text[start : text.rfind("\n") + 1]


def _spread(text: str, count: int) -> list[str]:
    """At most `count` lines of `text` (whole lines, each ending in a newline): all of them
    if there are that few, else the first and last EDGE_LINES and, between them, the lines
    found at evenly spaced positions."""
    if text.count("\n") <= count:
        return text.split("\n")[:-1]
    first = text.split("\n", EDGE_LINES)[:EDGE_LINES]
    last = text.rsplit("\n", EDGE_LINES + 1)[1:-1]
    low = sum(len(line) + 1 for line in first)
    high = len(text) - sum(len(line) + 1 for line in last)
    picks = max(count - 2 * EDGE_LINES, 1)
    middle: list[str] = []
    previous = -1
    for k in range(picks):
        position = low + (high - low) * k // picks
        start = text.rfind("\n", 0, position + 1) + 1 if position > low else low
        if start <= previous:
            continue
        previous = start
        middle.append(text[start : text.find("\n", start)])
    return [*first, *middle, *last]


def _parse_lines(lines: Iterable[str], max_points: int) -> MetricsReport:
    start: float | None = None
    start_cpu_ns: int | None = None
    samples: list[_Reading] = []
    final: _Reading | None = None
    exit_code: int | None = None
    nocgroup = False

    for line in lines:
        sample = _SAMPLE_LINE.fullmatch(line)
        if sample is not None:  # nearly every line: the fast path, one regular expression
            seconds = float(sample[1])
            if not samples or seconds > samples[-1].t:
                samples.append(_Reading(seconds, int(sample[2]), int(sample[3])))
            continue
        fields = line.split()
        match fields:
            case ["start", t] if start is None:
                start = _seconds(t)
            case ["start", t, cpu] if start is None and _int(cpu) is not None:
                start = _seconds(t)
                start_cpu_ns = _int(cpu) if start is not None else None
            case ["s", t, cpu, mem]:
                reading = _reading(t, cpu, mem)
                if reading is not None and (not samples or reading.t > samples[-1].t):
                    samples.append(reading)
            case ["f", t, cpu, peak] if final is None:
                final = _reading(t, cpu, peak)
            case ["exit", code] if exit_code is None and _int(code) is not None:
                exit_code = _int(code)
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
    return _report(origin, start_cpu_ns or 0, samples, final, exit_code, SOURCE_CGROUP, max_points)


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
    return _report(0.0, 0, readings, None, None, SOURCE_DOCKER_STATS, MAX_SERIES_POINTS)


def _report(
    origin: float,
    origin_cpu_ns: int,
    samples: list[_Reading],
    final: _Reading | None,
    exit_code: int | None,
    source: str,
    max_points: int,
) -> MetricsReport:
    # Callers pass at least one reading. The CPU counter only grows, so a reading below an
    # earlier one is a glitch: holding the highest value so far makes that window count as no
    # change without turning the next window into a spike.
    readings: list[_Reading] = []
    highest = -1
    for r in [*samples, final] if final is not None else samples:
        if r.cpu_ns >= highest:
            highest = r.cpu_ns
            readings.append(r)
        else:
            readings.append(_Reading(r.t, highest, r.memory_bytes))

    shown = downsample(readings[: len(samples)], max_points)
    series = [
        MetricsSample(
            t=r.t - origin,
            cpu_percent=_cpu_percent(shown[i - 1], r) if i else 0.0,
            memory_bytes=r.memory_bytes,
        )
        for i, r in enumerate(shown)
    ]
    wall = max(readings[-1].t - origin, 0.0)
    cpu_seconds = max(readings[-1].cpu_ns - origin_cpu_ns, 0) / _NS_PER_SECOND
    # A run shorter than one clock tick still ran for some time: avoid dividing by zero.
    cpu_avg = cpu_seconds / max(wall, CLOCK_RESOLUTION_SECONDS) * 100
    # The peak rate over windows long enough for the clock (a loop: this runs over up to
    # 100 000 readings, and a call per window would be most of the parse).
    peak_ns_per_second: float | None = None
    before = readings[0]
    for after in readings[1:]:
        elapsed = after.t - before.t
        if elapsed >= MIN_RATE_WINDOW_SECONDS:
            rate = (after.cpu_ns - before.cpu_ns) / elapsed
            if peak_ns_per_second is None or rate > peak_ns_per_second:
                peak_ns_per_second = rate
        before = after
    summary = MetricsSummary(
        cpu_seconds=cpu_seconds,
        cpu_percent_avg=cpu_avg,
        # No window long enough (say only `start` and `f`): the whole run is the one window.
        cpu_percent_max=(
            peak_ns_per_second / _NS_PER_SECOND * 100 if peak_ns_per_second is not None else cpu_avg
        ),
        # The `f` peak is exact where the kernel keeps one; elsewhere a sample may be higher.
        peak_memory_bytes=max(r.memory_bytes for r in readings),
        wall_seconds=wall,
        samples=len(samples),
    )
    return MetricsReport(series, summary, exit_code, source)


def downsample(readings: list[_Reading], max_points: int) -> list[_Reading]:
    """At most `max_points` readings standing for consecutive runs of them: each keeps the
    time and CPU counter of its run's last reading (so the rate between two points is the
    average over the run) and the run's highest memory. The first reading stays as it is."""
    if len(readings) <= max_points or max_points < 2:
        return readings
    runs = max_points - 1
    rest = readings[1:]
    shown = [readings[0]]
    for i in range(runs):
        run = rest[i * len(rest) // runs : (i + 1) * len(rest) // runs]
        if run:
            last = run[-1]
            shown.append(_Reading(last.t, last.cpu_ns, max(r.memory_bytes for r in run)))
    return shown


def _cpu_percent(before: _Reading, after: _Reading) -> float:
    elapsed = after.t - before.t
    if elapsed <= 0:
        return 0.0
    return (after.cpu_ns - before.cpu_ns) / _NS_PER_SECOND / elapsed * 100


def _empty_summary() -> MetricsSummary:
    return MetricsSummary(0.0, 0.0, 0.0, 0, 0.0, 0)


def _int(text: str) -> int | None:
    if len(text) <= _MAX_INT_DIGITS and text.isascii() and text.isdigit():
        return int(text)
    return None


def _seconds(text: str) -> float | None:
    whole, dot, fraction = text.partition(".")
    if len(whole) > _MAX_SECONDS_DIGITS or not (whole.isascii() and whole.isdigit()):
        return None
    if dot and not (
        len(fraction) <= _MAX_SECONDS_DIGITS and fraction.isascii() and fraction.isdigit()
    ):
        return None
    return float(text)


def _reading(t: str, cpu_ns: str, memory_bytes: str) -> _Reading | None:
    seconds = _seconds(t)
    cpu = _int(cpu_ns)
    memory = _int(memory_bytes)
    if seconds is None or cpu is None or memory is None:
        return None
    return _Reading(seconds, cpu, memory)
