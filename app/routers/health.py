"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import ContextDep
from app.schemas.common import HealthOut

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut)
async def healthz() -> HealthOut:
    """Liveness: the process serves HTTP."""
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "a dependency is unavailable"}},
)
async def readyz(context: ContextDep, response: Response) -> HealthOut:
    """Readiness: database, Docker engine, object store and worker loops."""
    checks = await context.readiness.checks()
    ok = all(value == "ok" for value in checks.values())
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthOut(status="ok" if ok else "unavailable", checks=checks)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def prometheus_metrics() -> Response:
    """Prometheus metrics: runs by state, durations, queue, image cache, scheduler, webhooks."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
