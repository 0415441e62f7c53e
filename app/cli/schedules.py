"""Client side, schedules: `schedules list|create|pause|resume|trigger`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from app.cli.options import (
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
    err,
    out,
    schedules_app,
)
from app.cli.render import (
    fit_table,
    next_fire,
    print_json,
    schedule_state,
    zone_time,
)
from app.cli.runs import follow_run, run_body
from app.client import DEFAULT_URL, JsonObject, TaskdeployClient


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
        print_json(page)
        return
    rows = [
        [
            item["id"],
            escape(item["name"]),
            escape(item["cron"]),
            escape(item["timezone"]),
            schedule_state(item),
            next_fire(item),
            zone_time(item.get("last_fired_at"), item["timezone"]),
        ]
        for item in page["items"]
    ]
    headers = ["ID", "NAME", "CRON", "TIME ZONE", "STATE", "NEXT FIRE", "LAST FIRED"]
    out.print(fit_table(headers, rows, flexible=1))
    if page.get("next_cursor"):
        err.print(f"[dim]more: --cursor {page['next_cursor']}[/]")


def print_schedule(schedule: JsonObject, action: str) -> None:
    out.print(
        f"schedule {schedule['id']} ({escape(schedule['name'])}) {action}: "
        f"{schedule_state(schedule)}, next fire {next_fire(schedule)}"
    )


NameOption = Annotated[str, typer.Option(help="a name for people")]
CronOption = Annotated[
    str,
    typer.Option(
        help="5 fields (m h dom mon dow), or 6 with seconds last; or @hourly, @daily, ..."
    ),
]
TimezoneOption = Annotated[
    str | None, typer.Option(help="IANA time zone the cron is read in (default UTC)")
]
ConcurrencyOption = Annotated[
    str | None,
    typer.Option(
        metavar="allow|forbid|replace",
        help="when a fire finds the previous run unfinished (default allow)",
    ),
]
MisfireOption = Annotated[
    str | None,
    typer.Option(
        metavar="skip|run_once|run_all",
        help="what to do with fire times missed while down (default skip)",
    ),
]
DeadlineOption = Annotated[
    int | None, typer.Option(help="seconds a missed fire may still be caught up")
]
PausedOption = Annotated[bool, typer.Option("--paused", help="create it paused")]


@schedules_app.command(
    "create", options_metavar="[OPTIONS] --", context_settings={"allow_interspersed_args": False}
)
def schedules_create(
    command: CommandArgument,
    name: NameOption,
    cron: CronOption,
    output: OutputOption,
    timezone: TimezoneOption = None,
    input_: InputOption = None,
    package: PackageOption = None,
    env: EnvOption = None,
    cpus: CpusOption = None,
    memory: MemoryOption = None,
    timeout: TimeoutOption = None,
    image: ImageOption = None,
    concurrency_policy: ConcurrencyOption = None,
    misfire_policy: MisfireOption = None,
    starting_deadline: DeadlineOption = None,
    paused: PausedOption = False,
    json_: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Create a schedule: `taskdeploy schedules create --name n --cron '0 3 * * *' -o s3://b/p/ -- cmd`."""
    body: JsonObject = {
        "name": name,
        "cron": cron,
        "run": run_body(
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
        print_json(created)
        return
    print_schedule(created, "created")
    for fire in created.get("next_fire_times") or []:
        out.print(f"  {zone_time(fire, created['timezone'])}")


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
        print_json(paused)
    else:
        print_schedule(paused, "paused")


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
        print_json(resumed)
    else:
        print_schedule(resumed, "resumed")


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
            print_json(created)
        elif not follow:
            print(created["id"])
        if follow:
            raise typer.Exit(follow_run(api, created))
