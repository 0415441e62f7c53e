"""A tar stream parsed as it arrives: each entry's header, and its body for whoever asks."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass

BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(BLOCK)
# A pax or GNU long-name header's body larger than this is not a name: it is passed, not kept.
MAX_META_HEADER_BYTES = 64 * 1024

_KINDS = {
    b"0": "regular",
    b"\0": "regular",
    b"7": "regular",  # "contiguous": a regular file to tarfile
    b"1": "hardlink",
    b"2": "symlink",
    b"3": "device",
    b"4": "device",
    b"5": "directory",
    b"6": "fifo",
}
_META_FLAGS = frozenset({b"x", b"g", b"L", b"K"})


@dataclass(frozen=True, slots=True)
class TarEntry:
    """One entry's header. `data_offset` is where its body starts in the stream (its header,
    pax records included, ends there); only regular files (and unknown kinds) have a body."""

    name: str
    kind: str  # regular | hardlink | symlink | device | directory | fifo | other
    size: int
    data_offset: int
    linkname: str = ""

    @property
    def data_end(self) -> int:
        return self.data_offset + (self.size if self.kind in ("regular", "other") else 0)


BodySink = Callable[[memoryview], None]


class TarStreamParser:
    """Parses a tar stream chunk by chunk, holding only the header being read.

    For each entry `on_entry` gets its header and returns a sink that receives the entry's
    body in pieces, or None to skip the body. Bodies are never buffered here, so the memory
    used is one header whatever the stream holds; the work is a few microseconds per entry.
    A stream that stops being a tar (a malformed size field) ends the parse (`finished`).
    """

    def __init__(self, on_entry: Callable[[TarEntry], BodySink | None]) -> None:
        self.on_entry = on_entry
        self.offset = 0  # bytes of the stream consumed so far
        self.entries = 0  # entries seen (pax and long-name headers are not entries)
        self.finished = False  # the end-of-archive marker (or garbage) was read
        self.in_body: BodySink | None = None  # the sink of the body being read, if any
        self._header = bytearray()
        self._skip = 0  # body and padding bytes still to pass
        self._body_left = 0  # of those, body bytes for the sink
        self._meta: bytearray | None = None  # the body of a pax or GNU long-name header
        self._meta_kind = b""
        self._meta_left = 0
        self._after_meta = 0  # the padding after it
        self._pending: dict[str, str] = {}  # path / linkpath from a pax or long-name header

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view and not self.finished:
            if self._skip:
                step = min(self._skip, len(view))
                if self.in_body is not None and self._body_left:
                    body = min(step, self._body_left)
                    self.in_body(view[:body])
                    self._body_left -= body
                self._skip -= step
                if not self._skip:
                    self.in_body = None
            elif self._meta is not None:
                step = min(self._meta_left, len(view))
                if len(self._meta) < MAX_META_HEADER_BYTES:
                    self._meta += view[:step]
                self._meta_left -= step
                if not self._meta_left:
                    self._end_meta()
            elif not self._header and len(view) >= BLOCK:
                step = BLOCK  # the common case: a whole header in the chunk, no copy to gather
                self._on_header(view[:BLOCK].tobytes(), self.offset + BLOCK)
            else:
                step = min(BLOCK - len(self._header), len(view))
                self._header += view[:step]
                if len(self._header) == BLOCK:
                    self._on_header(bytes(self._header), self.offset + step)
                    self._header.clear()
            view = view[step:]
            self.offset += step

    def _on_header(self, header: bytes, end: int) -> None:
        if header == _ZERO_BLOCK:
            self.finished = True  # the end-of-archive marker
            return
        try:
            size = _tar_number(header[124:136])
        except ValueError:
            self.finished = True
            return
        flag = header[156:157]
        padded = -(-size // BLOCK) * BLOCK
        if flag in _META_FLAGS:
            self._meta, self._meta_kind, self._meta_left = bytearray(), flag, size
            self._after_meta = padded - size
            if size == 0:
                self._end_meta()
            return
        kind = _KINDS.get(flag, "other")
        pending, self._pending = self._pending, {}
        name = pending.get("path")
        if name is None:
            base = header[0:100].split(b"\0", 1)[0]
            prefix = header[345:500].split(b"\0", 1)[0]
            name = (prefix + b"/" + base if prefix else base).decode("utf-8", "surrogateescape")
        linkname = ""
        if kind == "hardlink":
            linkname = pending.get("linkpath") or _text(header[157:257])
        self.entries += 1
        sink = self.on_entry(TarEntry(name, kind, size, end, linkname))
        # As tarfile reads it: data follows regular files and unknown kinds only; the size
        # field of a link, directory or device is not followed by data.
        if kind in ("regular", "other") and size:
            self._skip, self._body_left = padded, size
            self.in_body = sink

    def _end_meta(self) -> None:
        body = bytes(self._meta or b"")
        if len(body) < MAX_META_HEADER_BYTES:
            if self._meta_kind == b"L":
                self._pending["path"] = _text(body)
            elif self._meta_kind == b"K":
                self._pending["linkpath"] = _text(body)
            elif self._meta_kind == b"x":
                for keyword, value in _pax_records(body):
                    if keyword in (b"path", b"linkpath"):
                        self._pending[keyword.decode()] = value.decode("utf-8", "surrogateescape")
        self._meta = None
        self._skip = self._after_meta


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _tar_number(field: bytes) -> int:
    if field[0] & 0x80:  # base-256, for sizes over 8 GiB
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _pax_records(body: bytes) -> list[tuple[bytes, bytes]]:
    """`LENGTH KEYWORD=VALUE\\n` records; parsing stops at the first malformed one."""
    records = []
    position = 0
    while position < len(body):
        space = body.find(b" ", position)
        if space < 0:
            break
        try:
            length = int(body[position:space])
        except ValueError:
            break
        if length <= space - position:
            break  # shorter than its own length field: not a record (and no progress)
        keyword, _, value = body[space + 1 : position + length - 1].partition(b"=")
        records.append((keyword, value))
        position += length
    return records
