"""All SQL lives in this package, one module a domain. The names below are re-exported for
older imports (the workers'); new code imports from the domain's module."""

from app.repositories.environments import EnvironmentImageRepository
from app.repositories.keys import ApiKeyRepository
from app.repositories.legacy import LegacyClaimRepository
from app.repositories.paging import InvalidCursor, decode_cursor, encode_cursor, insert_or_ignore
from app.repositories.runs import RunRepository
from app.repositories.schedules import ScheduleRepository
from app.repositories.webhooks import WebhookRepository

__all__ = [
    "ApiKeyRepository",
    "EnvironmentImageRepository",
    "InvalidCursor",
    "LegacyClaimRepository",
    "RunRepository",
    "ScheduleRepository",
    "WebhookRepository",
    "decode_cursor",
    "encode_cursor",
    "insert_or_ignore",
]
