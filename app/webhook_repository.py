"""Moved to app.repositories.webhooks; kept only for app.workers.notifier's import until the
pipeline branch lands (then that import changes and this file goes)."""

from app.repositories.webhooks import WebhookRepository

__all__ = ["WebhookRepository"]
