"""The cross-site and Host rules as a decision table, and the ASGI middleware that applies them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.crosssite import CrossSiteGuard, SitePolicy, check_request, normalize_origin

LOCAL = SitePolicy.build("127.0.0.1", [], [])
HOST = "127.0.0.1:8000"
OWN = f"http://{HOST}"


def decide(
    method: str,
    path: str,
    policy: SitePolicy = LOCAL,
    host: str | None = HOST,
    origin: str | None = None,
    site: str | None = None,
) -> tuple[int, str] | None:
    headers = {"host": host, "origin": origin, "sec-fetch-site": site}
    refusal = check_request(
        method, path, {k: v for k, v in headers.items() if v is not None}, policy
    )
    return None if refusal is None else (refusal.status, refusal.field)


HOST_REFUSED = (400, "Host")
ORIGIN_REFUSED = (403, "Origin")
SITE_REFUSED = (403, "Sec-Fetch-Site")


@pytest.mark.parametrize(
    ("method", "path", "host", "origin", "site", "expected"),
    [
        # Clients that are not browsers send neither header: curl, the CLI, generated clients.
        ("GET", "/v1/runs", HOST, None, None, None),
        ("POST", "/v1/runs", HOST, None, None, None),
        ("POST", "/deploy", HOST, None, None, None),
        ("DELETE", "/v1/schedules/s1", HOST, None, None, None),
        # The service's own pages (the dashboard, Swagger UI at /docs).
        ("POST", "/v1/runs", HOST, OWN, "same-origin", None),
        ("POST", "/ui/parts/submit", HOST, OWN, "same-origin", None),
        ("GET", "/ui/runs", HOST, None, "same-origin", None),
        ("GET", "/ui/runs", HOST, None, "none", None),  # typed address or bookmark
        ("GET", "/docs", HOST, None, "cross-site", None),  # a page that changes nothing
        ("GET", "/v1/runs", HOST, "http://evil.example", "cross-site", None),  # CORS: unread
        # Another site's page, whatever it sends.
        ("POST", "/v1/runs", HOST, "http://evil.example", "cross-site", SITE_REFUSED),
        ("POST", "/v1/runs", HOST, "http://evil.example", None, ORIGIN_REFUSED),
        ("POST", "/v1/runs", HOST, None, "cross-site", SITE_REFUSED),
        ("POST", "/v1/runs/r1/cancel", HOST, None, "same-site", SITE_REFUSED),
        ("POST", "/v1/runs", HOST, None, "something-new", SITE_REFUSED),
        ("POST", "/v1/runs", HOST, "null", None, ORIGIN_REFUSED),  # sandboxed frame, file://
        ("POST", "/v1/runs", HOST, "http://127.0.0.1:3000", None, ORIGIN_REFUSED),  # other port
        ("POST", "/v1/runs", HOST, "http://localhost:8000", None, ORIGIN_REFUSED),  # other name
        ("PUT", "/v1/schedules/s1", HOST, None, "cross-site", SITE_REFUSED),
        ("PATCH", "/v1/schedules/s1", HOST, None, "cross-site", SITE_REFUSED),
        ("DELETE", "/v1/schedules/s1", HOST, "http://evil.example", None, ORIGIN_REFUSED),
        ("POST", "/deploy", HOST, "http://evil.example", "cross-site", SITE_REFUSED),
        ("POST", "/submit_task", HOST, "http://evil.example", None, ORIGIN_REFUSED),
        ("POST", "/ui/parts/runs/r1/cancel", HOST, None, "cross-site", SITE_REFUSED),
        # The dashboard refuses even reads from elsewhere.
        ("GET", "/ui", HOST, None, "cross-site", SITE_REFUSED),
        ("GET", "/ui/parts/runs", HOST, None, "same-site", SITE_REFUSED),
        ("GET", "/ui/static/app.js", HOST, None, "cross-site", SITE_REFUSED),
        ("GET", "/uix", HOST, None, "cross-site", None),  # not the dashboard
        # Host names: loopback names on any port, nothing else (DNS rebinding).
        ("GET", "/v1/runs", "localhost:8000", None, None, None),
        ("GET", "/v1/runs", "[::1]:8000", None, None, None),
        ("GET", "/v1/runs", "127.0.0.1:18000", None, None, None),  # an ssh tunnel, a mapping
        ("GET", "/v1/runs", "LOCALHOST:8000", None, None, None),
        ("GET", "/v1/runs", "evil.example:8000", None, None, HOST_REFUSED),
        ("POST", "/v1/runs", "evil.example", OWN, "same-origin", HOST_REFUSED),
        ("GET", "/ui/runs", "evil.example:8000", None, "same-origin", HOST_REFUSED),
        ("GET", "/metrics", "evil.example:8000", None, None, HOST_REFUSED),
        ("GET", "/v1/runs", None, None, None, HOST_REFUSED),
        ("GET", "/v1/runs", "[::1", None, None, HOST_REFUSED),
        ("GET", "/v1/runs", "127.0.0.1.evil.example", None, None, HOST_REFUSED),
        ("GET", "/v1/runs", "evil.example@127.0.0.1", None, None, HOST_REFUSED),
        # Probes answer any Host: a kubelet asks by IP, and they say only ok or error.
        ("GET", "/healthz", "10.0.0.7:8000", None, None, None),
        ("GET", "/readyz", "evil.example", None, None, None),
        ("POST", "/healthz", "evil.example", None, None, HOST_REFUSED),
    ],
)
def test_decision_table(
    method: str,
    path: str,
    host: str | None,
    origin: str | None,
    site: str | None,
    expected: tuple[int, str] | None,
) -> None:
    assert decide(method, path, host=host, origin=origin, site=site) == expected


def test_configured_names_and_trusted_origins() -> None:
    policy = SitePolicy.build(
        "0.0.0.0",
        ["td.example.com", "alt.example.com:8443", "::1"],
        ["https://ops.example.com:443", "http://127.0.0.1:3000/"],
    )
    assert policy.allowed_hosts == {
        "localhost",
        "127.0.0.1",
        "[::1]",
        "td.example.com",
        "alt.example.com:8443",
    }
    assert policy.trusted_origins == {"https://ops.example.com", "http://127.0.0.1:3000"}
    assert decide("GET", "/v1/runs", policy, host="td.example.com") is None
    assert decide("GET", "/v1/runs", policy, host="alt.example.com:8443") is None
    assert decide("GET", "/v1/runs", policy, host="alt.example.com:9000") == HOST_REFUSED
    assert decide("GET", "/v1/runs", policy, host="0.0.0.0:8000") == HOST_REFUSED
    # Behind a TLS-terminating proxy that keeps Host: the page's origin is https.
    behind = decide("POST", "/v1/runs", policy, "td.example.com", "https://td.example.com")
    assert behind is None
    # A trusted origin may send what a browser marks same-site or cross-site.
    for site in ("same-site", "cross-site"):
        assert decide("POST", "/v1/runs", policy, HOST, "https://ops.example.com", site) is None
        assert decide("GET", "/ui/runs", policy, HOST, "http://127.0.0.1:3000", site) is None
    assert decide("POST", "/v1/runs", policy, HOST, "https://evil.example", "cross-site") == (
        SITE_REFUSED
    )
    # A specific listen address is one of the service's names.
    assert decide("GET", "/v1/runs", SitePolicy.build("10.1.2.3", [], []), "10.1.2.3:80") is None
    assert decide("GET", "/v1/runs", SitePolicy.build("::1", [], []), "[::1]:80") is None
    anything = SitePolicy.build("127.0.0.1", ["*"], [])
    assert decide("GET", "/v1/runs", anything, host="whatever.example") is None


@pytest.mark.parametrize(
    ("origin", "normalized"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("HTTPS://Ops.Example.com:443", "https://ops.example.com"),
        ("http://a.example:80/", "http://a.example"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("null", None),
        ("file://", None),
        ("ftp://a.example", None),
        ("http://a.example/path", None),
        ("http://user@a.example", None),
        ("http://[::1", None),
    ],
)
def test_origins_are_normalized(origin: str, normalized: str | None) -> None:
    assert normalize_origin(origin) == normalized


# ------------------------------------------------------------------ the middleware
@pytest.fixture
async def guarded() -> AsyncIterator[tuple[httpx.AsyncClient, list[int]]]:
    bodies_read: list[int] = []

    async def echo(request: Request) -> JSONResponse:
        bodies_read.append(len(await request.body()))
        return JSONResponse({"ok": True}, status_code=202)

    app = CrossSiteGuard(Starlette(routes=[Route("/v1/runs", echo, methods=["POST"])]), LOCAL)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=OWN) as client:
        yield client, bodies_read


async def test_refused_requests_never_reach_the_app(
    guarded: tuple[httpx.AsyncClient, list[int]],
) -> None:
    client, bodies_read = guarded
    refused = await client.post(
        "/v1/runs", content=b"{}", headers={"Origin": "http://evil.example"}
    )
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "cross_site_request" and error["field"] == "Origin"
    assert "'http://evil.example' is not this service's own origin" in error["message"]
    rebound = await client.post("/v1/runs", content=b"{}", headers={"Host": "evil.example"})
    assert rebound.status_code == 400 and rebound.json()["error"]["code"] == "host_not_allowed"
    assert "TASKDEPLOY_ALLOWED_HOSTS" in rebound.json()["error"]["message"]
    assert bodies_read == []
    accepted = await client.post("/v1/runs", content=b"{}", headers={"Origin": OWN})
    assert accepted.status_code == 202 and bodies_read == [2]


async def test_a_long_header_is_quoted_back_shortened(
    guarded: tuple[httpx.AsyncClient, list[int]],
) -> None:
    client, _ = guarded
    refused = await client.post("/v1/runs", headers={"Sec-Fetch-Site": "x" * 10_000})
    assert refused.status_code == 403
    assert len(refused.json()["error"]["message"]) < 400
