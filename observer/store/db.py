"""Engine setup, migrations and the few statements the collector needs (Core, not ORM: bulk speed)."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, delete, event, func, or_, select, text, update
from sqlalchemy.exc import DBAPIError, OperationalError

from observer.collector.join import REQUEST_COLUMNS, Request, resolve, to_row
from observer.collector.mapping import SPAN_COLUMNS
from observer.store.models import Request as RequestRow
from observer.store.models import SpanRecord

T = TypeVar("T")
MIGRATIONS = Path(__file__).parent / "migrations"
TABLE = RequestRow.__table__
SPANS = SpanRecord.__table__

# How two writes of one request row merge (``upsert``): the engine half is authoritative for what
# the engine measured, the gateway half for who asked and how it ended. Resolved rows carry both.
ENGINE_FIRST = (
    "input_tokens",
    "output_tokens",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "queue_s",
    "prefill_s",
    "decode_s",
)
GATEWAY_FIRST = (
    "model",
    "user_id",
    "department",
    "session_id",
    "conversation_id",
    "outcome",
    "finish_reason",
    "error_type",
)
OWN_COLUMNS = ("gateway_span_id", "engine_span_id", "engine_request_id", "service")
FLAGS = ("model_verified", "settled", "counted")  # once true, true
COLUMNS = REQUEST_COLUMNS
CARRIED = ("counted_input_tokens", "counted_output_tokens")  # passed on by a replaced row, summed
_REQUEST_WRITE_COLUMNS = (*REQUEST_COLUMNS, "counted", *CARRIED, "updated_at")
_CHUNK = 500  # ids per IN (...) list
_PARTNERS_PER_ID = 2


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
    model_verified: bool
    department: str | None
    outcome: str | None
    input_tokens: int | None
    output_tokens: int | None
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float | None


@dataclass
class TokenDelta:
    """Tokens a counted request gained since it was counted."""

    model: str | None
    model_verified: bool
    department: str | None
    input_tokens: int
    output_tokens: int


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
                if self.dialect == "postgresql":  # replicas starting together migrate one at a time
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key("observer:migrate")}
                    )
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
    # The two bulk upserts of the ingest path run as SQL text through the driver's executemany:
    # SQLAlchemy's per-row parameter processing was most of the collector's cost per span. The SQL
    # is the same on both databases but for the placeholder.
    @functools.cached_property
    def _placeholder(self) -> str:
        return "%s" if self.dialect == "postgresql" else "?"

    def _bulk(self, conn: Any, sql: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
        convert = _to_sqlite if self.dialect == "sqlite" else _identity
        conn.exec_driver_sql(sql, [tuple(convert(r[c]) for c in columns) for r in rows])

    @functools.cached_property
    def _request_upsert_sql(self) -> str:
        def prefer(col: str, incoming: str) -> str:
            return (
                f"CASE WHEN excluded.{incoming} IS NOT NULL THEN COALESCE(excluded.{col}, requests.{col}) "
                f"ELSE COALESCE(requests.{col}, excluded.{col}) END"
            )

        sets = [f"{c} = {prefer(c, 'engine_span_id')}" for c in ENGINE_FIRST]
        sets += [f"{c} = {prefer(c, 'gateway_span_id')}" for c in GATEWAY_FIRST]
        sets += [f"{c} = COALESCE(excluded.{c}, requests.{c})" for c in OWN_COLUMNS]
        sets += [f"{c} = (requests.{c} OR excluded.{c})" for c in FLAGS]
        sets += [f"{c} = COALESCE(requests.{c}, 0) + COALESCE(excluded.{c}, 0)" for c in CARRIED]
        sets += [
            "started_at = CASE WHEN excluded.started_at < requests.started_at "
            "THEN excluded.started_at ELSE requests.started_at END",
            "ended_at = CASE WHEN requests.ended_at IS NULL OR excluded.ended_at > requests.ended_at "
            "THEN excluded.ended_at ELSE requests.ended_at END",
            "updated_at = excluded.updated_at",
        ]
        cols = _REQUEST_WRITE_COLUMNS
        values = ", ".join([self._placeholder] * len(cols))
        return (
            f"INSERT INTO requests ({', '.join(cols)}) VALUES ({values}) "
            f"ON CONFLICT (trace_id, request_key) DO UPDATE SET {', '.join(sets)}"
        )

    @functools.cached_property
    def _span_upsert_sql(self) -> str:
        cols = (*SPAN_COLUMNS, "received_at")
        values = ", ".join([self._placeholder] * len(cols))
        sets = ", ".join(f"{c} = excluded.{c}" for c in cols[2:])
        return (
            f"INSERT INTO spans ({', '.join(cols)}) VALUES ({values}) "
            f"ON CONFLICT (trace_id, span_id) DO UPDATE SET {sets}"
        )

    def _write_requests(self, conn: Any, records: list[dict[str, Any]], now: datetime) -> None:
        rows = [
            {
                **{c: r.get(c) for c in COLUMNS},
                **{f: bool(r.get(f)) for f in FLAGS},
                **{t: r.get(t) for t in CARRIED},
                "updated_at": now,
            }
            for r in records
        ]
        rows.sort(key=lambda r: (r["trace_id"], r["request_key"]))  # one lock order for every writer
        self._bulk(conn, self._request_upsert_sql, _REQUEST_WRITE_COLUMNS, rows)

    def upsert(self, records: list[dict[str, Any]], now: datetime) -> None:
        """Insert or merge request rows directly (imports, tests); spans go through ``ingest_spans``."""
        if records:
            self._transact(lambda conn: self._write_requests(conn, records, now))

    def _transact(self, work: Callable[[Any], T]) -> T:
        """Run ``work`` in one write transaction. A deadlock is retried here (the whole transaction,
        a few times); refused, gone or locked -> StoreUnavailable, so the sender retries (503)."""
        for attempt in range(4):
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except DBAPIError as exc:  # OperationalError included
                if _is_deadlock(exc) and attempt < 3:
                    time.sleep(0.05 * (attempt + 1))
                    continue
                if (
                    isinstance(exc, OperationalError)
                    or exc.connection_invalidated
                    or _is_connection_error(exc)
                ):
                    raise StoreUnavailable(_first_line(exc)) from None
                raise  # a real bug (schema drift): let it be a 500 and be seen
        raise AssertionError("unreachable")

    def ingest_spans(
        self,
        spans: list[dict[str, Any]],
        now: datetime,
        served_by_service: dict[str, str] | None = None,
        max_spans_per_trace: int | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """Store spans and re-resolve every trace they touch into request rows, in one transaction.

        The result depends only on the set of spans stored, never on the order they came in. Rows
        whose key moved (a root arrived late) are replaced, and a replaced row that was already
        counted passes that on, so nothing is counted twice. Every batch re-reads the traces it
        touches, so a trace keeps at most ``max_spans_per_trace`` spans: beyond that a sender (an
        endless agent session, or a hostile one) would make each batch cost more than the last.
        Returns the request rows written and the number of spans refused for that cap."""
        if not spans:
            return [], 0
        spans = sorted({_span_key(s): s for s in spans}.values(), key=_span_key)
        refused = 0
        if max_spans_per_trace is not None:
            spans, refused = self._within_cap(spans, max_spans_per_trace)
            if not spans:
                return [], refused
        rows = [{**s, "received_at": now} for s in spans]
        traces = sorted({s["trace_id"] for s in spans})
        call_ids = sorted({s["call_id"] for s in spans if s.get("call_id")})

        def work(conn: Any) -> list[dict[str, Any]]:
            if self.dialect == "postgresql":
                # Replicas that get two halves of one request at once serialize on its trace (and
                # response id), always in the same order: no lost join, no deadlock.
                for lock in sorted({_lock_key(k) for k in (*traces, *call_ids)}):
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock})
            # The write comes first: SQLite takes its write lock here, not halfway through.
            self._bulk(conn, self._span_upsert_sql, (*SPAN_COLUMNS, "received_at"), rows)
            return self._resolve(conn, spans, now, served_by_service)

        return self._transact(work), refused

    def _within_cap(self, spans: list[dict[str, Any]], cap: int) -> tuple[list[dict[str, Any]], int]:
        """The spans that fit their trace's cap (sizes read apart from the write transaction, so
        SQLite's writer is never a reader first; two batches racing may pass the cap by one batch)."""
        traces = sorted({s["trace_id"] for s in spans})
        sizes: dict[str, int] = {}
        c = SPANS.c
        try:
            with self.engine.connect() as conn:
                for i in range(0, len(traces), _CHUNK):
                    q = (
                        select(c.trace_id, func.count())
                        .where(c.trace_id.in_(traces[i : i + _CHUNK]))
                        .group_by(c.trace_id)
                    )
                    sizes.update({t: n for t, n in conn.execute(q)})
        except DBAPIError as exc:
            raise StoreUnavailable(_first_line(exc)) from None
        kept = []
        for s in spans:
            n = sizes.get(s["trace_id"], 0)
            if n < cap:
                sizes[s["trace_id"]] = n + 1
                kept.append(s)
        return kept, len(spans) - len(kept)

    def _load(
        self, conn: Any, column: Any, values: list[str], before: datetime | None = None
    ) -> list[dict[str, Any]]:
        cols = [SPANS.c[c] for c in SPAN_COLUMNS]
        out: list[dict[str, Any]] = []
        for i in range(0, len(values), _CHUNK):
            q = select(*cols).where(column.in_(values[i : i + _CHUNK]))
            if before is not None:
                q = q.where(SPANS.c.received_at < before)
            out.extend(dict(r._mapping) for r in conn.execute(q))
        return out

    def _resolve(
        self,
        conn: Any,
        batch: list[dict[str, Any]],
        now: datetime,
        served: dict[str, str] | None,
    ) -> list[dict[str, Any]]:
        traces = sorted({s["trace_id"] for s in batch})
        # Every stored span of these traces, the batch's copies last (they win in resolve). Not
        # filtered by our own clock: another replica may have committed its half, stamped later
        # than the ``now`` we read before waiting for its lock, and that half must be joined.
        loaded = [*self._load(conn, SPANS.c.trace_id, traces), *batch]
        # One hop by response id, only for halves still alone in their trace (a gateway that did
        # not forward traceparent): bounded per id, so a hostile sender repeating one id cannot make
        # every batch load every trace that used it.
        alone = _unjoined(loaded)
        if alone:
            c = SPANS.c
            partners: set[str] = set()
            for role, want in (("engine", "call"), ("call", "engine")):
                ids = sorted({s["call_id"] for s in alone if s["role"] == role})
                for i in range(0, len(ids), _CHUNK):
                    q = (
                        select(c.trace_id)
                        .where(c.call_id.in_(ids[i : i + _CHUNK]), c.role == want)
                        .order_by(c.trace_id)
                        .limit(_PARTNERS_PER_ID * len(ids[i : i + _CHUNK]))
                    )
                    partners.update(r[0] for r in conn.execute(q))
            partners -= set(traces)
            if partners:
                extra = sorted(partners)
                if self.dialect == "postgresql":
                    # The partner trace may be taking a span right now (the app's span with the user,
                    # on another replica): wait for it, or both resolve without it and the complete
                    # request stays unsettled until the grace expires. Out of order: a deadlock is
                    # possible and retried.
                    for lock in sorted({_lock_key(k) for k in extra}):
                        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock})
                loaded.extend(self._load(conn, SPANS.c.trace_id, extra))
                traces = sorted(set(traces) | partners)
        requests = resolve(loaded)
        owner: dict[tuple[str, str], Request] = {}
        for req in requests:
            for member in req.members:
                owner[member] = req
        c = TABLE.c
        existing = []
        for i in range(0, len(traces), _CHUNK):
            q = select(c.id, c.trace_id, c.request_key, c.counted, *(c[t] for t in CARRIED)).where(
                c.trace_id.in_(traces[i : i + _CHUNK])
            )
            if self.dialect == "postgresql":
                # Locked: a replica counting one of these rows right now commits first, and we read
                # its counted flag before deciding what a replaced row passes on (no double count).
                q = q.with_for_update()
            existing.extend(conn.execute(q).all())
        stale, counted = [], set()
        carried: dict[tuple[str, str], list[int]] = {}
        for row in existing:
            req = owner.get((row.trace_id, row.request_key))
            if req is None:
                continue  # its spans were pruned after the join window: the row stands as resolved
            if req.key != (row.trace_id, row.request_key):
                stale.append(row.id)  # its spans now belong to a request rooted elsewhere
                if row.counted:
                    counted.add(req.key)
                    sums = carried.setdefault(req.key, [0, 0])
                    sums[0] += row.counted_input_tokens or 0
                    sums[1] += row.counted_output_tokens or 0
        for i in range(0, len(stale), _CHUNK):
            conn.execute(delete(TABLE).where(c.id.in_(stale[i : i + _CHUNK])))
        out = []
        for req in requests:
            row = to_row(req, served)
            row["counted"] = req.key in counted
            if req.key in carried:
                row["counted_input_tokens"], row["counted_output_tokens"] = carried[req.key]
            out.append(row)
        if out:
            self._write_requests(conn, out, now)
        return out

    # --- counting -----------------------------------------------------------------------------------
    def take_countable(self, now: datetime, grace_s: float, limit: int = 20_000) -> list[Counted]:
        """Settled rows, and rows no span has touched for ``grace_s``, marked counted atomically (on
        PostgreSQL with SKIP LOCKED, so replicas never count one row twice)."""
        c = TABLE.c
        cutoff = now - timedelta(seconds=grace_s)
        ready = or_(c.settled == True, c.updated_at < cutoff)  # noqa: E712 (SQL expression)
        uncounted = c.counted == False  # noqa: E712 (SQL expression)
        query = (
            select(
                c.id,
                c.model,
                c.model_verified,
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
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)  # replicas never take the same row

        def work(conn: Any) -> list[Any]:
            rows = conn.execute(query).all()
            ids = [r.id for r in rows]
            for i in range(0, len(ids), 5000):
                done = update(TABLE).where(c.id.in_(ids[i : i + 5000]))
                conn.execute(
                    done.values(
                        counted=True,
                        counted_input_tokens=c.input_tokens,
                        counted_output_tokens=c.output_tokens,
                    )
                )
            return rows

        return [Counted(*r[1:]) for r in self._transact(work)]

    def take_token_deltas(self, now: datetime, window_s: float, limit: int = 20_000) -> list[TokenDelta]:
        """Tokens that reached counted rows after they were counted (a stream's engine half that came
        after the grace), marked counted atomically. Only rows touched within ``window_s`` can gain
        tokens (their spans are gone after it), which keeps this on the updated_at index."""
        c = TABLE.c
        since = now - timedelta(seconds=window_s)
        grew = or_(
            func.coalesce(c.input_tokens, 0) > func.coalesce(c.counted_input_tokens, 0),
            func.coalesce(c.output_tokens, 0) > func.coalesce(c.counted_output_tokens, 0),
        )
        query = (
            select(
                c.id,
                c.model,
                c.model_verified,
                c.department,
                func.coalesce(c.input_tokens, 0) - func.coalesce(c.counted_input_tokens, 0),
                func.coalesce(c.output_tokens, 0) - func.coalesce(c.counted_output_tokens, 0),
            )
            .where(c.updated_at >= since, c.counted == True, grew)  # noqa: E712 (SQL expression)
            .order_by(c.id)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)

        def work(conn: Any) -> list[Any]:
            rows = conn.execute(query).all()
            ids = [r.id for r in rows]
            for i in range(0, len(ids), 5000):
                done = update(TABLE).where(c.id.in_(ids[i : i + 5000]))
                larger = func.greatest if self.dialect == "postgresql" else func.max  # SQLite's max(a, b)
                conn.execute(
                    done.values(
                        counted_input_tokens=larger(
                            func.coalesce(c.input_tokens, 0), func.coalesce(c.counted_input_tokens, 0)
                        ),
                        counted_output_tokens=larger(
                            func.coalesce(c.output_tokens, 0), func.coalesce(c.counted_output_tokens, 0)
                        ),
                    )
                )
            return rows

        # A merge can also leave fewer tokens than were counted (two halves counted apart): only
        # growth is added, counters never go down.
        return [TokenDelta(r[1], r[2], r[3], max(0, r[4]), max(0, r[5])) for r in self._transact(work)]

    def pending(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).where(TABLE.c.counted == False)).scalar_one()  # noqa: E712

    # --- retention and reads ---------------------------------------------------------------------------
    def delete_older_than(self, cutoff: datetime, batch: int = 10_000) -> int:
        """Request rows past the retention period (daily rollups stay)."""
        return self._delete_batches(TABLE, TABLE.c.started_at < cutoff, batch)

    def _delete_batches(self, table: Any, condition: Any, batch: int) -> int:
        """Delete what matches in batches of ``batch`` rows, one short transaction each."""
        deleted = 0
        while True:
            with self.engine.begin() as conn:
                ids = select(table.c.id).where(condition).limit(batch).scalar_subquery()
                n = conn.execute(delete(table).where(table.c.id.in_(ids))).rowcount
            deleted += n
            if n < batch:
                return deleted

    def delete_spans_before(self, cutoff: datetime, batch: int = 10_000) -> int:
        """Spans past the join window: their requests are resolved, only late halves would need them."""
        return self._delete_batches(SPANS, SPANS.c.received_at < cutoff, batch)

    def top_values(self, column: str, n: int, verified_only: bool = False, days: int = 30) -> list[str]:
        """The ``n`` most requested values of a column over recent rows (label folding at start)."""
        if n <= 0:
            return []
        c = TABLE.c
        col = c[column]
        since = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=days)
        q = select(col).where(col.isnot(None), c.started_at >= since)
        if verified_only:
            q = q.where(c.model_verified == True)  # noqa: E712 (SQL expression)
        q = q.group_by(col).order_by(func.count().desc(), col).limit(n)
        try:
            with self.engine.connect() as conn:
                return [r[0] for r in conn.execute(q)]
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(_first_line(exc)) from None

    def served_models_by_service(self, days: int = 7) -> dict[str, str]:
        """The model each engine service was last seen serving, from requests that said so."""
        c = TABLE.c
        since = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=days)
        q = (
            select(c.service, c.model)
            .where(c.service.isnot(None), c.model.isnot(None), c.model_verified == True)  # noqa: E712
            .where(c.started_at >= since)
            .order_by(c.started_at)
        )
        try:
            with self.engine.connect() as conn:
                return {r.service: r.model for r in conn.execute(q)}
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(_first_line(exc)) from None

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


