"""The job's /workspace as the tar archive that goes in: the wrapper, the command, the inputs."""

from __future__ import annotations

import posixpath
import tarfile
import time
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
