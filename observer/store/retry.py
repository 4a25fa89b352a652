"""Retry a write transaction that lost a deadlock or a serialization race (PostgreSQL 40P01/40001).

Writers sort the rows of multi-row upserts so they take row locks in one order; a deadlock can
still come from a writer outside our control, and it is a transient conflict, not an outage.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

T = TypeVar("T")
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure


def is_retryable(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) in RETRYABLE_SQLSTATES or getattr(orig, "pgcode", None) in (
        RETRYABLE_SQLSTATES
    )


def with_deadlock_retry(fn: Callable[[], T], attempts: int = 4, base_delay_s: float = 0.02) -> T:
    """``fn()`` (one whole transaction), re-run after a deadlock/serialization failure."""
    for attempt in range(attempts):
        try:
            return fn()
        except DBAPIError as exc:
            if attempt == attempts - 1 or not is_retryable(exc):
                raise
            time.sleep(base_delay_s * (2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")
