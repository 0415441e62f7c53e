"""A temporary file that stays in memory up to a size, then moves to the service's tmp dir:
where staging tars, harvested outputs and uploads are held while they stream."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def spooled(tmp_dir: Path, memory_bytes: int) -> Iterator[IO[bytes]]:
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.SpooledTemporaryFile(max_size=memory_bytes, dir=str(tmp_dir)) as spool:
        yield spool
