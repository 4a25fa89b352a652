"""The store under several writers (replicas or threads): regressions for a lost join and a double count."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from sqlalchemy import create_engine, text

from observer.collector.mapping import SPAN_COLUMNS, MappingRules, span_to_record
from observer.store.db import Store, _lock_key

RULES = MappingRules(department_attributes=("department",))
TRACE = bytes(range(16))
APP, CALL, ENGINE = b"\x01" * 8, b"\x02" * 8, b"\x03" * 8


def _kv(key: str, value) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _span(span_id: bytes, parent: bytes | None, name: str, kind: int, attrs: dict) -> dict:
    t0 = time.time_ns() - 5_000_000_000
    span = Span(
        trace_id=TRACE,
        span_id=span_id,
        parent_span_id=parent or b"",
        name=name,
        kind=kind,
        start_time_unix_nano=t0,
        end_time_unix_nano=t0 + 2_000_000_000,
        attributes=[_kv(k, v) for k, v in attrs.items()],
    )
    record, dropped = span_to_record(span, {}, RULES)
    assert dropped == []
    return record


def app_and_call() -> list[dict]:
    app = _span(APP, None, "POST /ask", Span.SPAN_KIND_SERVER, {"user.id": "alice", "department": "legal"})
    call = _span(
        CALL,
        APP,
        "chat acme/chat-8b",
        Span.SPAN_KIND_CLIENT,
        {"gen_ai.operation.name": "chat", "gen_ai.request.model": "acme/chat-8b"},
    )
    return [app, call]


def engine(parent: bytes | None = CALL) -> dict:
    attrs = {
        "gen_ai.request.id": "cmpl-1",
        "gen_ai.usage.prompt_tokens": 321,
        "gen_ai.usage.completion_tokens": 42,
        "gen_ai.latency.e2e": 2.0,
    }
    return _span(ENGINE, parent, "llm_request", Span.SPAN_KIND_SERVER, attrs)


def _rows(store: Store) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text("SELECT * FROM requests"))]


def test_a_replica_whose_clock_read_earlier_still_sees_the_other_half(db_url):
    """Replica A stamps its batch at t1 and commits; replica B read its clock at t0 < t1 (it decoded
    first, then waited for A's lock on the trace). B must still join A's half: the spans it reads back
    may not be filtered by B's own clock (they were, and B replaced A's row with an engine-only one)."""
    store = Store(db_url)
    store.migrate()
    t1 = datetime.now(UTC).replace(tzinfo=None)
    t0 = t1 - timedelta(milliseconds=3)
    store.ingest_spans(app_and_call(), t1)
    store.ingest_spans([engine()], t0)
    rows = _rows(store)
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["user_id"], row["department"], row["model"]) == ("alice", "legal", "acme/chat-8b")
    assert (row["input_tokens"], row["output_tokens"], row["settled"]) == (321, 42, True)
    store.engine.dispose()


def test_a_row_counted_while_its_key_moves_is_not_counted_again(pg_url):
    """Replica B counts the engine-only row (grace expired) while replica A, holding the trace's lock,
    learns the engine's call arrived and replaces that row by the joined one. A must carry B's counted
    flag over; it read the old row before B committed, so it has to lock the rows it replaces."""
    store = Store(pg_url)
    store.migrate()
    now = datetime.now(UTC).replace(tzinfo=None)
    store.ingest_spans([engine()], now)  # the engine half alone: its own request row, not settled
    [(row_id, counted)] = [(r["id"], r["counted"]) for r in _rows(store)]
    assert counted is False

    # Replica B's take_countable, held open at the moment between its UPDATE and its COMMIT.
    other = create_engine(pg_url)
    conn = other.connect()
    tx = conn.begin()
    taken = conn.execute(
        text("SELECT id FROM requests WHERE counted = false ORDER BY id FOR UPDATE SKIP LOCKED")
    ).all()
    assert [r.id for r in taken] == [row_id]
    conn.execute(text("UPDATE requests SET counted = true WHERE id = :id"), {"id": row_id})

    done = threading.Event()
    errors: list[BaseException] = []

    def replica_a() -> None:
        try:
            store.ingest_spans(app_and_call(), now + timedelta(seconds=1))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=replica_a)
    thread.start()
    assert not done.wait(0.5), "replica A should wait for the row B is counting"
    tx.commit()  # B has counted the row (its counter went up)
    thread.join(10)
    conn.close()
    other.dispose()
    assert not errors, errors
    rows = _rows(store)
    assert len(rows) == 1 and rows[0]["request_key"] == CALL.hex(), rows
    assert rows[0]["counted"] is True, "the joined row would be counted a second time"
    assert store.take_countable(now + timedelta(hours=1), grace_s=0) == []
    store.engine.dispose()


def test_replicas_starting_together_all_migrate(pg_url):
    """Three replicas started at once on an empty database: one creates the schema, the others wait
    for it and find it done (they failed with a duplicate alembic_version type before)."""
    code = f"from observer.store.db import Store; Store({pg_url!r}).migrate()"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(3)
    ]
    results = [(p.wait(60), p.stderr.read()) for p in procs]
    assert all(rc == 0 for rc, _ in results), [err[-500:] for _, err in results]
    store = Store(pg_url)
    assert store.count() == 0
    store.engine.dispose()


def test_a_partner_trace_taking_a_span_meanwhile_is_waited_for(pg_url):
    """The engine half is in a trace of its own (the gateway did not forward traceparent) and is joined
    by response id to a call already stored. Replica C is storing the app's span with the user in the
    call's trace while replica B stores the engine span: B must wait for C's trace, or neither sees
    the complete request and it stays unsettled (uncounted) until the grace expires."""
    store = Store(pg_url)
    store.migrate()
    now = datetime.now(UTC).replace(tzinfo=None)
    app, call = app_and_call()
    call["call_id"] = "cmpl-1"  # the call's OpenAI response id, which the engine span reports
    store.ingest_spans([call], now)
    own_trace = engine(parent=None)
    own_trace["trace_id"] = "ab" * 16

    conn = store.engine.connect()
    tx = conn.begin()  # replica C, halfway through storing the app span
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(app["trace_id"])})
    store._bulk(conn, store._span_upsert_sql, (*SPAN_COLUMNS, "received_at"), [{**app, "received_at": now}])
    store._resolve(conn, [app], now, None)

    done = threading.Event()
    thread = threading.Thread(target=lambda: (store.ingest_spans([own_trace], now), done.set()))
    thread.start()
    waited = not done.wait(0.5)
    tx.commit()
    conn.close()
    thread.join(10)
    assert waited, "replica B did not wait for the partner trace"
    rows = _rows(store)
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["user_id"], row["input_tokens"], row["settled"]) == ("alice", 321, True)
    store.engine.dispose()
