"""Work that must wait until a transaction txmq owns has committed: counting what the
transaction did. Counted inside it, a rollback and the retry that follows would count it
twice, and a crash before the commit would count what never happened.

The owner of the transaction (a consumer worker, the saga operator loop) calls
:func:`committed` after its commit and :func:`discarded` when it rolls back; code running
inside the transaction calls :func:`after_commit`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session

log = logging.getLogger("txmq.sql")

_HOOKS = "txmq.after_commit"


def after_commit(session: Session, callback: Callable[[], object]) -> None:
    """Call ``callback`` once the transaction ``session`` is in has committed; forget it
    if the transaction rolls back."""
    session.info.setdefault(_HOOKS, []).append(callback)


def committed(session: Session) -> None:
    """Run the callbacks the committed transaction left, in order. A callback that raises
    is logged: the transaction is committed, and the other callbacks still run."""
    for callback in session.info.pop(_HOOKS, ()):
        try:
            callback()
        except Exception:
            log.exception("a callback after the commit failed")


def discarded(session: Session) -> None:
    """Forget the callbacks of a transaction that did not commit."""
    session.info.pop(_HOOKS, None)
