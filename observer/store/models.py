"""Tables. One row per LLM request: no prompt, no completion, ever.

The collector keeps each span it was sent (``spans``: ids, parent, role and the few validated
values it carries) for ``collector.join_window_s``, and re-resolves a trace into requests
(``observer.collector.join``) whenever a span of it arrives. A request row is keyed by
(trace_id, request_key): the span id of its root, the outermost GenAI call, or the engine span
when no call was traced. Re-sent spans resolve to the same rows, so retries never double count.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Request(Base):
    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    trace_id: Mapped[str] = mapped_column(String(32))
    request_key: Mapped[str] = mapped_column(String(16))
    gateway_span_id: Mapped[str | None] = mapped_column(String(16))
    engine_span_id: Mapped[str | None] = mapped_column(String(16))
    engine_request_id: Mapped[str | None] = mapped_column(String(128))
    model: Mapped[str | None] = mapped_column(String(256))
    # True when an engine said so (or answered with it), not only the model name a caller typed.
    model_verified: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    service: Mapped[str | None] = mapped_column(String(128))  # the engine's service.name
    user_id: Mapped[str | None] = mapped_column(String(128))
    department: Mapped[str | None] = mapped_column(String(128))
    session_id: Mapped[str | None] = mapped_column(String(128))
    conversation_id: Mapped[str | None] = mapped_column(String(128))
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    ttft_s: Mapped[float | None] = mapped_column(Float)
    tpot_s: Mapped[float | None] = mapped_column(Float)
    queue_s: Mapped[float | None] = mapped_column(Float)
    prefill_s: Mapped[float | None] = mapped_column(Float)
    decode_s: Mapped[float | None] = mapped_column(Float)
    e2e_s: Mapped[float | None] = mapped_column(Float)
    outcome: Mapped[str | None] = mapped_column(String(16))  # success | error | abort
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    error_type: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=False))  # UTC
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=False))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=False))
    counted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # The tokens already added to the usage counters: a half that brings tokens after the row was
    # counted adds only the difference (and a row replaced by another passes these on).
    counted_input_tokens: Mapped[int | None] = mapped_column(Integer)
    counted_output_tokens: Mapped[int | None] = mapped_column(Integer)
    # Nothing that could still arrive would change it: countable at once, not after the grace.
    settled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))

    __table_args__ = (
        UniqueConstraint("trace_id", "request_key"),
        Index("ix_requests_started_at", "started_at"),
        Index("ix_requests_updated_at", "updated_at"),
        # The finalizer looks for uncounted rows every second: keep that lookup tiny.
        Index(
            "ix_requests_uncounted",
            "updated_at",
            sqlite_where=text("counted = 0"),
            postgresql_where=text("counted = false"),
        ),
    )


class SpanRecord(Base):
    """A received span, kept for the join window: where it sits in its trace and what it says."""

    __tablename__ = "spans"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    trace_id: Mapped[str] = mapped_column(String(32))
    span_id: Mapped[str] = mapped_column(String(16))
    parent_span_id: Mapped[str | None] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(8))  # engine | call | link
    call_id: Mapped[str | None] = mapped_column(String(128))  # OpenAI response id / engine request id
    model: Mapped[str | None] = mapped_column(String(256))
    response_model: Mapped[str | None] = mapped_column(String(256))
    service: Mapped[str | None] = mapped_column(String(128))
    user_id: Mapped[str | None] = mapped_column(String(128))
    department: Mapped[str | None] = mapped_column(String(128))
    session_id: Mapped[str | None] = mapped_column(String(128))
    conversation_id: Mapped[str | None] = mapped_column(String(128))
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    ttft_s: Mapped[float | None] = mapped_column(Float)
    tpot_s: Mapped[float | None] = mapped_column(Float)
    queue_s: Mapped[float | None] = mapped_column(Float)
    prefill_s: Mapped[float | None] = mapped_column(Float)
    decode_s: Mapped[float | None] = mapped_column(Float)
    e2e_s: Mapped[float | None] = mapped_column(Float)
    outcome: Mapped[str | None] = mapped_column(String(16))
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    error_type: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=False))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=False))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=False))

    __table_args__ = (
        UniqueConstraint("trace_id", "span_id"),
        Index("ix_spans_call_id", "call_id"),
        Index("ix_spans_received_at", "received_at"),
    )


# --- rollups (analytics) --------------------------------------------------------------------------
# Analytics read these, never the raw rows, and they outlive the raw rows' retention.


class User(Base):
    """First activity of each user: new users per day and the cohort a user belongs to."""

    __tablename__ = "users"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    first_day: Mapped[date] = mapped_column(Date)
    first_month: Mapped[str] = mapped_column(String(7))  # YYYY-MM, portable across databases
    department: Mapped[str | None] = mapped_column(String(128))


class UserDay(Base):
    __tablename__ = "user_days"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    department: Mapped[str | None] = mapped_column(String(128))
    requests: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_user_days_user_id", "user_id"),)


class UserMonth(Base):
    __tablename__ = "user_months"

    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)


class DepartmentDay(Base):
    __tablename__ = "department_days"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    department: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    active_users: Mapped[int] = mapped_column(Integer)


class Feedback(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    request_ref: Mapped[str] = mapped_column(String(128))  # trace id or engine request id
    rating: Mapped[int] = mapped_column(Integer)  # +1 thumbs up, -1 thumbs down
    reason: Mapped[str | None] = mapped_column(String(32))
    comment: Mapped[str | None] = mapped_column(String(2000))  # only when explicitly enabled
    model: Mapped[str | None] = mapped_column(String(256))
    department: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime())

    __table_args__ = (Index("ix_feedback_created_at", "created_at"),)


class RollupState(Base):
    __tablename__ = "rollup_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[datetime] = mapped_column(DateTime())


class AlertEvent(Base):
    """The incident log: one row per alert episode and status, from Alertmanager's webhook."""

    __tablename__ = "alert_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # firing | resolved
    starts_at: Mapped[datetime] = mapped_column(DateTime())
    ends_at: Mapped[datetime | None] = mapped_column(DateTime())
    alertname: Mapped[str] = mapped_column(String(128))
    severity: Mapped[str | None] = mapped_column(String(32))
    labels: Mapped[str] = mapped_column(Text)  # JSON
    annotations: Mapped[str] = mapped_column(Text)  # JSON
    receiver: Mapped[str | None] = mapped_column(String(128))
    received_at: Mapped[datetime] = mapped_column(DateTime())
    notifications: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (
        UniqueConstraint("fingerprint", "starts_at", "status"),
        Index("ix_alert_events_received_at", "received_at"),
    )
