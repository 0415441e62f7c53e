"""The output plan and the tar stream parser, on tar archives made in memory."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import pytest

from app.adapters.tarstream import TarEntry, TarStreamParser
from app.services.outputs import MAX_SKIPPED_LISTED, plan_outputs, safe_member_path


def archive(*members: tuple[str, bytes | None, bytes]) -> bytes:
    """A tar of (name, body or None, type) members, like Docker's archive of output/."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.LNKTYPE or kind == tarfile.SYMTYPE:
                info.linkname = (body or b"").decode()
                tar.addfile(info)
            elif body is not None:
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def plan(data: bytes, **caps: Any):  # type: ignore[no-untyped-def]
    limits: dict[str, Any] = {"max_files": 100, "max_bytes": 10**9}
    limits.update(caps)
    return plan_outputs(data, root="output", **limits)


def body_of(data: bytes, path: str) -> bytes:
    """The bytes a planned file is uploaded with, read from the archive at its offset."""
    member = next(m for m in plan(data).files if m.path == path)
    return data[member.offset : member.offset + member.size]


def test_regular_files_and_hard_links_are_uploaded_links_and_fifos_are_not() -> None:
    data = archive(
        ("output", None, tarfile.DIRTYPE),
        ("output/hard", b"x\n", tarfile.REGTYPE),
        ("output/real", b"output/hard", tarfile.LNKTYPE),
        ("output/passwd", b"/etc/passwd", tarfile.SYMTYPE),
        ("output/fifo", None, tarfile.FIFOTYPE),
    )
    result = plan(data)
    assert [(m.path, m.size) for m in result.files] == [("hard", 2), ("real", 2)]
    assert body_of(data, "real") == body_of(data, "hard") == b"x\n"
    assert {(s.path, s.kind) for s in result.skipped} == {("passwd", "symlink"), ("fifo", "fifo")}


def test_hard_links_count_against_the_caps() -> None:
    data = archive(
        ("output/a", b"x" * 10, tarfile.REGTYPE),
        *((f"output/l{i}", b"output/a", tarfile.LNKTYPE) for i in range(5)),
    )
    result = plan(data, max_bytes=35)
    assert len(result.files) == 3
    assert result.limit_reason and "size cap" in result.limit_reason


def test_names_that_cannot_be_keys_are_skipped() -> None:
    bad = "output/bad\udcffname"
    data = archive((bad, b"x", tarfile.REGTYPE), ("output/" + "n" * 950, b"y", tarfile.REGTYPE))
    result = plan(data)
    assert result.files == []
    assert {s.reason for s in result.skipped} == {
        "name is not valid UTF-8",
        "path is longer than 900 bytes",
    }


def test_members_named_like_the_services_own_files_are_skipped() -> None:
    data = archive(
        ("output/stdout.txt", b"forged", tarfile.REGTYPE),
        ("output/run.json/inner", b"x", tarfile.REGTYPE),
        ("output/sub/stdout.txt", b"mine", tarfile.REGTYPE),
        ("output/STDOUT.txt", b"mine", tarfile.REGTYPE),  # keys are case-sensitive
    )
    reserved = frozenset({"stdout.txt", "run.json"})
    result = plan(data, max_files=10, max_bytes=100, reserved=reserved)
    assert [m.path for m in result.files] == ["sub/stdout.txt", "STDOUT.txt"]
    assert [s.path for s in result.skipped] == ["stdout.txt", "run.json/inner"]
    assert all("service's own files" in s.reason for s in result.skipped)


@pytest.mark.parametrize("name", ["/etc/x", "output/../x", "../x", "output/a/../../b"])
def test_member_paths_never_escape(name: str) -> None:
    assert safe_member_path(name, "output") is None


def test_the_parser_reads_entries_fed_in_odd_chunks_including_long_pax_names() -> None:
    long_name = "output/" + "d/" * 80 + "file.bin"
    data = archive(
        ("output/a", b"a" * 1000, tarfile.REGTYPE),
        (long_name, b"b" * 700, tarfile.REGTYPE),
        ("output/s", b"output/a", tarfile.SYMTYPE),
        ("output/h", b"output/a", tarfile.LNKTYPE),
    )
    seen: list[TarEntry] = []
    bodies: dict[str, bytearray] = {}

    def on_entry(entry: TarEntry):  # type: ignore[no-untyped-def]
        seen.append(entry)
        bodies[entry.name] = bytearray()
        return bodies[entry.name].extend

    parser = TarStreamParser(on_entry)
    for start in range(0, len(data), 333):
        parser.feed(data[start : start + 333])
    assert parser.finished
    assert [(e.name, e.kind, e.size, e.linkname) for e in seen] == [
        ("output/a", "regular", 1000, ""),
        (long_name, "regular", 700, ""),
        ("output/s", "symlink", 0, ""),
        ("output/h", "hardlink", 0, "output/a"),
    ]
    assert bodies["output/a"] == b"a" * 1000 and bodies[long_name] == b"b" * 700
    # The offsets point at the bodies in the stream.
    assert data[seen[1].data_offset : seen[1].data_end] == b"b" * 700


def test_a_stream_that_is_not_a_tar_ends_the_parse() -> None:
    parser = TarStreamParser(lambda entry: None)
    parser.feed(b"not a tar header at all".ljust(512, b"z"))
    assert parser.finished and parser.entries == 0


def test_entries_past_what_was_kept_are_reported_as_skipped() -> None:
    data = archive(*((f"output/f{i}", bytes(4096), tarfile.REGTYPE) for i in range(6)))
    kept = 3 * (512 + 4096) + 100  # the download kept only this much
    result = plan(data, kept_bytes=kept)
    assert [m.path for m in result.files] == ["f0", "f1", "f2"]
    assert result.skipped_count == 3
    assert {s.path for s in result.skipped} == {"f3", "f4", "f5"}
    assert result.limit_reason == "output archive was cut short at the output size cap"


def test_many_empty_files_keep_the_plan_at_the_caps() -> None:
    data = archive(*((f"output/{i}", b"", tarfile.REGTYPE) for i in range(30_000)))
    result = plan(data, max_files=10, max_entries=20_000)
    assert len(result.files) == 10
    # Past the file cap every entry is counted (the first ones listed); past the entry cap
    # reading stops.
    assert result.skipped_count == 20_000 - 10
    assert len(result.skipped) == MAX_SKIPPED_LISTED
    assert result.limit_reason is not None
    assert "more than 20000 entries" in result.limit_reason
