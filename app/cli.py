"""The `taskdeploy` command: serve and migrate, manage API keys, and drive the API (runs, schedules).

`serve`, `migrate` and `keys` work on the service's own database and read the service's settings.
Every other command is a client of the HTTP API at `--url` (or TASKDEPLOY_URL), authenticated by
`--token` (or TASKDEPLOY_TOKEN) sent as a Bearer token.

Exit codes: 0 success; `run` (following) exits with the command's exit code, or 1 when the run
ended error, cancelled or timed_out without one; 2 a usage error or an API answer 4xx; 3 the API
could not be reached or answered 5xx; 130 interrupted while following (the run goes on).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table
from rich.text import Text

from app.client import DEFAULT_URL, ApiError, JsonObject, TaskdeployClient

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from app.config import Settings

T = TypeVar("T")

TERMINAL_STATES = frozenset({"succeeded", "failed", "timed_out", "cancelled", "error"})
POLL_SECONDS = 0.5
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


# Database side: serve, migrate, keys. Their imports are deferred so that the client commands
# start quickly and need none of the service's settings.


def _server_settings(**overrides: Any) -> Settings:
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


async def _with_sessionmaker(
    settings: Settings, work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]
) -> T:
    from app.db import create_engine, create_sessionmaker

    engine = create_engine(settings.effective_database_url)
    try:
        return await work(create_sessionmaker(engine))
    finally:
        await engine.dispose()


def _migrate(settings: Settings, *, quiet: bool = False) -> None:
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

    settings = _server_settings(host=host, port=port)
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
    _migrate(_server_settings())


def _keys(work: Callable[[AsyncSession], Awaitable[int]]) -> None:
    """Runs `work` in one transaction on the migrated database; exits with its code."""
    settings = _server_settings()
    _migrate(settings, quiet=True)

    async def in_transaction(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
        async with sessionmaker() as session, session.begin():
            return await work(session)

    raise typer.Exit(asyncio.run(_with_sessionmaker(settings, in_transaction)))


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

    _keys(work)


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

    _keys(work)


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

    _keys(work)


# Client side: everything below talks to the HTTP API.


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _command_line(words: list[str]) -> str:
    if not words:
        raise typer.BadParameter("a command is required after --", param_hint="COMMAND")
    return words[0] if len(words) == 1 else shlex.join(words)


def _env_pairs(items: list[str] | None) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--env")
        env[name] = value
    return env


def _run_body(
    command: list[str],
    *,
    output: str,
    input_: str | None,
    packages: list[str] | None,
    env: list[str] | None,
    cpus: float | None,
    memory: int | None,
    timeout: int | None,
    image: str | None,
) -> JsonObject:
    """The JSON of a RunCreate, with only what was given: the service fills in its defaults."""
    body: JsonObject = {"command": _command_line(command), "output": output}
    optional = {"input": input_, "image": image, "timeout_seconds": timeout}
    body.update({name: value for name, value in optional.items() if value is not None})
    if packages:
        body["packages"] = packages
    if env:
        body["env"] = _env_pairs(env)
    resources = {"cpus": cpus, "memory_mb": memory}
    if any(value is not None for value in resources.values()):
        body["resources"] = {name: value for name, value in resources.items() if value is not None}
    return body


def _when(value: str | None) -> str:
    """An API timestamp in the user's local time, to the second."""
    if not value:
        return "-"
    try:
        return f"{datetime.fromisoformat(value).astimezone():%Y-%m-%d %H:%M:%S}"
    except ValueError:
        return value


def _when_in(value: str | None, zone: str) -> str:
    """An API timestamp in a schedule's time zone (the user's when the zone is unknown here)."""
    if not value:
        return "-"
    try:
        return f"{datetime.fromisoformat(value).astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M:%S %Z}"
    except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        return _when(value)


