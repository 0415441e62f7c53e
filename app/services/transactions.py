"""After-commit work: wake-ups that must follow the commit of what they announce, never precede it.

A request's session commits once, in its dependency (app.deps.get_session); services only
flush. A service that queues a run or changes a schedule registers the wake-up here, and it
runs once the session's transaction has committed, so a woken worker always finds the row. A
rollback drops what was registered: nothing is announced that did not happen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

_PENDING = "taskdeploy.after_commit"
_LISTENING = "taskdeploy.after_commit.listening"


class Wakeups(Protocol):
    """The nudges a service asks for; the process's context delivers them to the workers."""

    def wake_dispatcher(self) -> None: ...

    def wake_scheduler(self) -> None: ...

    def cancel_run(self, run_id: str) -> None: ...


class NoWakeups:
    """For callers that are the workers themselves: they need no nudge."""

    def wake_dispatcher(self) -> None:
        pass

    def wake_scheduler(self) -> None:
        pass

    def cancel_run(self, run_id: str) -> None:
        pass


NO_WAKEUPS = NoWakeups()


def after_commit(session: AsyncSession, callback: Callable[[], None]) -> None:
    """Runs `callback` once the session's current transaction commits; a rollback drops it."""
    sync = session.sync_session
    if not sync.info.get(_LISTENING):
        event.listen(sync, "after_commit", _run_pending)
        event.listen(sync, "after_rollback", _drop_pending)
        sync.info[_LISTENING] = True
    sync.info.setdefault(_PENDING, []).append(callback)


def _run_pending(sync: Session) -> None:
    callbacks: list[Callable[[], None]] = sync.info.pop(_PENDING, [])
    for callback in callbacks:
        try:
            callback()
        except Exception:  # the commit stands: a failed nudge is only a later wake-up
            log.exception("after-commit callback failed")


def _drop_pending(sync: Session, *_args: Any) -> None:
    sync.info.pop(_PENDING, None)
