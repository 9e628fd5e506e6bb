"""Migration 0005 (call_aliases) backfills the Call-IDs of calls recorded before it, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from callrec.db.engine import MIGRATIONS, make_engine, migrate
from tests.service.backends import postgres_database


def _check(url: str) -> None:
    engine = make_engine(url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0004")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO domains (id, name, settings, created_at) VALUES (1, 'd', '{}', :t)"),
                         {"t": "2026-12-06 10:00:00"})  # fmt: skip
            for cid, info in (("c1", {"call_ids": ["x@a", "y@b", "x@a"]}), ("c2", {"call_ids": []}), ("c3", {})):
                conn.execute(
                    text(
                        "INSERT INTO calls (id, domain_id, sip_call_id, interaction_id, direction, source, started_at,"
                        " closed_cleanly, interrupted, end_reason, recorder, tape_ref, tape_local, tape_key,"
                        " tape_storage, info, tags, retention_forever, legal_hold, created_at) VALUES (:id, 1, '', '',"
                        " '', 'pcap', :t, false, false, '', '', :id, '', '', '{}', :info, '[]', false, false, :t)"
                    ),
                    {"id": cid, "t": "2026-12-06 10:00:00", "info": json.dumps(info)},
                )
        migrate(engine)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT call_id, value, kind FROM call_aliases ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [("c1", "x@a", "dialog"), ("c1", "y@b", "dialog")]
    finally:
        engine.dispose()


def test_backfill_on_sqlite(tmp_path: Path) -> None:
    _check(f"sqlite:///{tmp_path / 'callrec.db'}")


@pytest.mark.slow
def test_backfill_on_postgresql() -> None:
    with postgres_database() as url:
        _check(url)
