"""One webhook attempt through the real HTTP sender, to receivers on 127.0.0.0/8, with an
injected resolver: the connection goes to the address that was checked, TLS still checks the
host name, answers are capped, and the time limit covers the whole attempt."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.adapters.webhook_http import HttpWebhookSender
from app.services.webhook_targets import DestinationPolicy
from app.services.webhooks import attempt_delivery

HOST = "hooks.example.test"  # .test never resolves: only the injected resolver knows it
POLICY = DestinationPolicy.of(allow_private=False, allowed_cidrs=["127.0.0.2/32"])
NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"


@dataclass
class Receiver:
    """A small HTTP/1.1 server on one loopback address that keeps what reached it."""

    host: str
    port: int = 0
    mode: str = "answer"  # answer | endless | hang
    tls: ssl.SSLContext | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    closed_by_client = 0
    body_bytes_sent = 0
    server_names: list[str | None] = field(default_factory=list)

    async def start(self) -> Receiver:
        if self.tls is not None:
            self.tls.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
        self.server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:] if line)
            body = await reader.readexactly(int(headers.get("Content-Length", "0")))
            self.requests.append(
                {
                    "line": lines[0],
                    "headers": headers,
                    "body": body,
                    "local": writer.get_extra_info("sockname")[0],
                }
            )
            if self.mode == "answer":
                writer.write(NO_CONTENT)
                await writer.drain()
            elif self.mode == "endless":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                chunk = b"x" * 65536
                while True:
                    writer.write(b"10000\r\n" + chunk + b"\r\n")
                    await writer.drain()
                    self.body_bytes_sent += len(chunk)
            else:  # hang: read until the client gives up
                await reader.read()
                self.closed_by_client += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed_by_client += 1
        finally:
            writer.close()


class FlippingResolver:
    """Answers `first` to the first lookup and `later` to every other one: a DNS rebinding
    attacker's name."""

    def __init__(self, first: list[str], later: list[str]) -> None:
        self.first, self.later = first, later
        self.lookups: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append((host, port))
        return self.first if len(self.lookups) == 1 else self.later


@pytest.fixture
async def twins() -> AsyncIterator[tuple[Receiver, Receiver]]:
    """A receiver on the allowed 127.0.0.2 and one on 127.0.0.1, on the same port."""
    allowed = await Receiver("127.0.0.2").start()
    other = await Receiver("127.0.0.1", allowed.port).start()
    yield allowed, other
    await allowed.close()
    await other.close()


async def _attempt(sender: HttpWebhookSender, url: str, time_limit: float = 10) -> Any:
    headers = {"X-Taskdeploy-Event-Id": "e1", "Content-Type": "application/json"}
    return await attempt_delivery(sender, POLICY, url, headers, b'{"a":1}', time_limit=time_limit)


async def test_the_connection_goes_to_the_address_that_was_checked(
    twins: tuple[Receiver, Receiver],
) -> None:
    allowed, other = twins
    resolver = FlippingResolver(["127.0.0.2"], ["127.0.0.1"])
    sender = HttpWebhookSender(max_response_bytes=65536, resolver=resolver)
    url = f"http://{HOST}:{allowed.port}/hook?x=1"

    outcome = await _attempt(sender, url)

    assert outcome.status_code == 204 and outcome.error is None
    assert resolver.lookups == [(HOST, allowed.port)]  # one lookup per attempt
    (request,) = allowed.requests
    assert request["local"] == "127.0.0.2" and other.requests == []
    assert request["line"] == "POST /hook?x=1 HTTP/1.1"
    assert request["headers"]["Host"] == f"{HOST}:{allowed.port}"
    assert request["headers"]["X-Taskdeploy-Event-Id"] == "e1"
    assert request["body"] == b'{"a":1}'

    # The next attempt looks up again, gets the rebound answer, and refuses it.
    refused = await _attempt(sender, url)
    assert refused.permanent and refused.status_code is None
    assert f"{HOST} resolves to 127.0.0.1" in refused.error and "loopback" in refused.error
    assert len(allowed.requests) == 1 and other.requests == []


async def test_every_resolved_address_is_checked(twins: tuple[Receiver, Receiver]) -> None:
    allowed, other = twins
    resolver = FlippingResolver(["127.0.0.2", "127.0.0.1"], [])
    sender = HttpWebhookSender(max_response_bytes=65536, resolver=resolver)
    outcome = await _attempt(sender, f"http://{HOST}:{allowed.port}/hook")
    assert outcome.permanent and "127.0.0.1" in outcome.error
    assert allowed.requests == [] and other.requests == []


