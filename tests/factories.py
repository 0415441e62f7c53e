"""Test data factories shared across the tiers."""

from __future__ import annotations

from typing import Any

from app.services.runs import RunLimits


def make_limits(**overrides: Any) -> RunLimits:
    """Operator limits small enough for tests: busybox only, one bucket, no network."""
    fields: dict[str, Any] = {
        "allowed_images": ("busybox:latest",),
        "default_image": "busybox:latest",
        "default_cpus": 1,
        "default_memory_mb": 64,
        "max_cpus": 2,
        "max_memory_mb": 1024,
        "default_disk_mb": 64,
        "max_disk_mb": 1024,
        "default_timeout_seconds": 60,
        "max_timeout_seconds": 3600,
        "max_command_bytes": 65536,
        "allow_network": False,
        "allowed_buckets": ("bucket",),
    }
    fields.update(overrides)
    return RunLimits(**fields)
