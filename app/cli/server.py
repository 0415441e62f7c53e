"""Database side: `serve`, `migrate` and `keys` read the service's settings and database."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.cli.options import T, app, keys_app

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from app.config import Settings

# Database side: serve, migrate, keys. Their imports are deferred so that the client commands
# start quickly and need none of the service's settings.


def server_settings(**overrides: Any) -> Settings:
    from pydantic import ValidationError

    from app.config import Settings

    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:  # a refusal to start, said plainly, without a traceback
        for error in exc.errors():
            name = f"TASKDEPLOY_{str(error['loc'][0]).upper()}: " if error["loc"] else ""
            print(
                f"taskdeploy: {name}{error['msg'].removeprefix('Value error, ')}", file=sys.stderr
            )
        raise typer.Exit(2) from None
    from app.observability import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    return settings


async def with_sessionmaker(
    settings: Settings, work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]
) -> T:
    from app.db import create_engine, create_sessionmaker

    engine = create_engine(settings.effective_database_url)
    try:
        return await work(create_sessionmaker(engine))
    finally:
        await engine.dispose()


def apply_migrations(settings: Settings, *, quiet: bool = False) -> None:
    from app import migrate as migrations

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.effective_database_url)
    if not quiet:
        print(f"database at revision head: {settings.effective_database_url.split('@')[-1]}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="listen address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="listen port (default 8000)")] = None,
) -> None:
    """Apply database migrations and serve the API."""
    import uvicorn

    from app.main import create_app
    from app.startup_checks import UnsafeStartup, check_exposure

    settings = server_settings(host=host, port=port)
    if settings.effective_database_url.startswith("sqlite"):
        logging.getLogger("taskdeploy").info(
            "using SQLite at %s: one service process only (set TASKDEPLOY_DATABASE_URL to a "
            "PostgreSQL URL for several replicas)",
            settings.effective_database_url,
        )
    try:
        apply_migrations(settings, quiet=True)
        asyncio.run(with_sessionmaker(settings, lambda sm: check_exposure(settings, sm)))
    except UnsafeStartup as exc:
        print(f"taskdeploy: {exc}", file=sys.stderr)
        raise typer.Exit(2) from exc
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
        log_config=None,  # the root logger's handler (text or JSON) serves uvicorn too
    )


@app.command()
def migrate() -> None:
    """Apply database migrations and exit."""
    apply_migrations(server_settings())


def in_key_transaction(work: Callable[[AsyncSession], Awaitable[int]]) -> None:
    """Runs `work` in one transaction on the migrated database; exits with its code."""
    settings = server_settings()
    apply_migrations(settings, quiet=True)

    async def in_transaction(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
        async with sessionmaker() as session, session.begin():
            return await work(session)

    raise typer.Exit(asyncio.run(with_sessionmaker(settings, in_transaction)))


@keys_app.command("create")
def keys_create(
    owner: Annotated[str, typer.Option(help="who the key acts for")],
    admin: Annotated[bool, typer.Option(help="may see every owner's items")] = False,
) -> None:
    """Print a new token on stdout (shown once; only its SHA-256 is stored)."""
    from app.services.auth import create_key

    async def work(session: AsyncSession) -> int:
        try:
            key, token = await create_key(session, owner, admin=admin)
        except ValueError as exc:
            print(f"taskdeploy: {exc}", file=sys.stderr)
            return 2
        print(token)
        print(
            f"key {key.id} for {key.owner}{' (admin)' if key.admin else ''}: "
            "the token above is shown once; only its SHA-256 is stored",
            file=sys.stderr,
        )
        return 0

    in_key_transaction(work)


@keys_app.command("list")
def keys_list() -> None:
    """List keys, one a line: id, token prefix, owner, role, status (never the tokens)."""
    from app.repositories.keys import ApiKeyRepository

    async def work(session: AsyncSession) -> int:
        for key in await ApiKeyRepository(session).all():
            status = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
            role = "admin" if key.admin else "user"
            print(f"{key.id}  {key.token_prefix}…  {key.owner:<20} {role:<5}  {status}")
        return 0

    in_key_transaction(work)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key's id (keys list)")]) -> None:
    """Revoke a key by id; requests with it are refused at once."""
    from app.repositories.keys import ApiKeyRepository

    async def work(session: AsyncSession) -> int:
        if not await ApiKeyRepository(session).revoke(key_id):
            print(f"taskdeploy: no active key {key_id}", file=sys.stderr)
            return 1
        print(f"revoked {key_id}")
        return 0

    in_key_transaction(work)
