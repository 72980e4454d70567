"""The overlay: a subnet per host, an address per instance, and each host's overlay report.

``hosts.subnet`` is the host's slice of the cluster CIDR (unique; freed with the
row when the host is removed); ``hosts.next_address`` is where the next instance
address is looked for, so an address just released by a stopping container is
not handed out again at once; ``hosts.overlay`` is what the agent reported of its
WireGuard interface and peers (key, endpoint, peer health).
``instances.address`` is the instance's address on its host's subnet ("" when the
host has no overlay).

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("subnet", sa.String(43), nullable=True))
        batch.add_column(sa.Column("next_address", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("overlay", sa.JSON, nullable=True))
        batch.create_index("ix_hosts_subnet", ["subnet"], unique=True)
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("address", sa.String(45), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("address")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_index("ix_hosts_subnet")
        for column in ("overlay", "next_address", "subnet"):
            batch.drop_column(column)
