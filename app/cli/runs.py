"""Client side, runs: `run` (submit and follow) and `runs list|show|logs|cancel`."""

from __future__ import annotations

import shlex
import sys
import time
from typing import Annotated

import typer
from rich.markup import escape
from rich.status import Status

from app.cli.options import (
    EXIT_INTERRUPTED,
    POLL_SECONDS,
    RECONNECT_SECONDS,
    TERMINAL_STATES,
    WAIT_SECONDS,
    CommandArgument,
    CpusOption,
    EnvOption,
    ImageOption,
    InputOption,
    JsonOption,
    MemoryOption,
    OutputOption,
    PackageOption,
    TimeoutOption,
    TokenOption,
    UrlOption,
    app,
    err,
    out,
    runs_app,
)
from app.cli.render import (
    bucket_of,
    byte_size,
    fit_table,
    local_time,
    print_json,
    run_details,
    run_duration,
    state_markup,
)
from app.client import DEFAULT_URL, ApiError, JsonObject, TaskdeployClient


def command_line(words: list[str]) -> str:
    if not words:
        raise typer.BadParameter("a command is required after --", param_hint="COMMAND")
    return words[0] if len(words) == 1 else shlex.join(words)


def env_pairs(items: list[str] | None) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--env")
        env[name] = value
    return env


def run_body(
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
    body: JsonObject = {"command": command_line(command), "output": output}
    optional = {"input": input_, "image": image, "timeout_seconds": timeout}
    body.update({name: value for name, value in optional.items() if value is not None})
    if packages:
        body["packages"] = packages
    if env:
        body["env"] = env_pairs(env)
    resources = {"cpus": cpus, "memory_mb": memory}
    if any(value is not None for value in resources.values()):
        body["resources"] = {name: value for name, value in resources.items() if value is not None}
    return body


def run_exit_code(run: JsonObject) -> int:
    """0 for a run that succeeded; otherwise the command's exit code, or 1 when it has none
    (error, cancelled, timed_out): a run that did not succeed never exits 0."""
    if run["state"] == "succeeded":
        return 0
    code = run.get("exit_code")
    return code if isinstance(code, int) and 0 < code < 256 else 1


def next_look(api: TaskdeployClient, run_id: str) -> JsonObject:
    """The run at its end, or after WAIT_SECONDS, through the wait endpoint; a server with too
    many waiters (429) is polled once after POLL_SECONDS instead."""
    try:
        return api.wait_run(run_id, WAIT_SECONDS)
    except ApiError as exc:
        if exc.status != 429:
            raise
    time.sleep(POLL_SECONDS)
    return api.get_run(run_id)


def wait_for_end(api: TaskdeployClient, run: JsonObject, status: Status) -> JsonObject:
    run_id, state = run["id"], run["state"]
    started = time.monotonic()
    unreachable_since: float | None = None
    while state not in TERMINAL_STATES:
        try:
            run = next_look(api, run_id)
            elapsed = time.monotonic() - started
            unreachable_since = None
        except ApiError as exc:
            if not exc.unavailable:
                raise
            elapsed = time.monotonic() - started
            time.sleep(POLL_SECONDS)  # a restarting server is asked again shortly
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
        status.update(f"run {run_id}  {state_markup(run)}  {elapsed:.1f} s")
    return run


def write_log(api: TaskdeployClient, run_id: str, stream: str) -> None:
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


def report_end(api: TaskdeployClient, run: JsonObject, elapsed: float) -> None:
    """The command's stdout and stderr, byte-exact, then the artifacts and the verdict."""
    write_log(api, run["id"], "stdout")
    write_log(api, run["id"], "stderr")
    bucket = bucket_of(run["output"])
    for artifact in run.get("artifacts") or []:
        err.print(f"{byte_size(artifact['size']):>10}  s3://{bucket}/{escape(artifact['key'])}")
    verdict = f"run {run['id']} {state_markup(run)}"
    if run.get("exit_code") is not None:
        verdict += f", exit code {run['exit_code']}"
    if run.get("oom_killed"):
        verdict += ", killed out of memory"
    reason = run.get("status_reason")
    if reason and reason != f"exit code {run.get('exit_code')}":
        verdict += f": {escape(reason)}"
    err.print(f"{verdict} ({elapsed:.1f} s)")


def follow_run(api: TaskdeployClient, run: JsonObject) -> int:
    started = time.monotonic()
    err.print(f"[dim]run {run['id']} {run['state']}[/]")
    try:
        with err.status(f"run {run['id']}  {state_markup(run)}") as status:
            run = wait_for_end(api, run, status)
    except KeyboardInterrupt:
        err.print(
            f"taskdeploy: stopped following; run {run['id']} goes on "
            f"(`taskdeploy runs cancel {run['id']}` stops it)"
        )
        return EXIT_INTERRUPTED
    report_end(api, run, time.monotonic() - started)
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
    body = run_body(
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
        raise typer.Exit(follow_run(api, created))


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
        print_json(page)
        return
    rows = [
        [
            item["id"],
            state_markup(item),
            "-" if item.get("exit_code") is None else str(item["exit_code"]),
            local_time(item.get("created_at")),
            run_duration(item),
            escape(item["command"].replace("\n", " ")),
        ]
        for item in page["items"]
    ]
    headers = ["ID", "STATE", "EXIT", "CREATED", "DURATION", "COMMAND"]
    out.print(fit_table(headers, rows, flexible=5))
    if page.get("next_cursor"):
        err.print(f"[dim]more: --cursor {page['next_cursor']}[/]")


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
        print_json(found)
    else:
        out.print(run_details(found))


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
        print_json(cancelled)
    elif cancelled["state"] in TERMINAL_STATES:
        out.print(f"run {cancelled['id']} {state_markup(cancelled)}")
    else:
        out.print(f"run {cancelled['id']} {state_markup(cancelled)}: cancel requested, stopping")
