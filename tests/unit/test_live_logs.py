"""Server-Sent Events framing of a job's output, and the live-log follower limits."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from app.errors import TooManyRequests
from app.routers.runs import MAX_EVENT_LINE_CHARS, server_sent_events
from app.services.followers import LiveLogs


async def frames(*chunks: bytes) -> str:
    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return b"".join([frame async for frame in server_sent_events(source())]).decode()


def events(stream: str) -> list[tuple[str, str]]:
    """(type, data) as an EventSource reads them: lines end at CR, LF or CRLF."""
    found: list[tuple[str, str]] = []
    data: list[str] = []
    kind = ""
    for line in re.split(r"\r\n|\r|\n", stream):
        if not line:
            if data:
                found.append((kind or "message", "\n".join(data)))
            data, kind = [], ""
            continue
        name, _, value = line.partition(":")
        assert name in ("data", "event"), f"a forged field: {line!r}"
        if name == "data":
            data.append(value.removeprefix(" "))
        else:
            kind = value.removeprefix(" ")
    return found


async def test_every_line_end_sse_knows_ends_a_data_line() -> None:
    raw = await frames(b"one\rtwo\r\nthree\nevent: end\rdata: forged\r\rid: 7\rretry: 1\n")
    assert "\r" not in raw
    assert events(raw) == [
        ("message", "one"),
        ("message", "two"),
        ("message", "three"),
        ("message", "event: end"),
        ("message", "data: forged"),
        ("message", ""),
        ("message", "id: 7"),
        ("message", "retry: 1"),
        ("end", ""),
    ]


@pytest.mark.parametrize(
    "chunks",
    [
        (b"a\r", b"\nb\n"),  # a CRLF split across chunks is one line end
        (b"a\r\n", b"b\n"),
        (b"a", b"\r", b"\n", b"b\n"),
    ],
)
async def test_a_crlf_split_across_chunks_is_one_line_end(chunks: tuple[bytes, ...]) -> None:
    assert events(await frames(*chunks)) == [("message", "a"), ("message", "b"), ("end", "")]


async def test_a_cr_then_an_empty_line_keeps_the_empty_line() -> None:
    assert events(await frames(b"a\r", b"\n", b"\nb")) == [
        ("message", "a"),
        ("message", ""),
        ("message", "b"),
        ("end", ""),
    ]


async def test_a_character_split_across_chunks_arrives_whole_and_bad_bytes_are_replaced() -> None:
    euro = "€".encode()
    assert events(await frames(b"x" + euro[:1], euro[1:] + b"\xff\n")) == [
        ("message", "x€\ufffd"),
        ("end", ""),
    ]


async def test_a_line_without_end_is_sent_in_bounded_pieces() -> None:
    raw = await frames(b"y" * (MAX_EVENT_LINE_CHARS * 2 + 10))
    sizes = [len(data) for kind, data in events(raw) if kind == "message"]
    assert sizes == [MAX_EVENT_LINE_CHARS, MAX_EVENT_LINE_CHARS, 10]


def hub(per_run: int, per_owner: int) -> LiveLogs:
    return LiveLogs(None, None, max_per_run=per_run, max_per_owner=per_owner)  # type: ignore[arg-type]


def test_followers_are_admitted_within_the_limits_and_their_slots_come_back() -> None:
    logs = hub(per_run=2, per_owner=3)
    first, second = logs.admit("r1", "alice"), logs.admit("r1", "alice")
    with pytest.raises(TooManyRequests, match="TASKDEPLOY_MAX_FOLLOWERS_PER_RUN") as refused:
        logs.admit("r1", "bob")
    assert refused.value.retry_after > 0
    logs.admit("r2", "alice")
    with pytest.raises(TooManyRequests, match="TASKDEPLOY_MAX_FOLLOWERS_PER_OWNER"):
        logs.admit("r3", "alice")
    assert logs.admit("r3", "bob").owner == "bob"  # another owner is not held back
    first.release()
    first.release()  # twice is once
    assert logs.followers("r1") == 1
    logs.admit("r1", "alice")
    second.release()
    assert logs.followers("r1") == 1


def test_a_stream_dropped_unread_gives_its_slot_back() -> None:
    logs = hub(per_run=1, per_owner=1)
    follower = logs.admit("r1", "alice")
    stream = logs.stream(follower, "stdout")
    del stream  # as when a client goes away before the first byte
    assert follower.released
    logs.admit("r1", "alice")
