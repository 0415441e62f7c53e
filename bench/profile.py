"""Optional sampling profiles of the service under benchmark, with py-spy (`--profile`)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def py_spy() -> str | None:
    """The py-spy next to this interpreter (`.venv/bin/pip install py-spy`), or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextmanager
def profiled(pid: int, out: Path | None) -> Iterator[None]:
    """Samples `pid` into `out` (collapsed stacks) while the block runs; nothing if out is None."""
    binary = py_spy()
    if out is None or binary is None:
        yield
        return
    command = [binary, "record", "--pid", str(pid), "--format", "raw", "--output", str(out)]
    # --nonblocking: never pause the service, so the profile does not slow what it measures.
    recorder = subprocess.Popen(
        [*command, "--rate", "100", "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes the file when interrupted
        try:
            recorder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait(timeout=10)


@dataclass
class HotSpots:
    """What a profile says: on-CPU samples, the service's functions by inclusive share, and
    where the samples' innermost Python frames were, by top-level package."""

    samples: int
    functions: list[tuple[float, str]]
    packages: list[tuple[float, str]]


def hot_spots(folded: Path, top: int = 10) -> HotSpots:
    """Reads py-spy's collapsed stacks (idle waits are already left out)."""
    functions: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        # A frame reads "function (package/module.py:line)".
        packages[frames[-1].partition("(")[2].split("/")[0].split(".py")[0]] += n
        # Line numbers dropped, each function once per stack; app/cli/ is the whole main thread.
        names = {frame.rpartition(":")[0] + ")" for frame in frames}
        functions.update(
            {name: n for name in names if "(app/" in name and "app/cli/" not in name}
        )

    def shares(counter: Counter[str]) -> list[tuple[float, str]]:
        return [(100 * n / (total or 1), name) for name, n in counter.most_common(top)]

    return HotSpots(total, shares(functions), shares(packages))
