"""Alertmanager webhook payloads (version "4") -> alert_events rows, idempotently.

Alertmanager re-sends a group's notification every repeat_interval and after every change; the
log keeps one row per (alert fingerprint, episode start, status) and counts the notifications.
Unknown fields are ignored (newer Alertmanagers add some without bumping the version).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from observer.store.models import AlertEvent
from observer.store.retry import with_deadlock_retry

T = AlertEvent.__table__


class WebhookError(ValueError):
    pass


def _time(value: Any, latest: datetime) -> datetime | None:
    if not isinstance(value, str) or not value or value.startswith("0001-01-01"):
        return None  # Go's zero time: "no end yet"
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
        ts = ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts
    except (ValueError, OverflowError):
        raise WebhookError("bad timestamp (RFC 3339 expected)") from None
    if ts > latest:
        raise WebhookError("timestamp in the future beyond the allowed clock skew")
    return ts


def fingerprint(labels: dict[str, str]) -> str:
    """Alertmanager's alert fingerprint: FNV-1a 64 over the sorted labels (prometheus/common model)."""
    h = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode():
                h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
            h = ((h ^ 0xFF) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


_FNV_OFFSET, _FNV_PRIME = 14695981039346656037, 1099511628211


def _text(value: Any, what: str) -> str:
    text = str(value)
    if "\x00" in text:
        raise WebhookError(f"{what} contains a NUL character")
    return text


def parse(payload: Any, max_clock_skew_s: float = 300.0) -> list[dict[str, Any]]:
    """Rows for the incident log. Refuses what Alertmanager would never send: a fingerprint that is
    not its labels' fingerprint (a forged "resolved" naming another incident), a "resolved" without
    an end, an end before the start, timestamps in the future."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise WebhookError("expected an Alertmanager webhook payload with an 'alerts' list")
    now = datetime.now(UTC).replace(tzinfo=None)
    latest = now + timedelta(seconds=max_clock_skew_s)
    rows = []
    for alert in payload["alerts"]:
        if not isinstance(alert, dict) or not isinstance(alert.get("labels"), dict):
            raise WebhookError("every alert needs a 'labels' object")
        labels = {_text(k, "a label name"): _text(v, "a label value") for k, v in alert["labels"].items()}
        status = alert.get("status") or payload.get("status")
        if status not in ("firing", "resolved"):
            raise WebhookError("alert status must be firing or resolved")
        starts = _time(alert.get("startsAt"), latest) or now
        ends = _time(alert.get("endsAt"), latest)
        if status == "resolved" and (ends is None or ends < starts):
            raise WebhookError("a resolved alert needs an endsAt at or after its startsAt")
        computed = fingerprint(labels)
        if alert.get("fingerprint") not in (None, "", computed):
            raise WebhookError("fingerprint does not match the alert's labels")
        annotations = alert.get("annotations") if isinstance(alert.get("annotations"), dict) else {}
        rows.append(
            {
                "fingerprint": computed,
                "status": status,
                "starts_at": starts,
                "ends_at": ends,
                "alertname": labels.get("alertname", "unknown")[:128],
                "severity": (labels.get("severity") or "")[:32] or None,
                "labels": json.dumps(labels, sort_keys=True),
                "annotations": json.dumps(
                    {_text(k, "an annotation"): _text(v, "an annotation") for k, v in annotations.items()},
                    sort_keys=True,
                ),
                "receiver": _text(payload.get("receiver") or "", "the receiver")[:128] or None,
                "received_at": now,
                "notifications": 1,
            }
        )
    return rows


def store(engine: Engine, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    ins = (pg_insert if engine.dialect.name == "postgresql" else sqlite_insert)(T)
    stmt = ins.on_conflict_do_update(
        index_elements=["fingerprint", "starts_at", "status"],
        set_={
            "received_at": ins.excluded.received_at,
            "ends_at": ins.excluded.ends_at,
            "annotations": ins.excluded.annotations,
            "notifications": T.c.notifications + 1,
        },
    )
    # One row per key (an upsert cannot touch a row twice), in one lock order for every writer
    # (sorted keys), so concurrent webhooks cannot deadlock each other.
    unique = {(r["fingerprint"], r["starts_at"], r["status"]): r for r in rows}
    ordered = [unique[key] for key in sorted(unique)]
    with_deadlock_retry(lambda: _execute(engine, stmt, ordered))


def _execute(engine: Engine, stmt: Any, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(stmt, rows)


def history(
    engine: Engine, limit: int = 100, status: str | None = None, alertname: str | None = None
) -> list[dict]:
    q = select(T).order_by(T.c.received_at.desc(), T.c.id.desc()).limit(limit)
    if status:
        q = q.where(T.c.status == status)
    if alertname:
        q = q.where(T.c.alertname == alertname)
    out = []
    with engine.connect() as conn:
        for r in conn.execute(q):
            row = dict(r._mapping)
            row["labels"] = json.loads(row["labels"])
            row["annotations"] = json.loads(row["annotations"])
            for key in ("starts_at", "ends_at", "received_at"):
                if row[key] is not None:
                    row[key] = row[key].isoformat() + "Z"
            out.append(row)
    return out
