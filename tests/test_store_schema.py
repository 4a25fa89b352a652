"""The Alembic migrations build exactly the schema the models describe (no drift), on both databases."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from observer.store.db import Store
from observer.store.models import Base


def test_migrations_match_models(db_url):
    store = Store(db_url)
    store.migrate()
    store.migrate()  # idempotent
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    store.engine.dispose()
    relevant = [
        d
        for d in diff
        if not (isinstance(d, tuple) and d[0] == "remove_table" and d[1].name == "alembic_version")
    ]
    assert relevant == [], relevant
