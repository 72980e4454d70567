"""The cluster revision: one counter bumped by every change the scheduler reads.

A plan is applied only if this counter still has the value it was computed on
(optimistic concurrency, as Nomad's plan applier), so two server replicas on
one PostgreSQL store never over-commit a host or place a slot twice.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "cluster_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("revision", sa.Integer, nullable=False),
    )
    op.bulk_insert(table, [{"id": 1, "revision": 0}])


def downgrade() -> None:
    op.drop_table("cluster_state")
