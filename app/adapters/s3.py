"""The S3 object store: aioboto3 behind the ObjectStore port, with every vendor error translated."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import mmap
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Self

import aioboto3
import aiohttp
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)

from app.adapters.ports import (
    BucketNotFound,
    ObjectInfo,
    ObjectNotFound,
    ObjectStoreError,
    ObjectStoreRefused,
    write_chunks,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

MiB = 1024 * 1024
DOWNLOAD_CHUNK_BYTES = 1 * MiB
# S3 refuses multipart parts under 5 MiB (except the last) and uploads of more than 10,000 parts.
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000
CHECKSUM_ALGORITHM = "CRC32"
CHECKSUM_MEMBER = "ChecksumCRC32"

_BUCKET_MISSING_CODES = frozenset({"NoSuchBucket", "404", "NotFound"})
_KEY_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled"})
_TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeTooSkewed",  # the clock is fixed by NTP, not by the request
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "OperationAborted",  # a conflicting operation on the bucket is still in progress
    }
)
# What aiobotocore can raise: botocore's families, raw aiohttp errors from a body read half-way,
# and timeouts (asyncio.TimeoutError is TimeoutError since 3.11).
_VENDOR_ERRORS = (BotoCoreError, ClientError, aiohttp.ClientError, TimeoutError)


def _read_up_to(fileobj: BinaryIO, size: int) -> bytes:
    """Read `size` bytes unless the file ends first; runs in a thread.

    A pipe may return short reads before its end, and one short read must not pass for "the
    file is smaller than the multipart threshold".
    """
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = fileobj.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _fill(fileobj: BinaryIO, view: memoryview) -> int:
    """Fill `view` from the file unless it ends first; return the bytes read. Runs in a thread."""
    readinto = getattr(fileobj, "readinto", None)
    filled = 0
    while filled < len(view):
        if readinto is not None:
            count = readinto(view[filled:]) or 0
        else:
            chunk = fileobj.read(len(view) - filled)
            count = len(chunk)
            view[filled : filled + count] = chunk
        if not count:
            break
        filled += count
    return filled


class _Body(io.RawIOBase):
    """A seekable reader over a buffer, handed to botocore as Body instead of bytes.

    botocore wraps a bytes Body in BytesIO and aiohttp's BytesIO payload calls getbuffer(), which
    copies a shared buffer: every part would be held twice. A plain raw stream is read in small
    chunks instead (measured: a 32 MiB PUT went from 32 MiB of extra memory to 3 MiB).
    """

    def __init__(self, data: bytes | memoryview) -> None:
        super().__init__()
        self._view = memoryview(data)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}
        self._position = max(0, base[whence] + offset)
        return self._position

    def readinto(self, buffer: WriteableBuffer) -> int:
        target = memoryview(buffer).cast("B")
        count = max(0, min(len(target), len(self._view) - self._position))
        target[:count] = self._view[self._position : self._position + count]
        self._position += count
        return count

    def __len__(self) -> int:
        # botocore sizes the Content-Length header from len() when a body has one.
        return max(0, len(self._view) - self._position)


class _PartSource:
    """Cuts a sync file into multipart parts without copying them and without allocation churn.

    The head read to choose between one PUT and multipart is handed out as views of itself.
    Later parts are read (in a thread) into at most `max_concurrency + 1` reused buffers. They
    are anonymous mmaps, not bytes: parts allocated per read in worker threads stayed cached in
    per-thread malloc arenas (RSS grew past the bytes in flight), and an untouched mmap page
    costs nothing, so the final read that only finds the end of the file uses no memory.
    """

    def __init__(self, fileobj: BinaryIO, part_size: int, head: bytes) -> None:
        self._fileobj = fileobj
        self._part_size = part_size
        self._free: list[mmap.mmap] = []
        whole = len(head) - len(head) % part_size
        self._queued: collections.deque[tuple[memoryview, mmap.mmap | None]] = collections.deque(
            (memoryview(head)[start : start + part_size], None)
            for start in range(0, whole, part_size)
        )
        self._carry = memoryview(head)[whole:]  # the head's tail, the start of the next part
        self._eof = False

    async def read_next(self) -> bool:
        """Queue the next part read from the file; False if the file had no more bytes."""
        if self._eof:
            return False
        buffer = self._free.pop() if self._free else mmap.mmap(-1, self._part_size)
        view = memoryview(buffer)
        carried = len(self._carry)
        view[:carried] = self._carry
        self._carry = memoryview(b"")
        filled = carried + await asyncio.to_thread(_fill, self._fileobj, view[carried:])
        self._eof = filled < self._part_size
        if filled == carried:  # nothing new from the file
            self._free.append(buffer)
            if carried:
                self._carry = view[:carried]
            return False
        self._queued.append((view[:filled], buffer))
        return True

    async def next_part(self) -> tuple[memoryview, mmap.mmap | None] | None:
        """The next part and the buffer to give back once it is sent; None at the end."""
        if not self._queued and not await self.read_next():
            return None
        return self._queued.popleft()

    def give_back(self, buffer: mmap.mmap | None) -> None:
        if buffer is not None:
            self._free.append(buffer)


class S3ObjectStore:
    """An ObjectStore over one long-lived aioboto3 client; `start()` it (or `async with`) first.

    Credentials come from the standard AWS chain (environment, profile, instance role).
    """

    def __init__(
        self,
        *,
        endpoint_url: str | None,
        region: str | None,
        max_concurrency: int = 4,
        multipart_threshold: int = 8 * MiB,
        part_size: int = 8 * MiB,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (an S3 limit)")
        if multipart_threshold < 0:
            raise ValueError("multipart_threshold must not be negative")
        self._endpoint_url = endpoint_url
        self._max_concurrency = max_concurrency
        self._multipart_threshold = multipart_threshold
        self._part_size = part_size
        self._config = Config(
            region_name=region,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            # Path style works with any custom endpoint (moto, MinIO) and needs no wildcard DNS.
            s3={"addressing_style": "path"},
            # Every in-flight part holds a pooled connection; never make a part wait for one.
            max_pool_connections=max(10, max_concurrency + 2),
        )
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the one client this store uses for its whole life."""
        if self._client is not None:
            return
        stack = contextlib.AsyncExitStack()
        try:
            with self._translated("open an S3 client"):
                self._client = await stack.enter_async_context(
                    aioboto3.Session().client(
                        "s3", endpoint_url=self._endpoint_url, config=self._config
                    )
                )
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack

    async def close(self) -> None:
        """Close the client and its connection pool; safe to call twice."""
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ reads
    async def bucket_exists(self, bucket: str) -> bool:
        client = self._started()
        with self._translated(f"check bucket {bucket!r}", bucket=bucket):
            try:
                await client.head_bucket(Bucket=bucket)
            except ClientError as exc:
                if _error_code(exc) in _BUCKET_MISSING_CODES:
                    return False
                raise
        return True

    async def list_objects(self, bucket: str, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Yield every object under `prefix` in key order, skipping empty "folder/" markers."""
        client = self._started()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        page_iterator = aiter(pages)
        while True:
            # Only the fetch is translated: exceptions raised by the consumer at `yield` are theirs.
            with self._translated(f"list s3://{bucket}/{prefix}", bucket=bucket):
                try:
                    page = await anext(page_iterator)
                except StopAsyncIteration:
                    return
            for item in page.get("Contents", ()):
                key, size = item["Key"], int(item["Size"])
                if key.endswith("/") and size == 0:
                    continue
                yield ObjectInfo(key=key, size=size)

    async def download_fileobj(self, bucket: str, key: str, fileobj: BinaryIO) -> int:
        """Stream the object into `fileobj` 1 MiB at a time; return the bytes written.

        OSError from writing `fileobj` is the caller's file, not the store, and is not translated.
        """
        return await write_chunks(self.stream_object(bucket, key), fileobj)

    async def stream_object(self, bucket: str, key: str) -> AsyncGenerator[bytes, None]:
        """The object's bytes, 1 MiB at a time: memory stays at one chunk whatever its size."""
        client = self._started()
        with self._translated(f"download s3://{bucket}/{key}", bucket=bucket, key=key):
            response = await client.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            # `async with body` releases the connection even if the reader stops half-way;
            # iter_chunks lives on `body`, not on what `async with` binds.
            async with body:
                async for chunk in body.iter_chunks(DOWNLOAD_CHUNK_BYTES):
                    yield chunk

    async def get_bytes(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        """Return the whole object; refuse (without reading it) one larger than `max_bytes`."""
        client = self._started()
        where = f"s3://{bucket}/{key}"
        with self._translated(f"read {where}", bucket=bucket, key=key):
            response = await client.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            async with body:
                size = int(response.get("ContentLength", 0))
                if size > max_bytes:
                    raise ObjectStoreError(
                        f"{where} is {size} bytes, over the {max_bytes}-byte limit"
                    )
                # read(n) returns whatever has arrived, up to n: loop, but never past the limit,
                # so a server that lies about ContentLength still cannot flood memory.
                chunks: list[bytes] = []
                received = 0
                while received <= max_bytes:
                    chunk = await body.read(min(DOWNLOAD_CHUNK_BYTES, max_bytes + 1 - received))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    received += len(chunk)
                if received > max_bytes:
                    raise ObjectStoreError(f"{where} is over the {max_bytes}-byte limit")
                return b"".join(chunks)

    # ------------------------------------------------------------------ writes
    async def put_bytes(
        self, bucket: str, key: str, data: bytes, *, content_type: str | None = None
    ) -> None:
        client = self._started()
        with self._translated(f"write s3://{bucket}/{key}", bucket=bucket, key=key):
            await client.put_object(
                Bucket=bucket, Key=key, Body=_Body(data), **_type_args(content_type)
            )

    async def upload_fileobj(
        self, bucket: str, key: str, fileobj: BinaryIO, *, content_type: str | None = None
    ) -> int:
        """Upload from a sync binary file; past the threshold as a bounded-memory multipart upload.

        Memory stays near `multipart_threshold + (max_concurrency + 1) * part_size` whatever the
        file's size: at most `max_concurrency` parts are in flight and one more is being read.
        OSError from reading `fileobj` is the caller's file, not the store's, and is not translated.
        """
        client = self._started()
        action = f"upload s3://{bucket}/{key}"
        # Reading the threshold, then one more part, tells "fits in one PUT" from "needs
        # multipart" without asking the file its size (it may be a pipe).
        head = await asyncio.to_thread(_read_up_to, fileobj, self._multipart_threshold)
        parts = _PartSource(fileobj, self._part_size, head)
        if len(head) < self._multipart_threshold or not await parts.read_next():
            with self._translated(action, bucket=bucket, key=key):
                await client.put_object(
                    Bucket=bucket, Key=key, Body=_Body(head), **_type_args(content_type)
                )
            return len(head)
        del head  # its parts keep it alive until they are sent
        with self._translated(action, bucket=bucket, key=key):
            return await self._upload_multipart(client, bucket, key, parts, content_type)

    async def _upload_multipart(
        self, client: Any, bucket: str, key: str, parts: _PartSource, content_type: str | None
    ) -> int:
        # botocore adds a CRC32 to every part by default; S3 then wants the upload to declare the
        # same algorithm and each part's checksum at completion (as boto3's s3transfer does).
        created = await client.create_multipart_upload(
            Bucket=bucket, Key=key, ChecksumAlgorithm=CHECKSUM_ALGORITHM, **_type_args(content_type)
        )
        upload_id: str = created["UploadId"]
        finished: list[dict[str, Any]] = []
        in_flight: set[asyncio.Task[dict[str, Any]]] = set()
        total = 0

        async def send_part(
            number: int, data: memoryview, buffer: mmap.mmap | None
        ) -> dict[str, Any]:
            try:
                response = await client.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=_Body(data),
                    ChecksumAlgorithm=CHECKSUM_ALGORITHM,
                )
            finally:
                parts.give_back(buffer)
            part = {"PartNumber": number, "ETag": response["ETag"]}
            if CHECKSUM_MEMBER in response:
                part[CHECKSUM_MEMBER] = response[CHECKSUM_MEMBER]
            return part

        try:
            number = 0
            while True:
                # Wait for a free slot before reading: that is what bounds memory.
                while len(in_flight) >= self._max_concurrency:
                    done, in_flight = await asyncio.wait(
                        in_flight, return_when=asyncio.FIRST_COMPLETED
                    )
                    finished.extend(task.result() for task in done)
                next_part = await parts.next_part()
                if next_part is None:
                    break
                number += 1
                if number > MAX_PARTS:
                    raise ObjectStoreError(
                        f"the file needs more than {MAX_PARTS} parts of {self._part_size} bytes"
                    )
                total += len(next_part[0])
                in_flight.add(asyncio.create_task(send_part(number, *next_part)))
                del next_part  # the task holds the only reference now
            finished.extend(await asyncio.gather(*in_flight))
            in_flight.clear()
            finished.sort(key=lambda part: int(part["PartNumber"]))
            await client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": finished}
            )
        except BaseException:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            # Shielded so a cancelled upload still frees the parts S3 would otherwise bill for.
            await asyncio.shield(self._abort(client, bucket, key, upload_id))
            raise
        return total

    async def _abort(self, client: Any, bucket: str, key: str, upload_id: str) -> None:
        # Best effort: the original error matters more, and a bucket lifecycle rule for
        # incomplete multipart uploads is the backstop.
        with contextlib.suppress(*_VENDOR_ERRORS):
            await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)

    # ------------------------------------------------------------------ errors
    def _started(self) -> Any:
        if self._client is None:
            raise RuntimeError("S3ObjectStore is not started: call start() or use `async with`")
        return self._client

    @contextlib.contextmanager
    def _translated(self, action: str, *, bucket: str = "", key: str = "") -> Iterator[None]:
        try:
            yield
        except ObjectStoreError:
            raise
        except _VENDOR_ERRORS as exc:
            raise self._translate(exc, action, bucket=bucket, key=key) from exc
        except ValueError as exc:
            # botocore raises bare ValueError for a malformed endpoint URL.
            raise ObjectStoreError(f"could not {action}: {exc}") from exc

    def _translate(
        self, exc: Exception, action: str, *, bucket: str = "", key: str = ""
    ) -> ObjectStoreError:
        """Map a vendor exception to the port's error family with a message a person can act on."""
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            message = exc.response.get("Error", {}).get("Message") or code
            if code == "NoSuchBucket" or (code in _BUCKET_MISSING_CODES and not key):
                return BucketNotFound(f"could not {action}: bucket {bucket!r} does not exist")
            if code in _KEY_MISSING_CODES and key:
                return ObjectNotFound(f"could not {action}: no object at that key")
            if code in _DENIED_CODES:
                return ObjectStoreRefused(
                    f"could not {action}: access denied; check the credentials and the "
                    f"bucket policy ({message})"
                )
            if _is_permanent(exc, code):
                return ObjectStoreRefused(f"could not {action}: S3 answered {code}: {message}")
            return ObjectStoreError(f"could not {action}: S3 answered {code}: {message}")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return ObjectStoreRefused(
                f"could not {action}: no usable AWS credentials (checked the environment, "
                f"the shared config files and the instance role): {exc}"
            )
        if isinstance(exc, ParamValidationError):
            # Caught before anything is sent: a bucket name or key S3 would refuse anyway.
            return ObjectStoreRefused(f"could not {action}: {exc}")
        endpoint = self._endpoint_url or "AWS S3"
        return ObjectStoreError(f"could not {action}: no good answer from {endpoint}: {exc}")


def _is_permanent(exc: ClientError, code: str) -> bool:
    """A 4xx S3 will give again whatever we wait for (an archived object's InvalidObjectState,
    a bad argument, a key too long ...); throttles and timeouts are worth another try, and so is
    every 5xx and anything without a status."""
    if code in _TRANSIENT_CODES:
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _type_args(content_type: str | None) -> dict[str, str]:
    return {"ContentType": content_type} if content_type else {}
