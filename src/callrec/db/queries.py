"""Queries shared by the pipeline and the API: domains and their settings, calls from tapes, keys."""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from callrec.db.schema import ApiKey, Call, Domain, Party, RetentionRuleRow, StreamRow
from callrec.models import CallInfo
from callrec.service.domain_settings import DomainSettings

DEFAULT_DOMAIN = "default"
KEY_PREFIX = "cr_"


def new_id() -> str:
    return secrets.token_hex(16)


def ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


# --- domains and settings -------------------------------------------------------------------------


def domain_by_name(session: Session, name: str) -> Domain | None:
    return session.scalar(select(Domain).where(Domain.name == name))


def ensure_domain(session: Session, name: str, now: datetime) -> Domain:
    """The domain called ``name``, created with default settings if it does not exist yet."""
    found = domain_by_name(session, name)
    if found is not None:
        return found
    try:
        with session.begin_nested():
            domain = Domain(name=name, settings=DomainSettings().model_dump(mode="json"), created_at=now)
            session.add(domain)
    except IntegrityError:  # another node made it at the same moment
        found = domain_by_name(session, name)
        assert found is not None
        return found
    return domain


def load_settings(session: Session, domain: Domain) -> DomainSettings:
    """The domain's settings; retention rules come from their own table, in order."""
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
    return DomainSettings.model_validate(data)


def store_settings(session: Session, domain: Domain, settings: DomainSettings) -> None:
    data = settings.model_dump(mode="json")
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


def create_key(session: Session, domain_id: int | None, now: datetime, name: str = "") -> tuple[ApiKey, str]:
    """A new key; the secret is returned once and only its hash is stored."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id=secrets.token_hex(8), domain_id=domain_id, name=name, key_hash=hash_key(secret), created_at=now)
    session.add(row)
    return row, secret


def key_by_secret(session: Session, secret: str) -> ApiKey | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
    return None if row is None or row.revoked_at is not None else row


def ensure_admin_key(session: Session, configured: str, now: datetime) -> str | None:
    """Make sure an admin key exists: the configured one, else a new one (returned once to be printed)."""
    if configured:
        if session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(configured))) is None:
            session.add(
                ApiKey(id=secrets.token_hex(8), domain_id=None, name="CALLREC_ADMIN_KEY",
                       key_hash=hash_key(configured), created_at=now)
            )  # fmt: skip
        return None
    if session.scalar(select(ApiKey.id).where(ApiKey.domain_id.is_(None)).limit(1)) is not None:
        return None
    _, secret = create_key(session, None, now, name="first admin key")
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
