"""Host availability: active, cordoned (no new instances) or draining (instances move away).

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("availability", sa.String(16), nullable=False, server_default="active"))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("availability")
