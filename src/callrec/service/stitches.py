"""Stitching an interaction's calls into one recording: what a stitch is made of, and asking for one.

A ``Stitch`` row per (domain, interaction) holds the signature of the member recordings it was made
from. ``request`` compares it with the members as they are now and queues a remake when they differ;
the recording hook does the same whenever a member's recording completes, fails or is deleted, so a
stitch follows its calls (a new call joining, a re-mix, retention). The worker claims the row with a
conditional UPDATE and a lease like a recording, makes the file in its work folder, stores it under a
new key (verified by MD5), and only then deletes the object it replaces.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import (
    FAILED,
    MIXING,
    QUEUED,
    RECORDING,
    STORING,
    Call,
    Domain,
    Stitch,
)  # fmt: skip
from callrec.errors import NotFound
from callrec.service import leased
from callrec.service.context import Context
from callrec.service.domain_settings import DomainSettings, load_settings
from callrec.service.queue import JobQueue

log = logging.getLogger("callrec.stitch")
KIND = "stitch"
PENDING = (RECORDING, QUEUED, MIXING, STORING)
BATCH = 500


def _stitch_backoff(ctx: Context) -> leased.Backoff:
    cfg = ctx.config
    return leased.Backoff(cfg.backoff_base_s, cfg.backoff_max_s, cfg.max_attempts, jitter=0.1)


# a stitch: made from its members' audio and stored; queue messages read "stitch:<id>"
STITCHES = leased.Work(
    name="stitch", model=Stitch, ready=QUEUED, held=(MIXING, STORING), failed=FAILED,
    message=lambda stitch_id: f"{KIND}:{stitch_id}", backoff=_stitch_backoff, lease_s=lambda ctx: ctx.config.lease_s,
)  # fmt: skip


# --- what a stitch is made of ----------------------------------------------------------------------


def members(s: Session, domain_id: int, interaction_id: str) -> list[Call]:
    """The interaction's calls in time order (calls still being recorded included)."""
    if not interaction_id:
        return []
    query = select(Call).where(Call.domain_id == domain_id, Call.interaction_id == interaction_id)
    return list(s.scalars(query.order_by(Call.started_at, Call.id)))


def current(s: Session, domain_id: int, interaction_id: str) -> Stitch | None:
    """The interaction's stitch row, whatever its state."""
    return s.scalar(select(Stitch).where(Stitch.domain_id == domain_id, Stitch.interaction_id == interaction_id))


def signature(calls: list[Call], settings: DomainSettings) -> str:
    """What the stitch is made from: each member's current recording and the output settings."""
    parts: list[Any] = [settings.format, settings.codec, settings.bitrate, settings.rate]
    for call in calls:
        rec = queries.newest(call)
        done = rec.completed_at.isoformat() if rec is not None and rec.completed_at else ""
        parts.append([call.id, rec.id if rec else "", rec.state if rec else "", done])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def pending(calls: list[Call]) -> int:
    """How many members are not finished yet (recording, or their recording still being made)."""
    return sum(1 for c in calls if (r := queries.newest(c)) is not None and r.state in PENDING)


def customer_json(calls: list[Call]) -> dict[str, str]:
    """The customer as the first call names them."""
    if not calls:
        return {}
    labels = customers(calls)[calls[0].id]
    party = next((p for p in calls[0].parties if p.label in labels), None)
    if party is None:
        return {}
    return {"label": party.label, "number": party.number, "name": party.name, "uri": party.uri}


def waiting_reason(n: int) -> str:
    return f"waiting for {n} call{'s' if n != 1 else ''}"


def domain_settings_of(s: Session, domain_id: int) -> tuple[Domain, DomainSettings]:
    domain = s.get(Domain, domain_id)
    if domain is None:
        raise NotFound("no such domain")
    return domain, load_settings(s, domain)


# --- asking for one --------------------------------------------------------------------------------


def request(ctx: Context, queue: JobQueue, domain_id: int, interaction_id: str, *, force: bool = False) -> Stitch:
    """Make sure a stitch matching the interaction's calls exists or is on its way; returns its row.

    ``force`` makes it again even when nothing changed (and after a failure).
    """
    for attempt in range(2):
        try:
            row, submit = _request(ctx, domain_id, interaction_id, force)
            break
        except IntegrityError:  # another request made the row at the same moment: use that one
            if attempt:
                raise
    if submit:
        queue.submit(KIND, row.id)
    return row


def _request(ctx: Context, domain_id: int, interaction_id: str, force: bool) -> tuple[Stitch, bool]:
    now = ctx.clock.now()
    with transaction(ctx.sessions) as s:
        calls = members(s, domain_id, interaction_id)
        if not calls:
            raise NotFound(f"no interaction {interaction_id[:60]!r}")
        _, settings = domain_settings_of(s, domain_id)
        sig = signature(calls, settings)
        row = current(s, domain_id, interaction_id)
        if row is None:
            row = Stitch(id=queries.new_id(), domain_id=domain_id, interaction_id=interaction_id, state=QUEUED,
                         created_at=now, updated_at=now, storage={}, chapters=[])  # fmt: skip
            s.add(row)
        elif row.signature == sig and not force:
            return row, False
        row.signature, row.state, row.attempts, row.reason, row.updated_at = sig, QUEUED, 0, "", now
        row.lease_until = None
        waiting = pending(calls)
        if waiting:
            # the hook asks again when a member's recording completes
            row.reason, row.next_attempt_at = waiting_reason(waiting), None
            s.flush()
            return row, False
        row.next_attempt_at = row.enqueued_at = now
        s.flush()
        return row, True


# --- who is who ----------------------------------------------------------------------------------


def party_key(number: str, uri: str) -> str:
    """How one person is recognised across calls: the number, else the URI."""
    return number or uri


def customers(calls: list[Call]) -> dict[str, frozenset[str]]:
    """Per call id, the labels of the customer's parties.

    The customer is the party whose number (else URI) is in every call; when no single one is, each
    call's external party (inbound: the caller, outbound: the callee); else the first call's caller.
    """
    keys = [{party_key(p.number, p.uri) for p in c.parties} - {""} for c in calls]
    common = set.intersection(*keys) if keys else set()
    single = next(iter(common)) if len(common) == 1 else ""
    first = next((p for p in calls[0].parties if p.role == "caller"), None) if calls else None
    first_key = party_key(first.number, first.uri) if first is not None else ""
    out: dict[str, frozenset[str]] = {}
    for call in calls:
        role = {"inbound": "caller", "outbound": "callee"}.get(call.direction)
        if single:
            labels = {p.label for p in call.parties if party_key(p.number, p.uri) == single}
        elif role is not None:
            labels = {p.label for p in call.parties if p.role == role}
        else:
            labels = {p.label for p in call.parties if first_key and party_key(p.number, p.uri) == first_key}
        if not labels:
            labels = {p.label for p in call.parties if p.role == "caller"} or {"A"}
        out[call.id] = frozenset(labels)
    return out


def describe(name: str, number: str, uri: str, label: str) -> str:
    """A party as a chapter names it."""
    if name and number:
        return f"{name} ({number})"
    return name or number or uri or label
