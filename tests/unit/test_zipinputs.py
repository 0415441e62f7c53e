"""Which input zips are unpacked, and that their bytes come out exactly as declared or not at all."""

from __future__ import annotations

import io
import random
import struct
import tarfile
import time
import warnings
import zipfile
import zlib

import pytest

from app.adapters.docker_workspace import WorkspaceTarWriter
from app.services.zipinputs import RATIO_MIN_BYTES, ZipEntry, ZipRefused, copy_entry, plan_zip

Member = tuple[str | zipfile.ZipInfo, bytes]
CAP = 1 << 30


def make_zip(*members: Member, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of (name or ZipInfo, body) members, in order; duplicates are kept as written."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about duplicate names
        with zipfile.ZipFile(buffer, "w", compression) as zf:
            for name, body in members:
                zf.writestr(name, body)
    return buffer.getvalue()


def open_zip(data: bytes) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(data))


def plan(
    data: bytes, *, max_total_bytes: int = CAP, max_ratio: float = 100.0, max_entries: int = 100_000
) -> list[ZipEntry]:
    with open_zip(data) as zf:
        return plan_zip(
            zf, max_total_bytes=max_total_bytes, max_ratio=max_ratio, max_entries=max_entries
        )


def refusal(data: bytes, *, max_total_bytes: int = CAP, max_entries: int = 100_000) -> str:
    with pytest.raises(ZipRefused) as caught:
        plan(data, max_total_bytes=max_total_bytes, max_entries=max_entries)
    return caught.value.message


def patch_entry(data: bytes, name: str, **fields: int) -> bytes:
    """The archive with fields of `name`'s local header and central-directory record rewritten,
    as a hand-made or hostile archive would have them."""
    local_at = {"flags": 6, "method": 8, "crc": 14, "compress_size": 18, "file_size": 22}
    central_at = {"flags": 8, "method": 10, "crc": 16, "compress_size": 20, "file_size": 24}
    central_at["header_offset"] = 42
    formats = {"flags": "<H", "method": "<H"}
    patched = bytearray(data)
    with open_zip(data) as zf:
        position = zf.start_dir
    while patched[position : position + 4] == b"PK\x01\x02":
        name_length, extra_length, comment_length = struct.unpack_from(
            "<HHH", patched, position + 28
        )
        record_name = patched[position + 46 : position + 46 + name_length].decode()
        if record_name == name:
            (local,) = struct.unpack_from("<I", patched, position + 42)
            for field, value in fields.items():
                fmt = formats.get(field, "<I")
                struct.pack_into(fmt, patched, position + central_at[field], value)
                if field in local_at:
                    struct.pack_into(fmt, patched, local + local_at[field], value)
            return bytes(patched)
        position += 46 + name_length + extra_length + comment_length
    raise AssertionError(f"no entry {name!r} in the central directory")


def data_offset(data: bytes, name: str) -> int:
    with open_zip(data) as zf:
        offset = zf.getinfo(name).header_offset
    name_length, extra_length = struct.unpack_from("<HH", data, offset + 26)
    return int(offset + 30 + name_length + extra_length)


def copy_all(data: bytes, chunk: int = 1 << 20) -> dict[str, bytes]:
    files = {}
    with open_zip(data) as zf:
        for entry in plan_zip(zf, max_total_bytes=CAP):
            out = io.BytesIO()
            assert copy_entry(zf, entry, out, chunk=chunk) == entry.size
            files[entry.path] = out.getvalue()
    return files


def copy_refusal(data: bytes, name: str, chunk: int = 1 << 20) -> tuple[str, bytes]:
    """The refusal message copy_entry gives for `name`, and what it wrote before refusing."""
    out = io.BytesIO()
    with open_zip(data) as zf:
        entry = next(e for e in plan_zip(zf, max_total_bytes=CAP) if e.path == name)
        with pytest.raises(ZipRefused) as caught:
            copy_entry(zf, entry, out, chunk=chunk)
    assert caught.value.entry == name
    return caught.value.message, out.getvalue()


