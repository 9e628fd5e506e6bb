"""The migrations make exactly the schema the code describes, on SQLite and PostgreSQL, and run twice safely."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from callrec.db.engine import make_engine, migrate
from callrec.db.schema import Base
from tests.service.backends import postgres_database


def _check(url: str) -> None:
    engine = make_engine(url)
    try:
        migrate(engine)
        migrate(engine)  # a second node starting: nothing to do, no error
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            tables = set(inspect(conn).get_table_names())
        assert diff == [], diff
        assert {"domains", "api_keys", "calls", "parties", "streams", "recordings", "jobs", "retention_rules",
                "audit", "alembic_version"} <= tables  # fmt: skip
    finally:
        engine.dispose()


def test_sqlite_schema_matches_the_models(tmp_path: Path) -> None:
    _check(f"sqlite:///{tmp_path / 'callrec.db'}")


@pytest.mark.slow
def test_postgresql_schema_matches_the_models() -> None:
    with postgres_database() as url:
        _check(url)


def test_a_bad_database_url_is_a_one_line_error() -> None:
    from callrec.config import ConfigError

    with pytest.raises(ConfigError, match="not a database URL"):
        make_engine("not a url at all")
    with pytest.raises(ConfigError, match="mysql is not supported"):
        make_engine("mysql://root@127.0.0.1/test")
