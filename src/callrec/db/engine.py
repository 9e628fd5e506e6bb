"""Engines, sessions and migrations for SQLite (embedded) and PostgreSQL (scale-out)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from callrec.config import ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"
# PostgreSQL advisory lock id held while migrating, so nodes starting together migrate once
_MIGRATION_LOCK = 0x63616C6C


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'callrec.db').resolve()}"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys, PostgreSQL psycopg 3."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"CALLREC_DATABASE_URL is not a database URL: {url!r}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername.startswith("sqlite"):
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if not parsed.drivername.startswith("postgresql"):
        raise ConfigError(f"CALLREC_DATABASE_URL: {parsed.drivername} is not supported (sqlite or postgresql)")
    return create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=10)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # several processes (recorder, API, workers) share the file: WAL lets readers and a writer overlap
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed at the end of the block, or rolled back on an error; then what
    ``after_commit`` asked for runs, once the session and its connection are given back."""
    with factory() as session, session.begin():
        yield session
    for then in session.info.pop(_AFTER_COMMIT, ()):
        then()


_AFTER_COMMIT = "callrec.after_commit"


def after_commit(session: Session, then: Callable[[], None]) -> None:
    """Run ``then`` after ``session``'s ``transaction`` block has committed (not at all if it fails)."""
    session.info.setdefault(_AFTER_COMMIT, []).append(then)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent; safe when several nodes start at once)."""
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin at every start is noise
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise ConfigError(f"cannot migrate the database: {str(exc).splitlines()[0]}") from exc
