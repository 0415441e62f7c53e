"""Operator defaults that bound what one run may take from the host."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from app.config import MiB, Settings


def test_one_run_may_have_half_the_hosts_memory_by_default() -> None:
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    settings = Settings(_env_file=None)

    assert settings.max_memory_mb == host // 2 // MiB


def test_disk_limits_have_a_default_under_their_maximum() -> None:
    settings = Settings(_env_file=None)

    assert (settings.default_disk_mb, settings.max_disk_mb) == (2048, 20 * 1024)
    assert settings.disk_quota == "required"
    with pytest.raises(ValidationError, match="DEFAULT_DISK_MB exceeds"):
        Settings(_env_file=None, default_disk_mb=4096, max_disk_mb=1024)
