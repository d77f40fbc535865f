"""The AFK pipeline: forges, the issues they show, attempts at them, webhook deliveries seen,
farm-wide flags (the kill switch), orchestration dispatches by idempotency key, and scopes on
API tokens.

Each model is stored whole as JSON in ``data``; the columns beside it are copies of the fields
that are looked up or constrained. One active attempt per issue is a partial unique index, so
two deliveries racing for the same issue cannot both start one.

Existing API tokens keep what they could do: every scope (still bounded by their user's role).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

ALL_SCOPES = "read,operate,admin"


def upgrade() -> None:
    op.create_table(
        "forges",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False, unique=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Text(), nullable=False),
    )
    op.create_table(
        "forge_deliveries",
        sa.Column("forge_id", sa.Text(), nullable=False),
        sa.Column("delivery_id", sa.Text(), nullable=False),
        sa.Column("received_at", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("forge_id", "delivery_id"),
    )
    op.create_index("ix_forge_deliveries_received_at", "forge_deliveries", ["received_at"])
    op.create_table(
        "tracked_issues",
        sa.Column("forge_id", sa.Text(), nullable=False),
        sa.Column("repo", sa.Text(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("seen_at", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("forge_id", "repo", "number"),
    )
    op.create_table(
        "attempts",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("forge_id", sa.Text(), nullable=False),
        sa.Column("repo", sa.Text(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("run_id", sa.Text(), nullable=True),
        sa.Column("branch", sa.Text(), nullable=False, server_default=""),
        sa.Column("pr_number", sa.Integer(), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Text(), nullable=False),
    )
    op.create_index(
        "uq_attempts_one_active_per_issue",
        "attempts",
        ["forge_id", "repo", "number"],
        unique=True,
        sqlite_where=sa.text("active = 1"),
    )
    op.create_index("ix_attempts_issue", "attempts", ["forge_id", "repo", "number", "created_at"])
    op.create_index("ix_attempts_run_id", "attempts", ["run_id"])
    op.create_index("ix_attempts_pull", "attempts", ["forge_id", "repo", "pr_number"])
    op.create_index("ix_attempts_active", "attempts", ["active"])
    op.create_table(
        "flags",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Text(), nullable=False),
    )
    op.create_table(
        "dispatches",
        sa.Column("caller", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("digest", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("caller", "key"),
    )
    op.add_column(
        "api_tokens",
        sa.Column("scopes", sa.Text(), nullable=False, server_default=ALL_SCOPES),
    )


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("scopes")
    op.drop_table("dispatches")
    op.drop_table("flags")
    op.drop_index("ix_attempts_active", table_name="attempts")
    op.drop_index("ix_attempts_pull", table_name="attempts")
    op.drop_index("ix_attempts_run_id", table_name="attempts")
    op.drop_index("ix_attempts_issue", table_name="attempts")
    op.drop_index("uq_attempts_one_active_per_issue", table_name="attempts")
    op.drop_table("attempts")
    op.drop_table("tracked_issues")
    op.drop_index("ix_forge_deliveries_received_at", table_name="forge_deliveries")
    op.drop_table("forge_deliveries")
    op.drop_table("forges")
