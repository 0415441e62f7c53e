"""Waiting for a run's end: waiter limits per owner and in all, an announcement of each terminal
transition once it commits in this process, and one bounded poll for runs other replicas end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import NotFound, TooManyRequests
from app.models import Run, RunState
from app.repositories.runs import RunRepository
from app.services.transactions import after_commit

log = logging.getLogger(__name__)

# The key under which a process's sessions carry its RunWaiters (the sessionmaker's `info`):
# transition() finds it there, so every terminal transition of this process is announced,
# whichever worker or request made it.
RUN_WAITERS_INFO = "taskdeploy.run_waiters"
# What a refused waiter is told to wait, in seconds: about as long as a short run takes.
RETRY_AFTER_SECONDS = 2
# Runs asked about in one statement of the poll.
POLL_BATCH = 500


def announce_end(session: AsyncSession, run_id: str) -> None:
    """Wakes this process's waiters of `run_id` once the session's transaction commits (never
    before: a woken waiter reads the run and must find it ended; a rollback announces nothing)."""
    waiters = session.info.get(RUN_WAITERS_INFO)
    if isinstance(waiters, RunWaiters):
        after_commit(session, lambda: waiters.ended(run_id))


@dataclass
class _Watch:
    """The waiters of one run: how many, and the event the next announcement sets."""

    waiters: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def publish(self) -> None:
        # Wake everyone waiting now; a waiter that looks again waits on a fresh event.
        self.changed.set()
        self.changed = asyncio.Event()


class RunWaiters:
    """Admits waiters within `max_per_owner` and `max_total` (429 beyond) and wakes them when
    their run ends: at once for a transition committed in this process, within `poll_seconds`
    for one committed elsewhere (one statement for every run waited on, while any is).

    No waiter holds a session while it waits: each look at the run is its own short read. The
    limits count this process's waiters.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        max_per_owner: int,
        max_total: int,
        poll_seconds: float = 0.5,
        max_seconds: float = 60.0,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.max_per_owner = max_per_owner
        self.max_total = max_total
        self.poll_seconds = poll_seconds
        self.max_seconds = max_seconds
        self._per_owner: Counter[str] = Counter()
        self._watches: dict[str, _Watch] = {}
        self._poller: asyncio.Task[None] | None = None
        self.announced = 0  # announcements that found a waiter (for tests and metrics)

    @property
    def waiting(self) -> int:
        return sum(self._per_owner.values())

    def waiting_for(self, run_id: str) -> int:
        watch = self._watches.get(run_id)
        return watch.waiters if watch else 0

    def ended(self, run_id: str) -> None:
        """`run_id` reached a terminal state (or vanished): its waiters look again."""
        watch = self._watches.get(run_id)
        if watch is not None:
            self.announced += 1
            watch.publish()

    async def wait(self, run_id: str, owner: str, seconds: float) -> tuple[Run, bool]:
        """(the run, whether it is terminal) as soon as it is, or as it is after `seconds` (at
        most `max_seconds`). TooManyRequests past the limits; NotFound if the run vanishes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(seconds, self.max_seconds)
        with self._admitted(run_id, owner) as watch:
            while True:
                changed = watch.changed  # taken before the read: no announcement falls between
                run = await self._load(run_id)
                if run is None:
                    raise NotFound(f"run {run_id} not found")
                terminal = RunState(run.state).terminal
                remaining = deadline - loop.time()
                if terminal or remaining <= 0:
                    return run, terminal
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)

    @contextlib.contextmanager
    def _admitted(self, run_id: str, owner: str) -> Iterator[_Watch]:
        """One waiter's slot, given back however the wait ends (an answer, a timeout, an
        error, or the request's task cancelled because the client went away)."""
        if self.waiting >= self.max_total:
            raise TooManyRequests(
                f"this server already has {self.max_total} waiters, the most allowed "
                "(TASKDEPLOY_MAX_WAITERS); retry later or read the run without waiting",
                retry_after=RETRY_AFTER_SECONDS,
            )
        if self._per_owner[owner] >= self.max_per_owner:
            raise TooManyRequests(
                f"owner {owner} already has {self.max_per_owner} waiters, the most allowed "
                "(TASKDEPLOY_MAX_WAITERS_PER_OWNER); retry later or read the run without waiting",
                retry_after=RETRY_AFTER_SECONDS,
            )
        self._per_owner[owner] += 1
        watch = self._watches.setdefault(run_id, _Watch())
        watch.waiters += 1
        self._ensure_poller()
        try:
            yield watch
        finally:
            self._per_owner[owner] -= 1
            if self._per_owner[owner] <= 0:
                del self._per_owner[owner]
            watch.waiters -= 1
            if watch.waiters <= 0 and self._watches.get(run_id) is watch:
                del self._watches[run_id]
            if not self._watches and self._poller is not None:
                self._poller.cancel()
                self._poller = None

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="run-waiters-poll")

    async def _poll(self) -> None:
        """Every poll_seconds, the states of all runs waited on, in a few short reads: a run
        that ended on another replica (or vanished) wakes its waiters here."""
        while self._watches:
            await asyncio.sleep(self.poll_seconds)
            run_ids = list(self._watches)
            try:
                for start in range(0, len(run_ids), POLL_BATCH):
                    batch = run_ids[start : start + POLL_BATCH]
                    async with self.sessionmaker() as session:
                        states = await RunRepository(session).states_of(batch)
                    for run_id in batch:
                        state = states.get(run_id)
                        if state is None or state.terminal:
                            self.ended(run_id)
            except Exception:
                # The database is away for a moment: the next poll tells; each waiter's
                # timeout still ends its wait.
                log.debug("run waiters: poll failed", exc_info=True)

    async def _load(self, run_id: str) -> Run | None:
        async with self.sessionmaker() as session:
            return await RunRepository(session).get(run_id)

    async def close(self) -> None:
        """Stops the poll (at shutdown)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
