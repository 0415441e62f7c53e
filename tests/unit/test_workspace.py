"""The output plan and the header scanner, on tar archives made in memory."""

from __future__ import annotations

import io
import tarfile

import pytest

from app.services.workspace import TarHeaderScanner, plan_outputs, safe_member_path


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


def plan(data: bytes, **caps: int):  # type: ignore[no-untyped-def]
    limits = {"max_files": 100, "max_bytes": 10**9, "available": len(data)}
    limits.update(caps)
    tar = tarfile.open(fileobj=io.BytesIO(data))  # noqa: SIM115 - in memory
    return plan_outputs(tar, root="output", **limits)


def test_regular_files_and_hard_links_are_uploaded_links_and_fifos_are_not() -> None:
    data = archive(
        ("output", None, tarfile.DIRTYPE),
        ("output/hard", b"x\n", tarfile.REGTYPE),
        ("output/real", b"output/hard", tarfile.LNKTYPE),
        ("output/passwd", b"/etc/passwd", tarfile.SYMTYPE),
        ("output/fifo", None, tarfile.FIFOTYPE),
    )
    result = plan(data)
    assert [(m.path, m.size) for _, m in result.files] == [("hard", 2), ("real", 2)]
    link = next(info for info, m in result.files if m.path == "real")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile(link).read() == b"x\n"  # type: ignore[union-attr]
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
    tar = tarfile.open(fileobj=io.BytesIO(data))  # noqa: SIM115 - in memory
    reserved = frozenset({"stdout.txt", "run.json"})
    result = plan_outputs(
        tar, root="output", max_files=10, max_bytes=100, available=len(data), reserved=reserved
    )
    assert [m.path for _, m in result.files] == ["sub/stdout.txt", "STDOUT.txt"]
    assert [s.path for s in result.skipped] == ["stdout.txt", "run.json/inner"]
    assert all("service's own files" in s.reason for s in result.skipped)


@pytest.mark.parametrize("name", ["/etc/x", "output/../x", "../x", "output/a/../../b"])
def test_member_paths_never_escape(name: str) -> None:
    assert safe_member_path(name, "output") is None


def test_scanner_lists_entries_fed_in_odd_chunks_including_long_pax_names() -> None:
    long_name = "output/" + "d/" * 80 + "file.bin"
    data = archive(
        ("output/a", b"a" * 1000, tarfile.REGTYPE),
        (long_name, b"b" * 700, tarfile.REGTYPE),
        ("output/s", b"output/a", tarfile.SYMTYPE),
    )
    scanner = TarHeaderScanner()
    for start in range(0, len(data), 333):
        scanner.feed(data[start : start + 333])
    assert scanner.finished
    assert [(e.name, e.kind, e.size) for e in scanner.entries] == [
        ("output/a", "regular", 1000),
        (long_name, "regular", 700),
        ("output/s", "symlink", 0),
    ]


def test_entries_past_the_cut_are_reported_as_skipped() -> None:
    data = archive(*((f"output/f{i}", bytes(4096), tarfile.REGTYPE) for i in range(6)))
    scanner = TarHeaderScanner()
    scanner.feed(data)
    cut = data[: 3 * (512 + 4096) + 100]  # the download kept only this much
    result = plan_outputs(
        tarfile.open(fileobj=io.BytesIO(cut)),  # noqa: SIM115 - in memory
        root="output",
        max_files=100,
        max_bytes=10**9,
        available=len(cut),
        beyond=scanner.entries,
    )
    assert len(result.files) + result.skipped_count == 6
    assert len(result.files) >= 2
