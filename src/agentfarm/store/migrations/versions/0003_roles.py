"""Roles and token ownership: an admin flag on users; API tokens belong to a user (deleted
with them) and may expire.

On upgrade the oldest user becomes admin (before, every user could reach the admin API through
a token of their own), and each token goes to the user named in its ``created_by``; a token
with no such user (made by a forward-auth user without an account) is revoked.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_TOKENS = """
CREATE TABLE api_tokens_new (
    id TEXT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_by TEXT,
    created_at TEXT NOT NULL,
    last_used_at TEXT,
    expires_at TEXT,
    CONSTRAINT uq_api_tokens_hash UNIQUE (token_hash),
    CONSTRAINT fk_api_tokens_user_id FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
)
"""

_OLD_TOKENS = """
CREATE TABLE api_tokens_old (
    id TEXT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    created_by TEXT,
    created_at TEXT NOT NULL,
    last_used_at TEXT,
    CONSTRAINT uq_api_tokens_hash UNIQUE (token_hash)
)
"""


def upgrade() -> None:
    op.add_column(
        "users", sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.execute(
        "UPDATE users SET is_admin = 1 "
        "WHERE id = (SELECT id FROM users ORDER BY created_at, id LIMIT 1)"
    )
    # SQLite cannot add a NOT NULL foreign key to a table: build the new one and copy.
    op.execute(_TOKENS)
    op.execute(
        "INSERT INTO api_tokens_new (id, name, token_hash, user_id, created_by, created_at, "
        "last_used_at) SELECT t.id, t.name, t.token_hash, u.id, t.created_by, t.created_at, "
        "t.last_used_at FROM api_tokens t JOIN users u ON u.name = t.created_by"
    )
    op.execute("DROP TABLE api_tokens")
    op.execute("ALTER TABLE api_tokens_new RENAME TO api_tokens")
    op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_api_tokens_user_id", table_name="api_tokens")
    op.execute(_OLD_TOKENS)
    op.execute(
        "INSERT INTO api_tokens_old (id, name, token_hash, created_by, created_at, last_used_at) "
        "SELECT id, name, token_hash, created_by, created_at, last_used_at FROM api_tokens"
    )
    op.execute("DROP TABLE api_tokens")
    op.execute("ALTER TABLE api_tokens_old RENAME TO api_tokens")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("is_admin")
