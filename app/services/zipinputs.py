"""Decide whether an input .zip is safe to unpack, and stream its entries out one at a time.

A run with `"unpack_zip": true` gets every `.zip` object under its input prefix unpacked into
`$INPUT_DIR/<zip path without .zip>/...` instead of staged as the .zip itself. The caller, in a
worker thread, opens the downloaded archive with `zipfile.ZipFile`, calls `plan_zip` (which reads
only the central directory that `ZipFile` already parsed, and refuses the whole archive before a
byte of it is unpacked), then for each planned entry writes a tar header with
`WorkspaceTarWriter.begin_file(name, entry.size)`, calls `copy_entry` to stream exactly
`entry.size` bytes into the tar, and calls `pad(entry.size)`.

`copy_entry` can still refuse an entry whose data does not match its header (a bad CRC, a size
that lies); by then part of the tar entry is written, so the caller must abandon the whole tar
and fail the staging, not carry on with the next entry.

Opening the archive is the caller's step and can fail before any of this runs: `ZipFile` raises
BadZipFile for a file that is no zip, UnicodeDecodeError for a name flagged UTF-8 that is not,
and NotImplementedError for a zip version it does not know; all three mean "refuse the archive".

Paths are checked as relative paths of their own; the caller joins them under the zip's folder
and must still check the joined path (its length, and that it does not collide with other
inputs).
"""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from app.services.s3uri import MAX_PATH_BYTES, MAX_SEGMENT_BYTES, safe_relative_path

# The ratio rules apply only to entries (and archives) that expand past this size: a small
# text file often deflates 200:1, and a small file cannot be a bomb whatever its ratio.
RATIO_MIN_BYTES = 1 << 20

# Only these two: zipfile decompresses bzip2 and LZMA without an output limit per call, so a
# few KiB of bzip2 whose header lies about its size can expand to hundreds of MiB in memory
# before the declared size is enforced. Deflate is decompressed with a bounded output.
_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
_METHOD_NAMES = {
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "LZMA",
    9: "deflate64",
    93: "zstd",
    95: "xz",
    97: "WavPack",
    98: "PPMd",
    99: "AES-encrypted",
}

_FLAG_ENCRYPTED = 0x1
_FLAG_PATCHED_DATA = 0x20  # PKWARE "compressed patched data": a delta against another file
_FLAG_STRONG_ENCRYPTION = 0x40
_LOCAL_HEADER_BYTES = 30  # the fixed part of a local file header, before name and extra field
_DRIVE = re.compile(r"[A-Za-z]:")

# What zipfile raises when an entry's bytes are corrupt or do not match its header.
_CORRUPT = (zipfile.BadZipFile, EOFError, zlib.error, UnicodeDecodeError)


class ZipRefused(ValueError):
    """The archive (or one entry of it, named in `entry`) breaks a rule and is not unpacked."""

    def __init__(self, message: str, *, entry: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.entry = entry


@dataclass(frozen=True)
class ZipEntry:
    path: str  # a safe relative path, "/"-separated
    size: int  # the declared uncompressed size: exactly what copy_entry writes
    info: zipfile.ZipInfo


def _control_character(name: str) -> str | None:
    for char in name:
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return char
    return None


def _name_problem(name: str) -> str | None:
    """Why the entry name cannot become a relative path below the zip's folder, or None."""
    if "\x00" in name:
        return "has a NUL character in its name"
    if (char := _control_character(name)) is not None:
        return f"has a control character ({char!r}) in its name"
    if "\\" in name:
        # Windows tools write "dir\file"; unzip tools disagree on whether that is a folder, so
        # the archive is refused rather than guessed at.
        return "has a backslash in its name; zip paths must use '/'"
    if name.startswith("/"):
        return "has an absolute path"
    if _DRIVE.match(name):
        return "starts with a drive letter"
    for segment in name.removesuffix("/").split("/"):
        if segment == "..":
            return "has a '..' segment, which would point outside the folder it is unpacked to"
        if segment in ("", "."):
            shown = "an empty segment (//)" if segment == "" else "a '.' segment"
            return f"has {shown} in its path"
    if safe_relative_path(name.removesuffix("/"), "") is None:
        return (
            f"has a path longer than {MAX_PATH_BYTES} bytes or a segment longer than "
            f"{MAX_SEGMENT_BYTES} bytes, or a name that is not valid Unicode"
        )
    return None


def _kind_problem(info: zipfile.ZipInfo) -> str | None:
    """Why the entry is not a plain file or folder, or None."""
    file_type = stat.S_IFMT(info.external_attr >> 16)  # the Unix mode, when made on Unix
    if file_type == stat.S_IFLNK:
        return "is a symbolic link; links are refused because they can point anywhere"
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "is a special file (a device, fifo or socket); only files and folders are allowed"
    return None


def _entry_problem(info: zipfile.ZipInfo, data_end: int) -> str | None:
    """Why a file entry's header cannot be trusted or decoded, or None."""
    if info.flag_bits & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION):
        return "is encrypted; encrypted archives are not unpacked"
    if info.flag_bits & _FLAG_PATCHED_DATA:
        return "holds PKWARE patch data, which is not a file"
    if info.compress_type not in _METHODS:
        method = _METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
        return (
            f"is compressed with {method}; only stored and deflate entries are unpacked "
            "(re-create the archive with the default settings of zip or your OS)"
        )
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        return (
            f"is stored uncompressed but declares {info.compress_size} bytes stored and "
            f"{info.file_size} bytes unpacked"
        )
    if info.header_offset + _LOCAL_HEADER_BYTES + info.compress_size > data_end:
        return "declares compressed data that runs past the end of the archive's data"
    return None


