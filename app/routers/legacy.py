"""/deploy and /submit_task: the bodies the replaced service accepted, so its users' scripts
keep working. Deprecated: new clients use /v1/runs and /v1/schedules."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, status
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from app.deps import CurrentPrincipal, RunServiceDep, ScheduleServiceDep
from app.errors import AppError, validation_details
from app.schemas.common import ErrorResponse
from app.schemas.runs import RunCreate
from app.schemas.schedules import ScheduleCreate
from app.services.legacy import ResultPrefixTaken
from app.services.s3uri import MAX_PREFIX_BYTES, key_prefix_problem

router = APIRouter(tags=["legacy"], deprecated=True)


class LegacyTask(BaseModel):
    """Both body styles of the old service: snake_case with task/exec ids, and the README's
    camelCase with uniqueId (an idempotency key) and an optional destination prefix."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    user_id: str | None = Field(default=None, alias="user_id", max_length=100)
    user_id_camel: str | None = Field(default=None, alias="userId", max_length=100)
    unique_id: str | None = Field(default=None, alias="uniqueId", max_length=150)
    task_id: str | None = Field(default=None, max_length=200)
    task_name: str | None = Field(default=None, max_length=200)
    exec_id: str | None = Field(default=None, max_length=200)
    s3_bucket: str = Field(min_length=3, max_length=63)
    source_s3_prefix: str = Field(default="", max_length=900)
    destination_s3_prefix: str | None = Field(default=None, max_length=900)
    command: str = Field(min_length=1)
    linux_dependencies: list[str] | str = Field(default_factory=list)
    cron_expression: str | None = Field(default=None, max_length=200)

    @field_validator("linux_dependencies")
    @classmethod
    def _split(cls, value: list[str] | str) -> list[str]:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    # Each of these may become part of the result prefix: the rules of an S3 prefix, so that
    # no value can climb out of its folder or name another run's ("" counts as not given).
    @field_validator("user_id", "user_id_camel", "unique_id", "task_id", "exec_id")
    @classmethod
    def _path_part(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and (problem := key_prefix_problem(value, name=_alias(info), folder=False)):
            raise ValueError(problem)
        return value

    @field_validator("destination_s3_prefix")
    @classmethod
    def _destination(cls, value: str | None) -> str | None:
        if value and (problem := key_prefix_problem(value, name="destination_s3_prefix")):
            raise ValueError(problem)
        return value

    @property
    def prefix_field(self) -> str:
        """The field(s) the result prefix comes from, to name in an error."""
        return "destination_s3_prefix" if self.destination_s3_prefix else "task_id/exec_id"

    def result_prefix(self) -> str:
        """Where the old service put results: the destination prefix if given, else
        <task_id>/<exec_id>/output/."""
        if self.destination_s3_prefix:
            return self.destination_s3_prefix.removesuffix("/") + "/"
        first = self.task_id or self.user_id or self.user_id_camel or "task"
        second = self.exec_id or self.unique_id or "run"
        return f"{first}/{second}/output/"

    def run_body(self) -> RunCreate:
        source = self.source_s3_prefix.strip("/")
        return RunCreate(
            command=self.command,
            packages=list(self.linux_dependencies),
            input=f"s3://{self.s3_bucket}/{source}/" if source else None,
            output=f"s3://{self.s3_bucket}/",
        )

    def schedule_body(self, cron: str) -> ScheduleCreate:
        return ScheduleCreate(
            name=self.task_name or self.task_id or "legacy-task", cron=cron, run=self.run_body()
        )


def _alias(info: ValidationInfo) -> str:
    """The name the old body uses for the field being validated."""
    name = info.field_name or "field"
    alias = LegacyTask.model_fields[name].alias if name in LegacyTask.model_fields else None
    return alias or name


class LegacyAnswer(BaseModel):
    """The old service's answer shape."""

    message: str = Field(examples=["success"])
    run_id: str | None = None
    schedule_id: str | None = None
    detail: Any = None


# Authentication answers like every endpoint: it happens before the old body is read.
AUTH_ANSWER: dict[str, Any] = {"model": ErrorResponse, "description": "Missing or unknown key"}
ANSWERS: dict[int | str, dict[str, Any]] = {401: AUTH_ANSWER}
for _code, _text in {
    200: "Replay of an earlier uniqueId",
    403: "Not allowed (bucket, image, network)",
    409: "uniqueId reused with a different body, or the result prefix is another run's",
    422: "Invalid body",
}.items():
    ANSWERS[_code] = {"model": LegacyAnswer, "description": _text}


def _error(status_code: int, detail: Any) -> JSONResponse:
    return JSONResponse(status_code=status_code, content={"message": "error", "detail": detail})


def _refusal(exc: AppError, task: LegacyTask) -> JSONResponse:
    """A refusal in the old shape, naming the field at fault (for a taken result prefix, the
    old body's field it came from)."""
    if isinstance(exc, ResultPrefixTaken):
        return _error(exc.status_code, f"{task.prefix_field}: {exc.message}")
    return _error(exc.status_code, f"{exc.field}: {exc.message}" if exc.field else exc.message)


def _parse(raw: dict[str, Any]) -> LegacyTask | JSONResponse:
    try:
        task = LegacyTask.model_validate(raw)
        task.run_body()  # the run's own validation, with its messages
    except ValidationError as exc:
        return _error(422, validation_details(exc.errors()))
    if len(task.result_prefix().encode()) > MAX_PREFIX_BYTES:
        message = f"the result prefix would be longer than {MAX_PREFIX_BYTES} bytes"
        return _error(422, [{"field": task.prefix_field, "message": message}])
    return task


LEGACY_EXAMPLE = {
    "user_id": "u1",
    "task_id": "t1",
    "task_name": "report",
    "exec_id": "e1",
    "s3_bucket": "my-bucket",
    "source_s3_prefix": "in",
    "command": "python3 job.py",
    "linux_dependencies": "python3,jq",
}
LegacyBody = Annotated[dict[str, Any], Body(examples=[LEGACY_EXAMPLE])]


@router.post(
    "/deploy",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=LegacyAnswer,
    responses=ANSWERS,
)
async def legacy_deploy(
    raw: LegacyBody,
    service: RunServiceDep,
    principal: CurrentPrincipal,
) -> JSONResponse:
    """Run now (the old service's body; `cron_expression` is ignored). Deprecated: /v1/runs."""
    task = _parse(raw)
    if isinstance(task, JSONResponse):
        return task
    try:
        run, created = await service.create(
            task.run_body(), task.unique_id, principal.owner, legacy_prefix=task.result_prefix()
        )
    except AppError as exc:
        return _refusal(exc, task)
    return JSONResponse(
        status_code=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
        content={"message": "success", "run_id": run.id},
    )


@router.post(
    "/submit_task",
    status_code=status.HTTP_201_CREATED,
    response_model=LegacyAnswer,
    responses={k: v for k, v in ANSWERS.items() if k != 200},
)
async def legacy_submit_task(
    raw: LegacyBody,
    service: ScheduleServiceDep,
    principal: CurrentPrincipal,
) -> JSONResponse:
    """Create a schedule from the old body's `cron_expression`. Deprecated: /v1/schedules."""
    task = _parse(raw)
    if isinstance(task, JSONResponse):
        return task
    if not task.cron_expression:
        return _error(422, "cron_expression is required")
    try:
        schedule = await service.create(task.schedule_body(task.cron_expression), principal.owner)
    except ValidationError as exc:
        return _error(422, str(exc))
    except AppError as exc:
        return _refusal(exc, task)
    return JSONResponse(
        status_code=status.HTTP_201_CREATED,
        content={"message": "success", "schedule_id": schedule.id},
    )
