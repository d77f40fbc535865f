"""Usage-limit parking and continued runs: when a parked run resumes by itself
(``parked_until``), the warning of a usage limit that is close (``warning``), and what a run
keeps across its agent processes (``continuation``, JSON).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("parked_until", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("warning", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("continuation", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("continuation")
        batch.drop_column("warning")
        batch.drop_column("parked_until")
