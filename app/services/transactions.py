"""After-commit work: wake-ups that must follow the commit of what they announce, never precede it.

A request's session commits once, in its dependency (app.deps.get_session); services only
flush. A service that queues a run or changes a schedule registers the wake-up here, and it
runs once the session's transaction has committed, so a woken worker always finds the row. A
rollback drops what was registered: nothing is announced that did not happen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

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
    """Runs `callback` once the session's outermost transaction commits. A rollback drops it,
    and so does the rollback of a savepoint it was registered inside."""
    sync = session.sync_session
    if not sync.info.get(_LISTENING):
        event.listen(sync, "after_commit", _run_pending)
        event.listen(sync, "after_soft_rollback", _drop_pending)
        sync.info[_LISTENING] = True
    pending: list[tuple[SessionTransaction | None, Callable[[], None]]]
    pending = sync.info.setdefault(_PENDING, [])
    pending.append((sync.get_nested_transaction(), callback))


def _run_pending(sync: Session) -> None:
    if sync.get_nested_transaction() is not None:
        return  # a savepoint was released: the outer transaction has not committed yet
    for _savepoint, callback in sync.info.pop(_PENDING, []):
        try:
            callback()
        except Exception:  # the commit stands: a failed nudge is only a later wake-up
            log.exception("after-commit callback failed")


def _drop_pending(sync: Session, previous: SessionTransaction) -> None:
    if previous.parent is None:  # the outermost transaction
        sync.info.pop(_PENDING, None)
        return
    if not previous.nested:
        return  # a flush's subtransaction: the savepoint or transaction around it says
    pending = sync.info.get(_PENDING, [])
    sync.info[_PENDING] = [
        (savepoint, callback) for savepoint, callback in pending if not _inside(savepoint, previous)
    ]


def _inside(transaction: SessionTransaction | None, savepoint: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is savepoint:
            return True
        transaction = transaction.parent
    return False
