"""Which S3 answers end a run at once (refused for good) and which are retried (an outage)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, NoCredentialsError

from app.adapters.ports import BucketNotFound, ObjectNotFound, ObjectStoreError, ObjectStoreRefused
from app.adapters.s3 import S3ObjectStore


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} happened"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "GetObject",
    )


STORE = S3ObjectStore(endpoint_url="http://127.0.0.1:9", region="us-east-1")


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("AccessDenied", 403, ObjectStoreRefused),
        ("AllAccessDisabled", 403, ObjectStoreRefused),
        ("InvalidObjectState", 403, ObjectStoreRefused),
        ("InvalidArgument", 400, ObjectStoreRefused),
        ("KeyTooLongError", 400, ObjectStoreRefused),
        ("EntityTooLarge", 400, ObjectStoreRefused),
        ("NoSuchBucket", 404, BucketNotFound),
        ("NoSuchKey", 404, ObjectNotFound),
        # Worth another try: throttles, timeouts, skewed clocks and every 5xx.
        ("SlowDown", 503, ObjectStoreError),
        ("RequestTimeout", 400, ObjectStoreError),
        ("RequestTimeTooSkewed", 403, ObjectStoreError),
        ("OperationAborted", 409, ObjectStoreError),
        ("TooManyRequests", 429, ObjectStoreError),
        ("InternalError", 500, ObjectStoreError),
        ("ServiceUnavailable", 503, ObjectStoreError),
    ],
)
def test_s3_answers_are_sorted_into_refused_and_retryable(
    code: str, status: int, kind: type[ObjectStoreError]
) -> None:
    error = STORE._translate(client_error(code, status), "read s3://b/k", bucket="b", key="k")

    assert type(error) is kind
    assert isinstance(error, ObjectStoreRefused) == issubclass(kind, ObjectStoreRefused)


def test_missing_credentials_are_refused_for_good() -> None:
    assert isinstance(STORE._translate(NoCredentialsError(), "list"), ObjectStoreRefused)
