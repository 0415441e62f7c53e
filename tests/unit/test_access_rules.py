"""Access rules as pure functions: who needs a key, and which buckets an owner may use."""

from __future__ import annotations

import pytest

from app.services.auth import keys_required


@pytest.mark.parametrize(
    ("mode", "host", "keys_ever_created", "required"),
    [
        ("auto", "127.0.0.1", False, False),  # the embedded default: the local user
        ("auto", "localhost", False, False),
        ("auto", "::1", False, False),
        ("auto", "127.0.0.1", True, True),  # a key was made, even if revoked since
        ("auto", "0.0.0.0", False, True),  # beyond loopback: whatever the key table holds
        ("auto", "0.0.0.0", True, True),
        ("auto", "::", False, True),
        ("auto", "10.1.2.3", False, True),
        ("auto", "myhost.example", False, True),
        ("required", "127.0.0.1", False, True),
        ("disabled", "127.0.0.1", True, False),
    ],
)
def test_who_needs_a_key(mode: str, host: str, keys_ever_created: bool, required: bool) -> None:
    assert keys_required(mode, host, keys_ever_created=keys_ever_created) is required
