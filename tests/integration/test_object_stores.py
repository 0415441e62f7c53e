"""The ObjectStore contract, run against S3 (moto's server) and the local-directory store alike."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import hashlib
import multiprocessing
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import pytest

from app.adapters.localfs import LocalObjectStore
from app.adapters.ports import (
    BucketNotFound,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreRefused,
)
from app.adapters.s3 import S3ObjectStore
from tests.conftest import S3_REGION

MiB = 1024 * 1024
BIG_FILE_BYTES = 40 * MiB
RSS_GROWTH_LIMIT = 60 * MiB


@dataclass
class StoreUnderTest:
    """One implementation with a fresh, empty bucket and ways to look behind its back."""

    kind: str
    store: ObjectStore
    bucket: str
    make_folder_marker: Callable[[str], None]
    s3_client: Any = None  # boto3 client, S3 only
    endpoint: str | None = None  # S3 only
    root: Path | None = None  # local only

    @property
    def missing_bucket(self) -> str:
        return f"missing-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["s3", "local"])
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreUnderTest]:
    if request.param == "s3":
        endpoint: str = request.getfixturevalue("s3_endpoint")
        bucket: str = request.getfixturevalue("bucket")
        client = request.getfixturevalue("s3_client")

        def s3_marker(key: str) -> None:
            client.put_object(Bucket=bucket, Key=key, Body=b"")

        async with S3ObjectStore(endpoint_url=endpoint, region=S3_REGION) as s3_store:
            yield StoreUnderTest("s3", s3_store, bucket, s3_marker, client, endpoint=endpoint)
    else:
        local_store = LocalObjectStore(tmp_path / "buckets")
        await local_store.create_bucket("data")

        def local_marker(key: str) -> None:
            (tmp_path / "buckets" / "data" / key).mkdir(parents=True, exist_ok=True)

        yield StoreUnderTest("local", local_store, "data", local_marker, root=tmp_path / "buckets")
        await local_store.close()


async def listed(store: ObjectStore, bucket: str, prefix: str) -> list[ObjectInfo]:
    return [item async for item in store.list_objects(bucket, prefix)]


def write_random_file(path: Path, size: int) -> str:
    """Write `size` incompressible bytes 1 MiB at a time; return their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for offset in range(0, size, MiB):
            chunk = os.urandom(min(MiB, size - offset))
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def files_under(path: Path) -> set[Path]:
    return set(path.rglob("*"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


class PeakRssGrowth:
    """How far this process's resident memory rose above its starting point during a block.

    Linux keeps an exact peak (VmHWM) that writing "5" to /proc/self/clear_refs resets; where
    that is not allowed, a thread samples VmRSS every 2 ms instead. Both run, the larger wins.
    Only meaningful in a fresh process (see `transfer_in_fresh_process`).
    """

    def __init__(self) -> None:
        self.growth = 0
        self.baseline = 0
        self._hwm_reset = False
        self._sampled_peak = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _status_kib(field: str) -> int:
        with open("/proc/self/status") as status:
            match = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
        assert match, f"{field} missing from /proc/self/status"
        return int(match.group(1)) * 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._sampled_peak = max(self._sampled_peak, self._status_kib("VmRSS"))

    def __enter__(self) -> PeakRssGrowth:
        gc.collect()
        # Hand memory freed by earlier tests back to the kernel, or it would be reused unseen
        # and the growth measured would depend on which tests ran before.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self.baseline = self._status_kib("VmRSS")
        self._sampled_peak = self.baseline
        self._sampler.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._sampler.join()
        peak = self._sampled_peak
        if self._hwm_reset:
            peak = max(peak, self._status_kib("VmHWM"))
        self.growth = peak - self.baseline


def _measured_transfer(
    direction: str, store_args: dict[str, Any], bucket: str, key: str, path: Path
) -> tuple[int, int]:
    """Child-process side of `transfer_in_fresh_process`: (bytes moved, peak RSS growth)."""

    async def run() -> tuple[int, int]:
        store: S3ObjectStore | LocalObjectStore
        if "root" in store_args:
            store = LocalObjectStore(**store_args)
        else:
            store = S3ObjectStore(**store_args)
            await store.start()
        try:
            # Warm up: client, connection pool and worker threads are not what is measured.
            await store.put_bytes(bucket, "warm-up", b"x" * 1024)
            await store.get_bytes(bucket, "warm-up", max_bytes=1024)
            with path.open("rb" if direction == "upload" else "wb") as file, PeakRssGrowth() as rss:
                if direction == "upload":
                    moved = await store.upload_fileobj(bucket, key, file)
                else:
                    moved = await store.download_fileobj(bucket, key, file)
        finally:
            await store.close()
        return moved, rss.growth

    return asyncio.run(run())


async def transfer_in_fresh_process(
    direction: str, store_args: dict[str, Any], bucket: str, key: str, path: Path
) -> tuple[int, int]:
    """Upload or download `path` from a new interpreter and return (bytes, peak RSS growth).

    A fresh process, because RSS in this one depends on earlier tests: glibc keeps freed
    memory in per-thread arenas (malloc_trim does not return it), so a later transfer reuses
    it unseen and its growth would read too low.
    """
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")  # nothing inherited from this heap
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return await loop.run_in_executor(
            pool, _measured_transfer, direction, store_args, bucket, key, path
        )


def store_args(subject: StoreUnderTest, **overrides: Any) -> dict[str, Any]:
    if subject.root is not None:
        return {"root": subject.root}
    return {"endpoint_url": subject.endpoint, "region": S3_REGION, **overrides}


# --------------------------------------------------------------------------- the contract
async def test_put_bytes_then_get_bytes(subject: StoreUnderTest) -> None:
    store, bucket = subject.store, subject.bucket
    await store.put_bytes(bucket, "notes/hello.txt", b"hello\n", content_type="text/plain")
    await store.put_bytes(bucket, "notes/empty", b"")

    assert await store.get_bytes(bucket, "notes/hello.txt", max_bytes=6) == b"hello\n"
    assert await store.get_bytes(bucket, "notes/empty", max_bytes=0) == b""
    assert await store.bucket_exists(bucket)


async def test_put_bytes_replaces_an_existing_object(subject: StoreUnderTest) -> None:
    store, bucket = subject.store, subject.bucket
    await store.put_bytes(bucket, "state.json", b'{"v": 1}')
    await store.put_bytes(bucket, "state.json", b'{"v": 2, "longer": true}')

    assert await store.get_bytes(bucket, "state.json", max_bytes=100) == b'{"v": 2, "longer": true}'
    assert [o.key for o in await listed(store, bucket, "")] == ["state.json"]


async def test_upload_then_download_is_byte_exact(subject: StoreUnderTest, tmp_path: Path) -> None:
    store, bucket = subject.store, subject.bucket
    source = tmp_path / "source.bin"
    digest = write_random_file(source, 3 * MiB + 17)

    with source.open("rb") as reader:
        uploaded = await store.upload_fileobj(bucket, "in/source.bin", reader)
    target = tmp_path / "target.bin"
    with target.open("wb") as writer:
        downloaded = await store.download_fileobj(bucket, "in/source.bin", writer)

    assert uploaded == downloaded == 3 * MiB + 17
    assert sha256_of(target) == digest


async def test_list_objects_under_a_prefix_in_key_order(subject: StoreUnderTest) -> None:
    store, bucket = subject.store, subject.bucket
    sizes = {
        "in/a.txt": 1,
        "in/a-b": 2,  # "-" sorts before "." and "/"
        "in/sub/b.txt": 3,
        "in/sub/deeper/c.txt": 4,
        "in/sub-file": 5,
        "in/ü.txt": 6,
        "in-other/x": 7,
        "inx": 8,
        "out/y": 9,
    }
    for key, size in sizes.items():
        await store.put_bytes(bucket, key, b"x" * size)
    subject.make_folder_marker("in/empty/")

    under_in = await listed(store, bucket, "in/")

    expected = sorted((k for k in sizes if k.startswith("in/")), key=lambda k: k.encode())
    assert [o.key for o in under_in] == expected
    assert all(o.size == sizes[o.key] for o in under_in)
    # A prefix is a string prefix, not a folder: "in" also matches "in-other/x" and "inx".
    assert {o.key for o in await listed(store, bucket, "in")} == {
        k for k in sizes if k.startswith("in")
    }
    assert [o.key for o in await listed(store, bucket, "in/sub/de")] == ["in/sub/deeper/c.txt"]
    assert await listed(store, bucket, "nothing/") == []
    assert len(await listed(store, bucket, "")) == len(sizes)


async def test_list_objects_crosses_result_pages(subject: StoreUnderTest) -> None:
    store, bucket = subject.store, subject.bucket
    keys = [f"many/{i // 100:02d}/item-{i:04d}" for i in range(1100)]
    limit = asyncio.Semaphore(32)

    async def put(key: str) -> None:
        async with limit:
            await store.put_bytes(bucket, key, key.encode())

    started = time.monotonic()
    await asyncio.gather(*(put(key) for key in keys), put("many-not/x"), put("other/y"))
    arranged = time.monotonic() - started

    found = await listed(store, bucket, "many/")

    assert [o.key for o in found] == sorted(keys)
    assert all(o.size == len(o.key) for o in found)
    assert arranged < 60, f"arranging 1100 objects took {arranged:.1f}s"


async def test_a_missing_bucket_is_reported_as_such(
    subject: StoreUnderTest, tmp_path: Path
) -> None:
    store, missing = subject.store, subject.missing_bucket
    source = tmp_path / "small.bin"
    source.write_bytes(b"data")

    assert not await store.bucket_exists(missing)
    with pytest.raises(BucketNotFound):
        await listed(store, missing, "")
    with pytest.raises(BucketNotFound), (tmp_path / "out.bin").open("wb") as writer:
        await store.download_fileobj(missing, "k", writer)
    with pytest.raises(BucketNotFound), source.open("rb") as reader:
        await store.upload_fileobj(missing, "k", reader)
    with pytest.raises(BucketNotFound):
        await store.put_bytes(missing, "k", b"data")
    with pytest.raises(BucketNotFound):
        await store.get_bytes(missing, "k", max_bytes=10)


async def test_a_missing_key_is_reported_as_such(subject: StoreUnderTest, tmp_path: Path) -> None:
    store, bucket = subject.store, subject.bucket
    await store.put_bytes(bucket, "dir/present", b"here")
    target = tmp_path / "out.bin"

    with pytest.raises(ObjectNotFound), target.open("wb") as writer:
        await store.download_fileobj(bucket, "dir/absent", writer)
    with pytest.raises(ObjectNotFound):
        await store.get_bytes(bucket, "dir/absent", max_bytes=10)
    with pytest.raises(ObjectNotFound):
        await store.get_bytes(bucket, "dir", max_bytes=10)  # a "folder" is not an object
    assert target.read_bytes() == b""


async def test_get_bytes_refuses_an_object_over_the_limit(subject: StoreUnderTest) -> None:
    store, bucket = subject.store, subject.bucket
    await store.put_bytes(bucket, "big", b"x" * 1001)

    with pytest.raises(ObjectStoreError, match="1000") as caught:
        await store.get_bytes(bucket, "big", max_bytes=1000)
    assert not isinstance(caught.value, ObjectNotFound | BucketNotFound)
    assert await store.get_bytes(bucket, "big", max_bytes=1001) == b"x" * 1001


async def test_get_bytes_returns_all_of_an_object_that_arrives_in_pieces(
    subject: StoreUnderTest,
) -> None:
    store, bucket = subject.store, subject.bucket
    data = os.urandom(3 * MiB + 5)  # far more than one network read delivers
    await store.put_bytes(bucket, "blob", data)

    assert await store.get_bytes(bucket, "blob", max_bytes=4 * MiB) == data
    assert await store.get_bytes(bucket, "blob", max_bytes=len(data)) == data


async def test_a_failing_upload_leaves_no_object_behind(
    subject: StoreUnderTest, tmp_path: Path
) -> None:
    store, bucket = subject.store, subject.bucket
    source = tmp_path / "source.bin"
    write_random_file(source, 20 * MiB)

    class BreaksHalfWay:
        """A file whose disk fails after 12 MiB: the caller's error, passed through as is."""

        def __init__(self, inner: BinaryIO) -> None:
            self.inner, self.read_so_far = inner, 0

        def read(self, size: int = -1) -> bytes:
            if self.read_so_far >= 12 * MiB:
                raise OSError(5, "Input/output error")
            chunk = self.inner.read(size)
            self.read_so_far += len(chunk)
            return chunk

    with source.open("rb") as reader, pytest.raises(OSError, match="Input/output"):
        await store.upload_fileobj(bucket, "half", BreaksHalfWay(reader))  # type: ignore[arg-type]

    assert await listed(store, bucket, "") == []
    if subject.s3_client is not None:
        uploads = subject.s3_client.list_multipart_uploads(Bucket=bucket)
        assert uploads.get("Uploads", []) == [], "the multipart upload was not aborted"
    else:
        assert list((tmp_path / "buckets" / bucket).iterdir()) == [], "a temp file was left"


async def test_a_40_mib_upload_streams_with_bounded_memory(
    subject: StoreUnderTest, tmp_path: Path
) -> None:
    store, bucket = subject.store, subject.bucket
    source = tmp_path / "big.bin"
    digest = write_random_file(source, BIG_FILE_BYTES)

    uploaded, growth = await transfer_in_fresh_process(
        "upload", store_args(subject), bucket, "big.bin", source
    )
    print(f"\n[{subject.kind}] 40 MiB upload, RSS growth: {growth / MiB:.1f} MiB")

    assert uploaded == BIG_FILE_BYTES
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew {growth / MiB:.1f} MiB"
    if subject.s3_client is not None:
        head = subject.s3_client.head_object(Bucket=bucket, Key="big.bin")
        assert "-" in head["ETag"], f"not a multipart upload: ETag {head['ETag']}"
        assert head["ContentLength"] == BIG_FILE_BYTES
    target = tmp_path / "back.bin"
    with target.open("wb") as writer:
        await store.download_fileobj(bucket, "big.bin", writer)
    assert sha256_of(target) == digest


async def test_a_40_mib_download_streams_into_a_file_with_bounded_memory(
    subject: StoreUnderTest, tmp_path: Path
) -> None:
    store, bucket = subject.store, subject.bucket
    source = tmp_path / "big.bin"
    digest = write_random_file(source, BIG_FILE_BYTES)
    with source.open("rb") as reader:
        await store.upload_fileobj(bucket, "big.bin", reader)
    target = tmp_path / "downloaded.bin"

    written, growth = await transfer_in_fresh_process(
        "download", store_args(subject), bucket, "big.bin", target
    )
    print(f"\n[{subject.kind}] 40 MiB download, RSS growth: {growth / MiB:.1f} MiB")

    assert written == BIG_FILE_BYTES
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew {growth / MiB:.1f} MiB"
    assert sha256_of(target) == digest


# --------------------------------------------------------------------------- S3 only
class ShortReads:
    """Like a pipe: no readinto, and never more than 64 KiB per read, whatever was asked."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner

    def read(self, size: int = -1) -> bytes:
        return self.inner.read(min(size, 64 * 1024) if size >= 0 else 64 * 1024)


@pytest.mark.parametrize(
    ("threshold", "part_size", "size", "parts", "short_reads"),
    [
        (5 * MiB, 5 * MiB, 12 * MiB + 7, 3, False),  # 5 + 5 + 2 MiB and 7 bytes
        (5 * MiB, 5 * MiB, 12 * MiB + 7, 3, True),
        (12 * MiB, 5 * MiB, 12 * MiB + 7, 3, False),  # the head's 2 MiB tail starts part 3
        (7 * MiB, 5 * MiB, 17 * MiB, 4, True),  # 5 + (2 carried + 3) + 5 + 2
        (12 * MiB, 5 * MiB, 12 * MiB, 0, False),  # exactly the threshold: one PUT
        (12 * MiB, 5 * MiB, 12 * MiB - 1, 0, True),
        (0, 5 * MiB, 7, 1, False),  # threshold 0: always multipart, but for an empty file
        (0, 5 * MiB, 0, 0, False),
    ],
)
async def test_upload_cuts_parts_exactly_whatever_the_sizes(
    s3_endpoint: str,
    bucket: str,
    s3_client: Any,
    tmp_path: Path,
    threshold: int,
    part_size: int,
    size: int,
    parts: int,
    short_reads: bool,
) -> None:
    source = tmp_path / "odd.bin"
    digest = write_random_file(source, size)
    store = S3ObjectStore(
        endpoint_url=s3_endpoint,
        region=S3_REGION,
        multipart_threshold=threshold,
        part_size=part_size,
        max_concurrency=2,
    )

    async with store:
        with source.open("rb") as reader:
            fileobj: Any = ShortReads(reader) if short_reads else reader
            uploaded = await store.upload_fileobj(
                bucket, "odd.bin", fileobj, content_type="application/x-test"
            )
        target = tmp_path / "back.bin"
        with target.open("wb") as writer:
            await store.download_fileobj(bucket, "odd.bin", writer)

    head = s3_client.head_object(Bucket=bucket, Key="odd.bin")
    etag = head["ETag"].strip('"')
    assert uploaded == size
    assert sha256_of(target) == digest
    assert head["ContentType"] == "application/x-test"
    if parts:
        assert etag.endswith(f"-{parts}"), f"expected {parts} parts, ETag {etag}"
    else:
        assert "-" not in etag, f"expected a single PUT, ETag {etag}"


async def test_small_parts_keep_memory_well_below_the_file_size(
    s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    write_random_file(source, BIG_FILE_BYTES)
    small_parts = {
        "endpoint_url": s3_endpoint,
        "region": S3_REGION,
        "multipart_threshold": 5 * MiB,
        "part_size": 5 * MiB,
        "max_concurrency": 2,
    }

    uploaded, growth = await transfer_in_fresh_process(
        "upload", small_parts, bucket, "big.bin", source
    )
    print(f"\n[s3, 2 x 5 MiB parts] 40 MiB upload, RSS growth: {growth / MiB:.1f} MiB")

    # The 5 MiB head, two parts in flight and one being read make 20 MiB; a store that read
    # the whole file first would need 40.
    assert uploaded == BIG_FILE_BYTES
    assert growth < 30 * MiB, f"RSS grew {growth / MiB:.1f} MiB"


async def test_put_bytes_keeps_the_content_type_on_s3(
    s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    async with S3ObjectStore(endpoint_url=s3_endpoint, region=S3_REGION) as store:
        await store.put_bytes(bucket, "page.html", b"<p>hi</p>", content_type="text/html")

    assert s3_client.head_object(Bucket=bucket, Key="page.html")["ContentType"] == "text/html"


async def listed_bytes(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def test_an_archived_object_is_refused_for_good_not_as_an_outage(
    s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    # A Glacier-class object cannot be read until restored: S3 answers InvalidObjectState.
    s3_client.put_object(Bucket=bucket, Key="cold.bin", Body=b"x", StorageClass="GLACIER")
    async with S3ObjectStore(endpoint_url=s3_endpoint, region=S3_REGION) as store:
        with pytest.raises(ObjectStoreRefused, match="InvalidObjectState"):
            await store.get_bytes(bucket, "cold.bin", max_bytes=10)
        with pytest.raises(ObjectStoreRefused, match="InvalidObjectState"):
            await listed_bytes(store.stream_object(bucket, "cold.bin"))


async def test_an_unreachable_endpoint_fails_fast_with_an_object_store_error() -> None:
    # Port 9 (discard) has no listener on loopback: every connection is refused at once.
    store = S3ObjectStore(
        endpoint_url="http://127.0.0.1:9", region=S3_REGION, connect_timeout=1, max_attempts=2
    )
    async with store:
        started = time.monotonic()
        with pytest.raises(ObjectStoreError, match=r"127\.0\.0\.1:9") as caught:
            await store.bucket_exists("any-bucket")
        with pytest.raises(ObjectStoreError):
            await listed(store, "any-bucket", "")
        with pytest.raises(ObjectStoreError):
            await store.put_bytes("any-bucket", "k", b"x")
        elapsed = time.monotonic() - started

    assert type(caught.value) is ObjectStoreError
    assert elapsed < 15, f"took {elapsed:.1f}s to give up"


async def test_an_unstarted_store_says_so(s3_endpoint: str) -> None:
    store = S3ObjectStore(endpoint_url=s3_endpoint, region=S3_REGION)
    with pytest.raises(RuntimeError, match="start"):
        await store.bucket_exists("any-bucket")
    await store.close()  # closing a store that never started is harmless


# --------------------------------------------------------------------------- local only
@pytest.fixture
async def local_store(tmp_path: Path) -> LocalObjectStore:
    store = LocalObjectStore(tmp_path / "root")
    await store.create_bucket("data")
    return store


@pytest.mark.parametrize(
    "key",
    [
        "../x",
        "../../etc/passwd",
        "/abs",
        "/etc/passwd",
        "a//b",
        "a/./b",
        "a/../b",
        ".",
        "..",
        "",
        "a/",
        "a\x00b",
    ],
)
async def test_local_store_refuses_keys_that_could_leave_the_bucket(
    local_store: LocalObjectStore, tmp_path: Path, key: str
) -> None:
    before = files_under(tmp_path)

    with pytest.raises(ObjectStoreError) as put_error:
        await local_store.put_bytes("data", key, b"payload")
    with pytest.raises(ObjectStoreError) as get_error, (tmp_path / "out").open("wb") as writer:
        await local_store.download_fileobj("data", key, writer)
    with pytest.raises(ObjectStoreError) as get_bytes_error:
        await local_store.get_bytes("data", key, max_bytes=100)

    for error in (put_error, get_error, get_bytes_error):
        assert not isinstance(error.value, ObjectNotFound | BucketNotFound)
    assert files_under(tmp_path) == before | {tmp_path / "out"}


async def test_local_store_refuses_symlinks_out_of_the_bucket(
    local_store: LocalObjectStore, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"top secret")
    outside = tmp_path / "outside"
    outside.mkdir()
    bucket_path = tmp_path / "root" / "data"
    (bucket_path / "file-link").symlink_to(secret)
    (bucket_path / "dir-link").symlink_to(outside, target_is_directory=True)

    with pytest.raises(ObjectStoreError, match="outside"):
        await local_store.get_bytes("data", "file-link", max_bytes=100)
    with pytest.raises(ObjectStoreError, match="outside"):
        await local_store.put_bytes("data", "dir-link/planted", b"x")
    with pytest.raises(ObjectStoreError):
        await listed(local_store, "data", "dir-link/")

    assert list(outside.iterdir()) == []
    assert await listed(local_store, "data", "") == []  # links are not objects


async def test_local_store_refuses_prefixes_and_bucket_names_that_leave_the_root(
    local_store: LocalObjectStore,
) -> None:
    with pytest.raises(ObjectStoreError):
        await listed(local_store, "data", "../")
    for bucket in ("..", ".", "a/b", ""):
        with pytest.raises(ObjectStoreError):
            await local_store.put_bytes(bucket, "k", b"x")


async def test_local_store_cannot_hold_an_object_and_a_prefix_of_the_same_name(
    local_store: LocalObjectStore,
) -> None:
    await local_store.put_bytes("data", "a", b"file")

    with pytest.raises(ObjectStoreError) as caught:
        await local_store.put_bytes("data", "a/b", b"x")

    assert not isinstance(caught.value, BucketNotFound | ObjectNotFound)
    assert await local_store.get_bytes("data", "a", max_bytes=10) == b"file"
