"""Parse and validate s3:// locations and decide which object keys are safe to turn into files."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

S3_SCHEME = "s3://"
# S3 allows 1024-byte keys; capping the prefix leaves room for the relative paths joined under it.
MAX_PREFIX_BYTES = 900
MAX_KEY_BYTES = 1024
# Linux NAME_MAX and PATH_MAX: a longer name or path cannot be created as a file.
MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 4096

_BUCKET_CHARS = re.compile(r"[a-z0-9.-]+")
# Names AWS reserves for its own features (access points, S3 Express, ...): never a real bucket.
_RESERVED_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix that is either empty or ends with "/"."""

    bucket: str
    prefix: str

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}"


def _control_character(text: str) -> str | None:
    """The first C0/C1 control character in `text`, if any."""
    for char in text:
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return char
    return None


def _utf8_length(text: str) -> int | None:
    """The UTF-8 size of `text`, or None if it holds lone surrogates and so is no valid key."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def _bucket_name_problem(name: str) -> str | None:
    """Why `name` breaks S3's bucket naming rules, or None if it follows them."""
    if not 3 <= len(name) <= 63:
        return "must be 3 to 63 characters long"
    if not _BUCKET_CHARS.fullmatch(name):
        return "may contain only lowercase letters, digits, dots and hyphens"
    if not (name[0].isalnum() and name[-1].isalnum()):
        return "must start and end with a letter or a digit"
    if ".." in name:
        return 'must not contain ".."'
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        pass
    else:
        return "must not be formatted as an IP address"
    if name.startswith(_RESERVED_BUCKET_PREFIXES) or name.endswith(_RESERVED_BUCKET_SUFFIXES):
        return "uses a prefix or suffix that AWS reserves"
    return None


def _bad_segment(path: str) -> str | None:
    """The first empty, "." or ".." segment of a "/"-separated path, if any."""
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            return segment
    return None


def key_prefix_problem(
    text: str, *, name: str = "the key prefix", folder: bool = True
) -> str | None:
    """Why `text` cannot be (a part of) an object key prefix, or None: the rules of an S3
    location's prefix. A `folder` may end with one "/"; a name joined into a prefix may not."""
    if (char := _control_character(text)) is not None:
        return f"{name} must not contain control characters (found {char!r})"
    size = _utf8_length(text)
    if size is None:
        return f"{name} must be valid Unicode text"
    if not text:
        return f"{name} must not be empty"
    if (segment := _bad_segment(text.removesuffix("/") if folder else text)) is not None:
        if text.startswith("/"):
            return (
                f"{name} {text!r} starts with '/', an empty segment, which is not allowed "
                "(keys are relative)"
            )
        shown = "an empty segment (//)" if segment == "" else f"a {segment!r} segment"
        return f"{name} {text!r} has {shown}, which is not allowed"
    if size > MAX_PREFIX_BYTES:
        return f"{name} is longer than {MAX_PREFIX_BYTES} bytes"
    return None


def parse_s3_uri(text: str) -> S3Location:
    """Parse `s3://bucket[/prefix]`; raise ValueError with a message a user can act on."""
    if not text.startswith(S3_SCHEME):
        raise ValueError(
            f"an S3 location must start with {S3_SCHEME!r}, e.g. s3://my-bucket/inputs/"
        )
    if (char := _control_character(text)) is not None:
        raise ValueError(f"an S3 location must not contain control characters (found {char!r})")
    if _utf8_length(text) is None:
        raise ValueError("an S3 location must be valid Unicode text")
    bucket, _, prefix = text[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError("an S3 location needs a bucket name after s3://")
    if (problem := _bucket_name_problem(bucket)) is not None:
        raise ValueError(f"bucket name {bucket!r} is not valid: it {problem}")
    if prefix:
        # One trailing "/" is the normal way to write a folder; anything else empty is a typo.
        if (problem := key_prefix_problem(prefix)) is not None:
            raise ValueError(problem)
        if not prefix.endswith("/"):
            prefix += "/"
    if (_utf8_length(prefix) or 0) > MAX_PREFIX_BYTES:
        raise ValueError(f"the key prefix is longer than {MAX_PREFIX_BYTES} bytes")
    return S3Location(bucket=bucket, prefix=prefix)


def object_key(location: S3Location, *parts: str) -> str:
    """The key of `parts` joined under the location's prefix; a part may hold "/" itself."""
    if not parts:
        raise ValueError("an object key needs at least one part below the prefix")
    relative = "/".join(parts)
    if (segment := _bad_segment(relative)) is not None:
        shown = "an empty segment" if segment == "" else f"a {segment!r} segment"
        raise ValueError(f"the key part {relative!r} has {shown}, which is not allowed")
    if _control_character(relative) is not None or _utf8_length(relative) is None:
        raise ValueError(f"the key part {relative!r} has a control character or invalid Unicode")
    key = location.prefix + relative
    if (_utf8_length(key) or 0) > MAX_KEY_BYTES:
        raise ValueError(f"the object key is longer than S3's {MAX_KEY_BYTES}-byte limit")
    return key


def safe_relative_path(key: str, prefix: str) -> str | None:
    """The part of `key` below `prefix` if it is safe to create as a relative file path, else None.

    Keys are whatever anyone put in the bucket; None means "do not materialise this one", so a
    key like `in/../../etc/passwd` can never name a file outside the destination folder.
    """
    if prefix and not prefix.endswith("/"):
        raise ValueError(f"a prefix must be empty or end with '/', got {prefix!r}")
    if not key.startswith(prefix):
        return None
    relative = key[len(prefix) :]
    # An empty segment covers "", a leading "/" (absolute) and a trailing "/" (a folder marker).
    if _bad_segment(relative) is not None or _control_character(relative) is not None:
        return None
    size = _utf8_length(relative)
    if size is None or size > MAX_PATH_BYTES:
        return None
    if any((_utf8_length(part) or 0) > MAX_SEGMENT_BYTES for part in relative.split("/")):
        return None
    return relative