def _identity(value: Any) -> Any:
    return value


def _to_sqlite(value: Any) -> Any:
    """What SQLAlchemy's SQLite DateTime stores (and reads back): 'YYYY-MM-DD HH:MM:SS.ffffff'."""
    if isinstance(value, datetime):
        return value.isoformat(" ", "microseconds")
    return value


def _unjoined(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Engine spans with no call span in their trace, and call spans with no engine span: the halves
    that may be waiting in another trace, found by their OpenAI response id."""
    roles: dict[str, set[str]] = {}
    for s in spans:
        roles.setdefault(s["trace_id"], set()).add(s["role"])
    return [
        s
        for s in spans
        if s.get("call_id")
        and (
            (s["role"] == "engine" and "call" not in roles[s["trace_id"]])
            or (s["role"] == "call" and "engine" not in roles[s["trace_id"]])
        )
    ]


def _span_key(s: dict[str, Any]) -> tuple[str, str]:
    return (s["trace_id"], s["span_id"])


def _lock_key(value: str) -> int:
    """A stable signed 64-bit key for pg_advisory_xact_lock (Python's hash() differs per process)."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big", signed=True)


def _first_line(exc: DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__


def _is_deadlock(exc: DBAPIError) -> bool:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code in ("40P01", "40001") or "deadlock detected" in str(exc.orig).lower()


def _is_connection_error(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return any(
        s in text for s in ("connection", "server closed", "could not connect", "terminating", "refused")
    )
