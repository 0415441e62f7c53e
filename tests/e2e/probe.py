"""A responsiveness probe for hostile runs: API latency, event-loop lag p99 and RSS growth.

While the block runs, a thread of its own (so the test's event loop, however busy, cannot delay
it) requests a cheap endpoint every `interval` seconds and records each response time. Before and
after, it reads the service's own `/metrics` and computes the p99 of
`taskdeploy_event_loop_lag_seconds` over the block from the histogram buckets' deltas, the way
Prometheus' `histogram_quantile` does. RSS growth is the peak (VmHWM, reset at the start) minus
the RSS at the start.

    async with probe(service) as report:
        ... run the hostile job to its end ...
    print(report.summary("1M-line metrics"))
    report.check()            # no request over 1 s, lag p99 under 100 ms
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.e2e.harness import Service

LAG_METRIC = "taskdeploy_event_loop_lag_seconds"
MiB = 1024 * 1024


def histogram_buckets(text: str, name: str) -> dict[float, float]:
    """The cumulative bucket counts of one unlabelled histogram in Prometheus' text format."""
    buckets: dict[float, float] = {}
    prefix = f'{name}_bucket{{le="'
    for line in text.splitlines():
        if line.startswith(prefix):
            bound = line[len(prefix) : line.index('"', len(prefix))]
            buckets[math.inf if bound == "+Inf" else float(bound)] = float(line.split()[-1])
    if not buckets:
        raise AssertionError(f"{name} is not in /metrics")
    return buckets


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """The q-quantile of the observations made between two scrapes, interpolated linearly
    inside its bucket (as Prometheus does); 0.0 when nothing was observed."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1]
    if total <= 0:
        return 0.0
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if math.isinf(bound):
                return lower  # past the last finite bucket: its bound is all that is known
            in_bucket = cumulative - below
            return lower + (bound - lower) * ((rank - below) / in_bucket if in_bucket else 1.0)
        lower, below = bound, cumulative
    return lower


@dataclass
class ProbeReport:
    """What the probe saw; filled in when the `probe` block ends."""

    path: str
    interval: float
    latencies: list[float] = field(default_factory=list)  # seconds, one per request
    failures: list[str] = field(default_factory=list)  # non-200 answers and transport errors
    lag_p99: float = 0.0
    lag_observations: int = 0
    lag_over: dict[str, int] = field(default_factory=dict)  # observations past each bound
    rss_start: int = 0
    rss_peak: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # the service's own CPU time (user + system) during the block
    host_load: float = 0.0  # the host's 1-minute load average at the end: other work's share

    @property
    def worst_latency(self) -> float:
        return max(self.latencies, default=0.0)

    @property
    def rss_growth(self) -> int:
        return max(self.rss_peak - self.rss_start, 0)

    def summary(self, label: str) -> str:
        return (
            f"probe [{label}]: {len(self.latencies)} requests to {self.path} in "
            f"{self.seconds:.1f} s, worst {self.worst_latency * 1000:.0f} ms; event-loop lag "
            f"p99 {self.lag_p99 * 1000:.1f} ms over {self.lag_observations} observations "
            f"{self.lag_over}; "
            f"RSS {self.rss_start / MiB:.0f} MiB -> peak {self.rss_peak / MiB:.0f} MiB "
            f"(+{self.rss_growth / MiB:.1f} MiB); service CPU {self.cpu_seconds:.1f} s; host "
            f"load {self.host_load:.1f} on {os.cpu_count()} CPUs"
        )

    def check(self, *, max_latency: float = 1.0, max_lag_p99: float = 0.1) -> None:
        """The issue's bounds: no probe request waited more than `max_latency`, and the loop
        lag p99 stayed under `max_lag_p99`."""
        assert not self.failures, f"probe requests failed: {self.failures[:5]}"
        # At least a few requests, or the block was too short to say anything.
        assert len(self.latencies) >= 5, f"only {len(self.latencies)} probe requests"
        slow = [round(s, 3) for s in self.latencies if s > max_latency]
        assert not slow, f"probe requests over {max_latency} s: {slow}"
        assert self.lag_observations >= 4, f"only {self.lag_observations} lag observations"
        assert self.lag_p99 < max_lag_p99, f"event-loop lag p99 {self.lag_p99 * 1000:.0f} ms"


def _cpu_seconds(pid: int) -> float:
    """User plus system time of a process, from /proc/PID/stat (fields after the name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _scrape_lag(client: httpx.Client) -> dict[float, float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200, resp.text
    return histogram_buckets(resp.text, LAG_METRIC)


@asynccontextmanager
async def probe(
    service: Service, path: str = "/healthz", interval: float = 0.2, timeout: float = 30.0
) -> AsyncIterator[ProbeReport]:
    """Probes `service` while the block runs; the report is complete once the block ends."""
    report = ProbeReport(path=path, interval=interval)
    stop = threading.Event()
    client = httpx.Client(base_url=service.base_url, timeout=timeout)

    def hit() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                resp = client.get(path)
                if resp.status_code != 200:
                    report.failures.append(f"{resp.status_code}: {resp.text[:200]}")
            except httpx.HTTPError as exc:
                report.failures.append(f"{type(exc).__name__}: {exc}")
            elapsed = time.monotonic() - started
            report.latencies.append(elapsed)
            stop.wait(max(interval - elapsed, 0.0))

    try:
        before = _scrape_lag(client)
        service.reset_peak_rss()
        report.rss_start = service.rss_bytes()
        cpu_start = _cpu_seconds(service.pid)
        began = time.monotonic()
        worker = threading.Thread(target=hit, name="probe", daemon=True)
        worker.start()
        try:
            yield report
        finally:
            stop.set()
            worker.join(timeout + 5)
            report.seconds = time.monotonic() - began
            report.rss_peak = service.peak_rss_bytes()
            report.cpu_seconds = _cpu_seconds(service.pid) - cpu_start
            report.host_load = os.getloadavg()[0]
        after = _scrape_lag(client)
        report.lag_p99 = histogram_quantile(0.99, before, after)
        report.lag_observations = int(after[math.inf] - before.get(math.inf, 0.0))
        for bound in sorted(after)[:-1]:
            over = report.lag_observations - int(after[bound] - before.get(bound, 0.0))
            if over:
                report.lag_over[f">{bound * 1000:g}ms"] = over
    finally:
        client.close()
