"""alert_events: the incident log fed by Alertmanager's webhook

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("starts_at", sa.DateTime(), nullable=False),
        sa.Column("ends_at", sa.DateTime()),
        sa.Column("alertname", sa.String(128), nullable=False),
        sa.Column("severity", sa.String(32)),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("annotations", sa.Text(), nullable=False),
        sa.Column("receiver", sa.String(128)),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("notifications", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alert_events"),
        sa.UniqueConstraint(
            "fingerprint", "starts_at", "status", name="uq_alert_events_fingerprint_starts_at_status"
        ),
    )
    op.create_index("ix_alert_events_received_at", "alert_events", ["received_at"])


def downgrade() -> None:
    op.drop_table("alert_events")
