"""Queries shared by the pipeline and the API: domains and their settings, calls from tapes, keys."""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ScalarSelect, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from callrec.config import ConfigError
from callrec.db.schema import ApiKey, Call, CallAlias, Domain, Party, Recording, RetentionRuleRow, StreamRow
from callrec.models import CallInfo

DEFAULT_DOMAIN = "default"
KEY_PREFIX = "cr_"


def new_id() -> str:
    return secrets.token_hex(16)


def ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


# --- domains and settings -------------------------------------------------------------------------


def domain_by_name(session: Session, name: str) -> Domain | None:
    return session.scalar(select(Domain).where(Domain.name == name))


def ensure_domain(session: Session, name: str, now: datetime, settings: dict[str, Any]) -> Domain:
    """The domain called ``name``, created with ``settings`` (JSON) if it does not exist yet."""
    found = domain_by_name(session, name)
    if found is not None:
        return found
    try:
        with session.begin_nested():
            domain = Domain(name=name, settings=settings, created_at=now)
            session.add(domain)
    except IntegrityError:  # another node made it at the same moment
        found = domain_by_name(session, name)
        assert found is not None
        return found
    return domain


def settings_json(session: Session, domain: Domain) -> dict[str, Any]:
    """The domain's settings as stored (JSON); retention rules come from their own table, in order."""
    data = dict(domain.settings)
    rules = session.scalars(
        select(RetentionRuleRow).where(RetentionRuleRow.domain_id == domain.id).order_by(RetentionRuleRow.position)
    ).all()
    retention = dict(data.get("retention") or {})
    retention["rules"] = [
        {k: v for k, v in {"days": r.days, "direction": r.direction, "number": r.number, "tag": r.tag}.items()
         if k == "days" or v is not None}
        for r in rules
    ]  # fmt: skip
    data["retention"] = retention
    return data


def store_settings_json(session: Session, domain: Domain, data: dict[str, Any]) -> None:
    """Store the domain's settings (JSON): the retention rules in their own table, the rest on the row."""
    rules = data["retention"].pop("rules", [])
    data["retention"]["rules"] = []
    domain.settings = data
    session.execute(delete(RetentionRuleRow).where(RetentionRuleRow.domain_id == domain.id))
    session.flush()
    for position, rule in enumerate(rules):
        session.add(
            RetentionRuleRow(
                domain_id=domain.id,
                position=position,
                days=rule.get("days"),
                direction=rule.get("direction"),
                number=rule.get("number"),
                tag=rule.get("tag"),
            )
        )


# --- API keys ---------------------------------------------------------------------------------------


def hash_key(key: str) -> str:
    # keys carry 256 random bits, so a plain SHA-256 is as strong as a slow hash and costs nothing per request
    return hashlib.sha256(key.encode()).hexdigest()


# what a key may do (README "Tenancy"): admin keys (no domain) everything; a domain's key what its scopes say
ADMIN, SETTINGS, READ, UPLOAD = "admin", "settings", "read", "upload"
DOMAIN_SCOPES = (SETTINGS, READ, UPLOAD)
SCOPES = (ADMIN, *DOMAIN_SCOPES)
# CALLREC_ADMIN_KEY must be at least this long, with at least this many different characters
ADMIN_KEY_MIN_LEN = 24
ADMIN_KEY_MIN_DISTINCT = 10
# where a key came from: the env one is revoked when CALLREC_ADMIN_KEY changes
FROM_ENV, FROM_FIRST_START = "env", "first-start"


