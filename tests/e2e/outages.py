"""Outages the tests cause on purpose, to daemons they start themselves, on loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

from tests.e2e.harness import free_port


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of a loopback service. `cut()` drops every open
    connection and refuses new ones (an outage); `restore()` lets traffic through again.
    `bytes_down` counts what the service sent its clients."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.bytes_down = 0
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.restore()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)  # type: ignore[arg-type]

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, down: bool = False
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if down:
                    self.bytes_down += len(chunk)  # only the proxy's own loop thread adds
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        self._writers |= {client_w, up_w}
        await asyncio.gather(self._pipe(client_r, up_w), self._pipe(up_r, client_w, down=True))
        self._writers -= {client_w, up_w}

    async def _start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def cut(self) -> None:
        self._call(self._stop())

    def restore(self) -> None:
        self._call(self._start())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on a free loopback port, owned by this test."""

    def __init__(self, base: Path) -> None:
        self.bin = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
        self.dir = base / "pgdata"
        self.port = free_port()
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)
        self.dir.mkdir()
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(
            f"{self.bin}/initdb", "-D", str(self.dir), "-A", "trust", "-U", "postgres"
        )
        self.start()

    def _as_postgres(self, *args: str) -> None:
        command = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
        subprocess.run(command, check=True, capture_output=True, timeout=120, cwd="/")

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.dir}"
            " -c fsync=off"
        )
        self._as_postgres(
            f"{self.bin}/pg_ctl",
            "-D",
            str(self.dir),
            "-o",
            options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._as_postgres(f"{self.bin}/pg_ctl", "-D", str(self.dir), "-m", "fast", "-w", "stop")

    def answers(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0
