"""Shared fixtures: a database URL for each backend the store supports."""

from __future__ import annotations

import uuid

import pytest

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _pg_admin():
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, connect_timeout=5, autocommit=True)


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database on the local server (trust auth), dropped afterwards."""
    name = f"observer_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = _pg_admin()
    except Exception as exc:  # CI has the server; say so loudly instead of skipping
        raise RuntimeError(f"PostgreSQL on 127.0.0.1:5432 is required for these tests: {exc}") from None
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'observer.db'}"
    return request.getfixturevalue("pg_url")
