"""The verdict and retry rules, table-driven: the end state comes only from what the service
observed (its own stop, the backend's exit), never from what the job wrote."""

from __future__ import annotations

from typing import Any

import pytest

from app.adapters.ports import AttemptExit
from app.models import Run, RunState
from app.services.backoff import Backoff
from app.services.runs import retry_decision
from app.services.verdict import Outcome, harvest_notes, verdict

S = RunState
DISK = "the job filled its disk limit of 64 MiB (resources.disk_mb)"
OUTSIDE = (
    "the container was stopped from outside the service (Docker engine restart or docker "
    "stop/kill) with exit code 137"
)


@pytest.mark.parametrize(
    ("outcome", "exit", "notes", "state", "reason"),
    [
        ("exited", AttemptExit(0), [], S.SUCCEEDED, None),
        ("exited", AttemptExit(0), ["a cap"], S.SUCCEEDED, "a cap"),
        ("exited", AttemptExit(3), [], S.FAILED, "exit code 3"),
        ("exited", AttemptExit(3), ["a cap"], S.FAILED, "exit code 3; a cap"),
        ("exited", AttemptExit(0, oom_killed=True), [], S.FAILED, "killed: out of memory"),
        ("exited", AttemptExit(137, oom_killed=True, stopped_outside=True), [], S.FAILED,
         "killed: out of memory"),
        ("exited", AttemptExit(137, stopped_outside=True), [], S.ERROR, OUTSIDE),
        # A signal the job sent itself is no stop from outside: an exit code like any other.
        ("exited", AttemptExit(137), [], S.FAILED, "exit code 137"),
        ("exited", AttemptExit(1, stopped_outside=True), [], S.FAILED, "exit code 1"),
        ("exited", AttemptExit(1, disk_full=True), [], S.FAILED, f"exit code 1; {DISK}"),
        ("exited", AttemptExit(0, disk_full=True), [], S.SUCCEEDED, None),
        ("exited", AttemptExit(None), [], S.FAILED, "exit code None"),
        ("timed_out", AttemptExit(143), [], S.TIMED_OUT, "killed at the time limit"),
        ("timed_out", AttemptExit(0, oom_killed=True), ["n"], S.TIMED_OUT,
         "killed at the time limit; n"),
        ("cancelled", AttemptExit(143), [], S.CANCELLED, "cancelled while running"),
        ("cancelled", AttemptExit(0), ["n"], S.CANCELLED, "cancelled while running; n"),
    ],
)  # fmt: skip
def test_verdict(
    outcome: Outcome, exit: AttemptExit, notes: list[str], state: RunState, reason: str | None
) -> None:
    assert verdict(outcome, exit, notes, disk_mb=64) == (state, reason)


def test_the_disk_is_named_only_when_the_run_has_a_cap() -> None:
    assert verdict("exited", AttemptExit(1, disk_full=True), [], disk_mb=None) == (
        S.FAILED,
        "exit code 1",
    )


def test_harvest_notes_put_the_limit_first_then_the_skipped_count() -> None:
    assert harvest_notes("cap hit", 2, ["log cut"]) == [
        "cap hit",
        "2 output entries were not uploaded (see run.json)",
        "log cut",
    ]
    assert harvest_notes(None, 0, []) == []


POLICY = {"attempts": 3, "on": ["failed", "timed_out"], "backoff_seconds": 5, "backoff_factor": 2}


@pytest.mark.parametrize(
    ("policy", "attempt", "state", "code", "cancel", "delay"),
    [
        (None, 1, S.FAILED, 1, False, None),
        (POLICY, 1, S.FAILED, 1, False, 5.0),
        (POLICY, 2, S.FAILED, 1, False, 10.0),
        (POLICY, 3, S.FAILED, 1, False, None),  # the last attempt
        (POLICY, 1, S.TIMED_OUT, None, False, 5.0),
        (POLICY, 1, S.ERROR, None, False, None),  # not in `on`
        (POLICY, 1, S.SUCCEEDED, 0, False, None),
        (POLICY, 1, S.FAILED, 1, True, None),  # a cancel was asked for
        ({**POLICY, "exit_codes": [2]}, 1, S.FAILED, 1, False, None),
        ({**POLICY, "exit_codes": [2]}, 1, S.FAILED, 2, False, 5.0),
    ],
)
def test_retry_decision(
    policy: dict[str, Any] | None,
    attempt: int,
    state: RunState,
    code: int | None,
    cancel: bool,
    delay: float | None,
) -> None:
    run = Run(retry_policy=policy, attempt=attempt, cancel_requested=cancel)
    assert retry_decision(run, state, code) == delay


async def test_backoff_doubles_to_its_cap_and_gives_up_at_its_deadline() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    backoff = Backoff(1.0, 5.0, give_up_after=20.0, clock=lambda: now[0], sleep=sleep)
    while not backoff.exhausted:
        await backoff.wait()
    assert slept == [1.0, 2.0, 4.0, 5.0, 5.0]  # 17 s; one more 5 s would pass 20
    assert Backoff(1.0, 5.0).exhausted is False  # no deadline: never exhausted
