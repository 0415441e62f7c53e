"""S3's errors in the ObjectStore port's terms, with messages a person can act on."""

from __future__ import annotations

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)

from app.adapters.ports import BucketNotFound, ObjectNotFound, ObjectStoreError, ObjectStoreRefused

BUCKET_MISSING_CODES = frozenset({"NoSuchBucket", "404", "NotFound"})
_KEY_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled"})
_TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeTooSkewed",  # the clock is fixed by NTP, not by the request
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "OperationAborted",  # a conflicting operation on the bucket is still in progress
    }
)
# What aiobotocore can raise: botocore's families, raw aiohttp errors from a body read half-way,
# and timeouts (asyncio.TimeoutError is TimeoutError since 3.11).
VENDOR_ERRORS = (BotoCoreError, ClientError, aiohttp.ClientError, TimeoutError)


def translate_error(
    exc: Exception, action: str, *, bucket: str = "", key: str = "", endpoint: str | None = None
) -> ObjectStoreError:
    """Map a vendor exception to the port's error family with a message a person can act on."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message") or code
        if code == "NoSuchBucket" or (code in BUCKET_MISSING_CODES and not key):
            return BucketNotFound(f"could not {action}: bucket {bucket!r} does not exist")
        if code in _KEY_MISSING_CODES and key:
            return ObjectNotFound(f"could not {action}: no object at that key")
        if code in _DENIED_CODES:
            return ObjectStoreRefused(
                f"could not {action}: access denied; check the credentials and the "
                f"bucket policy ({message})"
            )
        if is_permanent(exc, code):
            return ObjectStoreRefused(f"could not {action}: S3 answered {code}: {message}")
        return ObjectStoreError(f"could not {action}: S3 answered {code}: {message}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return ObjectStoreRefused(
            f"could not {action}: no usable AWS credentials (checked the environment, "
            f"the shared config files and the instance role): {exc}"
        )
    if isinstance(exc, ParamValidationError):
        # Caught before anything is sent: a bucket name or key S3 would refuse anyway.
        return ObjectStoreRefused(f"could not {action}: {exc}")
    endpoint = endpoint or "AWS S3"
    return ObjectStoreError(f"could not {action}: no good answer from {endpoint}: {exc}")


def is_permanent(exc: ClientError, code: str) -> bool:
    """A 4xx S3 will give again whatever we wait for (an archived object's InvalidObjectState,
    a bad argument, a key too long ...); throttles and timeouts are worth another try, and so is
    every 5xx and anything without a status."""
    if code in _TRANSIENT_CODES:
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
