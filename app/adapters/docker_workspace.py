"""A run's inputs as the tar archive `put_archive` unpacks into /workspace/input, each copied
straight from its source into the spool. The wrapper and the workspace's folders come with the
environment image, and the command travels in the container's arguments."""

from __future__ import annotations

import posixpath
import tarfile
import time
from typing import BinaryIO, Literal

from app.adapters.ports import JOB_UID, WORKSPACE, InputFile

JOB_GID = JOB_UID
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


class InputChanged(Exception):
    """An input wrote another number of bytes than it announced."""


async def write_inputs(fileobj: BinaryIO, inputs: list[InputFile]) -> None:
    """The inputs' tar: each input under input/ with the folders above it (never the workspace
    itself), all owned by the job's user."""
    writer = WorkspaceTarWriter(fileobj)
    for item in inputs:
        writer.begin_file(f"input/{item.path}", item.size)
        written = await item.copy_to(fileobj)
        if written != item.size:
            raise InputChanged(f"input {item.path!r} gave {written} bytes, not {item.size}")
        writer.pad(written)
    writer.close()