def _duration(run: JsonObject) -> str:
    if not run.get("started_at"):
        return "-"
    started = datetime.fromisoformat(run["started_at"])
    end = datetime.fromisoformat(run["finished_at"]) if run.get("finished_at") else None
    seconds = ((end or datetime.now(started.tzinfo)) - started).total_seconds()
    return f"{seconds:.1f} s"


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _table(headers: list[str], rows: list[list[str]], *, flexible: int) -> Table:
    """A borderless table whose columns keep their full width, except `flexible`, which is cut
    short (with an ellipsis) when the terminal is narrow: ids and times stay whole."""
    table = Table(*headers, box=None)
    for index, column in enumerate(table.columns):
        column.no_wrap = True
        cells = [headers[index], *(row[index] for row in rows)]
        width = max(Text.from_markup(cell).cell_len for cell in cells)
        if index == flexible:
            column.overflow = "ellipsis"
            width = min(width, 16)
        column.min_width = width
    for row in rows:
        table.add_row(*row)
    return table


def _state_style(state: str) -> str:
    if state == "succeeded":
        return "green"
    if state in TERMINAL_STATES:
        return "red"
    return "yellow"


def _state(run: JsonObject) -> str:
    state = str(run["state"])
    return f"[{_state_style(state)}]{state}[/]"


def _bucket(uri: str) -> str:
    return uri.removeprefix("s3://").split("/", 1)[0]


def run_exit_code(run: JsonObject) -> int:
    """0 for a run that succeeded; otherwise the command's exit code, or 1 when it has none
    (error, cancelled, timed_out): a run that did not succeed never exits 0."""
    if run["state"] == "succeeded":
        return 0
    code = run.get("exit_code")
    return code if isinstance(code, int) and 0 < code < 256 else 1


def _wait_for_end(api: TaskdeployClient, run: JsonObject, status: Status) -> JsonObject:
    run_id, state = run["id"], run["state"]
    started = time.monotonic()
    unreachable_since: float | None = None
    while state not in TERMINAL_STATES:
        time.sleep(POLL_SECONDS)
        elapsed = time.monotonic() - started
        try:
            run = api.get_run(run_id)
            unreachable_since = None
        except ApiError as exc:
            if not exc.unavailable:
                raise
            if unreachable_since is None:
                unreachable_since = time.monotonic()
                if not err.is_terminal:
                    err.print(
                        f"taskdeploy: {escape(exc.message)}; retrying for {RECONNECT_SECONDS:.0f} s"
                    )
            elif time.monotonic() - unreachable_since > RECONNECT_SECONDS:
                raise
            status.update(f"run {run_id}  {state}  {elapsed:.1f} s  (retrying: {escape(str(exc))})")
            continue
        if run["state"] != state and not err.is_terminal:
            # No spinner without a terminal (CI logs): one line per state change instead.
            err.print(f"run {run_id}: {run['state']} after {elapsed:.1f} s")
        state = run["state"]
        status.update(f"run {run_id}  {_state(run)}  {elapsed:.1f} s")
    return run


def _write_log(api: TaskdeployClient, run_id: str, stream: str) -> None:
    try:
        data = api.run_log(run_id, stream)
    except ApiError as exc:
        if exc.status == 404:  # the run ended before the command ran: nothing was written
            return
        raise
    target = sys.stdout if stream == "stdout" else sys.stderr
    target.flush()
    target.buffer.write(data)
    target.buffer.flush()


def _report_end(api: TaskdeployClient, run: JsonObject, elapsed: float) -> None:
    """The command's stdout and stderr, byte-exact, then the artifacts and the verdict."""
    _write_log(api, run["id"], "stdout")
    _write_log(api, run["id"], "stderr")
    bucket = _bucket(run["output"])
    for artifact in run.get("artifacts") or []:
        err.print(f"{_size(artifact['size']):>10}  s3://{bucket}/{escape(artifact['key'])}")
    verdict = f"run {run['id']} {_state(run)}"
    if run.get("exit_code") is not None:
        verdict += f", exit code {run['exit_code']}"
    if run.get("oom_killed"):
        verdict += ", killed out of memory"
    reason = run.get("status_reason")
    if reason and reason != f"exit code {run.get('exit_code')}":
        verdict += f": {escape(reason)}"
    err.print(f"{verdict} ({elapsed:.1f} s)")


