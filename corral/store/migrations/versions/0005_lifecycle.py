"""Stacks, spec versions for rolling updates, instance health, and the event log.

A service may belong to a stack; its spec has a version that every instance
records, so a rolling update can tell old instances from new ones; the spec
before the last update is kept for a rollback; ``update_state`` is the rolling
update's progress.  ``events`` is an append-only log (``corral events``).

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("stack", sa.String(63), nullable=True))
        batch.add_column(sa.Column("version", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("previous_spec", sa.JSON, nullable=True))
        batch.add_column(sa.Column("update_state", sa.JSON, nullable=True))
        batch.create_index("ix_services_stack", ["stack"])
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("spec_version", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("health", sa.String(16), nullable=False, server_default=""))
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("attrs", sa.JSON, nullable=False),
    )
    op.create_index("ix_events_ts", "events", ["ts"])


def downgrade() -> None:
    op.drop_index("ix_events_ts", "events")
    op.drop_table("events")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("health")
        batch.drop_column("spec_version")
    with op.batch_alter_table("services") as batch:
        batch.drop_index("ix_services_stack")
        for column in ("update_state", "previous_spec", "version", "stack"):
            batch.drop_column(column)
