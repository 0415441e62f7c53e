"""Rules for webhook destinations: callback-URL syntax, address classification, the policy."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from app.schemas import RunCreate
from app.services.webhook_targets import (
    DestinationPolicy,
    address_refusal,
    parse_callback_url,
)
from app.services.webhooks import (
    AttemptOutcome,
    ClaimedDelivery,
    printable,
    settle,
    signature_header,
)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/taskdeploy",
        "http://hooks.example.com:8080/a/b?c=d&e=f",
        "https://bücher.example/x",  # IDN: sent as its punycode
        "http://93.184.216.34/hook",
        "http://[2606:2800:220:1:248:1893:25c8:1946]:8443/hook",
        "https://a_b.example.com/",
        "https://example.com./hook",
        "https://example.com/path%20with%20escapes",
    ],
)
def test_urls_the_sender_can_use_are_accepted(url: str) -> None:
    parsed = parse_callback_url(url)
    assert parsed.scheme in {"http", "https"} and parsed.host
    RunCreate(command="true", output="s3://bucket/o/", callback_url=url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/\thook", "U+0009"),
        ("http://example.com/hook\n", "U+000A"),
        ("http://example.com/ho\rok", "U+000D"),
        ("http://example.com/a b", "U+0020"),
        (" http://example.com/", "U+0020"),
        ("http://exa\tmple.com/", "U+0009"),
        ("http://example.com/\x00", "U+0000"),
        ("http://example.com/\x7f", "U+007F"),
        ("http://example.com/\u2028", "U+2028"),
        ("http://example.com/\u200b", "U+200B"),  # zero-width space
        ("http://example.com/\u202e", "U+202E"),  # right-to-left override
        ("http://example.com/\xa0", "U+00A0"),
        ("ftp://example.com/", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("example.com/hook", "http:// or https://"),
        ("http:///hook", "must name a host"),
        ("http:example.com", "must name a host"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://user@example.com/", "credentials"),
        ("http://example.com:0/", "port 0"),
        ("http://example.com:99999/", "port 99999"),
        ("http://example.com:http/", "not a valid URL"),
        ("http://[::1/", "not a valid URL"),
        ("http://exa%09mple.com/", "not a valid host name"),
        ("http://[fe80::1%25eth0]/", "not a valid host name"),
        ("http://a..example.com/", "not a valid host name"),
        ("http://-a.example.com/", "not a valid host name"),
        ("http://" + "a" * 64 + ".com/", "not a valid host name"),
        ("http://0x7f.1/", "four decimals"),
        ("http://2130706433/", "four decimals"),
        ("http://0177.0.0.1/", "not a valid URL"),
        ("https://xn--a.com/", "not a valid URL"),
        ("http://example.com/" + "a" * 2048, "longer than 2048"),
    ],
)
def test_urls_the_sender_would_choke_on_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_callback_url(url)
    assert message in str(caught.value)
    with pytest.raises(ValidationError) as refused:
        RunCreate(command="true", output="s3://bucket/o/", callback_url=url)
    (error,) = refused.value.errors()
    assert error["loc"] == ("callback_url",)


@pytest.mark.parametrize(
    ("address", "refused_because"),
    [
        # public: allowed
        ("93.184.216.34", None),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("64:ff9b::808:808", None),  # NAT64 of a public address
        ("2002:808:808::1", None),  # 6to4 of a public address
        ("::ffff:8.8.8.8", None),  # IPv4-mapped public
        # IPv4 that is not the internet
        ("127.0.0.1", "loopback"),
        ("127.0.0.2", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("100.64.0.1", "not a public internet address"),  # CGNAT
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "private"),  # reserved
        ("255.255.255.255", "private"),
        ("192.0.2.1", "private"),  # documentation
        # IPv6 that is not the internet
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),  # ULA
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "private"),
        # IPv6 forms that carry a private IPv4 inside
        ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1: 127.0.0.1 is a loopback"),
        ("::ffff:10.0.0.1", "IPv4-mapped form of 10.0.0.1"),
        ("::ffff:169.254.169.254", "IPv4-mapped form of 169.254.169.254"),
        ("::127.0.0.1", "IPv4-compatible form of 127.0.0.1"),
        ("::10.0.0.1", "IPv4-compatible form of 10.0.0.1"),
        ("64:ff9b::7f00:1", "NAT64 form of 127.0.0.1"),
        ("64:ff9b::a9fe:a9fe", "NAT64 form of 169.254.169.254"),
        ("64:ff9b::a00:1", "NAT64 form of 10.0.0.1"),
        ("64:ff9b:1:7f00:0:100::", "local-use NAT64 prefix 64:ff9b:1::/48 (embeds 127.0.0.1)"),
        ("64:ff9b:1:808:8:800::", "local-use NAT64"),  # even with a public address inside
        ("2002:7f00:1::1", "6to4 form of 127.0.0.1"),
        ("2002:a00:1::1", "6to4 form of 10.0.0.1"),
        ("2002:c0a8:101::1", "6to4 form of 192.168.1.1"),
        # Teredo: server 65.54.227.120, client 10.0.0.1 (stored inverted: f5ff:fffe)
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "Teredo form of 10.0.0.1"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "private"),  # Teredo with public ends
    ],
)
def test_address_classification(address: str, refused_because: str | None) -> None:
    reason = address_refusal(ipaddress.ip_address(address))
    if refused_because is None:
        assert reason is None
    else:
        assert reason is not None and refused_because in reason, reason


def test_the_operator_allow_list_admits_exactly_its_networks() -> None:
    policy = DestinationPolicy.of(allow_private=False, allowed_cidrs=["127.0.0.2/32", "fd12::/64"])
    assert policy.refusal(ipaddress.ip_address("127.0.0.2")) is None
    assert policy.refusal(ipaddress.ip_address("::ffff:127.0.0.2")) is None
    assert policy.refusal(ipaddress.ip_address("fd12::7")) is None
    for refused in ("127.0.0.1", "127.0.0.3", "::ffff:127.0.0.1", "fd12:0:0:1::7", "10.0.0.1"):
        assert policy.refusal(ipaddress.ip_address(refused)) is not None, refused
    assert policy.refusal(ipaddress.ip_address("8.8.8.8")) is None
    # Never a receiver, whatever the operator allows.
    everything = DestinationPolicy.of(allow_private=True, allowed_cidrs=["0.0.0.0/0"])
    assert everything.refusal(ipaddress.ip_address("10.0.0.1")) is None
    assert everything.refusal(ipaddress.ip_address("0.0.0.0")) is not None
    assert everything.refusal(ipaddress.ip_address("224.0.0.1")) is not None


@pytest.mark.parametrize("cidr", ["127.0.0.2/24", "10.0.0.0/33", "not-a-network", "fd12::1/64"])
def test_allow_list_entries_must_be_networks(cidr: str) -> None:
    with pytest.raises(ValueError, match="CIDR"):
        DestinationPolicy.of(allow_private=False, allowed_cidrs=[cidr])


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://127.0.0.1:9/x", "loopback"),
        ("http://[::ffff:127.0.0.1]/x", "IPv4-mapped"),
        ("http://localhost/x", "this machine"),
        ("http://api.localhost./x", "this machine"),
        ("http://127.0.0.2:9/x", None),  # on the allow-list
        ("http://hooks.example.com/x", None),  # a name: checked, resolved, at every attempt
    ],
)
def test_what_submission_refuses(url: str, refused: str | None) -> None:
    policy = DestinationPolicy.of(allow_private=False, allowed_cidrs=["127.0.0.2/32"])
    reason = policy.submission_refusal(parse_callback_url(url))
    assert (reason is None) if refused is None else (reason is not None and refused in reason)


def test_signature_header_has_one_v1_per_key() -> None:
    one = signature_header(["k1"], 1700000000, b"{}")
    two = signature_header(["k2", "k1"], 1700000000, b"{}")
    assert one.startswith("t=1700000000,v1=") and one.count("v1=") == 1
    assert two.count("v1=") == 2 and two.endswith(one.split(",")[1])


def test_error_text_keeps_no_control_characters() -> None:
    assert printable("bad\turl\n\x1b[31m") == "bad\\x09url\\x0a\\x1b[31m"
    assert len(printable("x" * 10_000)) == 500


def _claim(attempts: int = 0, age: timedelta = timedelta()) -> ClaimedDelivery:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return ClaimedDelivery("e", "alice", "http://x/", b"{}", ("k",), attempts, now - age, now)


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (AttemptOutcome(status_code=204), "delivered"),
        (AttemptOutcome(status_code=503), "retry"),
        (AttemptOutcome(status_code=429), "retry"),
        (AttemptOutcome(status_code=408), "retry"),
        (AttemptOutcome(status_code=410, permanent=True), "failed"),
        (AttemptOutcome(error="TimeoutError: ..."), "retry"),
        (AttemptOutcome(error="refused: 10.0.0.1 is a private address", permanent=True), "failed"),
    ],
)
def test_what_an_attempt_does_to_its_delivery(outcome: AttemptOutcome, expected: str) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert settle(_claim(), outcome, now, timedelta(hours=1)).outcome == expected


def test_retries_stop_when_the_total_time_is_spent() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    late = _claim(attempts=5, age=timedelta(minutes=59, seconds=59))
    assert settle(late, AttemptOutcome(status_code=503), now, timedelta(hours=1)).outcome == (
        "failed"
    )