def _follow(api: TaskdeployClient, run: JsonObject) -> int:
    started = time.monotonic()
    err.print(f"[dim]run {run['id']} {run['state']}[/]")
    try:
        with err.status(f"run {run['id']}  {_state(run)}") as status:
            run = _wait_for_end(api, run, status)
    except KeyboardInterrupt:
        err.print(
            f"taskdeploy: stopped following; run {run['id']} goes on "
            f"(`taskdeploy runs cancel {run['id']}` stops it)"
        )
        return EXIT_INTERRUPTED
    _report_end(api, run, time.monotonic() - started)
    return run_exit_code(run)


@app.command(options_metavar="[OPTIONS] --", context_settings={"allow_interspersed_args": False})
def run(
    command: CommandArgument,
    output: OutputOption,
    input_: InputOption = None,
    package: PackageOption = None,
    env: EnvOption = None,
    cpus: CpusOption = None,
    memory: MemoryOption = None,
    timeout: TimeoutOption = None,
    image: ImageOption = None,
    follow: Annotated[
        bool,
        typer.Option(
            help="wait for the end, print the command's stdout and stderr and exit with its "
            "exit code; --no-follow prints the run id at once"
        ),
    ] = True,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Run a command in a container: `taskdeploy run -o s3://bucket/out/ -- make test`.

    Following, the exit code is the command's (1 when the run ended error, cancelled or
    timed_out without one); Ctrl-C stops following, not the run.
    """
    body = _run_body(
        command,
        output=output,
        input_=input_,
        packages=package,
        env=env,
        cpus=cpus,
        memory=memory,
        timeout=timeout,
        image=image,
    )
    with TaskdeployClient(url, token) as api:
        created = api.create_run(body)
        if not follow:
            print(created["id"])
            return
        raise typer.Exit(_follow(api, created))


@runs_app.command("list")
def runs_list(
    state: Annotated[
        list[str] | None,
        typer.Option(help="only runs in this state (repeatable), e.g. running, failed"),
    ] = None,
    limit: Annotated[int, typer.Option(help="at most this many (1-200)")] = 20,
    cursor: Annotated[
        str | None, typer.Option(help="continue after a previous page (its next_cursor)")
    ] = None,
    json_: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List runs, newest first."""
    with TaskdeployClient(url, token) as api:
        page = api.list_runs(states=state, limit=limit, cursor=cursor)
    if json_:
        _print_json(page)
        return
    rows = [
        [
            item["id"],
            _state(item),
            "-" if item.get("exit_code") is None else str(item["exit_code"]),
            _when(item.get("created_at")),
            _duration(item),
            escape(item["command"].replace("\n", " ")),
        ]
        for item in page["items"]
    ]
    headers = ["ID", "STATE", "EXIT", "CREATED", "DURATION", "COMMAND"]
    out.print(_table(headers, rows, flexible=5))
    if page.get("next_cursor"):
        err.print(f"[dim]more: --cursor {page['next_cursor']}[/]")


