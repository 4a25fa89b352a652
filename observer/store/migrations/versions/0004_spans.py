"""spans: received spans kept for the trace-level join; requests learn model_verified, service, settled

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spans",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("span_id", sa.String(16), nullable=False),
        sa.Column("parent_span_id", sa.String(16)),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("call_id", sa.String(128)),
        sa.Column("model", sa.String(256)),
        sa.Column("response_model", sa.String(256)),
        sa.Column("service", sa.String(128)),
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
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_spans"),
        sa.UniqueConstraint("trace_id", "span_id", name="uq_spans_trace_id_span_id"),
    )
    op.create_index("ix_spans_call_id", "spans", ["call_id"])
    op.create_index("ix_spans_received_at", "spans", ["received_at"])
    with op.batch_alter_table("requests") as batch:
        batch.add_column(
            sa.Column("model_verified", sa.Boolean(), server_default=sa.text("false"), nullable=False)
        )
        batch.add_column(sa.Column("service", sa.String(128)))
        batch.add_column(sa.Column("settled", sa.Boolean(), server_default=sa.text("false"), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("settled")
        batch.drop_column("service")
        batch.drop_column("model_verified")
    op.drop_table("spans")
