"""The SQL store: SQLAlchemy 2 models, Alembic migrations, SQLite (WAL) or PostgreSQL."""
