"""Live-log followers: limits per run and per owner, and one reader per run and stream whose
reads every follower of that stream shares."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import NotFound, TooManyRequests
from app.models import Run, RunState
from app.repositories.runs import RunRepository
from app.services.results import RunResults

log = logging.getLogger(__name__)

# What a refused follower is told to wait: about how long a live log takes to show news.
RETRY_AFTER_SECONDS = 5
# The most one follower is sent at a time: a slow reader holds one such piece, never the log.
MAX_PIECE_BYTES = 64 * 1024


@dataclass
class Follower:
    """One admitted follower; its slot is given back by `release` (done once, whatever calls
    it: the end of the stream, or the stream object being collected unread)."""

    run_id: str
    owner: str
    hub: LiveLogs
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.hub._release(self)


@dataclass
class _Feed:
    """The log so far of one run's stream, kept up to date by one poller for all followers."""

    data: bytes = b""
    ended: bool = False
    followers: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    poller: asyncio.Task[None] | None = None

    def publish(self, data: bytes | None = None, *, ended: bool = False) -> None:
        if data is not None:
            self.data = data
        self.ended = self.ended or ended
        # Wake everyone waiting now; later waiters wait on a fresh event.
        self.changed.set()
        self.changed = asyncio.Event()


class LiveLogs:
    """Admits followers within `max_per_run` and `max_per_owner` (429 beyond), and feeds them.

    The first follower of a run's stream starts its poller, which reads the log from the
    container (or, once the run ended, from the object store) every `poll_seconds`; the last
    one to leave stops it. Followers only keep an offset into the poller's copy of the log,
    which is capped like the log itself: a slow follower holds nobody back and costs one
    piece of at most MAX_PIECE_BYTES. The limits count this process's followers.
    """

    def __init__(
        self,
        results: RunResults,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        max_per_run: int,
        max_per_owner: int,
        poll_seconds: float = 0.5,
        follow_max_seconds: float = 3600.0,
    ) -> None:
        self.results = results
        self.sessionmaker = sessionmaker
        self.max_per_run = max_per_run
        self.max_per_owner = max_per_owner
        self.poll_seconds = poll_seconds
        self.follow_max_seconds = follow_max_seconds
        self._per_run: Counter[str] = Counter()
        self._per_owner: Counter[str] = Counter()
        self._feeds: dict[tuple[str, str], _Feed] = {}

    def admit(self, run_id: str, owner: str) -> Follower:
        """A slot for one more follower of `run_id`, or TooManyRequests."""
        if self._per_run[run_id] >= self.max_per_run:
            raise TooManyRequests(
                f"run {run_id} already has {self.max_per_run} live-log followers, the most "
                "allowed (TASKDEPLOY_MAX_FOLLOWERS_PER_RUN); retry later or read the log "
                "without follow",
                retry_after=RETRY_AFTER_SECONDS,
                field="follow",
            )
        if self._per_owner[owner] >= self.max_per_owner:
            raise TooManyRequests(
                f"owner {owner} already has {self.max_per_owner} live-log followers, the most "
                "allowed (TASKDEPLOY_MAX_FOLLOWERS_PER_OWNER); close one or retry later",
                retry_after=RETRY_AFTER_SECONDS,
                field="follow",
            )
        self._per_run[run_id] += 1
        self._per_owner[owner] += 1
        return Follower(run_id, owner, self)

    def _release(self, follower: Follower) -> None:
        for counts, key in ((self._per_run, follower.run_id), (self._per_owner, follower.owner)):
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]

    def followers(self, run_id: str) -> int:
        return self._per_run[run_id]

    def stream(self, follower: Follower, stream: str) -> AsyncIterator[bytes]:
        """The follower's bytes, as they come, until the run ends (or `follow_max_seconds`).
        Its slot is given back when the stream ends, is closed, or is dropped unread."""
        chunks = self._follow(follower, stream)
        weakref.finalize(chunks, follower.release)
        return chunks

    async def _follow(self, follower: Follower, stream: str) -> AsyncIterator[bytes]:
        key = (follower.run_id, stream)
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = _Feed()
            feed.poller = asyncio.create_task(
                self._poll(follower.run_id, stream, feed), name=f"live-log-{follower.run_id}"
            )
        feed.followers += 1
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.follow_max_seconds
        sent = 0
        try:
            while True:
                if len(feed.data) > sent:
                    piece = feed.data[sent : sent + MAX_PIECE_BYTES]
                    sent += len(piece)
                    yield piece
                    continue
                if feed.ended or loop.time() >= ends:
                    return
                changed = feed.changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), ends - loop.time())
        finally:
            feed.followers -= 1
            if feed.followers <= 0:
                if self._feeds.get(key) is feed:
                    del self._feeds[key]
                if feed.poller is not None:
                    feed.poller.cancel()
            follower.release()

    async def _poll(self, run_id: str, stream: str, feed: _Feed) -> None:
        """Reads the log every poll_seconds until the run ends; once the live copy holds the
        whole cap, the container is not read again (nothing more would be shown)."""
        failures_after_end = 0
        while True:
            terminal = False
            try:
                run = await self._load(run_id)
                if run is None:
                    feed.publish(ended=True)
                    return
                terminal = RunState(run.state).terminal
                if terminal or len(feed.data) < self.results.max_log_bytes:
                    data = await self._read(run, stream)
                    if len(data) > len(feed.data):
                        feed.publish(data)
                if terminal:
                    feed.publish(ended=True)
                    return
            except Exception:
                # The database or the store is away for a moment: the next poll tells. A run
                # that ended but whose log cannot be read ends its followers after a few tries.
                log.debug("live log of run %s: poll failed", run_id, exc_info=True)
                failures_after_end += terminal
                if failures_after_end >= 3:
                    feed.publish(ended=True)
                    return
            await asyncio.sleep(self.poll_seconds)

    async def _load(self, run_id: str) -> Run | None:
        async with self.sessionmaker() as session:
            return await RunRepository(session).get(run_id)

    async def _read(self, run: Run, stream: str) -> bytes:
        try:
            return await self.results.log_so_far(run, stream)
        except NotFound:
            return b""  # the run ended before its log was written
