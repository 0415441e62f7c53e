"""Webhook POSTs over HTTP/1.1 to an address checked beforehand: no second lookup, capped answers."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable

import httpcore
import httpx

from app.adapters.ports import WebhookSendError

Resolver = Callable[[str, int], Awaitable[list[str]]]
DEFAULT_PORTS = {"http": 80, "https": 443}
# What httpcore raises for a failed exchange; TLS failures arrive as ConnectError.
_TRANSPORT_ERRORS = (
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.TimeoutException,
    httpcore.UnsupportedProtocol,
    ssl.SSLError,
    OSError,
)


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses in the order the system's resolver prefers them (RFC 6724)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Dials one address whatever host a request names: the connection goes to the address
    that was checked, while TLS still sends and verifies the URL's host name."""

    def __init__(self, address: str, inner: httpcore.AsyncNetworkBackend) -> None:
        self.address = address
        self.inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self.inner.connect_tcp(
            self.address,
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise WebhookSendError("webhooks are never sent over a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class HttpWebhookSender:
    """One fresh connection per POST (never pooled: a connection verified for one host name
    must not carry another host's events), no proxies, no redirects."""

    def __init__(
        self,
        *,
        max_response_bytes: int,
        resolver: Resolver = system_resolver,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = "taskdeploy-webhooks",
    ) -> None:
        self.max_response_bytes = max_response_bytes
        self._resolver = resolver
        self._ssl_context = ssl_context  # made on first https use: loading CAs takes a while
        self._backend = httpcore.AnyIOBackend()
        self._user_agent = user_agent.encode()

    async def resolve(self, host: str, port: int) -> list[str]:
        try:
            return await self._resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise WebhookSendError(f"cannot resolve {host}: {exc}") from None

    async def post(self, url: str, address: str, headers: dict[str, str], body: bytes) -> int:
        parsed = httpx.URL(url)
        scheme = parsed.scheme
        port = parsed.port or DEFAULT_PORTS[scheme]
        if scheme == "https" and self._ssl_context is None:
            self._ssl_context = httpcore.default_ssl_context()
        connection = httpcore.AsyncHTTPConnection(
            httpcore.Origin(parsed.raw_scheme, parsed.raw_host, port),
            ssl_context=self._ssl_context if scheme == "https" else None,
            network_backend=PinnedBackend(address, self._backend),
        )
        request_headers = [
            (b"Host", parsed.netloc),
            (b"User-Agent", self._user_agent),
            (b"Content-Length", str(len(body)).encode()),
            (b"Connection", b"close"),
            *((name.encode(), value.encode()) for name, value in headers.items()),
        ]
        target = httpcore.URL(
            scheme=parsed.raw_scheme, host=parsed.raw_host, port=port, target=parsed.raw_path
        )
        try:
            async with (
                connection,
                connection.stream("POST", target, headers=request_headers, content=body) as answer,
            ):
                await self._discard(answer)
                return answer.status
        except _TRANSPORT_ERRORS as exc:
            detail = str(exc) or type(exc).__name__
            raise WebhookSendError(f"{type(exc).__name__} via {address}: {detail}") from None

    async def _discard(self, answer: httpcore.Response) -> None:
        """Reads at most max_response_bytes of the body; closing the stream early drops the
        connection, so an endless body costs one buffer."""
        read = 0
        async for chunk in answer.aiter_stream():
            read += len(chunk)
            if read >= self.max_response_bytes:
                return

    async def close(self) -> None:
        """Nothing is pooled: every POST closed its own connection."""
