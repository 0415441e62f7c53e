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
WORKSPACE = "/workspace"  # in the container's writable layer, under the run's disk cap
META_DIR = ".taskdeploy"
ENTRYPOINT = f"{WORKSPACE}/{META_DIR}/entrypoint.sh"
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
    """Writes the tar that `put_archive` unpacks at the container's root, streaming file bodies.

    Names are relative to the workspace; every entry lands under `root` (`workspace/`), which
    the first entry creates, owned by the job's user. Entries are written by hand (header, body,
    padding) so a file's body can be streamed from the object store straight into the spool
    file without an intermediate copy.
    """

    def __init__(self, fileobj: BinaryIO, root: str = WORKSPACE.lstrip("/")) -> None:
        self.fileobj = fileobj
        self.root = root
        self._dirs: set[str] = set()

    def _write_header(self, info: tarfile.TarInfo) -> None:
        info.name = posixpath.normpath(f"{self.root}/{info.name}")
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


def _key_problem(rel: str, max_key_bytes: int) -> str | None:
    """Why `rel` cannot be an object-key suffix, or None."""
    try:
        encoded = rel.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if any(ord(c) < 32 or ord(c) == 127 for c in rel):
        return "name has control characters"
    if len(encoded) > max_key_bytes:
        return f"path is longer than {max_key_bytes} bytes"
    return None


def plan_outputs(
    tar: tarfile.TarFile,
    *,
    root: str,
    max_files: int,
    max_bytes: int,
    available: int,
    max_key_bytes: int = 900,
    beyond: list[ScannedEntry] | None = None,
    reserved: frozenset[str] = frozenset(),
) -> OutputPlan:
    """Which members of the output archive to upload: regular files (and hard links to them,
    under their own names) within the caps.

    `available` is how many bytes of the archive were fetched; a member whose body lies
    beyond it was cut off by the download cap and is skipped. `beyond` lists the entries the
    header scan saw past the cut, so that they are reported too. `reserved` names the
    service's own files beside the outputs: a member at (or under) such a name is skipped.
    """
    plan = OutputPlan()
    total = 0
    planned: dict[str, int] = {}  # member name -> size, for hard links to planned files
    seen: set[str] = set()

    def admit(info: tarfile.TarInfo, rel: str, kind: str, size: int) -> None:
        nonlocal total
        if plan.limit_reason is None and info.offset_data + info.size > available:
            plan.limit_reason = "output archive was cut short at the output size cap"
        if plan.limit_reason is None and len(plan.files) >= max_files:
            plan.limit_reason = (
                f"output file cap reached: only the first {max_files} files were uploaded"
            )
        if plan.limit_reason is None and total + size > max_bytes:
            plan.limit_reason = (
                f"output size cap reached: files past {max_bytes} bytes were not uploaded"
            )
        if plan.limit_reason is not None:
            plan.skip(rel, kind, "over the output caps")
            return
        total += size
        planned[info.name] = size
        plan.files.append((info, OutputMember(rel, size)))

    try:
        for info in tar:
            seen.add(info.name)
            kind = _kind(info)
            if kind == "directory":
                continue
            rel = safe_member_path(info.name, root)
            if rel is None:
                plan.skip(info.name, kind, "path escapes the output folder")
                continue
            problem = _key_problem(rel, max_key_bytes)
            if problem is not None:
                plan.skip(rel.encode("utf-8", "replace").decode(), kind, problem)
                continue
            if rel in reserved or rel.partition("/")[0] in reserved:
                plan.skip(rel, kind, "the name of one of the service's own files: not uploaded")
                continue
            if kind == "hardlink" and info.linkname in planned:
                # Docker archives the first name of a file as regular and the others as
                # links to it: each name is the user's file and is uploaded.
                admit(info, rel, kind, planned[info.linkname])
                continue
            if kind != "regular":
                plan.skip(rel, kind, "only regular files are uploaded")
                continue
            admit(info, rel, kind, info.size)
    except (tarfile.ReadError, EOFError) as exc:
        # The archive was cut short (the size cap stopped the download): keep what was whole.
        if plan.limit_reason is None:
            plan.limit_reason = f"output archive was cut short: {exc}"
    for entry in beyond or ():
        if entry.name in seen or entry.kind == "directory":
            continue
        rel = safe_member_path(entry.name, root) or entry.name
        plan.skip(rel, entry.kind, "over the output caps")
    return plan


@dataclass(frozen=True)
class ScannedEntry:
    name: str
    kind: str
    size: int


_KINDS = {
    b"0": "regular",
    b"\0": "regular",
    b"1": "hardlink",
    b"2": "symlink",
    b"3": "device",
    b"4": "device",
    b"5": "directory",
    b"6": "fifo",
}


class TarHeaderScanner:
    """Lists the entries of a tar stream from its headers alone, skipping the bodies: what
    lies past the point where the output download stopped keeping bytes."""

    def __init__(self) -> None:
        self.entries: list[ScannedEntry] = []
        self._header = bytearray()
        self._skip = 0
        self._meta: bytearray | None = None  # the body of a pax or GNU long-name header
        self._meta_kind = b""
        self._meta_left = 0
        self._skip_after_meta = 0
        self._pending_name: str | None = None
        self.finished = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.finished:
            if self._skip:
                step = min(self._skip, len(view))
                self._skip -= step
                view = view[step:]
            elif self._meta is not None:
                step = min(self._meta_left, len(view))
                self._meta += view[:step]
                self._meta_left -= step
                view = view[step:]
                if not self._meta_left:
                    self._end_meta()
            else:
                step = min(BLOCK - len(self._header), len(view))
                self._header += view[:step]
                view = view[step:]
                if len(self._header) == BLOCK:
                    self._on_header(bytes(self._header))
                    self._header.clear()

    def _on_header(self, header: bytes) -> None:
        if header == b"\0" * BLOCK:
            self.finished = True  # the end-of-archive marker
            return
        size = _tar_number(header[124:136])
        kind_flag = header[156:157]
        padded = -(-size // BLOCK) * BLOCK
        if kind_flag in (b"x", b"g", b"L"):
            self._meta, self._meta_kind, self._meta_left = bytearray(), kind_flag, size
            self._skip_after_meta = padded - size
            if size == 0:
                self._end_meta()
            return
        name = header[0:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0]
        full = (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")
        self.entries.append(
            ScannedEntry(self._pending_name or full, _KINDS.get(kind_flag, "other"), size)
        )
        self._pending_name = None
        self._skip = padded

    def _end_meta(self) -> None:
        body = bytes(self._meta or b"")
        if self._meta_kind == b"L":
            self._pending_name = body.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif self._meta_kind == b"x":
            for record in _pax_records(body):
                if record[0] == b"path":
                    self._pending_name = record[1].decode("utf-8", "surrogateescape")
        self._meta = None
        self._skip = self._skip_after_meta


def _tar_number(field_bytes: bytes) -> int:
    if field_bytes[0] & 0x80:  # base-256, for sizes over 8 GiB
        return int.from_bytes(field_bytes[1:], "big")
    digits = field_bytes.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _pax_records(body: bytes) -> list[tuple[bytes, bytes]]:
    records = []
    position = 0
    while position < len(body):
        space = body.find(b" ", position)
        if space < 0:
            break
        length = int(body[position:space])
        keyword, _, value = body[space + 1 : position + length - 1].partition(b"=")
        records.append((keyword, value))
        position += length
    return records
