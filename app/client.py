"""A small synchronous client for the taskdeploy HTTP API, used by the command line."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
REQUEST_TIMEOUT_SECONDS = 30.0

JsonObject = dict[str, Any]


class ApiError(Exception):
    """The API answered with an error, or could not be reached at all (`status` None)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field

    @property
    def unavailable(self) -> bool:
        """The server could not answer (connection failure or 5xx): worth retrying later."""
        return self.status is None or self.status >= 500

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            field = error.get("field")
            return cls(
                error["message"],
                status=response.status_code,
                code=str(error.get("code") or ""),
                field=field if isinstance(field, str) else None,
            )
        text = response.text.strip()[:200] or response.reason_phrase
        return cls(f"HTTP {response.status_code}: {text}", status=response.status_code)


def _segment(value: str) -> str:
    """An id as one path segment: whatever the user typed cannot reach another endpoint."""
    return quote(value, safe="")


class TaskdeployClient:
    """Thin wrappers over /v1/runs and /v1/schedules that return the API's JSON."""

    def __init__(self, base_url: str = DEFAULT_URL, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=REQUEST_TIMEOUT_SECONDS
        )

    def __enter__(self) -> TaskdeployClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            # The message names the server, never the request's headers (the token).
            raise ApiError(f"cannot reach {self.base_url}: {exc or type(exc).__name__}") from exc
        if response.is_error:
            raise ApiError.from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> JsonObject:
        response = self._send(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError as exc:
            raise ApiError(
                f"{method} {path}: the answer is not JSON", status=response.status_code
            ) from exc
        if not isinstance(body, dict):
            raise ApiError(f"{method} {path}: the answer is not a JSON object")
        return body

    # runs

    def create_run(self, body: JsonObject) -> JsonObject:
        return self._json("POST", "/v1/runs", json=body)

    def get_run(self, run_id: str) -> JsonObject:
        return self._json("GET", f"/v1/runs/{_segment(run_id)}")

    def wait_run(self, run_id: str, seconds: float) -> JsonObject:
        """The run once it is terminal, or as it is after `seconds` (at most 60)."""
        return self._json(
            "GET",
            f"/v1/runs/{_segment(run_id)}/wait",
            params={"timeout": f"{seconds:g}"},
            # The server answers within `seconds`; the read allows that plus the usual margin.
            timeout=httpx.Timeout(REQUEST_TIMEOUT_SECONDS, read=seconds + REQUEST_TIMEOUT_SECONDS),
        )

    def list_runs(
        self,
        *,
        states: list[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JsonObject:
        params: list[tuple[str, str | int]] = [("state", state) for state in states or []]
        if limit is not None:
            params.append(("limit", limit))
        if cursor is not None:
            params.append(("cursor", cursor))
        return self._json("GET", "/v1/runs", params=params)

    def run_log(self, run_id: str, stream: str) -> bytes:
        return self._send(
            "GET", f"/v1/runs/{_segment(run_id)}/logs", params={"stream": stream}
        ).content

    def cancel_run(self, run_id: str) -> JsonObject:
        return self._json("POST", f"/v1/runs/{_segment(run_id)}/cancel")

    # schedules

    def create_schedule(self, body: JsonObject) -> JsonObject:
        return self._json("POST", "/v1/schedules", json=body)

    def list_schedules(self, *, limit: int | None = None, cursor: str | None = None) -> JsonObject:
        params: dict[str, str | int] = {}
        if limit is not None:
            params["limit"] = limit
        if cursor is not None:
            params["cursor"] = cursor
        return self._json("GET", "/v1/schedules", params=params)

    def pause_schedule(self, schedule_id: str) -> JsonObject:
        return self._json("POST", f"/v1/schedules/{_segment(schedule_id)}/pause")

    def resume_schedule(self, schedule_id: str, *, catch_up: bool = False) -> JsonObject:
        return self._json(
            "POST",
            f"/v1/schedules/{_segment(schedule_id)}/resume",
            params={"catch_up": "true" if catch_up else "false"},
        )

    def trigger_schedule(self, schedule_id: str) -> JsonObject:
        return self._json("POST", f"/v1/schedules/{_segment(schedule_id)}/trigger")
