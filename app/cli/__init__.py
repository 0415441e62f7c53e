"""The `taskdeploy` command: serve and migrate, manage API keys, and drive the API (runs, schedules).

`serve`, `migrate` and `keys` work on the service's own database and read the service's settings.
Every other command is a client of the HTTP API at `--url` (or TASKDEPLOY_URL), authenticated by
`--token` (or TASKDEPLOY_TOKEN) sent as a Bearer token.

Exit codes: 0 success; `run` (following) exits with the command's exit code, or 1 when the run
ended error, cancelled or timed_out without one; 2 a usage error or an API answer 4xx; 3 the API
could not be reached or answered 5xx; 130 interrupted while following (the run goes on).
"""

from __future__ import annotations

import sys

from rich.markup import escape

# Importing the command modules registers their commands on `app`, in the order `--help` lists
# them: the database side first.
# isort: off
from app.cli import server  # noqa: F401
from app.cli import runs, schedules  # noqa: F401

# isort: on
from app.cli.options import EXIT_API_REFUSED, EXIT_API_UNAVAILABLE, app, err
from app.client import ApiError

__all__ = ["main"]


def _api_error_exit(exc: ApiError) -> int:
    message = exc.message
    if exc.field and exc.field not in message:
        message = f"{exc.field}: {message}"
    if exc.status == 401:
        message += " (set TASKDEPLOY_TOKEN or --token)"
    err.print(f"taskdeploy: {escape(message)}", style="red")
    return EXIT_API_UNAVAILABLE if exc.unavailable else EXIT_API_REFUSED


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, prog_name="taskdeploy")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except ApiError as exc:
        return _api_error_exit(exc)
    return 0
