"""Access rules as pure functions: who needs a key, and which buckets an owner may use."""

from __future__ import annotations

import dataclasses

import pytest

from app.services.auth import keys_required
from tests.factories import make_limits


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


LIMITS = make_limits(allowed_buckets=())


@pytest.mark.parametrize(
    ("global_list", "by_owner", "owner", "bucket", "refusal"),
    [
        # Nothing configured: the local user (no key) may use any bucket; an owner with a key none.
        ((), {}, "local", "b1", None),
        ((), {}, "alice", "b1", "TASKDEPLOY_ALLOWED_BUCKETS is empty"),
        # A global list binds everyone, the local user too.
        (("b1",), {}, "alice", "b1", None),
        (("b1",), {}, "alice", "b2", "'b2' is not on the operator's allow-list"),
        (("b1",), {}, "local", "b2", "not on the operator's allow-list"),
        (("*",), {}, "alice", "anything", None),
        # Per owner: exactly the owner's list; [] is no bucket, never "fall back to global".
        (("b1",), {"bob": ("b2",)}, "bob", "b2", None),
        (("b1",), {"bob": ("b2",)}, "bob", "b1", "TASKDEPLOY_ALLOWED_BUCKETS_BY_OWNER"),
        (("b1",), {"carol": ()}, "carol", "b1", "'carol' may use no bucket"),
        (("*",), {"carol": ()}, "carol", "b1", "may use no bucket"),
        ((), {"carol": ()}, "local", "b1", None),
        ((), {"dave": ("*",)}, "dave", "b9", None),
        ((), {"dave": ("b1",)}, "erin", "b1", "TASKDEPLOY_ALLOWED_BUCKETS is empty"),
    ],
)
def test_which_buckets_an_owner_may_use(
    global_list: tuple[str, ...],
    by_owner: dict[str, tuple[str, ...]],
    owner: str,
    bucket: str,
    refusal: str | None,
) -> None:
    limits = dataclasses.replace(
        LIMITS, allowed_buckets=global_list, allowed_buckets_by_owner=by_owner
    )
    found = limits.bucket_refusal(owner, bucket)
    if refusal is None:
        assert found is None
    else:
        assert found is not None and refusal in found
