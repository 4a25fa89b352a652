"""Jobs that run once per cluster, not once per ``observer serve`` replica.

Every replica schedules the same jobs (analytics refresh, retention); the one that takes a
PostgreSQL session advisory lock runs the job, the others skip that tick. The lock is the
database's, so it needs no coordinator, and it dies with the connection: a replica killed while
holding it frees it at once. SQLite serves one process only (one writer; see the README), so there
the lock is always granted and APScheduler's ``max_instances=1`` keeps a job from overlapping itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from observer.store.db import _lock_key

log = logging.getLogger("observer.cluster")


@contextmanager
def cluster_lock(engine: Engine, name: str) -> Iterator[bool]:
    """Yields True when this process holds the cluster-wide lock ``name`` (run the job), False when
    another replica holds it (skip). Never waits: a replica that loses simply tries next tick."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    key = _lock_key(f"observer:job:{name}")
    with engine.connect() as conn:
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        conn.commit()  # a session lock: no transaction is held open while the job runs
        try:
            yield got
        finally:
            if got:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
                except DBAPIError as exc:  # connection lost: the server already freed the lock
                    log.warning("could not release cluster lock %s: %s", name, exc)
                    conn.invalidate()
