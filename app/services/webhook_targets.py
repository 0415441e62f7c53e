"""Where a webhook may go: callback-URL syntax, and which addresses its host may resolve to."""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_CALLBACK_URL_LENGTH = 2048
# Unicode categories that have no business in a URL someone typed: controls, format
# characters (zero-width, bidi overrides), separators, surrogates, private use, unassigned.
_BANNED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")

NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
TEREDO = ipaddress.IPv6Network("2001::/32")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _banned_character(value: str) -> str | None:
    for position, char in enumerate(value):
        if char.isspace() or unicodedata.category(char) in _BANNED_CATEGORIES:
            return f"contains a control or whitespace character (U+{ord(char):04X}) at position {position}"
    return None


def parse_callback_url(value: str) -> httpx.URL:
    """The URL as the sender will use it, parsed by the sender's own parser (httpx), or a
    ValueError saying what is wrong: control or whitespace characters, a scheme other than
    http(s), no host, credentials, a bad port, more than MAX_CALLBACK_URL_LENGTH characters."""
    if len(value) > MAX_CALLBACK_URL_LENGTH:
        raise ValueError(f"is longer than {MAX_CALLBACK_URL_LENGTH} characters")
    if problem := _banned_character(value):
        raise ValueError(problem)
    try:
        url = httpx.URL(value)
        url.host  # noqa: B018 - decodes punycode lazily: a bad label raises here
    except Exception as exc:  # httpx.InvalidURL, and idna's errors for bad host names
        raise ValueError(f"is not a valid URL ({exc})") from None
    if url.scheme not in {"http", "https"}:
        raise ValueError("must be an http:// or https:// URL")
    if not url.host:
        raise ValueError("must name a host")
    if url.userinfo:
        raise ValueError("must not carry credentials (user:password@)")
    if url.port is not None and not 0 < url.port < 65536:
        raise ValueError(f"port {url.port} is not between 1 and 65535")
    host = url.raw_host.decode("ascii")
    if literal_address(url) is None:
        if not _HOSTNAME.fullmatch(host) or len(host.rstrip(".")) > 253:
            raise ValueError(f"host {host!r} is not a valid host name or IP address")
        if _legacy_ipv4(host):
            raise ValueError(f"host {host!r} is an IPv4 address: write it as four decimals")
    return url


def _legacy_ipv4(host: str) -> bool:
    """Hex, octal or dotless forms (0x7f.1, 2130706433) that the C resolver reads as IPv4."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def literal_address(url: httpx.URL) -> IPAddress | None:
    """The URL's host when it is an IP address (one with an IPv6 zone id is not one here)."""
    try:
        address = ipaddress.ip_address(url.host)
    except ValueError:
        return None
    return None if isinstance(address, ipaddress.IPv6Address) and address.scope_id else address


def names_this_machine(url: httpx.URL) -> bool:
    host = url.host.rstrip(".")
    return host == "localhost" or host.endswith(".localhost")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, list[ipaddress.IPv4Address]] | None:
    """An IPv6 address that carries IPv4 addresses inside it (and whose traffic may end up at
    them): which form, and the IPv4 addresses."""
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", [ip.ipv4_mapped]
    if ip in NAT64_WELL_KNOWN:
        return "NAT64", [low32]
    if ip in NAT64_LOCAL_USE:
        # RFC 6052 with a /48 prefix: 16 bits before the reserved u-octet, 16 after it.
        value = int(ip)
        high, low = (value >> 64) & 0xFFFF, (value >> 40) & 0xFFFF
        return "local-use NAT64", [ipaddress.IPv4Address((high << 16) | low)]
    if ip in SIX_TO_FOUR and ip.sixtofour is not None:
        return "6to4", [ip.sixtofour]
    if ip in TEREDO and ip.teredo is not None:
        server, client = ip.teredo
        return "Teredo", [server, client]
    if ip in IPV4_COMPATIBLE and int(ip) > 1:  # :: and ::1 are themselves
        return "IPv4-compatible", [low32]
    return None


def address_refusal(ip: IPAddress) -> str | None:
    """Why `ip` is not the public internet, or None when it is: loopback, private, link-local,
    shared (CGNAT), reserved, multicast, and IPv6 forms that embed such an IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and (embedded := embedded_ipv4(ip)):
        form, inner = embedded
        if form == "local-use NAT64":
            return f"{ip} is in the local-use NAT64 prefix {NAT64_LOCAL_USE} (embeds {inner[0]})"
        for v4 in inner:
            if reason := address_refusal(v4):
                return f"{ip} is the {form} form of {v4}: {reason}"
    if ip.is_unspecified:
        return f"{ip} is the unspecified address"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_private:
        return f"{ip} is a private address"
    if not ip.is_global:
        return f"{ip} is not a public internet address"
    return None


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """Which addresses the notifier may connect to: public ones, the operator's CIDRs, and,
    with allow_private, any (never the unspecified address or multicast)."""

    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, *, allow_private: bool, allowed_cidrs: Iterable[str] = ()) -> DestinationPolicy:
        return cls(allow_private, tuple(parse_cidr(cidr) for cidr in allowed_cidrs))

    def refusal(self, ip: IPAddress) -> str | None:
        if ip.is_unspecified or ip.is_multicast:
            return address_refusal(ip)
        if self.allow_private or self.allows(ip):
            return None
        return address_refusal(ip)

    def allows(self, ip: IPAddress) -> bool:
        """On the operator's allow-list (an IPv4-mapped address counts as its IPv4 one)."""
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c in net for c in candidates for net in self.allowed_networks)

    def submission_refusal(self, url: httpx.URL) -> str | None:
        """What can be refused before any lookup: this machine's names and literal addresses.
        Other names are resolved and checked at every attempt (DNS can change)."""
        if names_this_machine(url):
            return None if self.allow_private else "points at this machine"
        address = literal_address(url)
        return None if address is None else self.refusal(address)


def parse_cidr(value: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a network in CIDR form ({exc})") from None
