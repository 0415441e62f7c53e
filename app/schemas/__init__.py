"""Request and response models, the public API contract, one module a domain. The names
below are re-exported for older imports; app code imports from the domain's module."""

from app.schemas.common import ErrorBody, ErrorResponse, HealthOut, Page, StrictModel
from app.schemas.runs import (
    ArtifactOut,
    LogInfo,
    MetricsSampleOut,
    MetricsSummaryOut,
    Resources,
    ResourcesOut,
    RetryPolicy,
    RunCreate,
    RunEventOut,
    RunLinks,
    RunMetricsOut,
    RunOut,
)
from app.schemas.schedules import ScheduleCreate, ScheduleFireOut, ScheduleOut, ScheduleUpdate
from app.schemas.webhooks import (
    WebhookAttemptOut,
    WebhookDeliveryOut,
    WebhookSecretOut,
    WebhookSecretRotate,
)

__all__ = [
    "ArtifactOut",
    "ErrorBody",
    "ErrorResponse",
    "HealthOut",
    "LogInfo",
    "MetricsSampleOut",
    "MetricsSummaryOut",
    "Page",
    "Resources",
    "ResourcesOut",
    "RetryPolicy",
    "RunCreate",
    "RunEventOut",
    "RunLinks",
    "RunMetricsOut",
    "RunOut",
    "ScheduleCreate",
    "ScheduleFireOut",
    "ScheduleOut",
    "ScheduleUpdate",
    "StrictModel",
    "WebhookAttemptOut",
    "WebhookDeliveryOut",
    "WebhookSecretOut",
    "WebhookSecretRotate",
]
