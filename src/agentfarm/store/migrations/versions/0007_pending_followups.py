"""A pull-request comment that asks the pipeline for a follow-up is kept with its delivery until
the follow-up was decided: a control plane killed after answering the forge decides it after
its restart (the forge never sends a delivery it had an answer to again).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # NULL once decided (or for a delivery that asked for nothing); else the trigger's JSON.
    op.add_column("forge_deliveries", sa.Column("followup", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("forge_deliveries") as batch:
        batch.drop_column("followup")
