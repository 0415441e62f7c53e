"""The HTTP side of errors: handlers that render every error in one JSON shape, and the
OpenAPI description of the error answers."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import AppError, TooManyRequests, Unauthorized, error_body, validation_details
from app.repositories.paging import InvalidCursor
from app.schemas.common import ErrorResponse

log = logging.getLogger(__name__)

LEGACY_PATHS = frozenset({"/deploy", "/submit_task"})


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if request.url.path in LEGACY_PATHS:
        # The replaced service's error shape, for its scripts.
        detail = validation_details(exc.errors())
        return JSONResponse(status_code=422, content={"message": "error", "detail": detail})
    details = validation_details(exc.errors())
    first = details[0] if details else {"field": "body", "message": "invalid request"}
    message = "; ".join(f"{d['field']}: {d['message']}" for d in details) or "invalid request"
    return JSONResponse(
        status_code=422,
        content=error_body("validation_error", message, str(first["field"]), details),
    )


async def _app_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    if isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(exc.retry_after)}
    return JSONResponse(
        status_code=exc.status_code,
        content=error_body(exc.code, exc.message, exc.field),
        headers=headers,
    )


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and request.url.path in LEGACY_PATHS:
        return JSONResponse(
            status_code=422, content={"message": "error", "detail": f"body: {exc.detail}"}
        )
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot decode: the same 422 as malformed JSON.
        return JSONResponse(
            status_code=422,
            content=error_body("validation_error", f"body: {exc.detail}", "body"),
        )
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        status_code=exc.status_code,
        content=error_body(code, str(exc.detail)),
        headers=getattr(exc, "headers", None),
    )


async def _cursor_handler(_request: Request, exc: Exception) -> JSONResponse:
    # Every paginated listing answers a forged or stale cursor the same way.
    return JSONResponse(status_code=422, content=error_body("validation_error", str(exc), "cursor"))


async def _unexpected_handler(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(status_code=500, content=error_body("internal", "internal server error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(AppError, _app_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(InvalidCursor, _cursor_handler)
    app.add_exception_handler(Exception, _unexpected_handler)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in {
        401: "Missing, unknown or revoked API key",
        403: "Not allowed by the operator (bucket, image, network, callback URL)",
        404: "Not found (or not yours)",
        409: "Conflict with the resource's current state",
        422: "Invalid request; `field` names the first field at fault",
    }.items()
}