def _run_details(run: JsonObject) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    resources = run.get("resources") or {}
    rows: list[tuple[str, str]] = [
        ("id", run["id"]),
        ("state", _state(run)),
        ("reason", escape(run.get("status_reason") or "-")),
        ("exit code", "-" if run.get("exit_code") is None else str(run["exit_code"])),
        ("command", escape(run["command"])),
        ("image", escape(run["image"])),
        ("packages", escape(" ".join(run.get("packages") or []) or "-")),
        ("input", escape(run.get("input") or "-")),
        ("output", escape(run["output"])),
        ("resources", f"{resources.get('cpus')} CPUs, {resources.get('memory_mb')} MiB"),
        ("timeout", f"{run.get('timeout_seconds')} s"),
        ("env", escape(" ".join(sorted(run.get("env") or {})) or "-")),  # names only
        ("created", _when(run.get("created_at"))),
        ("started", _when(run.get("started_at"))),
        ("finished", _when(run.get("finished_at"))),
        ("duration", _duration(run)),
    ]
    if run.get("oom_killed"):
        rows.append(("oom", "killed out of memory"))
    if (run.get("attempt") or 1) > 1:
        rows.append(("attempt", str(run["attempt"])))
    if run.get("schedule_id"):
        rows.append(("schedule", f"{run['schedule_id']} (for {_when(run.get('scheduled_for'))})"))
    metrics = run.get("metrics")
    if metrics:
        rows.append(
            (
                "metrics",
                f"{metrics['cpu_seconds']:.2f} CPU s, CPU avg {metrics['cpu_percent_avg']:.0f}% "
                f"max {metrics['cpu_percent_max']:.0f}%, "
                f"peak memory {_size(metrics['peak_memory_bytes'])}",
            )
        )
    bucket = _bucket(run["output"])
    for index, artifact in enumerate(run.get("artifacts") or []):
        rows.append(
            (
                "artifacts" if index == 0 else "",
                f"s3://{bucket}/{escape(artifact['key'])}  {_size(artifact['size'])}",
            )
        )
    for label, value in rows:
        grid.add_row(label, value)
    return grid


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(metavar="ID")],
    json_: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """One run: state, exit code, limits, times, metrics and artifacts."""
    with TaskdeployClient(url, token) as api:
        found = api.get_run(run_id)
    if json_:
        _print_json(found)
    else:
        out.print(_run_details(found))


