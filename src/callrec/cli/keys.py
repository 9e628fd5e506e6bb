"""``callrec keys``: API keys straight in the service's database, on the database host.

No API key is needed: whoever can read the database (``CALLREC_DATABASE_URL``, or the SQLite file under
``--data``) is the operator. This is how a lost admin key is recovered (``callrec keys create --admin``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from callrec.errors import CallrecError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session, sessionmaker


def _fail(message: str) -> None:
    print(f"callrec: error: {message}", file=sys.stderr)
    raise typer.Exit(2)


keys_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="API keys, straight in the service's database (CALLREC_DATABASE_URL, or --data's SQLite): list, "
    "create (shown once), revoke. A lost admin key is recovered with `callrec keys create --admin`.",
)
DataOption = Annotated[Path | None, typer.Option("--data", metavar="DIR", help="Data folder (its SQLite database)")]


def _key_sessions(data: Path | None) -> tuple[Engine, sessionmaker[Session]]:
    """The service's database, migrated to the newest schema: (engine, session factory)."""
    from callrec.config import service_config_from_env
    from callrec.db.engine import make_engine, migrate, session_factory

    cfg = service_config_from_env()
    if data is not None:
        cfg.data_dir = data
    if not cfg.database_url and not (cfg.data_dir / "callrec.db").exists():
        _fail(f"no database at {cfg.data_dir / 'callrec.db'}: give --data or CALLREC_DATABASE_URL")
    engine = make_engine(cfg.db_url)
    migrate(engine)
    return engine, session_factory(engine)


@keys_app.command("list")
def keys_list_command(
    data: DataOption = None,
    domain: Annotated[str | None, typer.Option("--domain", metavar="DOMAIN", help="Only this domain's keys")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Only admin keys")] = False,
    revoked: Annotated[bool, typer.Option("--revoked", help="Revoked keys too")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per key (JSON Lines)")] = False,
) -> None:
    """List keys (never their secrets): id, domain, scopes, origin, name, created, last used, revoked."""
    from sqlalchemy import select

    from callrec.db import queries
    from callrec.db.schema import ApiKey, Domain

    try:
        engine, sessions = _key_sessions(data)
        with sessions() as s:
            names = {d.id: d.name for d in s.scalars(select(Domain))}
            query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
            if admin:
                query = query.where(ApiKey.domain_id.is_(None))
            if domain is not None:
                found = queries.domain_by_name(s, domain)
                if found is None:
                    _fail(f"no domain named {domain!r}")
                    return
                query = query.where(ApiKey.domain_id == found.id)
            if not revoked:
                query = query.where(ApiKey.revoked_at.is_(None))
            for key in s.scalars(query):
                scopes = sorted(queries.key_scopes(key))
                owner = None if key.domain_id is None else names.get(key.domain_id)
                row: dict[str, object] = {"id": key.id, "domain": owner,
                       "scopes": scopes, "origin": key.origin, "name": key.name,
                       "created_at": key.created_at.isoformat(),
                       "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
                       "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None}  # fmt: skip
                if as_json:
                    print(json.dumps(row))
                else:
                    state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "live"
                    print(f"{key.id}  {row['domain'] or '(admin)'}  {','.join(scopes)}  "
                          f"{key.origin or '-'}  {state}  {key.name}")  # fmt: skip
        engine.dispose()
    except CallrecError as exc:
        _fail(str(exc))


@keys_app.command("create")
def keys_create_command(
    data: DataOption = None,
    admin: Annotated[bool, typer.Option("--admin", help="An admin key")] = False,
    domain: Annotated[str | None, typer.Option("--domain", metavar="DOMAIN", help="A key of this domain")] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", metavar="SCOPE", help="settings, read or upload (repeatable; default all three)"),
    ] = None,
    name: Annotated[str, typer.Option("--name", metavar="NAME", help="What the key is for")] = "",
) -> None:
    """Make a key and print its secret, this once (only its hash is stored)."""
    from datetime import UTC, datetime

    from callrec.db import queries
    from callrec.db.engine import transaction

    if admin == (domain is not None):
        _fail("give either --admin or --domain NAME")
    if admin and scope:
        _fail("an admin key has every scope; --scope is for a domain's key")
    unknown = [s for s in scope or [] if s not in queries.DOMAIN_SCOPES]
    if unknown:
        _fail(f"unknown scope {unknown[0]!r}: a domain's key may have settings, read or upload")
    try:
        engine, sessions = _key_sessions(data)
        with transaction(sessions) as s:
            domain_id = None
            if domain is not None:
                found = queries.domain_by_name(s, domain)
                if found is None:
                    _fail(f"no domain named {domain!r}")
                    return
                domain_id = found.id
            key, secret = queries.create_key(s, domain_id, datetime.now(UTC), name=name[:200],
                                             scopes=tuple(scope) if scope else None, origin="cli")  # fmt: skip
            s.flush()
            key_id, scopes = key.id, ",".join(sorted(queries.key_scopes(key)))
        engine.dispose()
    except CallrecError as exc:
        _fail(str(exc))
        return
    print(f"callrec keys: {key_id} ({scopes}); the key, shown once, keep it:", file=sys.stderr)
    print(secret)


@keys_app.command("revoke")
def keys_revoke_command(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `callrec keys list`)")],
    data: DataOption = None,
) -> None:
    """Revoke a key at once (admin or domain); its UI sessions end with it."""
    from datetime import UTC, datetime

    from callrec.db.engine import transaction
    from callrec.db.schema import ApiKey

    try:
        engine, sessions = _key_sessions(data)
        with transaction(sessions) as s:
            key = s.get(ApiKey, key_id) if len(key_id) <= 32 else None
            if key is None:
                _fail(f"there is no key {key_id[:40]!r}")
                return
            if key.revoked_at is None:
                key.revoked_at = datetime.now(UTC)
        engine.dispose()
    except CallrecError as exc:
        _fail(str(exc))
    print(f"callrec keys: {key_id} revoked", file=sys.stderr)
