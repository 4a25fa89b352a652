"""Alertmanager webhook payloads (version "4") -> alert_events rows, idempotently.

Alertmanager re-sends a group's notification every repeat_interval and after every change; the
log keeps one row per (alert fingerprint, episode start, status) and counts the notifications.
Unknown fields are ignored (newer Alertmanagers add some without bumping the version).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from observer.store.models import AlertEvent

T = AlertEvent.__table__


class WebhookError(ValueError):
    pass


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value or value.startswith("0001-01-01"):
        return None  # Go's zero time: "no end yet"
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise WebhookError(f"bad timestamp {value!r}") from None
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts


def parse(payload: Any) -> list[dict[str, Any]]:
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise WebhookError("expected an Alertmanager webhook payload with an 'alerts' list")
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = []
    for alert in payload["alerts"]:
        if not isinstance(alert, dict) or not isinstance(alert.get("labels"), dict):
            raise WebhookError("every alert needs a 'labels' object")
        labels = {str(k): str(v) for k, v in alert["labels"].items()}
        status = alert.get("status") or payload.get("status")
        if status not in ("firing", "resolved"):
            raise WebhookError(f"alert status must be firing or resolved, got {status!r}")
        starts = _time(alert.get("startsAt")) or now
        fingerprint = (
            alert.get("fingerprint")
            or hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
        )
        annotations = alert.get("annotations") if isinstance(alert.get("annotations"), dict) else {}
        rows.append(
            {
                "fingerprint": str(fingerprint)[:64],
                "status": status,
                "starts_at": starts,
                "ends_at": _time(alert.get("endsAt")),
                "alertname": labels.get("alertname", "unknown")[:128],
                "severity": labels.get("severity"),
                "labels": json.dumps(labels, sort_keys=True),
                "annotations": json.dumps({str(k): str(v) for k, v in annotations.items()}, sort_keys=True),
                "receiver": str(payload.get("receiver") or "")[:128] or None,
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
