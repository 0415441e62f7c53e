"""Builds the app: settings → engine → adapters → services → workers, torn down in reverse."""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import migrate
from app.adapters.docker import DockerRuntime
from app.adapters.docker_backend import DockerBackend
from app.adapters.docker_images import DockerImages
from app.adapters.localfs import LocalObjectStore
from app.adapters.ports import BuildLimits, ObjectStore, RunBackend
from app.adapters.s3 import S3ObjectStore
from app.adapters.webhook_http import HttpWebhookSender
from app.bodylimit import BodyLimitMiddleware
from app.config import MiB, Settings
from app.context import AppContext, Workers
from app.crosssite import CrossSiteGuard, SitePolicy
from app.db import create_engine, create_sessionmaker
from app.exception_handlers import install_error_handlers
from app.observability import measure_loop_lag
from app.readiness import Readiness
from app.routers import health, legacy, runs, schedules, ui, webhooks
from app.services.auth import AccessPolicy
from app.services.environments import EnvironmentImages
from app.services.followers import LiveLogs
from app.services.results import RunResults
from app.services.runs import RunLimits
from app.services.waiters import RUN_WAITERS_INFO, RunWaiters
from app.startup_checks import check_engine, check_exposure
from app.workers.dispatcher import Dispatcher, LeaseKeeper
from app.workers.janitor import Janitor
from app.workers.notifier import Notifier, NotifierConfig
from app.workers.pipeline import PipelineConfig, RunOrchestrator
from app.workers.reconciler import Reconciler
from app.workers.scheduler import Scheduler
from app.workers.watcher import ContainerWatcher

log = logging.getLogger("taskdeploy")


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


def environment_images(
    settings: Settings,
    backend: DockerBackend,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> EnvironmentImages:
    return EnvironmentImages(
        DockerImages(backend.docker),
        sessionmaker,
        template_version=settings.env_template_version,
        build_timeout=settings.build_timeout_seconds,
        build_limits=BuildLimits(
            memory_bytes=settings.build_memory_mb * MiB,
            nano_cpus=int(settings.build_cpus * 1e9),
            nofile=settings.nofile_limit,
        ),
    )


def pipeline_config(settings: Settings) -> PipelineConfig:
    return PipelineConfig(
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
    )


def notifier(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> Notifier:
    return Notifier(
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


def build_workers(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    runtime: RunBackend,
    store: ObjectStore,
    environments: EnvironmentImages,
) -> Workers:
    watcher = ContainerWatcher(runtime)
    janitor = Janitor(
        environments,
        max_images=settings.image_cache_max_count,
        max_bytes=settings.image_cache_max_bytes,
        interval=settings.janitor_interval_seconds,
        prune_after_seconds=settings.build_timeout_seconds + 60,
    )
    outbox = notifier(settings, sessionmaker)
    executor = RunOrchestrator(
        config=pipeline_config(settings),
        sessionmaker=sessionmaker,
        backend=runtime,
        store=store,
        environments=environments,
        on_image_built=janitor.wake,
        on_settled=outbox.wake,
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
    reconciler = Reconciler(
        sessionmaker,
        runtime,
        dispatcher,
        lease_seconds=settings.lease_seconds,
        interval=settings.reconcile_interval_seconds,
    )
    scheduler = Scheduler(
        sessionmaker,
        run_limits(settings),
        max_catch_up=settings.scheduler_max_catch_up,
        grace_seconds=settings.scheduler_grace_seconds,
        max_idle=settings.scheduler_max_idle_seconds,
    )
    leases = LeaseKeeper(sessionmaker, dispatcher, lease_seconds=settings.lease_seconds)
    return Workers(watcher, janitor, dispatcher, leases, reconciler, outbox, scheduler)


def build_context(
    settings: Settings,
    engine: AsyncEngine,
    runtime: DockerBackend,
    store: ObjectStore,
) -> AppContext:
    sessionmaker = create_sessionmaker(engine)
    waiters = RunWaiters(
        sessionmaker,
        max_per_owner=settings.max_waiters_per_owner,
        max_total=settings.max_waiters,
        poll_seconds=settings.wait_poll_seconds,
        max_seconds=settings.wait_max_seconds,
    )
    # Every session of this process carries the waiters: a terminal transition committed by
    # any of them (a run's pipeline, a cancel, the reconciler) wakes its waiters at once.
    sessionmaker.configure(info={RUN_WAITERS_INFO: waiters})
    environments = environment_images(settings, runtime, sessionmaker)
    workers = build_workers(settings, sessionmaker, runtime, store, environments)
    results = RunResults(store, settings.log_limit_bytes, runtime)
    access = AccessPolicy(settings.auth, settings.host)
    readiness = Readiness(settings, engine, sessionmaker, runtime, store, access)
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
        waiters=waiters,
        environments=environments,
        workers=workers,
        access=access,
        readiness=readiness,
        loops=workers.enabled(
            dispatcher=settings.dispatcher_enabled, scheduler=settings.scheduler_enabled
        ),
    )
    workers.scheduler.on_fired = context.on_schedule_fired
    readiness.loops, readiness.never_stale = context.loops, (workers.watcher,)
    return context


async def open_adapters(
    settings: Settings, stack: AsyncExitStack
) -> tuple[AsyncEngine, DockerBackend, ObjectStore]:
    """The database (migrated when asked), the Docker engine and the object store, each
    closed by `stack`; refuses to start on settings or an engine that would be unsafe."""
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate.upgrade, settings.effective_database_url)
    engine = create_engine(settings.effective_database_url)
    stack.push_async_callback(engine.dispose)
    await check_exposure(settings, create_sessionmaker(engine))
    runtime = DockerBackend(
        DockerRuntime(settings.docker_url),
        tmp_dir=settings.data_dir / "tmp",
        spool_memory_bytes=settings.spool_memory_bytes,
    )
    stack.push_async_callback(runtime.close)
    await check_engine(settings, runtime)
    store = await _open_store(settings, stack)
    return engine, runtime, store


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        context = build_context(settings, *await open_adapters(settings, stack))
        app.state.context = context
        if settings.workers_enabled:
            for loop in context.loops:
                loop.start()
        log.info(
            "taskdeploy instance %s ready (database %s, object store %s)",
            settings.instance_id,
            context.engine.dialect.name,
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
            await context.workers.stop(settings.shutdown_grace_seconds)
            await context.waiters.close()


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