async def test_literal_addresses_are_checked_without_a_lookup(
    twins: tuple[Receiver, Receiver],
) -> None:
    allowed, other = twins
    resolver = FlippingResolver([], [])
    sender = HttpWebhookSender(max_response_bytes=65536, resolver=resolver)
    assert (await _attempt(sender, f"http://127.0.0.2:{allowed.port}/")).status_code == 204
    for url in (
        f"http://127.0.0.1:{other.port}/",
        f"http://[::ffff:127.0.0.1]:{other.port}/",
        f"http://localhost:{other.port}/",  # a name: looked up (here: no address) and refused
    ):
        outcome = await _attempt(sender, url)
        assert outcome.permanent and outcome.status_code is None, (url, outcome)
    assert other.requests == [] and resolver.lookups == [("localhost", other.port)]


def _certificate(tmp: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for `name`: (server context, client context trusting it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp / f"{name}.crt").write_bytes(cert_pem)
    (tmp / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp / f"{name}.crt", tmp / f"{name}.key")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


async def test_tls_checks_the_url_host_name_while_dialling_the_checked_address(
    tmp_path: Path,
) -> None:
    server_tls, client_tls = _certificate(tmp_path, HOST)
    receiver = await Receiver("127.0.0.2", tls=server_tls).start()
    impostor_tls, impostor_trusted = _certificate(tmp_path, "other.example.test")
    impostor = await Receiver("127.0.0.2", tls=impostor_tls).start()
    try:
        resolver = FlippingResolver(["127.0.0.2"], ["127.0.0.2"])
        sender = HttpWebhookSender(
            max_response_bytes=65536, resolver=resolver, ssl_context=client_tls
        )
        outcome = await _attempt(sender, f"https://{HOST}:{receiver.port}/hook")
        assert outcome.status_code == 204, outcome
        assert receiver.server_names == [HOST]  # SNI carries the name, not the address
        assert receiver.requests[0]["headers"]["Host"] == f"{HOST}:{receiver.port}"

        # A certificate for another name fails, even one the client trusts.
        trusting = HttpWebhookSender(
            max_response_bytes=65536, resolver=resolver, ssl_context=impostor_trusted
        )
        refused = await _attempt(trusting, f"https://{HOST}:{impostor.port}/hook")
        assert refused.status_code is None and "CERTIFICATE_VERIFY_FAILED" in refused.error
        assert impostor.requests == []
    finally:
        await receiver.close()
        await impostor.close()


async def test_an_endless_answer_is_read_up_to_the_cap_and_dropped() -> None:
    receiver = await Receiver("127.0.0.2", mode="endless").start()
    try:
        sender = HttpWebhookSender(
            max_response_bytes=65536, resolver=FlippingResolver(["127.0.0.2"], [])
        )
        outcome = await _attempt(sender, f"http://{HOST}:{receiver.port}/", time_limit=30)
        assert outcome.status_code == 200 and outcome.error is None
        deadline = asyncio.get_running_loop().time() + 10
        while not receiver.closed_by_client and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert receiver.closed_by_client == 1  # the sender hung up; the server did not stop
    finally:
        await receiver.close()


async def test_the_time_limit_covers_the_whole_attempt() -> None:
    receiver = await Receiver("127.0.0.2", mode="hang").start()
    try:
        sender = HttpWebhookSender(
            max_response_bytes=65536, resolver=FlippingResolver(["127.0.0.2"], [])
        )
        outcome = await _attempt(sender, f"http://{HOST}:{receiver.port}/", time_limit=0.5)
        assert outcome.status_code is None and not outcome.permanent
        assert outcome.error == "TimeoutError: no complete answer within 0.5 s"
        deadline = asyncio.get_running_loop().time() + 10
        while not receiver.closed_by_client and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert receiver.closed_by_client == 1  # the connection was dropped, not leaked
    finally:
        await receiver.close()

    async def never_answers(host: str, port: int) -> list[str]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    slow_dns = HttpWebhookSender(max_response_bytes=65536, resolver=never_answers)
    outcome = await _attempt(slow_dns, f"http://{HOST}:9/", time_limit=0.2)
    assert outcome.error == "TimeoutError: no complete answer within 0.2 s"


async def test_any_failure_becomes_the_outcome_of_that_attempt() -> None:
    async def broken(host: str, port: int) -> list[str]:
        raise RuntimeError("resolver bug")

    async def garbage(host: str, port: int) -> list[str]:
        return ["not-an-address"]

    for resolver, expected in ((broken, "RuntimeError: resolver bug"), (garbage, "ValueError")):
        sender = HttpWebhookSender(max_response_bytes=65536, resolver=resolver)
        outcome = await _attempt(sender, f"http://{HOST}:9/")
        assert outcome.status_code is None and expected in outcome.error
    # A URL that slipped past validation (a row from before it) fails for good, with the reason.
    sender = HttpWebhookSender(max_response_bytes=65536, resolver=FlippingResolver([], []))
    outcome = await _attempt(sender, "http://example.com/\thook")
    assert outcome.permanent and "U+0009" in outcome.error
