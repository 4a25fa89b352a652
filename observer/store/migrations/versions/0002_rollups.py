"""rollups for analytics: users, user_days, user_months, department_days, feedback

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Incremental refresh finds the days whose raw rows changed since the last run.
    op.create_index("ix_requests_updated_at", "requests", ["updated_at"])
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(128), primary_key=True),
        sa.Column("first_day", sa.Date(), nullable=False),
        sa.Column("first_month", sa.String(7), nullable=False),
        sa.Column("department", sa.String(128)),
        sa.PrimaryKeyConstraint("user_id", name="pk_users"),
    )
    op.create_table(
        "user_days",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("department", sa.String(128)),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "user_id", name="pk_user_days"),
    )
    op.create_index("ix_user_days_user_id", "user_days", ["user_id"])
    op.create_table(
        "user_months",
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("month", "user_id", name="pk_user_months"),
    )
    op.create_table(
        "department_days",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("department", sa.String(128), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("active_users", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", "department", "model", name="pk_department_days"),
    )
    op.create_table(
        "feedback",
        sa.Column("id", _ID, nullable=False),
        sa.Column("request_ref", sa.String(128), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(32)),
        sa.Column("comment", sa.String(2000)),
        sa.Column("model", sa.String(256)),
        sa.Column("department", sa.String(128)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
    )
    op.create_index("ix_feedback_created_at", "feedback", ["created_at"])
    op.create_table(
        "rollup_state",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_rollup_state"),
    )


def downgrade() -> None:
    for table in ("rollup_state", "feedback", "department_days", "user_months", "user_days", "users"):
        op.drop_table(table)
    op.drop_index("ix_requests_updated_at", "requests")
