"""A directory-backed object store: one folder per bucket, untrusted keys kept inside it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import stat
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from app.adapters.ports import (
    BucketNotFound,
    ObjectInfo,
    ObjectNotFound,
    ObjectStoreError,
    write_chunks,
)

CHUNK_BYTES = 1024 * 1024
# In-progress writes live next to their target under this name; listings hide them and keys may
# not use it, so a half-written file is never visible as an object.
TEMP_PREFIX = ".taskdeploy-tmp-"


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    is_dir: bool
    size: int


class LocalObjectStore:
    """An ObjectStore over a local directory, behaving like S3 wherever the contract says so.

    A key that is both an object and a prefix of others ("a" and "a/b") cannot exist here, since
    "a" cannot be a file and a folder at once; writing the second one fails with ObjectStoreError.
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(root).resolve()

    async def create_bucket(self, bucket: str) -> None:
        """Create the bucket's folder (and the root); a no-op if it exists."""
        path = self._bucket_path(bucket)
        with self._translated(f"create bucket {bucket!r}"):
            await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        """Nothing to release; present for the port."""

    # ------------------------------------------------------------------ reads
    async def bucket_exists(self, bucket: str) -> bool:
        path = self._bucket_path(bucket)
        return await asyncio.to_thread(path.is_dir)

    async def list_objects(self, bucket: str, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Yield every file under `prefix` in S3's order (UTF-8 byte order of the whole key)."""
        bucket_path = await self._existing_bucket(bucket)
        # S3 prefixes are plain string prefixes ("in/da" matches "in/data.csv"), so walk the
        # deepest folder the prefix names in full, then filter on the whole key.
        folder, _, _ = prefix.rpartition("/")
        start = (
            await asyncio.to_thread(self._object_path, bucket_path, folder, what="prefix")
            if folder
            else bucket_path
        )
        async for key, size in self._walk(start, f"{folder}/" if folder else ""):
            if key.startswith(prefix):
                yield ObjectInfo(key=key, size=size)

    async def _walk(self, folder: Path, key_prefix: str) -> AsyncIterator[tuple[str, int]]:
        with self._translated(f"list {folder}"):
            try:
                entries = await asyncio.to_thread(_scan, folder)
            except (FileNotFoundError, NotADirectoryError):
                return
        # A folder sorts as "name/" so that "a-b" (0x2D) comes before "a/x" (0x2F), as in S3.
        entries.sort(key=lambda e: (e.name + "/" if e.is_dir else e.name).encode("utf-8"))
        for entry in entries:
            if entry.is_dir:
                async for item in self._walk(folder / entry.name, f"{key_prefix}{entry.name}/"):
                    yield item
            else:
                yield f"{key_prefix}{entry.name}", entry.size

    async def download_fileobj(self, bucket: str, key: str, fileobj: BinaryIO) -> int:
        """Copy the object into `fileobj` 1 MiB at a time; return the bytes written.

        OSError from writing `fileobj` is the caller's file, not the store, and is not translated.
        """
        return await write_chunks(self.stream_object(bucket, key), fileobj)

    async def stream_object(self, bucket: str, key: str) -> AsyncGenerator[bytes, None]:
        """The object's bytes, 1 MiB at a time."""
        path = await self._existing_object(bucket, key)
        action = f"read {bucket}/{key}"
        with self._translated(action):
            source = await asyncio.to_thread(_open_object, path)
        try:
            while True:
                # A thread hop per chunk keeps the copy cancellable and memory at one chunk.
                with self._translated(action):
                    chunk = await asyncio.to_thread(source.read, CHUNK_BYTES)
                if not chunk:
                    return
                yield chunk
        finally:
            await asyncio.to_thread(source.close)

    async def get_bytes(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        """Return the whole object; refuse (without reading it) one larger than `max_bytes`."""
        path = await self._existing_object(bucket, key)
        with self._translated(f"read {bucket}/{key}"):
            data = await asyncio.to_thread(_read_at_most, path, max_bytes)
        if data is None:
            raise ObjectStoreError(f"{bucket}/{key} is over the {max_bytes}-byte limit")
        return data

    # ------------------------------------------------------------------ writes
    async def put_bytes(
        self, bucket: str, key: str, data: bytes, *, content_type: str | None = None
    ) -> None:
        """Store `data` atomically; `content_type` is not kept (a file has none)."""
        # BytesIO shares an immutable bytes buffer instead of copying it.
        await self.upload_fileobj(bucket, key, io.BytesIO(data), content_type=content_type)

    async def upload_fileobj(
        self, bucket: str, key: str, fileobj: BinaryIO, *, content_type: str | None = None
    ) -> int:
        """Copy `fileobj` into the object 1 MiB at a time; readers see the old or the new file.

        OSError from reading `fileobj` is the caller's file, not the store, and is not translated.
        """
        bucket_path = await self._existing_bucket(bucket)
        path = await asyncio.to_thread(self._object_path, bucket_path, key)
        action = f"write {bucket}/{key}"
        with self._translated(action):
            await asyncio.to_thread(self._make_parent, bucket_path, path, key)
            temp = path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}")
            target = await asyncio.to_thread(temp.open, "xb")
        try:
            written = 0
            while True:
                chunk = await asyncio.to_thread(fileobj.read, CHUNK_BYTES)
                if not chunk:
                    break
                with self._translated(action):
                    await asyncio.to_thread(target.write, chunk)
                written += len(chunk)
            with self._translated(action):
                await asyncio.to_thread(_finish, target, temp, path)
        except BaseException:
            await asyncio.to_thread(_discard, target, temp)
            raise
        return written

    # ------------------------------------------------------------------ paths
    def _bucket_path(self, bucket: str) -> Path:
        if (
            not bucket
            or bucket in (".", "..")
            or "/" in bucket
            or "\\" in bucket
            or "\x00" in bucket
            or bucket.startswith(TEMP_PREFIX)
        ):
            raise ObjectStoreError(f"bucket name {bucket!r} is not allowed")
        return self._root / bucket

    async def _existing_bucket(self, bucket: str) -> Path:
        path = self._bucket_path(bucket)
        if not await asyncio.to_thread(path.is_dir):
            raise BucketNotFound(f"bucket {bucket!r} does not exist under {self._root}")
        return path

    async def _existing_object(self, bucket: str, key: str) -> Path:
        bucket_path = await self._existing_bucket(bucket)
        path = await asyncio.to_thread(self._object_path, bucket_path, key)
        if not await asyncio.to_thread(path.is_file):
            raise ObjectNotFound(f"no object {key!r} in bucket {bucket!r}")
        return path

    def _object_path(self, bucket_path: Path, key: str, *, what: str = "key") -> Path:
        """The file a key names, refusing any key that could name something outside the bucket.

        Blocking (it resolves symlinks on disk): call it in a thread.
        """
        if not key or key.startswith("/") or "\x00" in key:
            raise ObjectStoreError(f"{what} {key!r} is not allowed: empty, absolute or has a NUL")
        for segment in key.split("/"):
            if segment in ("", ".", "..") or segment.startswith(TEMP_PREFIX):
                raise ObjectStoreError(
                    f"{what} {key!r} is not allowed: it has an empty, '.', '..' or reserved segment"
                )
        path = bucket_path / key
        # resolve() follows symlinks already on disk, so a link planted inside the bucket that
        # points elsewhere is caught here too.
        self._check_inside(bucket_path, path.resolve(), key)
        return path

    def _make_parent(self, bucket_path: Path, path: Path, key: str) -> None:
        """Create the object's folders; blocking."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # Re-check after mkdir: a folder swapped for a symlink meanwhile must not lead outside.
        self._check_inside(bucket_path, path.parent.resolve() / path.name, key)

    def _check_inside(self, bucket_path: Path, resolved: Path, key: str) -> None:
        # The bucket folder itself may be a link (to another disk): its target is the bucket.
        if not resolved.is_relative_to(bucket_path.resolve()):
            raise ObjectStoreError(f"key {key!r} resolves outside its bucket")

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except ObjectStoreError:
            raise
        except OSError as exc:
            raise ObjectStoreError(f"could not {action}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------- blocking helpers
def _scan(folder: Path) -> list[_Entry]:
    """The folder's regular files and subfolders; symlinks, temp files and odd names are skipped."""
    entries: list[_Entry] = []
    with os.scandir(folder) as iterator:
        for item in iterator:
            if item.name.startswith(TEMP_PREFIX):
                continue
            try:
                item.name.encode("utf-8")
            except UnicodeEncodeError:
                continue  # not valid UTF-8 on disk, so no S3 key could name it
            try:
                info = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted while we listed: S3 would not show it either
            if stat.S_ISDIR(info.st_mode):
                entries.append(_Entry(item.name, True, 0))
            elif stat.S_ISREG(info.st_mode):
                entries.append(_Entry(item.name, False, info.st_size))
    return entries


def _open_object(path: Path) -> BinaryIO:
    # O_NOFOLLOW: a symlink swapped in after the path check still cannot be read through.
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")


def _read_at_most(path: Path, max_bytes: int) -> bytes | None:
    with _open_object(path) as source:
        size = os.fstat(source.fileno()).st_size
        if size > max_bytes:
            return None
        # One byte more than the size seen: a file that grew after fstat is still caught.
        data = source.read(size + 1)
    return None if len(data) > max_bytes else data


def _finish(target: BinaryIO, temp: Path, path: Path) -> None:
    """Make the temp file durable, then swap it in so readers never see a partial object."""
    target.flush()
    os.fsync(target.fileno())
    target.close()
    os.replace(temp, path)


def _discard(target: BinaryIO, temp: Path) -> None:
    target.close()
    temp.unlink(missing_ok=True)
