"""Builds the app: settings → engine → adapters → services → workers, torn down in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import migrate
from app.adapters.docker import DockerRuntime
from app.adapters.docker_backend import DockerBackend
from app.adapters.docker_images import DockerImages
from app.adapters.localfs import LocalObjectStore
from app.adapters.ports import BackendMisconfigured, BuildLimits, ObjectStore, RunBackend
from app.adapters.s3 import S3ObjectStore
from app.adapters.webhook_http import HttpWebhookSender
from app.bodylimit import BodyLimitMiddleware
from app.config import MiB, Settings
from app.crosssite import CrossSiteGuard, SitePolicy
from app.db import create_engine, create_sessionmaker
from app.errors import install_error_handlers
from app.observability import measure_loop_lag
from app.repositories import ApiKeyRepository
from app.routers import health, legacy, runs, schedules, ui, webhooks
from app.services.auth import is_loopback, keys_required
from app.services.environments import EnvironmentImages
from app.services.followers import LiveLogs
from app.services.results import RunResults
from app.services.runs import RunLimits
from app.services.schedules import FireReport
from app.workers.base import LoopService
from app.workers.dispatcher import Dispatcher, LeaseKeeper
from app.workers.janitor import Janitor
from app.workers.notifier import Notifier, NotifierConfig
from app.workers.pipeline import PipelineConfig, RunOrchestrator
from app.workers.reconciler import Reconciler
from app.workers.scheduler import Scheduler
from app.workers.watcher import ContainerWatcher

log = logging.getLogger("taskdeploy")


class UnsafeStartup(RuntimeError):
    """The settings would expose the service without access control."""


class NotConfigured(RuntimeError):
    """A readiness check found a setting the service needs missing."""


async def check_exposure(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Auth may be off only while the service listens on loopback, and once keys exist the
    operator must say which buckets their owners' runs may use."""
    async with sessionmaker() as session:
        keys = ApiKeyRepository(session)
        active = await keys.active_count()
        ever_created = active > 0 or await keys.any_created()
    if not is_loopback(settings.host):
        if settings.auth == "disabled":
            raise UnsafeStartup(
                f"refusing to listen on {settings.host} with TASKDEPLOY_AUTH=disabled: access "
                "control may be off only on a loopback address"
            )
        if active == 0:
            raise UnsafeStartup(
                f"refusing to listen on {settings.host} without API keys: anyone who can reach "
                "it could run commands. Create one with `taskdeploy keys create --owner NAME "
                "--admin`, or listen on 127.0.0.1."
            )
    if bucket_allow_list_missing(settings, keys_ever_created=ever_created):
        raise UnsafeStartup(
            "refusing to start: API keys exist but TASKDEPLOY_ALLOWED_BUCKETS is empty, so "
            "every key's owner could read and write any bucket the service's S3 credentials "
            "reach. Set TASKDEPLOY_ALLOWED_BUCKETS to a comma-separated list of buckets (or "
            "'*' to allow any bucket on purpose)."
        )


async def check_engine(settings: Settings, runtime: RunBackend) -> None:
    """The backend must be able to cap a run's disk (unless the operator turned that off) and,
    when runs may have network, hold the job network with inter-container traffic off. A
    backend that cannot be reached yet is no reason to refuse: its runs fail with the reason."""
    try:
        await runtime.check(
            disk_limits=settings.disk_quota == "required",
            network=settings.job_network if settings.allow_network else None,
            images=list(dict.fromkeys([settings.default_image, *settings.image_allow_list])),
        )
    except BackendMisconfigured as exc:
        raise UnsafeStartup(str(exc)) from exc


def bucket_allow_list_missing(settings: Settings, *, keys_ever_created: bool) -> bool:
    """An empty global allow-list lets only the local user (no key) use any bucket; with keys
    their owners would get none, so the service says so at start-up and in /readyz."""
    return keys_ever_created and not settings.allowed_buckets


