"""requests: one privacy-safe row per LLM request

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("request_key", sa.String(16), nullable=False),
        sa.Column("gateway_span_id", sa.String(16)),
        sa.Column("engine_span_id", sa.String(16)),
        sa.Column("engine_request_id", sa.String(128)),
        sa.Column("model", sa.String(256)),
        sa.Column("user_id", sa.String(128)),
        sa.Column("department", sa.String(128)),
        sa.Column("session_id", sa.String(128)),
        sa.Column("conversation_id", sa.String(128)),
        sa.Column("input_tokens", sa.Integer()),
        sa.Column("output_tokens", sa.Integer()),
        sa.Column("ttft_s", sa.Float()),
        sa.Column("tpot_s", sa.Float()),
        sa.Column("queue_s", sa.Float()),
        sa.Column("prefill_s", sa.Float()),
        sa.Column("decode_s", sa.Float()),
        sa.Column("e2e_s", sa.Float()),
        sa.Column("outcome", sa.String(16)),
        sa.Column("finish_reason", sa.String(32)),
        sa.Column("error_type", sa.String(128)),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime()),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("counted", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.PrimaryKeyConstraint("id", name="pk_requests"),
        sa.UniqueConstraint("trace_id", "request_key", name="uq_requests_trace_id_request_key"),
    )
    op.create_index("ix_requests_started_at", "requests", ["started_at"])
    op.create_index(
        "ix_requests_uncounted",
        "requests",
        ["updated_at"],
        sqlite_where=sa.text("counted = 0"),
        postgresql_where=sa.text("counted = false"),
    )


def downgrade() -> None:
    op.drop_table("requests")
