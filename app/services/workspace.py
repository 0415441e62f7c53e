"""The job's /workspace as tar archives: what goes in (wrapper, command, inputs) and what comes out."""

from __future__ import annotations

import posixpath
import tarfile
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import BinaryIO, Literal

JOB_UID = 65534
JOB_GID = 65534
META_DIR = ".taskdeploy"
ENTRYPOINT = f"/workspace/{META_DIR}/entrypoint.sh"
TAR_FORMAT: Literal[0, 1, 2] = tarfile.PAX_FORMAT
BLOCK = tarfile.BLOCKSIZE


def _info(name: str, *, kind: bytes, size: int = 0, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.uid, info.gid = JOB_UID, JOB_GID
    info.uname = info.gname = "nobody"
    info.mtime = int(time.time())
    return info


class WorkspaceTarWriter:
    """Writes the tar that `put_archive` unpacks into /workspace, streaming file bodies.

    Entries are written by hand (header, body, padding) so a file's body can be streamed from
    the object store straight into the spool file without an intermediate copy.
    """

    def __init__(self, fileobj: BinaryIO) -> None:
        self.fileobj = fileobj
        self._dirs: set[str] = set()

    def _write_header(self, info: tarfile.TarInfo) -> None:
        self.fileobj.write(info.tobuf(TAR_FORMAT, "utf-8", "surrogateescape"))

    def add_dir(self, name: str) -> None:
        name = name.rstrip("/") or "."
        if name in self._dirs:
            return
        parent = posixpath.dirname(name)
        if parent and parent != name:
            self.add_dir(parent)
        self._dirs.add(name)
        self._write_header(_info(name, kind=tarfile.DIRTYPE, mode=0o755))

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self.add_dir(posixpath.dirname(name) or ".")
        self._write_header(_info(name, kind=tarfile.REGTYPE, size=len(data), mode=mode))
        self.fileobj.write(data)
        self.pad(len(data))

    def begin_file(self, name: str, size: int) -> None:
        """Writes a file header; the caller then writes exactly `size` bytes and calls pad()."""
        self.add_dir(posixpath.dirname(name) or ".")
        self._write_header(_info(name, kind=tarfile.REGTYPE, size=size))

    def pad(self, written: int) -> None:
        remainder = written % BLOCK
        if remainder:
            self.fileobj.write(b"\0" * (BLOCK - remainder))

    def close(self) -> None:
        self.fileobj.write(b"\0" * (2 * BLOCK))


def write_workspace_skeleton(writer: WorkspaceTarWriter, command: str) -> None:
    """The wrapper, the command as a file, and empty input/ and output/ folders."""
    entrypoint = resources.files("app.assets").joinpath("entrypoint.sh").read_bytes()
    writer.add_dir(".")
    writer.add_bytes(f"{META_DIR}/entrypoint.sh", entrypoint, mode=0o555)
    writer.add_bytes(f"{META_DIR}/command.sh", command.encode(), mode=0o444)
    writer.add_dir("input")
    writer.add_dir("output")


@dataclass
class SkippedMember:
    path: str
    kind: str
    reason: str


@dataclass
class OutputMember:
    path: str  # relative to /workspace/output
    size: int


MAX_SKIPPED_LISTED = 1000


@dataclass
class OutputPlan:
    files: list[tuple[tarfile.TarInfo, OutputMember]] = field(default_factory=list)
    skipped: list[SkippedMember] = field(default_factory=list)
    skipped_count: int = 0  # may exceed len(skipped): the list is capped
    limit_reason: str | None = None

    def skip(self, path: str, kind: str, reason: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_SKIPPED_LISTED:
            self.skipped.append(SkippedMember(path, kind, reason))


def _kind(info: tarfile.TarInfo) -> str:
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.isfifo():
        return "fifo"
    if info.ischr() or info.isblk():
        return "device"
    if info.isdir():
        return "directory"
    return "regular" if info.isreg() else "other"


def safe_member_path(name: str, root: str) -> str | None:
    """The member's path below `root` (the archive's top folder) if it stays inside, else None."""
    if name.startswith("/") or "\x00" in name:
        return None
    parts = name.split("/")
    if parts and parts[0] == root:
        parts = parts[1:]
    parts = [p for p in parts if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


def plan_outputs(
    tar: tarfile.TarFile, *, root: str, max_files: int, max_bytes: int, available: int
) -> OutputPlan:
    """Which members of the output archive to upload: regular files only, within the caps.

    `available` is how many bytes of the archive were fetched; a member whose body lies
    beyond it was cut off by the download cap and is skipped.
    """
    plan = OutputPlan()
    total = 0
    try:
        for info in tar:
            kind = _kind(info)
            if kind == "directory":
                continue
            rel = safe_member_path(info.name, root)
            if rel is None:
                plan.skip(info.name, kind, "path escapes the output folder")
                continue
            if kind != "regular":
                plan.skip(rel, kind, "only regular files are uploaded")
                continue
            if plan.limit_reason is None and info.offset_data + info.size > available:
                plan.limit_reason = "output archive was cut short at the output size cap"
            if plan.limit_reason is None and len(plan.files) >= max_files:
                plan.limit_reason = (
                    f"output file cap reached: only the first {max_files} files were uploaded"
                )
            if plan.limit_reason is None and total + info.size > max_bytes:
                plan.limit_reason = (
                    f"output size cap reached: files past {max_bytes} bytes were not uploaded"
                )
            if plan.limit_reason is not None:
                plan.skip(rel, kind, "over the output caps")
                continue
            total += info.size
            plan.files.append((info, OutputMember(rel, info.size)))
    except (tarfile.ReadError, EOFError) as exc:
        # The archive was cut short (the size cap stopped the download): keep what was whole.
        if plan.limit_reason is None:
            plan.limit_reason = f"output archive was cut short: {exc}"
    return plan
