"""The `taskdeploy` command: serve the API (after migrating) or just migrate."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from app import migrate
from app.config import Settings


def _serve(settings: Settings) -> int:
    from app.main import create_app

    if settings.effective_database_url.startswith("sqlite"):
        logging.getLogger("taskdeploy").info(
            "using SQLite at %s: one service process only (set TASKDEPLOY_DATABASE_URL to a "
            "PostgreSQL URL for several replicas)",
            settings.effective_database_url,
        )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
    )
    return 0


def _migrate(settings: Settings) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.effective_database_url)
    print(f"database at revision head: {settings.effective_database_url.split('@')[-1]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taskdeploy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="apply migrations and serve the API")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8000)")
    commands.add_parser("migrate", help="apply database migrations and exit")
    args = parser.parse_args(argv)

    overrides = {
        k: v
        for k, v in {"host": args.__dict__.get("host"), "port": args.__dict__.get("port")}.items()
        if v is not None
    }
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "serve":
        return _serve(settings)
    return _migrate(settings)


if __name__ == "__main__":
    sys.exit(main())