class CountingReader(io.BytesIO):
    """An archive file that counts the bytes read from it."""

    bytes_read = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


SAMPLE = random.Random(7).randbytes(3 * (1 << 20) // 2)  # incompressible, bigger than a chunk


def test_a_nested_archive_round_trips_byte_exact_into_the_workspace_tar() -> None:
    stored = zipfile.ZipInfo("données/stored.txt")  # non-ASCII: zipfile sets the UTF-8 flag
    stored.compress_type = zipfile.ZIP_STORED
    files = {
        "readme.txt": b"hello\n" * 1000,
        "données/stored.txt": "café\n".encode(),
        "data/deep/er/sample.bin": SAMPLE,
        "data/empty": b"",
        "zeros.bin": b"\0" * (RATIO_MIN_BYTES // 2),  # 1000:1, but too small to be a bomb
    }
    archive = make_zip(
        ("data/", b""),
        ("data/deep/", b""),
        ("empty-folder/", b""),
        *((stored if name == stored.filename else name, body) for name, body in files.items()),
    )
    spool = io.BytesIO()
    writer = WorkspaceTarWriter(spool)
    with open_zip(archive) as zf:
        entries = plan_zip(zf, max_total_bytes=sum(map(len, files.values())))
        assert [e.path for e in entries] == list(files)
        for entry in entries:
            writer.begin_file(f"input/bundle/{entry.path}", entry.size)
            written = copy_entry(zf, entry, spool, chunk=64 * 1024)
            writer.pad(written)
    writer.close()

    spool.seek(0)
    unpacked = {}
    with tarfile.open(fileobj=spool) as tar:
        for member in tar:
            body = tar.extractfile(member) if member.isfile() else None
            if body is not None:
                unpacked[member.name.removeprefix("workspace/input/bundle/")] = body.read()
    assert unpacked == files


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("/etc/passwd", "absolute path"),
        ("\\evil.txt", "backslash"),
        ("dir\\file.txt", "backslash"),
        ("C:/Windows/win.ini", "drive letter"),
        ("C:win.ini", "drive letter"),
        ("../escape.txt", "'..' segment"),
        ("a/../../escape.txt", "'..' segment"),
        ("a/..", "'..' segment"),
        ("../up/", "'..' segment"),  # a folder entry is checked too
        ("a//b.txt", "empty segment"),
        ("./a.txt", "'.' segment"),
        ("a\x1bb.txt", "control character"),
        ("a\nb.txt", "control character"),
        ("a\x85b.txt", "control character"),
        ("x" * 256, "longer than"),
        ("/".join(["d" * 200] * 21), "longer than"),
    ],
)
def test_an_unsafe_entry_name_refuses_the_whole_archive(name: str, rule: str) -> None:
    archive = make_zip(("fine.txt", b"ok"), (name, b"payload"))
    with pytest.raises(ZipRefused, match=rule) as caught:
        plan(archive)
    assert caught.value.entry == name
    assert repr(name) in caught.value.message


def test_a_nul_in_a_name_is_refused_although_zipfile_cuts_the_name_there() -> None:
    archive = make_zip(("fine.txt", b"ok"), ("evil_.txt", b"x")).replace(b"evil_", b"evil\0")
    with open_zip(archive) as zf:
        assert zf.namelist() == ["fine.txt", "evil"]  # the NUL and what follows are gone
    assert "NUL" in refusal(archive)


@pytest.mark.parametrize(
    ("mode", "rule"),
    [(0o120777, "symbolic link"), (0o010644, "special file"), (0o020644, "special file")],
)
def test_links_and_special_files_are_refused(mode: int, rule: str) -> None:
    link = zipfile.ZipInfo("link")
    link.external_attr = mode << 16
    assert rule in refusal(make_zip(("fine.txt", b"ok"), (link, b"/etc/passwd")))


@pytest.mark.parametrize("flags", [0x1, 0x41, 0x9])
def test_encrypted_entries_are_refused(flags: int) -> None:
    archive = patch_entry(make_zip(("secret.txt", b"s" * 100)), "secret.txt", flags=flags)
    assert "is encrypted" in refusal(archive)


