"""Phase `stage`: the run's inputs, listed from the object store and checked (safe names, file
and byte caps, the run's disk), as InputFiles the backend copies into the workspace; `.zip`
inputs are unpacked when asked, under the same checks."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import zipfile
from dataclasses import dataclass
from typing import BinaryIO

from app.adapters.ports import (
    BucketNotFound,
    InputFile,
    ObjectInfo,
    ObjectStore,
    ObjectStoreRefused,
)
from app.models import Run, RunState
from app.services.s3uri import parse_s3_uri, safe_relative_path
from app.services.zipinputs import ZipEntry, ZipRefused, copy_entry, plan_zip
from app.workers.pipeline.context import PipelineConfig, RunAborted

MAX_INPUT_PATH_BYTES = 4096


@dataclass(frozen=True, slots=True)
class StoredInput:
    """An object of the input location, downloaded straight into the workspace."""

    store: ObjectStore
    bucket: str
    obj: ObjectInfo
    path: str

    @property
    def size(self) -> int:
        return self.obj.size

    async def copy_to(self, fileobj: BinaryIO) -> int:
        """Exactly the `size` bytes the listing promised: an object that grew or shrank since
        (replaced meanwhile) ends the run instead of being written past its size."""
        written = 0
        async with contextlib.aclosing(
            self.store.stream_object(self.bucket, self.obj.key)
        ) as chunks:
            async for chunk in chunks:
                written += len(chunk)
                if written > self.obj.size:
                    break
                await asyncio.to_thread(fileobj.write, chunk)
        if written != self.obj.size:
            raise RunAborted(
                RunState.ERROR, f"input {self.obj.key!r} changed while it was being staged"
            )
        return written


@dataclass(frozen=True, slots=True)
class ZipMember:
    """One checked entry of a downloaded .zip input."""

    archive: zipfile.ZipFile
    entry: ZipEntry
    path: str
    key: str  # the archive's own key, for the reason

    @property
    def size(self) -> int:
        return self.entry.size

    async def copy_to(self, fileobj: BinaryIO) -> int:
        try:
            return await asyncio.to_thread(copy_entry, self.archive, self.entry, fileobj)
        except (ZipRefused, zipfile.BadZipFile, NotImplementedError) as exc:
            raise RunAborted(RunState.ERROR, f"zip input {self.key!r} refused: {exc}") from exc


class Inputs:
    """Lists and checks a run's inputs; downloaded .zip archives live until `close`."""

    def __init__(self, config: PipelineConfig, store: ObjectStore, run: Run) -> None:
        self.config = config
        self.store = store
        self.run = run
        self.stack = contextlib.ExitStack()

    def close(self) -> None:
        self.stack.close()

    async def files(self) -> list[InputFile]:
        run = self.run
        if not run.input_uri:
            return []
        source = parse_s3_uri(run.input_uri)
        found: list[InputFile] = []
        total = 0
        try:
            async for obj in self.store.list_objects(source.bucket, source.prefix):
                if obj.key.endswith("/"):
                    continue  # a "folder" marker, not a file
                rel = safe_relative_path(obj.key, source.prefix)
                if rel is None:
                    raise RunAborted(
                        RunState.ERROR, f"input key {obj.key[:300]!r} is not a safe file path"
                    )
                if run.unpack_zip and rel.lower().endswith(".zip"):
                    members = await self._unzip(source.bucket, obj, rel, self._room() - total)
                    found += members
                    total += sum(m.size for m in members)
                else:
                    found.append(StoredInput(self.store, source.bucket, obj, rel))
                    total += obj.size
                self._check_caps(len(found), total)
        except BucketNotFound as exc:
            raise RunAborted(
                RunState.ERROR, f"input bucket {source.bucket!r} does not exist"
            ) from exc
        except ObjectStoreRefused as exc:
            raise RunAborted(RunState.ERROR, f"could not stage the inputs: {exc}") from exc
        return found

    def _room(self) -> int:
        """The bytes of input a run may stage: the operator's cap, and no more than its own
        workspace can hold (the rest of the disk limit is for what the job writes)."""
        return min(self.config.max_input_bytes, self.config.disk_bytes(self.run))

    def _check_caps(self, files: int, total: int) -> None:
        cfg, disk = self.config, self.config.disk_bytes(self.run)
        if files > cfg.max_input_files or total > cfg.max_input_bytes:
            raise RunAborted(
                RunState.ERROR,
                f"inputs exceed the caps of {cfg.max_input_files} files / "
                f"{cfg.max_input_bytes} bytes",
            )
        if total > disk:
            raise RunAborted(
                RunState.ERROR,
                f"inputs of {total} bytes do not fit the run's disk limit of "
                f"{disk // (1024 * 1024)} MiB (resources.disk_mb)",
            )

    async def _unzip(self, bucket: str, obj: ObjectInfo, rel: str, room: int) -> list[InputFile]:
        """Checks one .zip input for input/<rel without .zip>/, refusing the whole run when the
        archive breaks a rule (unsafe names, links, a bomb, more than `room` bytes)."""
        key, folder = obj.key, rel[: -len(".zip")]
        if obj.size > room:
            # Checked on the listing's size, before a byte of the archive is downloaded.
            raise RunAborted(
                RunState.ERROR,
                f"zip input {key!r} refused: the archive alone is {obj.size} bytes, more than "
                f"the {max(room, 0)} bytes of input room left",
            )
        archive = self.stack.enter_context(tempfile.TemporaryFile(dir=str(self.config.tmp_dir)))  # noqa: SIM115
        await StoredInput(self.store, bucket, obj, rel).copy_to(archive)
        try:
            zf = self.stack.enter_context(zipfile.ZipFile(archive))
            entries = await asyncio.to_thread(plan_zip, zf, max_total_bytes=max(room, 0))
        except (ZipRefused, zipfile.BadZipFile, UnicodeDecodeError, NotImplementedError) as exc:
            raise RunAborted(RunState.ERROR, f"zip input {key!r} refused: {exc}") from exc
        members: list[InputFile] = []
        for entry in entries:
            path = f"{folder}/{entry.path}"
            if len(f"input/{path}".encode()) > MAX_INPUT_PATH_BYTES:
                raise RunAborted(
                    RunState.ERROR,
                    f"zip input {key!r} refused: zip entry {entry.path!r} makes a path that is "
                    "too long",
                )
            members.append(ZipMember(zf, entry, path, key))
        return members
