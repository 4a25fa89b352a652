"""Shared fixtures: a database URL for each backend the store supports."""

from __future__ import annotations

import pytest
from support import temporary_database


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database on the local server (trust auth), dropped afterwards."""
    with temporary_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'observer.db'}"
    return request.getfixturevalue("pg_url")