@pytest.mark.parametrize(
    ("compression", "shown"), [(zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_LZMA, "LZMA")]
)
def test_compression_other_than_stored_and_deflate_is_refused(compression: int, shown: str) -> None:
    archive = make_zip(("a.txt", b"abc" * 100), compression=compression)
    assert f"compressed with {shown}" in refusal(archive)


def test_deflate64_and_unknown_methods_are_refused_by_name_or_number() -> None:
    archive = make_zip(("a.txt", b"abc" * 100))
    assert "deflate64" in refusal(patch_entry(archive, "a.txt", method=9))
    assert "method 77" in refusal(patch_entry(archive, "a.txt", method=77))


@pytest.mark.parametrize(
    "members",
    [
        [("a.txt", b"1"), ("a.txt", b"2")],
        [("dir/a.txt", b"1"), ("dir/a.txt", b"1")],
        [("a", b"file"), ("a/b.txt", b"in a folder named like the file")],
        [("a/b.txt", b"in a folder"), ("a", b"file named like the folder")],
        [("a/b/c.txt", b"deep"), ("a/b", b"file")],
        [("a/", b""), ("a", b"file")],
        [("a", b"file"), ("a/", b"")],
    ],
)
def test_two_entries_landing_on_one_path_are_refused(members: list[Member]) -> None:
    message = refusal(make_zip(*members))
    assert "twice" in message or "folder" in message


def test_the_same_folder_listed_twice_or_implied_is_fine() -> None:
    archive = make_zip(("a/", b""), ("a/", b""), ("a/b.txt", b"1"), ("a/c.txt", b"2"))
    assert copy_all(archive) == {"a/b.txt": b"1", "a/c.txt": b"2"}


def test_the_declared_total_size_is_capped() -> None:
    archive = make_zip(*((f"f{i}.bin", SAMPLE[:1000]) for i in range(3)))
    assert len(plan(archive, max_total_bytes=3000)) == 3
    assert "unpacks to 3000 bytes, over the limit of 2999" in refusal(archive, max_total_bytes=2999)


def test_the_number_of_entries_is_capped_folders_included() -> None:
    archive = make_zip(("a/", b""), ("b/", b""), ("a/1", b"1"), ("a/2", b"2"), ("b/3", b"3"))
    assert len(plan(archive, max_entries=5)) == 3
    assert "5 entries, over the limit of 4" in refusal(archive, max_entries=4)


def test_a_zip_bomb_is_refused_from_its_directory_without_decompressing_it() -> None:
    archive = make_zip(("readme.txt", b"nothing to see"), ("bomb.bin", b"\0" * 50_000_000))
    assert len(archive) < 100_000
    source = CountingReader(archive)
    with zipfile.ZipFile(source) as zf:
        source.bytes_read = 0
        started = time.perf_counter()
        with pytest.raises(ZipRefused, match="zip bomb") as caught:
            plan_zip(zf, max_total_bytes=CAP)
        elapsed = time.perf_counter() - started
    assert caught.value.entry == "bomb.bin"
    assert source.bytes_read == 0  # the decision came from the central directory alone
    assert elapsed < 0.5


