"""The CLI's shared pieces: the command groups, their options, the consoles and exit codes."""

from __future__ import annotations

from typing import Annotated, TypeVar

import typer
from rich.console import Console

T = TypeVar("T")

TERMINAL_STATES = frozenset({"succeeded", "failed", "timed_out", "cancelled", "error"})
POLL_SECONDS = 0.5
# One wait request lasts at most this long (the server answers the moment the run ends); each
# answer also shows the state the run is in by then.
WAIT_SECONDS = 2.0
# While following, a restarting or briefly unreachable server is waited for this long.
RECONNECT_SECONDS = 60.0
EXIT_API_REFUSED = 2
EXIT_API_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130

# stdout carries data (ids, JSON, tables, logs); everything about the CLI's progress goes to stderr.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    name="taskdeploy",
    help="Run shell commands in containers, on demand and on cron schedules.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,  # locals would include the API token
)
keys_app = typer.Typer(help="API keys (database side): create, list, revoke.", no_args_is_help=True)
runs_app = typer.Typer(help="Runs: list, show, logs, cancel.", no_args_is_help=True)
schedules_app = typer.Typer(
    help="Cron schedules: list, create, pause, resume, trigger.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.add_typer(runs_app, name="runs")
app.add_typer(schedules_app, name="schedules")

UrlOption = Annotated[
    str, typer.Option("--url", envvar="TASKDEPLOY_URL", help="base URL of the taskdeploy API")
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="TASKDEPLOY_TOKEN",
        help="API key, sent as a Bearer token (prefer the environment variable: arguments "
        "show in the process list)",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print the API's JSON answer")]
CommandArgument = Annotated[
    list[str],
    typer.Argument(
        metavar="COMMAND...",
        help="the command, after `--`: one word is sent as-is (a whole shell line), several "
        "are joined with shlex.join",
        show_default=False,
    ),
]
OutputOption = Annotated[
    str, typer.Option("--output", "-o", help="s3://bucket/prefix/ where <run_id>/ is written")
]
InputOption = Annotated[
    str | None, typer.Option("--input", "-i", help="s3://bucket/prefix/ staged to $INPUT_DIR")
]
PackageOption = Annotated[
    list[str] | None,
    typer.Option("--package", "-p", help="a Linux package to install (repeatable)"),
]
EnvOption = Annotated[
    list[str] | None,
    typer.Option("--env", "-e", metavar="NAME=VALUE", help="an environment variable (repeatable)"),
]
CpusOption = Annotated[float | None, typer.Option("--cpus", help="CPU limit (fractions allowed)")]
MemoryOption = Annotated[int | None, typer.Option("--memory", help="memory limit in MiB")]
TimeoutOption = Annotated[int | None, typer.Option("--timeout", help="time limit in seconds")]
ImageOption = Annotated[
    str | None, typer.Option("--image", help="base image (one the operator allows)")
]
