"""Schema migrations: Alembic, run programmatically by ``Store.open``.

The scripts live in ``migrations/`` inside the package, so no ``alembic.ini`` is needed at run
time. SQLAlchemy is used here only, at migration time; runtime queries use ``sqlite3``. The whole
upgrade runs in one transaction (SQLite has transactional DDL once pysqlite's own transaction
handling is turned off), so a failed migration leaves the database as it was.

To add a migration: copy ``versions/0001_initial.py`` to ``versions/000N_<what>.py``, set
``revision``/``down_revision``, and update the column lists in ``mapping.py`` to match.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentfarm.domain import errors

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _engine(db_path: Path) -> Engine:
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    engine = sa.create_engine(f"sqlite:///{db_path}", poolclass=NullPool)

    # pysqlite's legacy transaction handling would commit before DDL; take control of it.
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def alembic_config(script_location: Path | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    # ConfigParser interpolation: a literal % must be doubled.
    location = str(script_location or MIGRATIONS_DIR).replace("%", "%%")
    cfg.set_main_option("script_location", location)
    return cfg


def migrate(db_path: Path, *, script_location: Path | None = None) -> None:
    """Upgrade the database at ``db_path`` (created if missing) to the head revision."""
    from alembic import command
    from alembic.util import CommandError

    cfg = alembic_config(script_location)
    engine = _engine(db_path)
    try:
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            try:
                command.upgrade(cfg, "head")
            except CommandError as exc:
                raise errors.ConfigurationError(
                    f"cannot migrate {db_path}: {exc}. If a newer agentfarm wrote this "
                    "database, upgrade agentfarm"
                ) from exc
    finally:
        engine.dispose()


def current_revision(db_path: Path) -> str | None:
    """The revision the database at ``db_path`` is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    engine = _engine(db_path)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision(script_location: Path | None = None) -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(script_location)).get_current_head()
    if head is None:
        raise errors.ConfigurationError("the store's migration scripts are missing")
    return head