def test_many_small_compressible_entries_are_judged_by_the_archive_ratio() -> None:
    piece = b"\0" * (RATIO_MIN_BYTES // 4)  # each far over 100:1, each under the size floor
    assert len(plan(make_zip(*((f"z{i}", piece) for i in range(4))))) == 4  # 1 MiB in all
    message = refusal(make_zip(*((f"z{i}", piece) for i in range(5))))
    assert message.startswith("zip archive expands") and "zip bomb" in message


def test_the_ratio_limit_can_be_raised() -> None:
    archive = make_zip(("zeros.bin", b"\0" * (2 * RATIO_MIN_BYTES)))
    assert "ratio" in refusal(archive)
    assert [e.size for e in plan(archive, max_ratio=2000)] == [2 * RATIO_MIN_BYTES]


def test_entries_sharing_compressed_data_are_refused() -> None:
    body = SAMPLE[:1000]
    archive = make_zip(("a.bin", body), ("b.bin", b""), compression=zipfile.ZIP_STORED)
    # b.bin's record now points at a.bin's data, as the entries of an overlapping bomb do.
    archive = patch_entry(
        archive, "b.bin", crc=zlib.crc32(body), compress_size=1000, file_size=1000, header_offset=0
    )
    assert "entries overlap" in refusal(archive)


def test_compressed_data_past_the_end_of_the_archive_is_refused() -> None:
    archive = make_zip(("a.bin", SAMPLE[:1000]), compression=zipfile.ZIP_STORED)
    archive = patch_entry(archive, "a.bin", compress_size=5000, file_size=5000)
    assert "runs past the end" in refusal(archive)


def test_a_stored_entry_whose_two_sizes_differ_is_refused() -> None:
    archive = make_zip(("a.bin", SAMPLE[:1000]), compression=zipfile.ZIP_STORED)
    assert "stored uncompressed" in refusal(patch_entry(archive, "a.bin", file_size=100))


@pytest.mark.parametrize("chunk", [1 << 20, 16])
def test_a_stored_entry_longer_than_its_header_says_is_refused_within_the_declared_size(
    chunk: int,
) -> None:
    archive = make_zip(("a.bin", SAMPLE[:1000]), compression=zipfile.ZIP_STORED)
    archive = patch_entry(archive, "a.bin", compress_size=100, file_size=100)
    assert [e.size for e in plan(archive)] == [100]
    message, written = copy_refusal(archive, "a.bin", chunk)
    assert "corrupt" in message and "CRC" in message
    assert written == SAMPLE[: len(written)] and len(written) <= 100


@pytest.mark.parametrize("chunk", [1 << 20, 100])
def test_a_deflated_entry_longer_than_its_header_says_is_refused_within_the_declared_size(
    chunk: int,
) -> None:
    archive = patch_entry(make_zip(("a.bin", SAMPLE[:50_000])), "a.bin", file_size=1000)
    message, written = copy_refusal(archive, "a.bin", chunk)
    assert "corrupt" in message
    assert written == SAMPLE[: len(written)] and len(written) <= 1000


def test_a_header_that_also_forges_the_crc_can_only_shorten_the_file() -> None:
    archive = make_zip(("a.bin", SAMPLE[:50_000]))
    archive = patch_entry(archive, "a.bin", file_size=1000, crc=zlib.crc32(SAMPLE[:1000]))
    assert copy_all(archive) == {"a.bin": SAMPLE[:1000]}


def test_an_entry_shorter_than_its_header_says_is_refused() -> None:
    archive = patch_entry(make_zip(("a.bin", SAMPLE[:1000])), "a.bin", file_size=5000)
    message, written = copy_refusal(archive, "a.bin")
    assert "holds 1000 bytes, fewer than the 5000" in message
    assert written == SAMPLE[:1000]


def test_corrupt_deflate_data_is_refused() -> None:
    archive = bytearray(make_zip(("a.bin", SAMPLE[:10_000])))
    archive[data_offset(bytes(archive), "a.bin")] = 0xFF  # a final block of the invalid type 3
    message, written = copy_refusal(bytes(archive), "a.bin")
    assert "corrupt" in message and "invalid block type" in message
    assert written == b""


def test_a_wrong_crc_is_refused() -> None:
    archive = patch_entry(make_zip(("a.bin", SAMPLE[:10_000])), "a.bin", crc=0)
    message, _ = copy_refusal(archive, "a.bin")
    assert "Bad CRC-32" in message


def test_an_entry_whose_unix_mode_says_folder_is_a_folder() -> None:
    folder = zipfile.ZipInfo("d")  # no trailing "/", as some archivers write folders
    folder.external_attr = 0o040755 << 16
    assert copy_all(make_zip((folder, b""), ("d/x.txt", b"x"))) == {"d/x.txt": b"x"}
