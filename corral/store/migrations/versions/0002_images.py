"""Image intelligence: a service's resolved image, and registry credentials.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("resolution", sa.JSON, nullable=True))
    op.create_table(
        "registry_credentials",
        sa.Column("registry", sa.String(255), primary_key=True),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("password", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("registry_credentials")
    with op.batch_alter_table("services") as batch:
        batch.drop_column("resolution")