@dataclass
class AppContext:
    """Everything the routers and workers share, built once per process by the lifespan."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    runtime: RunBackend
    store: ObjectStore
    run_limits: RunLimits
    results: RunResults
    live_logs: LiveLogs
    environments: EnvironmentImages
    dispatcher: Dispatcher
    watcher: ContainerWatcher
    janitor: Janitor
    scheduler: Scheduler
    notifier: Notifier
    loops: list[LoopService] = field(default_factory=list)

    # A key is never deleted, so once one was seen the answer stays yes: only a service
    # that has never seen a key reads the table, on each anonymous request, so a key the CLI
    # made a moment ago closes it for the very next request (no cache that can be stale).
    _keys_seen: bool = False
    _readiness: dict[str, str] = field(default_factory=dict)  # each check's last result

    async def keys_created(self, session: AsyncSession) -> bool:
        if not self._keys_seen:
            self._keys_seen = await ApiKeyRepository(session).any_created()
        return self._keys_seen

    async def auth_required(self, session: AsyncSession) -> bool:
        """Whether a request without a key is refused (see `keys_required`)."""
        settings = self.settings
        if keys_required(settings.auth, settings.host, keys_ever_created=self._keys_seen):
            return True
        return keys_required(
            settings.auth, settings.host, keys_ever_created=await self.keys_created(session)
        )

    def wake_dispatcher(self) -> None:
        self.dispatcher.wake()

    def wake_scheduler(self) -> None:
        self.scheduler.wake()

    def on_schedule_fired(self, report: FireReport) -> None:
        for run_id in report.to_cancel:
            self.dispatcher.cancel(run_id)
        self.dispatcher.wake()

    def cancel_run(self, run_id: str) -> None:
        self.dispatcher.cancel(run_id)
        self.notifier.wake()  # a queued run is cancelled at once: its event is in the outbox

    async def readiness(self) -> dict[str, str]:
        """Each check's result: "ok", "stale" (a worker loop), or "error" with at most a fixed
        reason code. What went wrong goes to the service log, never into the answer, which
        anyone who can reach the port may read."""
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
            checks[f"worker:{loop.name}"] = "ok" if not stale or loop is self.watcher else "stale"
        return checks

    async def _ping_database(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def _check_buckets(self) -> None:
        """Keys made by the CLI while the service runs, with no bucket allow-list configured."""
        async with self.sessionmaker() as session:
            keys = await self.keys_created(session)
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
        if self._readiness.get(name) != result:
            if result == "ok":
                log.info("readiness check %s: ok", name)
            else:
                log.warning("readiness check %s failed: %s", name, detail)
        self._readiness[name] = result
        return result


def webhook_secret(settings: Settings) -> str:
    """The configured secret, or one made once and kept in the data dir (mode 0600)."""
    if settings.webhook_secret:
        return settings.webhook_secret
    path = settings.data_dir / "webhook-secret"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip()


def run_limits(settings: Settings) -> RunLimits:
    return RunLimits(
        allowed_images=tuple(settings.image_allow_list),
        default_image=settings.default_image,
        default_cpus=min(settings.default_cpus, settings.max_cpus),
        default_memory_mb=settings.default_memory_mb,
        max_cpus=settings.max_cpus,
        max_memory_mb=settings.max_memory_mb,
        default_disk_mb=settings.default_disk_mb,
        max_disk_mb=settings.max_disk_mb,
        default_timeout_seconds=settings.default_timeout_seconds,
        max_timeout_seconds=settings.max_timeout_seconds,
        max_command_bytes=settings.max_command_bytes,
        allow_network=settings.allow_network,
        allowed_buckets=tuple(settings.allowed_buckets),
        default_callback_url=settings.webhook_url,
        webhook_policy=settings.webhook_policy,
        allowed_buckets_by_owner={
            owner: tuple(buckets) for owner, buckets in settings.allowed_buckets_by_owner.items()
        },
    )


async def _open_store(settings: Settings, stack: AsyncExitStack) -> ObjectStore:
    if settings.uses_s3:
        s3 = S3ObjectStore(
            endpoint_url=None,
            region=settings.s3_region,
            max_concurrency=settings.s3_max_concurrency,
        )
        await s3.start()
        stack.push_async_callback(s3.close)
        return s3
    root = settings.effective_local_store_dir
    root.mkdir(parents=True, exist_ok=True)
    return LocalObjectStore(root)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        if settings.migrate_on_start:
            await asyncio.to_thread(migrate.upgrade, settings.effective_database_url)
        engine = create_engine(settings.effective_database_url)
        stack.push_async_callback(engine.dispose)
        sessionmaker = create_sessionmaker(engine)
        await check_exposure(settings, sessionmaker)
        runtime = DockerBackend(
            DockerRuntime(settings.docker_url),
            tmp_dir=settings.data_dir / "tmp",
            spool_memory_bytes=settings.spool_memory_bytes,
        )
        stack.push_async_callback(runtime.close)
        await check_engine(settings, runtime)
        store = await _open_store(settings, stack)

        environments = EnvironmentImages(
            DockerImages(runtime.docker),
            sessionmaker,
            template_version=settings.env_template_version,
            build_timeout=settings.build_timeout_seconds,
            build_limits=BuildLimits(
                memory_bytes=settings.build_memory_mb * MiB,
                nano_cpus=int(settings.build_cpus * 1e9),
                nofile=settings.nofile_limit,
            ),
        )
        watcher = ContainerWatcher(runtime)
        janitor = Janitor(
            environments,
            max_images=settings.image_cache_max_count,
            max_bytes=settings.image_cache_max_bytes,
            interval=settings.janitor_interval_seconds,
            prune_after_seconds=settings.build_timeout_seconds + 60,
        )
        executor = RunOrchestrator(
            config=PipelineConfig(
                instance_id=settings.instance_id,
                log_limit_bytes=settings.log_limit_bytes,
                metrics_interval=settings.metrics_interval_seconds,
                pids_limit=settings.pids_limit,
                tmp_size_mb=settings.tmp_size_mb,
                max_input_bytes=settings.max_input_bytes,
                max_input_files=settings.max_input_files,
                max_output_bytes=settings.max_output_bytes,
                max_output_files=settings.max_output_files,
                spool_memory_bytes=settings.spool_memory_bytes,
                tmp_dir=settings.data_dir / "tmp",
                job_network=settings.job_network,
                disk_quota=settings.disk_quota == "required",
                default_disk_mb=settings.default_disk_mb,
                nofile_limit=settings.nofile_limit,
                prepare_deadline_seconds=settings.prepare_deadline_seconds,
                finish_deadline_seconds=settings.finish_deadline_seconds,
                db_retry_seconds=settings.db_retry_seconds,
            ),
            sessionmaker=sessionmaker,
            backend=runtime,
            store=store,
            environments=environments,
            on_image_built=janitor.wake,
            on_settled=lambda: notifier.wake(),
        )
        dispatcher = Dispatcher(
            sessionmaker,
            executor.execute,
            instance_id=settings.instance_id,
            max_concurrent=settings.max_concurrent_runs,
            interval=settings.dispatch_interval_seconds,
            lease_seconds=settings.lease_seconds,
            phase_of=executor.phases.get,
        )
        leases = LeaseKeeper(sessionmaker, dispatcher, lease_seconds=settings.lease_seconds)
        reconciler = Reconciler(
            sessionmaker,
            runtime,
            dispatcher,
            lease_seconds=settings.lease_seconds,
            interval=settings.reconcile_interval_seconds,
        )
        notifier = Notifier(
            sessionmaker,
            HttpWebhookSender(max_response_bytes=settings.webhook_max_response_bytes),
            NotifierConfig(
                policy=settings.webhook_policy,
                operator_url=settings.webhook_url,
                operator_secret=webhook_secret(settings),
                total_seconds=settings.webhook_total_seconds,
                timeout_seconds=settings.webhook_timeout_seconds,
                max_in_flight=settings.webhook_max_in_flight,
                max_in_flight_per_owner=settings.webhook_max_in_flight_per_owner,
            ),
            max_idle=5.0,  # other replicas' events; this one's wake the notifier directly
        )
        scheduler = Scheduler(
            sessionmaker,
            run_limits(settings),
            max_catch_up=settings.scheduler_max_catch_up,
            grace_seconds=settings.scheduler_grace_seconds,
            max_idle=settings.scheduler_max_idle_seconds,
        )
        results = RunResults(store, settings.log_limit_bytes, runtime)
        context = AppContext(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            runtime=runtime,
            store=store,
            run_limits=run_limits(settings),
            results=results,
            live_logs=LiveLogs(
                results,
                sessionmaker,
                max_per_run=settings.max_followers_per_run,
                max_per_owner=settings.max_followers_per_owner,
                follow_max_seconds=settings.follow_max_seconds,
            ),
            environments=environments,
            dispatcher=dispatcher,
            watcher=watcher,
            janitor=janitor,
            scheduler=scheduler,
            notifier=notifier,
        )
        scheduler.on_fired = context.on_schedule_fired
        context.loops = [watcher, janitor, notifier]
        if settings.dispatcher_enabled:
            context.loops += [dispatcher, leases, reconciler]
        if settings.scheduler_enabled:
            context.loops.append(scheduler)
        app.state.context = context

        if settings.workers_enabled:
            for loop in context.loops:
                loop.start()
        log.info(
            "taskdeploy instance %s ready (database %s, object store %s)",
            settings.instance_id,
            engine.dialect.name,
            "s3" if settings.uses_s3 else f"local:{settings.effective_local_store_dir}",
        )
        # Everything made while starting (modules, models, the SDKs' service descriptions)
        # lives as long as the process: out of the collector's sight, a full collection
        # walks only what came later (seen here: 280 ms pauses of the loop become none).
        gc.freeze()
        lag = asyncio.create_task(measure_loop_lag(), name="loop-lag")
        try:
            yield
        finally:
            lag.cancel()
            await dispatcher.stop()
            await reconciler.stop()
            await dispatcher.drain(settings.shutdown_grace_seconds)
            for loop in (leases, scheduler, notifier, janitor, watcher):
                with contextlib.suppress(Exception):
                    await loop.stop()


def site_policy(settings: Settings) -> SitePolicy:
    return SitePolicy.build(settings.host, settings.allowed_hosts, settings.trusted_origins)


def _operation_id(route: APIRoute) -> str:
    return route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="taskdeploy",
        version="0.1.0",
        summary="Run shell commands in containers, on demand and on a schedule.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings or Settings()
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=app.state.settings.max_request_bytes)
    # Added last, so it runs first: a cross-site or wrong-Host request is refused unread.
    app.add_middleware(CrossSiteGuard, policy=site_policy(app.state.settings))
    app.include_router(health.router)
    app.include_router(runs.router)
    app.include_router(schedules.router)
    app.include_router(webhooks.router)
    app.include_router(legacy.router)
    app.include_router(ui.router)
    app.mount("/ui/static", StaticFiles(directory=ui.STATIC_DIR), name="ui-static")
    return app