def _ratio_over(size: int, compressed: int, max_ratio: float) -> bool:
    return size > RATIO_MIN_BYTES and size > max_ratio * compressed


def _ratio_text(size: int, compressed: int, max_ratio: float) -> str:
    shown = f"{size / compressed:.0f}:1" if compressed else "unbounded"
    return (
        f"expands {compressed} compressed bytes to {size} bytes (ratio {shown}, "
        f"over the {max_ratio:g}:1 limit for more than {RATIO_MIN_BYTES} bytes)"
    )


class _Layout:
    """The files and folders planned so far, to refuse two entries that land on one path."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}  # path -> entry name
        self.folders: dict[str, str] = {}  # path -> the entry name that made it a folder

    def add(self, path: str, name: str, *, folder: bool) -> None:
        parts = path.split("/")
        for depth in range(1, len(parts) + (1 if folder else 0)):
            parent = "/".join(parts[:depth])
            if parent in self.files:
                raise ZipRefused(
                    f"zip entry {name!r} needs {parent!r} to be a folder, but entry "
                    f"{self.files[parent]!r} is a file of that name",
                    entry=name,
                )
            self.folders.setdefault(parent, name)
        if folder:
            return
        if path in self.files:
            raise ZipRefused(
                f"zip entry {name!r} appears twice in the archive (two entries for {path!r})",
                entry=name,
            )
        if path in self.folders:
            raise ZipRefused(
                f"zip entry {name!r} is a file, but entry {self.folders[path]!r} makes "
                f"{path!r} a folder",
                entry=name,
            )
        self.files[path] = name


def plan_zip(
    zf: zipfile.ZipFile,
    *,
    max_total_bytes: int,
    max_ratio: float = 100.0,
    max_entries: int = 100_000,
) -> list[ZipEntry]:
    """The files to unpack, in archive order; raises ZipRefused for the whole archive if any
    entry or the archive as a whole breaks a rule.

    Folder entries are skipped (folders are implied by the files' paths). Sizes are the ones the
    central directory declares; `copy_entry` holds each entry to its declared size, so the caps
    here bound what is written. Nothing is decompressed.
    """
    infos = zf.infolist()
    if len(infos) > max_entries:
        raise ZipRefused(f"zip archive has {len(infos)} entries, over the limit of {max_entries}")
    # Entries' data lies before the central directory and no two share bytes; more declared
    # compressed data than that means overlapping entries, the trick of non-recursive zip bombs.
    data_end = zf.start_dir
    layout = _Layout()
    planned: list[ZipEntry] = []
    total_size = total_compressed = all_compressed = 0
    for info in infos:
        name = info.orig_filename  # zipfile cuts `filename` at a NUL; the original keeps it
        problem = _name_problem(name) or _kind_problem(info)
        if problem is not None:
            raise ZipRefused(f"zip entry {name!r} {problem}", entry=name)
        all_compressed += info.compress_size
        path = name.removesuffix("/")
        if name.endswith("/") or stat.S_ISDIR(info.external_attr >> 16):
            layout.add(path, name, folder=True)
            continue
        if (problem := _entry_problem(info, data_end)) is not None:
            raise ZipRefused(f"zip entry {name!r} {problem}", entry=name)
        if _ratio_over(info.file_size, info.compress_size, max_ratio):
            text = _ratio_text(info.file_size, info.compress_size, max_ratio)
            raise ZipRefused(f"zip entry {name!r} {text}: it looks like a zip bomb", entry=name)
        layout.add(path, name, folder=False)
        total_size += info.file_size
        total_compressed += info.compress_size
        planned.append(ZipEntry(path=path, size=info.file_size, info=info))
    if all_compressed > data_end:
        raise ZipRefused(
            f"zip archive's entries declare {all_compressed} bytes of compressed data but the "
            f"archive holds only {data_end}: entries overlap, as in a zip bomb"
        )
    if total_size > max_total_bytes:
        raise ZipRefused(
            f"zip archive unpacks to {total_size} bytes, over the limit of {max_total_bytes}"
        )
    if _ratio_over(total_size, total_compressed, max_ratio):
        text = _ratio_text(total_size, total_compressed, max_ratio)
        raise ZipRefused(f"zip archive {text}: it looks like a zip bomb")
    return planned


def copy_entry(zf: zipfile.ZipFile, entry: ZipEntry, out: BinaryIO, *, chunk: int = 1 << 20) -> int:
    """Streams the entry's bytes into `out` and returns how many were written: always
    `entry.size`, or ZipRefused if the data is corrupt, shorter or longer than declared.

    Never writes more than `entry.size` bytes. Errors writing to `out` propagate unchanged.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 byte, got {chunk}")
    name = entry.info.orig_filename
    if entry.info.compress_type not in _METHODS:
        # The guard against unbounded decompression, for an entry that did not come from plan_zip.
        raise ZipRefused(f"zip entry {name!r} uses an unsupported compression method", entry=name)
    written = 0
    try:
        with zf.open(entry.info) as source:
            while True:
                # One byte past the declared size is enough to tell that the data is longer.
                data = source.read(min(chunk, entry.size - written + 1))
                if not data:
                    break
                if written + len(data) > entry.size:
                    raise ZipRefused(
                        f"zip entry {name!r} holds more data than the {entry.size} bytes its "
                        "header declares",
                        entry=name,
                    )
                out.write(data)
                written += len(data)
    except _CORRUPT as exc:
        raise ZipRefused(f"zip entry {name!r} is corrupt: {exc}", entry=name) from exc
    if written < entry.size:
        raise ZipRefused(
            f"zip entry {name!r} holds {written} bytes, fewer than the {entry.size} its header "
            "declares",
            entry=name,
        )
    return written
