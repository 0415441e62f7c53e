"""/readyz's checks: database, Docker engine, object store, configuration and worker loops."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.adapters.ports import ObjectStore, RunBackend
from app.config import Settings
from app.services.auth import AccessPolicy
from app.workers.base import LoopService

log = logging.getLogger("taskdeploy")


class NotConfigured(RuntimeError):
    """A readiness check found a setting the service needs missing."""


def bucket_allow_list_missing(settings: Settings, *, keys_ever_created: bool) -> bool:
    """An empty global allow-list lets only the local user (no key) use any bucket; with keys
    their owners would get none, so the service says so at start-up and in /readyz."""
    return keys_ever_created and not settings.allowed_buckets


class Readiness:
    """Each check's result: "ok", "stale" (a worker loop), or "error" with at most a fixed
    reason code. What went wrong goes to the service log, never into the answer, which anyone
    who can reach the port may read."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession],
        runtime: RunBackend,
        store: ObjectStore,
        access: AccessPolicy,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.sessionmaker = sessionmaker
        self.runtime = runtime
        self.store = store
        self.access = access
        self.loops: Sequence[LoopService] = ()
        # A loop that may be quiet for long (the events stream): never reported stale.
        self.never_stale: Sequence[LoopService] = ()
        self._last: dict[str, str] = {}  # each check's last result

    async def checks(self) -> dict[str, str]:
        checks = {
            "database": await self._probe("database", self._ping_database(), 5),
            "docker": await self._probe("docker", self.runtime.ping(), 5),
            "object_store": await self._probe(
                "object_store", self.store.bucket_exists("taskdeploy-readiness-probe"), 10
            ),
            "allowed_buckets": await self._probe("allowed_buckets", self._check_buckets(), 5),
        }
        now = time.monotonic()
        for loop in self.loops:
            if not loop.started:
                continue  # disabled on this replica (TASKDEPLOY_WORKERS_ENABLED=false)
            stale = loop.last_tick is None or now - loop.last_tick > max(60.0, 3 * loop.interval)
            checks[f"worker:{loop.name}"] = (
                "stale" if stale and loop not in self.never_stale else "ok"
            )
        return checks

    async def _ping_database(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def _check_buckets(self) -> None:
        """Keys made by the CLI while the service runs, with no bucket allow-list configured."""
        async with self.sessionmaker() as session:
            keys = await self.access.keys_created(session)
        if bucket_allow_list_missing(self.settings, keys_ever_created=keys):
            raise NotConfigured("API keys exist but TASKDEPLOY_ALLOWED_BUCKETS is empty")

    async def _probe(self, name: str, probe: Awaitable[object], seconds: float) -> str:
        try:
            await asyncio.wait_for(probe, seconds)
        except NotConfigured as exc:
            result, detail = "error: not_configured", str(exc)
        except TimeoutError:
            result, detail = "error: timeout", f"no answer in {seconds:g} s"
        except Exception as exc:  # any failure is an "error"; its text is for the log only
            result, detail = "error", f"{type(exc).__name__}: {exc}"
        else:
            result, detail = "ok", ""
        # Probes come every few seconds: log a check when its result changes, not each time.
        if self._last.get(name) != result:
            if result == "ok":
                log.info("readiness check %s: ok", name)
            else:
                log.warning("readiness check %s failed: %s", name, detail)
        self._last[name] = result
        return result
