"""requests.counted_{input,output}_tokens: tokens already in the usage counters, so late ones add the rest

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("counted_input_tokens", sa.Integer()))
        batch.add_column(sa.Column("counted_output_tokens", sa.Integer()))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("counted_output_tokens")
        batch.drop_column("counted_input_tokens")