@runs_app.command("logs")
def runs_logs(
    run_id: Annotated[str, typer.Argument(metavar="ID")],
    stream: Annotated[str, typer.Option(metavar="stdout|stderr", help="which log")] = "stdout",
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Print a finished run's stdout (or stderr) to stdout, byte for byte."""
    with TaskdeployClient(url, token) as api:
        data = api.run_log(run_id, stream)
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@runs_app.command("cancel")
def runs_cancel(
    run_id: Annotated[str, typer.Argument(metavar="ID")],
    json_: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Cancel a queued, preparing or running run (a running container is stopped)."""
    with TaskdeployClient(url, token) as api:
        cancelled = api.cancel_run(run_id)
    if json_:
        _print_json(cancelled)
    elif cancelled["state"] in TERMINAL_STATES:
        out.print(f"run {cancelled['id']} {_state(cancelled)}")
    else:
        out.print(f"run {cancelled['id']} {_state(cancelled)}: cancel requested, stopping")


def _schedule_state(schedule: JsonObject) -> str:
    return "[yellow]paused[/]" if schedule["paused"] else "[green]active[/]"


def _next_fire(schedule: JsonObject) -> str:
    return _when_in(schedule.get("next_fire_at"), schedule["timezone"])


@schedules_app.command("list")
def schedules_list(
    limit: Annotated[int, typer.Option(help="at most this many (1-200)")] = 50,
    cursor: Annotated[
        str | None, typer.Option(help="continue after a previous page (its next_cursor)")
    ] = None,
    json_: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List schedules, newest first."""
    with TaskdeployClient(url, token) as api:
        page = api.list_schedules(limit=limit, cursor=cursor)
    if json_:
        _print_json(page)
        return
    rows = [
        [
            item["id"],
            escape(item["name"]),
            escape(item["cron"]),
            escape(item["timezone"]),
            _schedule_state(item),
            _next_fire(item),
            _when_in(item.get("last_fired_at"), item["timezone"]),
        ]
        for item in page["items"]
    ]
    headers = ["ID", "NAME", "CRON", "TIME ZONE", "STATE", "NEXT FIRE", "LAST FIRED"]
    out.print(_table(headers, rows, flexible=1))
    if page.get("next_cursor"):
        err.print(f"[dim]more: --cursor {page['next_cursor']}[/]")


def _print_schedule(schedule: JsonObject, action: str) -> None:
    out.print(
        f"schedule {schedule['id']} ({escape(schedule['name'])}) {action}: "
        f"{_schedule_state(schedule)}, next fire {_next_fire(schedule)}"
    )


@schedules_app.command(
    "create", options_metavar="[OPTIONS] --", context_settings={"allow_interspersed_args": False}
)
def schedules_create(
    command: CommandArgument,
    name: Annotated[str, typer.Option(help="a name for people")],
    cron: Annotated[
        str,
        typer.Option(
            help="5 fields (m h dom mon dow), or 6 with seconds last; or @hourly, @daily, ..."
        ),
    ],
    output: OutputOption,
    timezone: Annotated[
        str | None, typer.Option(help="IANA time zone the cron is read in (default UTC)")
    ] = None,
    input_: InputOption = None,
    package: PackageOption = None,
    env: EnvOption = None,
    cpus: CpusOption = None,
    memory: MemoryOption = None,
    timeout: TimeoutOption = None,
    image: ImageOption = None,
    concurrency_policy: Annotated[
        str | None,
        typer.Option(
            metavar="allow|forbid|replace",
            help="when a fire finds the previous run unfinished (default allow)",
        ),
    ] = None,
    misfire_policy: Annotated[
        str | None,
        typer.Option(
            metavar="skip|run_once|run_all",
            help="what to do with fire times missed while down (default skip)",
        ),
    ] = None,
    starting_deadline: Annotated[
        int | None, typer.Option(help="seconds a missed fire may still be caught up")
    ] = None,
    paused: Annotated[bool, typer.Option("--paused", help="create it paused")] = False,
    json_: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Create a schedule: `taskdeploy schedules create --name n --cron '0 3 * * *' -o s3://b/p/ -- cmd`."""
    body: JsonObject = {
        "name": name,
        "cron": cron,
        "run": _run_body(
            command,
            output=output,
            input_=input_,
            packages=package,
            env=env,
            cpus=cpus,
            memory=memory,
            timeout=timeout,
            image=image,
        ),
    }
    optional = {
        "timezone": timezone,
        "concurrency_policy": concurrency_policy,
        "misfire_policy": misfire_policy,
        "starting_deadline_seconds": starting_deadline,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if paused:
        body["paused"] = True
    with TaskdeployClient(url, token) as api:
        created = api.create_schedule(body)
    if json_:
        _print_json(created)
        return
    _print_schedule(created, "created")
    for fire in created.get("next_fire_times") or []:
        out.print(f"  {_when_in(fire, created['timezone'])}")


ScheduleIdArgument = Annotated[str, typer.Argument(metavar="ID")]


@schedules_app.command("pause")
def schedules_pause(
    schedule_id: ScheduleIdArgument,
    json_: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Stop a schedule firing until it is resumed."""
    with TaskdeployClient(url, token) as api:
        paused = api.pause_schedule(schedule_id)
    if json_:
        _print_json(paused)
    else:
        _print_schedule(paused, "paused")


@schedules_app.command("resume")
def schedules_resume(
    schedule_id: ScheduleIdArgument,
    catch_up: Annotated[
        bool, typer.Option(help="send fire times missed while paused through the misfire policy")
    ] = False,
    json_: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Fire again; the next fire is computed from now."""
    with TaskdeployClient(url, token) as api:
        resumed = api.resume_schedule(schedule_id, catch_up=catch_up)
    if json_:
        _print_json(resumed)
    else:
        _print_schedule(resumed, "resumed")


@schedules_app.command("trigger")
def schedules_trigger(
    schedule_id: ScheduleIdArgument,
    follow: Annotated[
        bool, typer.Option(help="wait for the run like `taskdeploy run` and exit with its code")
    ] = False,
    json_: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Run a schedule's command once now, outside the cron; prints the run id."""
    with TaskdeployClient(url, token) as api:
        created = api.trigger_schedule(schedule_id)
        if json_:
            _print_json(created)
        elif not follow:
            print(created["id"])
        if follow:
            raise typer.Exit(_follow(api, created))


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


if __name__ == "__main__":
    sys.exit(main())
