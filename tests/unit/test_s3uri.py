"""Rules for s3:// locations, object keys and which keys may become files."""

from __future__ import annotations

import pytest

from app.services.s3uri import S3Location, object_key, parse_s3_uri, safe_relative_path


@pytest.mark.parametrize(
    ("text", "bucket", "prefix"),
    [
        ("s3://my-bucket", "my-bucket", ""),
        ("s3://my-bucket/", "my-bucket", ""),
        ("s3://b12/in", "b12", "in/"),
        ("s3://b12/in/", "b12", "in/"),
        ("s3://data.example.com/runs/2024/in", "data.example.com", "runs/2024/in/"),
        ("s3://abc/with space/ünïcode", "abc", "with space/ünïcode/"),
        ("s3://" + "a" * 63 + "/x", "a" * 63, "x/"),
        ("s3://abc/" + "p" * 899, "abc", "p" * 899 + "/"),
    ],
)
def test_valid_locations_are_parsed_and_the_prefix_normalised(
    text: str, bucket: str, prefix: str
) -> None:
    assert parse_s3_uri(text) == S3Location(bucket=bucket, prefix=prefix)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("my-bucket/in", "must start with 's3://'"),
        ("S3://my-bucket/in", "must start with 's3://'"),
        ("https://my-bucket.s3.amazonaws.com/in", "must start with 's3://'"),
        ("s3:/my-bucket", "must start with 's3://'"),
        ("", "must start with 's3://'"),
        ("s3://", "needs a bucket name"),
        ("s3:///in", "needs a bucket name"),
    ],
)
def test_a_location_needs_the_s3_scheme_and_a_bucket(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_s3_uri(text)


@pytest.mark.parametrize(
    ("bucket", "reason"),
    [
        ("ab", "3 to 63 characters"),
        ("a" * 64, "3 to 63 characters"),
        ("My-Bucket", "lowercase letters, digits, dots and hyphens"),
        ("my_bucket", "lowercase letters, digits, dots and hyphens"),
        ("my bucket", "lowercase letters, digits, dots and hyphens"),
        ("-bucket", "start and end with a letter or a digit"),
        ("bucket-", "start and end with a letter or a digit"),
        (".bucket", "start and end with a letter or a digit"),
        ("bucket.", "start and end with a letter or a digit"),
        ("my..bucket", 'must not contain ".."'),
        ("192.168.5.4", "IP address"),
        ("10.0.0.1", "IP address"),
        ("xn--bucket", "reserves"),
        ("bucket-s3alias", "reserves"),
        ("bucket--ol-s3", "reserves"),
    ],
)
def test_bucket_names_follow_the_s3_rules(bucket: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_s3_uri(f"s3://{bucket}/in")


def test_a_dotted_name_that_is_not_an_ip_address_is_fine() -> None:
    assert parse_s3_uri("s3://1.2.3.bucket").bucket == "1.2.3.bucket"


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("s3://bucket/a//b", "empty segment"),
        ("s3://bucket//a", "empty segment"),
        ("s3://bucket/a//", "empty segment"),
        ("s3://bucket/./a", "'.' segment"),
        ("s3://bucket/a/.", "'.' segment"),
        ("s3://bucket/a/../b", "'..' segment"),
        ("s3://bucket/..", "'..' segment"),
    ],
)
def test_prefix_segments_must_not_be_empty_dot_or_dot_dot(text: str, found: str) -> None:
    with pytest.raises(ValueError, match=found):
        parse_s3_uri(text)


def test_dots_inside_a_segment_are_fine() -> None:
    assert parse_s3_uri("s3://bucket/v1..2/.hidden/a.b").prefix == "v1..2/.hidden/a.b/"


@pytest.mark.parametrize(
    "prefix",
    ["p" * 900, "é" * 450, "p" * 1000],
    ids=["900-ascii-plus-slash", "900-bytes-of-two-byte-chars-plus-slash", "1000"],
)
def test_prefix_over_900_bytes_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="longer than 900 bytes"):
        parse_s3_uri(f"s3://bucket/{prefix}")


@pytest.mark.parametrize(
    "text",
    [
        "s3://bucket/in\nput",
        "s3://bucket/in\x00",
        "s3://buc\tket/in",
        "s3://bucket/\x7f",
        "s3://bucket/\x85",
    ],
)
def test_control_characters_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="control characters"):
        parse_s3_uri(text)


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(ValueError, match="valid Unicode"):
        parse_s3_uri("s3://bucket/in\ud800")


@pytest.mark.parametrize(
    ("prefix", "parts", "key"),
    [
        ("", ("file.txt",), "file.txt"),
        ("in/", ("file.txt",), "in/file.txt"),
        ("in/", ("sub", "file.txt"), "in/sub/file.txt"),
        ("runs/42/", ("output/data.csv",), "runs/42/output/data.csv"),
    ],
)
def test_object_key_joins_parts_under_the_prefix(
    prefix: str, parts: tuple[str, ...], key: str
) -> None:
    assert object_key(S3Location("bucket", prefix), *parts) == key


@pytest.mark.parametrize(
    "parts",
    [(), ("",), ("a", ""), ("/abs",), ("a/",), ("a//b",), ("..", "x"), ("a/./b",), ("a\nb",)],
)
def test_object_key_refuses_unsafe_parts(parts: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        object_key(S3Location("bucket", "in/"), *parts)


def test_object_key_refuses_keys_past_the_s3_limit() -> None:
    with pytest.raises(ValueError, match="1024-byte"):
        object_key(S3Location("bucket", "p" * 899 + "/"), "f" * 200)


@pytest.mark.parametrize(
    ("key", "prefix", "relative"),
    [
        ("in/a.txt", "in/", "a.txt"),
        ("in/sub/dir/a.txt", "in/", "sub/dir/a.txt"),
        ("a.txt", "", "a.txt"),
        ("in/.hidden", "in/", ".hidden"),
        ("in/..x/y..", "in/", "..x/y.."),
        ("in/ünï çode.txt", "in/", "ünï çode.txt"),
        ("in/" + "n" * 255, "in/", "n" * 255),
    ],
)
def test_safe_relative_path_accepts_ordinary_keys(key: str, prefix: str, relative: str) -> None:
    assert safe_relative_path(key, prefix) == relative


@pytest.mark.parametrize(
    ("key", "prefix"),
    [
        ("other/a.txt", "in/"),  # not under the prefix
        ("in/", "in/"),  # the prefix itself
        ("in/sub/", "in/"),  # a folder marker
        ("in//a.txt", "in/"),  # empty segment, i.e. absolute below the prefix
        ("/etc/passwd", ""),
        ("in/../../etc/passwd", "in/"),
        ("in/a/../../b", "in/"),
        ("in/./a", "in/"),
        ("in/..", "in/"),
        ("in/a\x00b", "in/"),
        ("in/a\nb", "in/"),
        ("in/a\x1b[31m", "in/"),
        ("in/" + "n" * 256, "in/"),  # one segment over NAME_MAX
        ("in/" + "é" * 128, "in/"),  # 256 bytes in UTF-8
        ("in/" + "/".join(["d" * 200] * 21), "in/"),  # over PATH_MAX in total
        ("in/a\ud800", "in/"),
    ],
)
def test_safe_relative_path_refuses_keys_that_could_escape_or_break(key: str, prefix: str) -> None:
    assert safe_relative_path(key, prefix) is None


def test_safe_relative_path_needs_a_normalised_prefix() -> None:
    with pytest.raises(ValueError, match="end with '/'"):
        safe_relative_path("in/a", "in")
