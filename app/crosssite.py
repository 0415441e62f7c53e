"""Refuses requests a browser sends on another site's behalf, and requests naming a Host this
service does not answer to (DNS rebinding), before the app reads a byte of them.

Browsers mark every request: `Sec-Fetch-Site` (which site the page that sent it belongs to)
and `Origin` (on anything but a plain GET). Pages cannot forge either. The dashboard (`/ui`)
and every state-changing request (any method but GET, HEAD and OPTIONS) are taken only from
this service's own pages, or from an origin the operator trusts. Clients that are not
browsers (curl, the CLI, generated clients) send neither header and are not affected.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import error_body

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Liveness and readiness answer probes that address the service by IP (a kubelet, a load
# balancer): they say only "ok" or "error", so any Host may ask.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
# "none": the user typed the address or opened a bookmark.
OWN_FETCH_SITES = frozenset({"same-origin", "none"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::", "[::]"})
ANY_HOST = "*"
DEFAULT_PORTS = {"http": "80", "https": "443"}
MAX_SHOWN = 100  # characters of a header value quoted back in an error


def split_host(host: str) -> tuple[str, str | None]:
    """("name", "port") of a Host value; a bracketed IPv6 literal keeps its brackets."""
    host = host.strip().lower()
    if host.startswith("[") and "]" in host:
        name, _, rest = host.partition("]")
        return f"{name}]", rest[1:] if rest.startswith(":") else None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, port
    return host, None


def normalize_host_entry(entry: str) -> str:
    """An allow-list entry as requests are compared with it: lowercase, IPv6 in brackets."""
    entry = entry.strip().lower()
    if entry.count(":") > 1 and not entry.startswith("["):
        return f"[{entry}]"  # a bare IPv6 address such as ::1
    return entry


def normalize_origin(origin: str) -> str | None:
    """`scheme://host[:port]` in lowercase without a default port, or None if `origin` is no
    http(s) origin (for example "null", which sandboxed frames and file pages send)."""
    try:
        parts = urlsplit(origin.strip().lower())
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or "@" in parts.netloc:
        return None
    name, port = split_host(parts.netloc)
    if port is None or port == DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{name}"
    return f"{parts.scheme}://{name}:{port}"


@dataclass(frozen=True)
class SitePolicy:
    """Which Host names the service answers to ("name" for any port, "name:port", or "*"),
    and which other origins may use the dashboard and change state."""

    allowed_hosts: frozenset[str]
    trusted_origins: frozenset[str]

    @classmethod
    def build(
        cls, listen_host: str, extra_hosts: Iterable[str], trusted_origins: Iterable[str]
    ) -> SitePolicy:
        hosts = set(LOOPBACK_NAMES)
        if listen_host.strip().lower() not in WILDCARD_ADDRESSES:
            hosts.add(normalize_host_entry(listen_host))
        hosts.update(normalize_host_entry(h) for h in extra_hosts if h.strip())
        origins = {normalize_origin(o) for o in trusted_origins}
        return cls(frozenset(hosts), frozenset(o for o in origins if o is not None))

    def host_allowed(self, host: str) -> bool:
        if ANY_HOST in self.allowed_hosts:
            return True
        name, port = split_host(host)
        return name in self.allowed_hosts or f"{name}:{port}" in self.allowed_hosts


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str
    field: str


def _shown(value: str) -> str:
    return repr(value if len(value) <= MAX_SHOWN else value[:MAX_SHOWN] + "…")


def _same_origin(origin: str, host: str) -> bool:
    """Whether `origin` names the very host:port the request was sent to (whatever the scheme:
    a TLS-terminating proxy in front sees https, the service http)."""
    normalized = normalize_origin(origin)
    if normalized is None:
        return False
    scheme, _, authority = normalized.partition("://")
    name, port = split_host(host)
    own = {f"{name}:{port}" if port else name}
    if port is None or port == DEFAULT_PORTS[scheme]:
        own.add(name)
    return authority in own


def check_request(
    method: str, path: str, headers: Mapping[str, str], policy: SitePolicy
) -> Refusal | None:
    """Why the request must be refused, or None. `headers` has lowercase names."""
    if path in PROBE_PATHS and method in SAFE_METHODS:
        return None
    host = headers.get("host", "")
    if not policy.host_allowed(host):
        return Refusal(
            400,
            "host_not_allowed",
            f"Host {_shown(host)} is not a name this service answers to: add it to "
            "TASKDEPLOY_ALLOWED_HOSTS (pages reached through other names, as in DNS "
            "rebinding, are refused)",
            "Host",
        )
    guarded = method not in SAFE_METHODS or path == "/ui" or path.startswith("/ui/")
    if not guarded:
        return None
    origin = headers.get("origin")
    trusted = origin is not None and normalize_origin(origin) in policy.trusted_origins
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in OWN_FETCH_SITES and not trusted:
        return Refusal(
            403,
            "cross_site_request",
            f"the browser marked this request Sec-Fetch-Site: {_shown(site)}: the dashboard "
            "and requests that change anything are taken from this service's own pages "
            "only (TASKDEPLOY_TRUSTED_ORIGINS lists other origins allowed to)",
            "Sec-Fetch-Site",
        )
    if origin is not None and not trusted and not _same_origin(origin, host):
        return Refusal(
            403,
            "cross_site_request",
            f"Origin {_shown(origin)} is not this service's own origin: the dashboard and "
            "requests that change anything are taken from this service's own pages only "
            "(TASKDEPLOY_TRUSTED_ORIGINS lists other origins allowed to)",
            "Origin",
        )
    return None


class CrossSiteGuard:
    """Pure-ASGI middleware applying `check_request` to every HTTP request."""

    def __init__(self, app: ASGIApp, policy: SitePolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        refusal = check_request(scope["method"], scope["path"], headers, self.policy)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        log.info(
            "refused %s %r: %s (%s)", scope["method"], scope["path"], refusal.code, refusal.field
        )
        body = json.dumps(error_body(refusal.code, refusal.message, refusal.field)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": refusal.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
