"""The S3 object store: aioboto3 behind the ObjectStore port, with every vendor error translated."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from types import TracebackType
from typing import Any, BinaryIO, Self

import aioboto3
from botocore.config import Config
from botocore.exceptions import ClientError

from app.adapters.ports import ObjectInfo, ObjectStoreError, write_chunks
from app.adapters.s3_errors import BUCKET_MISSING_CODES, VENDOR_ERRORS, error_code, translate_error
from app.adapters.s3_multipart import (
    MIN_PART_SIZE,
    MultipartUpload,
    PartSource,
    RequestBody,
    read_up_to,
)

MiB = 1024 * 1024
DOWNLOAD_CHUNK_BYTES = 1 * MiB


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
                if error_code(exc) in BUCKET_MISSING_CODES:
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
                Bucket=bucket, Key=key, Body=RequestBody(data), **_type_args(content_type)
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
        head = await asyncio.to_thread(read_up_to, fileobj, self._multipart_threshold)
        parts = PartSource(fileobj, self._part_size, head)
        if len(head) < self._multipart_threshold or not await parts.read_next():
            with self._translated(action, bucket=bucket, key=key):
                await client.put_object(
                    Bucket=bucket, Key=key, Body=RequestBody(head), **_type_args(content_type)
                )
            return len(head)
        del head  # its parts keep it alive until they are sent
        with self._translated(action, bucket=bucket, key=key):
            upload = MultipartUpload(
                client,
                bucket,
                key,
                parts,
                max_concurrency=self._max_concurrency,
                part_size=self._part_size,
            )
            return await upload.run(_type_args(content_type))

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
        except VENDOR_ERRORS as exc:
            raise self._translate(exc, action, bucket=bucket, key=key) from exc
        except ValueError as exc:
            # botocore raises bare ValueError for a malformed endpoint URL.
            raise ObjectStoreError(f"could not {action}: {exc}") from exc

    def _translate(
        self, exc: Exception, action: str, *, bucket: str = "", key: str = ""
    ) -> ObjectStoreError:
        return translate_error(exc, action, bucket=bucket, key=key, endpoint=self._endpoint_url)


def _type_args(content_type: str | None) -> dict[str, str]:
    return {"ContentType": content_type} if content_type else {}
