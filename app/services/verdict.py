"""How an attempt ended, as pure rules: the verdict from what the service itself observed.

Nothing a job wrote decides: only the service's own stop (time limit, cancel) and the
backend's exit (code, OOM flag, a stop from outside, a full disk). Notes on caps are added to
the reason and never change the state."""

from __future__ import annotations

from typing import Literal

from app.adapters.ports import AttemptExit
from app.models import RunState

Outcome = Literal["exited", "timed_out", "cancelled"]
OUTCOMES: frozenset[str] = frozenset({"exited", "timed_out", "cancelled"})
# 128 + the signal: how the init reports a command killed by a signal.
SIGNAL_EXIT_BASE = 128


def verdict(
    outcome: Outcome,
    exit: AttemptExit,
    notes: list[str],
    *,
    disk_mb: int | None = None,
) -> tuple[RunState, str | None]:
    """The attempt's end state and reason. `notes` (caps hit while harvesting) go into the
    reason; `disk_mb` is the run's disk cap, named when the backend saw it full."""
    if outcome == "cancelled":
        return RunState.CANCELLED, "; ".join(["cancelled while running", *notes])
    if outcome == "timed_out":
        return RunState.TIMED_OUT, "; ".join(["killed at the time limit", *notes])
    if exit.oom_killed:
        return RunState.FAILED, "; ".join(["killed: out of memory", *notes])
    code = exit.code
    if exit.stopped_outside and code is not None and code > SIGNAL_EXIT_BASE:
        reason = (
            "the container was stopped from outside the service (Docker engine restart or "
            f"docker stop/kill) with exit code {code}"
        )
        return RunState.ERROR, "; ".join([reason, *notes])
    if code == 0:
        return RunState.SUCCEEDED, "; ".join(notes) or None
    reasons = [f"exit code {code}", *notes]
    if exit.disk_full and disk_mb is not None:
        reasons.append(f"the job filled its disk limit of {disk_mb} MiB (resources.disk_mb)")
    return RunState.FAILED, "; ".join(reasons)


def harvest_notes(limit_reason: str | None, skipped_count: int, notes: list[str]) -> list[str]:
    """The notes a harvest adds to the reason, in order."""
    extra = [limit_reason] if limit_reason else []
    if skipped_count:
        extra.append(f"{skipped_count} output entries were not uploaded (see run.json)")
    return [*extra, *notes]