def create_key(
    session: Session, domain_id: int | None, now: datetime, name: str = "", *,
    scopes: tuple[str, ...] | None = None, origin: str = "api",
) -> tuple[ApiKey, str]:  # fmt: skip
    """A new key; the secret is returned once and only its hash is stored. Admin keys (no domain) have the
    admin scope; a domain's key by default every domain scope."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    if domain_id is None:
        chosen: tuple[str, ...] = (ADMIN,)
    else:
        chosen = tuple(s for s in DOMAIN_SCOPES if s in (DOMAIN_SCOPES if scopes is None else scopes))
    row = ApiKey(id=secrets.token_hex(8), domain_id=domain_id, name=name, key_hash=hash_key(secret), created_at=now,
                 scopes=" ".join(chosen), origin=origin)  # fmt: skip
    session.add(row)
    return row, secret


def key_scopes(key: ApiKey) -> frozenset[str]:
    return frozenset((key.scopes or "").split())


def key_by_secret(session: Session, secret: str) -> ApiKey | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
    return None if row is None or row.revoked_at is not None else row


def check_admin_key(value: str) -> None:
    """Refuse a CALLREC_ADMIN_KEY anyone could guess (one line, at start)."""
    if not value:
        return
    if len(value) > 200 or not value.isascii() or not value.isprintable() or any(c.isspace() for c in value):
        raise ConfigError("CALLREC_ADMIN_KEY must be at most 200 printable ASCII characters without spaces")
    if len(value) < ADMIN_KEY_MIN_LEN or len(set(value)) < ADMIN_KEY_MIN_DISTINCT:
        raise ConfigError(
            f"CALLREC_ADMIN_KEY is too weak: use at least {ADMIN_KEY_MIN_LEN} random characters "
            f"(at least {ADMIN_KEY_MIN_DISTINCT} different ones), e.g. from `openssl rand -hex 32`"
        )


def ensure_admin_key(session: Session, configured: str, now: datetime) -> str | None:
    """Make sure an admin key exists; returns a new one to be printed once, or None.

    ``configured`` (CALLREC_ADMIN_KEY) is a bootstrap: its key is stored like any other, marked as coming
    from the environment, and the key an earlier value set is revoked. A weak value, a value naming a
    domain's key or a key revoked since is refused (``ConfigError``). Without a value, a new admin key is
    made only when no live admin key exists (the first start, or every admin key revoked)."""
    check_admin_key(configured)
    if configured:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(configured)))
        if row is not None and row.domain_id is not None:
            raise ConfigError("CALLREC_ADMIN_KEY is a domain's key; choose a new value")
        if row is not None and row.revoked_at is not None:
            raise ConfigError("CALLREC_ADMIN_KEY names an admin key that was revoked; choose a new value")
        if row is None:
            try:
                with session.begin_nested():
                    row = ApiKey(id=secrets.token_hex(8), domain_id=None, name="CALLREC_ADMIN_KEY",
                                 key_hash=hash_key(configured), created_at=now, scopes=ADMIN,
                                 origin=FROM_ENV)  # fmt: skip
                    session.add(row)
            except IntegrityError:  # another node starting with the same value stored it at the same moment
                row = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(configured))).one()
        row.origin = FROM_ENV
        earlier = select(ApiKey).where(
            ApiKey.origin == FROM_ENV, ApiKey.id != row.id, ApiKey.revoked_at.is_(None), ApiKey.domain_id.is_(None)
        )
        for old in session.scalars(earlier):
            old.revoked_at = now
        return None
    live = select(ApiKey.id).where(ApiKey.domain_id.is_(None), ApiKey.revoked_at.is_(None)).limit(1)
    if session.scalar(live) is not None:
        return None
    _, secret = create_key(session, None, now, name="first admin key", origin=FROM_FIRST_START)
    return secret


# --- calls ------------------------------------------------------------------------------------------


def call_by_tape(session: Session, tape_ref: str) -> Call | None:
    return session.scalar(select(Call).where(Call.tape_ref == tape_ref))


def direction_of(info: CallInfo, extra: dict[str, Any]) -> str:
    given = str(extra.get("direction", ""))
    return given if given in ("inbound", "outbound", "internal") else ""


def clean(text: str, limit: int) -> str:
    """Text as the database takes it: PostgreSQL refuses NUL characters, and columns have a length."""
    return text.replace("\x00", "")[:limit]


def aliases_of(info: CallInfo) -> list[tuple[str, str]]:
    """(value, kind) of every identifier a call is searched by: its dialogs' Call-IDs, then the originals."""
    found: dict[str, str] = {}
    for kind, values in (("dialog", info.call_ids), ("original", info.original_call_ids)):
        for value in values:
            found.setdefault(clean(value, 300), kind)
    return [(value, kind) for value, kind in found.items() if value]


def call_from_info(
    session: Session, info: CallInfo, extra: dict[str, Any], domain: Domain, tape_ref: str, now: datetime
) -> Call:
    """The call row for a tape: found by ``tape_ref`` (ingesting twice is harmless) or made from its info."""
    call = call_by_tape(session, tape_ref)
    if call is None:
        call = Call(id=new_id(), domain_id=domain.id, tape_ref=tape_ref, created_at=now, started_at=now)
        session.add(call)
    call.domain_id = domain.id
    call.sip_call_id = clean(info.call_id, 300)
    call.interaction_id = clean(info.interaction_id, 300)
    call.direction = direction_of(info, extra)
    call.source = info.source
    call.started_at = ts(info.started_at) or call.started_at
    call.ended_at = ts(info.ended_at)
    call.closed_cleanly = info.closed_cleanly
    call.interrupted = info.interrupted
    call.end_reason = info.end_reason
    call.recorder = clean(info.recorder, 200)
    call.info = json.loads(json.dumps(info.to_json()).replace("\\u0000", ""))
    tags = extra.get("tags")
    if isinstance(tags, list) and not call.tags:
        call.tags = [str(t)[:100] for t in tags][:50]
    aliases = aliases_of(info)
    if [(a.value, a.kind) for a in call.aliases] != aliases:
        call.aliases = [CallAlias(value=value, kind=kind) for value, kind in aliases]
    call.parties = [
        Party(label=clean(p.id, 16), role=clean(p.role, 16), number=clean(p.number, 100),
              name=clean(p.name, 200), uri=clean(p.uri, 500))
        for p in info.parties
    ]
    if not call.streams:
        call.streams = [
            StreamRow(
                party=s.party,
                label=clean(s.label, 100),
                local=f"{s.local_addr}:{s.local_port}",
                remote=f"{s.remote_addr}:{s.remote_port}" if s.remote_addr else "",
                codecs=sorted({f"{c.encoding}/{c.clock_rate}" for c in s.rtpmap.values()}),
            )
            for s in info.streams
        ]
    return call


# --- recordings -------------------------------------------------------------------------------------
# A call's current recording is the one made last (a re-mix replaces the first), ties broken by id: the
# same order in Python over a call's loaded recordings (newest) and in SQL (current_state).


def newest(call: Call) -> Recording | None:
    """The call's current recording (None before it has one)."""
    return max(call.recordings, key=lambda r: (r.created_at, r.id), default=None)


def current_state() -> ScalarSelect[str]:
    """SQL for the state of the current recording of the ``Call`` row of the enclosing query (NULL when none)."""
    return (
        select(Recording.state).where(Recording.call_id == Call.id)
        .order_by(Recording.created_at.desc(), Recording.id.desc()).limit(1).scalar_subquery()
    )  # fmt: skip
