"""Engine setup, migrations and the few statements the collector needs (Core, not ORM: bulk speed)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, and_, case, create_engine, delete, event, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, OperationalError

from observer.collector.mapping import COLUMNS, ENGINE_FIRST, GATEWAY_FIRST, OWN_COLUMNS
from observer.store.models import Request

MIGRATIONS = Path(__file__).parent / "migrations"
TABLE = Request.__table__


class StoreUnavailable(RuntimeError):
    """The database could not be reached; the caller answers 503 and the sender retries."""


def make_engine(url: str, sqlite_busy_timeout_s: float = 5.0) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": sqlite_busy_timeout_s, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cur.execute("PRAGMA synchronous=NORMAL")  # durable across app crashes, fast commits
            cur.close()

        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args={"connect_timeout": 3}
    )


@dataclass
class Counted:
    """A request ready to be counted in the usage metrics."""

    model: str | None
    department: str | None
    outcome: str | None
    input_tokens: int | None
    output_tokens: int | None
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float | None


class Store:
    def __init__(self, url: str, sqlite_busy_timeout_s: float = 5.0) -> None:
        self.url = url
        self.engine = make_engine(url, sqlite_busy_timeout_s)
        self.dialect = self.engine.dialect.name

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(str(exc.orig)) from None

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except (OperationalError, DBAPIError):
            return False

    # --- ingest --------------------------------------------------------------------------------------
    def _upsert_statement(self):
        ins = pg_insert(TABLE) if self.dialect == "postgresql" else sqlite_insert(TABLE)
        ex, cur = ins.excluded, TABLE.c
        incoming_engine = ex.engine_span_id.isnot(None)
        incoming_gateway = ex.gateway_span_id.isnot(None)
        set_: dict[str, Any] = {}
        for col in ENGINE_FIRST:
            set_[col] = case(
                (incoming_engine, func.coalesce(ex[col], cur[col])), else_=func.coalesce(cur[col], ex[col])
            )
        for col in GATEWAY_FIRST:
            set_[col] = case(
                (incoming_gateway, func.coalesce(ex[col], cur[col])), else_=func.coalesce(cur[col], ex[col])
            )
        for col in OWN_COLUMNS:
            set_[col] = func.coalesce(ex[col], cur[col])
        set_["started_at"] = case((ex.started_at < cur.started_at, ex.started_at), else_=cur.started_at)
        set_["ended_at"] = case(
            (cur.ended_at.is_(None), ex.ended_at),
            (ex.ended_at > cur.ended_at, ex.ended_at),
            else_=cur.ended_at,
        )
        set_["updated_at"] = ex.updated_at
        return ins.on_conflict_do_update(index_elements=["trace_id", "request_key"], set_=set_)

    def upsert(self, records: list[dict[str, Any]], now: datetime) -> None:
        """Insert or merge request halves (already merged within the batch by the caller)."""
        if not records:
            return
        rows = [{**{c: r.get(c) for c in COLUMNS}, "updated_at": now, "counted": False} for r in records]
        try:
            with self.engine.begin() as conn:
                conn.execute(self._upsert_statement(), rows)
        except OperationalError as exc:  # refused, server gone, SQLite locked: the sender should retry
            raise StoreUnavailable(str(exc.orig).strip().splitlines()[0]) from None
        except DBAPIError as exc:
            if exc.connection_invalidated or _is_connection_error(exc):
                raise StoreUnavailable(str(exc.orig).strip().splitlines()[0]) from None
            raise  # a real bug (bad data, schema drift): let it be a 500 and be seen

    # --- counting -----------------------------------------------------------------------------------
    def take_countable(self, now: datetime, grace_s: float, limit: int = 20_000) -> list[Counted]:
        """Rows whose halves are both here (or that waited ``grace_s``), marked counted atomically."""
        c = TABLE.c
        cutoff = now - timedelta(seconds=grace_s)
        ready = or_(
            and_(c.gateway_span_id.isnot(None), c.engine_span_id.isnot(None)),
            c.request_key == c.engine_span_id,  # an engine span with no parent: no gateway will come
            c.updated_at < cutoff,
        )
        uncounted = c.counted == False  # noqa: E712 (SQL expression)
        query = (
            select(
                c.id,
                c.model,
                c.department,
                c.outcome,
                c.input_tokens,
                c.output_tokens,
                c.ttft_s,
                c.tpot_s,
                c.e2e_s,
            )
            .where(uncounted, ready)
            .order_by(c.id)
            .limit(limit)
        )
        try:
            with self.engine.begin() as conn:
                rows = conn.execute(query).all()
                if rows:
                    ids = [r.id for r in rows]
                    for i in range(0, len(ids), 5000):
                        conn.execute(update(TABLE).where(c.id.in_(ids[i : i + 5000])).values(counted=True))
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(str(exc.orig).strip().splitlines()[0]) from None
        return [Counted(*r[1:]) for r in rows]

    def pending(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).where(TABLE.c.counted == False)).scalar_one()  # noqa: E712

    # --- retention and reads ---------------------------------------------------------------------------
    def delete_older_than(self, cutoff: datetime, batch: int = 10_000) -> int:
        deleted = 0
        c = TABLE.c
        while True:
            with self.engine.begin() as conn:
                ids = select(c.id).where(c.started_at < cutoff).limit(batch).scalar_subquery()
                n = conn.execute(delete(TABLE).where(c.id.in_(ids))).rowcount
            deleted += n
            if n < batch:
                return deleted

    def recent(self, limit: int = 100, model: str | None = None, department: str | None = None) -> list[dict]:
        c = TABLE.c
        q = select(*(c[name] for name in COLUMNS if name not in ("request_key",))).order_by(
            c.started_at.desc()
        )
        if model:
            q = q.where(c.model == model)
        if department:
            q = q.where(c.department == department)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q.limit(limit))]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(TABLE)).scalar_one()


def _is_connection_error(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return any(
        s in text for s in ("connection", "server closed", "could not connect", "terminating", "refused")
    )
