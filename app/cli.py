"""The `taskdeploy` command: serve the API (after migrating), migrate, manage API keys."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import uvicorn
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import migrate
from app.config import Settings
from app.db import create_engine, create_sessionmaker
from app.repositories import ApiKeyRepository
from app.services.auth import create_key

T = TypeVar("T")


def _serve(settings: Settings) -> int:
    from app.main import UnsafeStartup, check_exposure, create_app

    if settings.effective_database_url.startswith("sqlite"):
        logging.getLogger("taskdeploy").info(
            "using SQLite at %s: one service process only (set TASKDEPLOY_DATABASE_URL to a "
            "PostgreSQL URL for several replicas)",
            settings.effective_database_url,
        )
    try:
        _migrate(settings, quiet=True)
        asyncio.run(_with_sessionmaker(settings, lambda sm: check_exposure(settings, sm)))
    except UnsafeStartup as exc:
        print(f"taskdeploy: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
    )
    return 0


async def _with_sessionmaker(
    settings: Settings, work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]
) -> T:
    engine = create_engine(settings.effective_database_url)
    try:
        return await work(create_sessionmaker(engine))
    finally:
        await engine.dispose()


def _migrate(settings: Settings, *, quiet: bool = False) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.effective_database_url)
    if not quiet:
        print(f"database at revision head: {settings.effective_database_url.split('@')[-1]}")
    return 0


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    engine = create_engine(settings.effective_database_url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            repo = ApiKeyRepository(session)
            if args.keys_command == "create":
                try:
                    key, token = await create_key(session, args.owner, admin=args.admin)
                except ValueError as exc:
                    print(f"taskdeploy: {exc}", file=sys.stderr)
                    return 2
                print(token)
                print(
                    f"key {key.id} for {key.owner}{' (admin)' if key.admin else ''}: "
                    "the token above is shown once; only its SHA-256 is stored",
                    file=sys.stderr,
                )
            elif args.keys_command == "list":
                for key in await repo.all():
                    status = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
                    role = "admin" if key.admin else "user"
                    print(f"{key.id}  {key.token_prefix}…  {key.owner:<20} {role:<5}  {status}")
            elif not await repo.revoke(args.key_id):
                print(f"taskdeploy: no active key {args.key_id}", file=sys.stderr)
                return 1
            else:
                print(f"revoked {args.key_id}")
        return 0
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taskdeploy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="apply migrations and serve the API")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8000)")
    commands.add_parser("migrate", help="apply database migrations and exit")
    keys = commands.add_parser("keys", help="API keys: create, list, revoke")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="print a new token (shown once)")
    create.add_argument("--owner", required=True)
    create.add_argument("--admin", action="store_true", help="may see every owner's items")
    key_commands.add_parser("list", help="list keys (never the tokens)")
    revoke = key_commands.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)

    overrides = {
        name: getattr(args, name)
        for name in ("host", "port")
        if getattr(args, name, None) is not None
    }
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "serve":
        return _serve(settings)
    if args.command == "keys":
        _migrate(settings, quiet=True)
        return asyncio.run(_keys(settings, args))
    return _migrate(settings)


if __name__ == "__main__":
    sys.exit(main())
