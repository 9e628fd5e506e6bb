"""Calls: search with keyset pagination, the call card, retention override, tags, re-mix, interactions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from callrec.api.deps import (
    Principal,
    ReadDep,
    ServiceDep,
    SettingsDep,
    base_url,
    decode_cursor,
    domain_names,
    encode_cursor,
    find_owned,
    is_id,
    parse_time,
    scope,
)
from callrec.api.interactions import DomainName, interaction_domain
from callrec.api.schemas import (
    PRINTABLE,
    CallCard,
    CallPage,
    InteractionOut,
    RecordingOut,
    RemixIn,
    RetentionIn,
    RetentionOut,
    TagsIn,
)
from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import QUEUED, RECORDING, Call, CallAlias, Domain, Party, Recording
from callrec.errors import ServiceError
from callrec.service.cards import call_card, links_of_calls, recording_json, retention_json
from callrec.service.domain_settings import load_settings
from callrec.service.retention import refresh_expiry

router = APIRouter(tags=["calls"])
Text = Annotated[str | None, Query(max_length=300, pattern=PRINTABLE)]
State = Literal["recording", "queued", "mixing", "storing", "completed", "failed", "deleted"]


def _cards(s: Session, rows: list[Call], url: str, now: datetime) -> list[dict[str, Any]]:
    names = domain_names(s)
    found = links_of_calls(s, rows)
    return [call_card(c, names.get(c.domain_id, ""), url, found[c.id], now) for c in rows]


def find_call(s: Session, principal: Principal, call_id: str) -> Call:
    """The call with the project's id ``call_id`` in the caller's domain; 404 otherwise."""
    return find_owned(s, principal, Call, call_id, "call")


CALL_ID_FILTER = (
    "a SIP Call-ID of the call, or the original Call-ID (or Session-ID) of the call its SIPREC client recorded"
)


@router.get("/calls", response_model=CallPage, summary="Search calls, newest first")
def search_calls(
    request: Request,
    service: ServiceDep,
    principal: ReadDep,
    since: Annotated[str | None, Query(max_length=64, description="ISO 8601 with a zone, or epoch seconds")] = None,
    until: Annotated[str | None, Query(max_length=64, description="ISO 8601 with a zone, or epoch seconds")] = None,
    number: Annotated[str | None, Query(max_length=100, pattern=PRINTABLE, description="a prefix ends in *")] = None,
    direction: Literal["inbound", "outbound", "internal"] | None = None,
    interaction: Text = None,
    state: State | None = None,
    call_id: Annotated[str | None, Query(max_length=300, pattern=PRINTABLE, description=CALL_ID_FILTER)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> dict[str, Any]:
    query = scope(select(Call), principal, Call.domain_id)
    if since is not None:
        query = query.where(Call.started_at >= parse_time(since, "since"))
    if until is not None:
        query = query.where(Call.started_at < parse_time(until, "until"))
    if number:
        prefix = number.endswith("*")
        match = Party.number.startswith(number[:-1], autoescape=True) if prefix else Party.number == number
        query = query.where(Call.id.in_(select(Party.call_id).where(match)))
    if direction is not None:
        query = query.where(Call.direction == direction)
    if interaction is not None:
        query = query.where(Call.interaction_id == interaction)
    if call_id is not None:
        # any Call-ID of the call's dialogs, or the original one (or Session-ID) its SRC named
        aliased = select(CallAlias.call_id).where(CallAlias.value == call_id)
        query = query.where(or_(Call.sip_call_id == call_id, Call.id.in_(aliased)))
    if state is not None:
        query = query.where(queries.current_state() == state)
    if cursor is not None:
        query = _after(query, cursor)
    with service.ctx.sessions() as s:
        rows = list(s.scalars(query.order_by(Call.started_at.desc(), Call.id.desc()).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1] if more else None
        return {
            "items": _cards(s, rows, base_url(request), service.ctx.clock.now()),
            "next_cursor": encode_cursor({"t": last.started_at.isoformat(), "id": last.id}) if last else None,
        }


def _after(query: Select[Call], cursor: str) -> Select[Call]:
    """Rows after the cursor's (started_at, id) in the listing's order: a keyset, never an offset."""
    data = decode_cursor(cursor)
    try:
        started, last_id = datetime.fromisoformat(str(data["t"])), str(data["id"])
        if started.tzinfo is None or not is_id(last_id):
            raise ValueError("a cursor's time has a zone and its id is ours")
        started = started.astimezone(UTC)
    except (KeyError, ValueError, OverflowError) as exc:
        raise ServiceError("the cursor is not valid", 400) from exc
    return query.where(or_(Call.started_at < started, and_(Call.started_at == started, Call.id < last_id)))


@router.get("/calls/{call_id}", response_model=CallCard, summary="The call card")
def get_call(call_id: str, request: Request, service: ServiceDep, principal: ReadDep) -> dict[str, Any]:
    with service.ctx.sessions() as s:
        return _cards(s, [find_call(s, principal, call_id)], base_url(request), service.ctx.clock.now())[0]


@router.put("/calls/{call_id}/retention", response_model=RetentionOut, summary="Override how long a call is kept")
def put_retention(call_id: str, body: RetentionIn, service: ServiceDep, principal: SettingsDep) -> dict[str, Any]:
    ctx = service.ctx
    with transaction(ctx.sessions) as s:
        call = find_call(s, principal, call_id)
        call.retention_days, call.retention_forever, call.legal_hold = body.days, body.forever, body.legal_hold
        domain_id = call.domain_id
    refresh_expiry(ctx, domain_id, call_id)
    with ctx.sessions() as s:
        return retention_json(find_call(s, principal, call_id))


@router.put("/calls/{call_id}/tags", summary="Replace a call's tags")
def put_tags(call_id: str, body: TagsIn, service: ServiceDep, principal: SettingsDep) -> dict[str, list[str]]:
    ctx = service.ctx
    tags = list(dict.fromkeys(body.tags))
    with transaction(ctx.sessions) as s:
        call = find_call(s, principal, call_id)
        call.tags = tags
        domain_id = call.domain_id
    refresh_expiry(ctx, domain_id, call_id)  # retention rules may match on tags
    return {"tags": tags}


@router.post("/calls/{call_id}/remix", status_code=202, response_model=RecordingOut,
             summary="Mix the call again, with other output settings")  # fmt: skip
def remix(
    call_id: str, request: Request, service: ServiceDep, principal: SettingsDep, body: RemixIn | None = None
) -> dict[str, Any]:
    ctx = service.ctx
    asked = body or RemixIn()
    now = ctx.clock.now()
    with transaction(ctx.sessions) as s:
        call = find_call(s, principal, call_id)
        if any(r.state == RECORDING for r in call.recordings):
            raise ServiceError("the call is still being recorded", 409)
        if call.tape_deleted_at is not None:
            raise ServiceError("the call's raw tape was deleted, so it cannot be mixed again", 409)
        domain = s.get(Domain, call.domain_id)
        assert domain is not None
        settings = load_settings(s, domain)
        options = {
            "format": asked.format or settings.format, "codec": asked.codec or settings.codec,
            "bitrate": asked.bitrate or settings.bitrate, "rate": asked.rate or settings.rate, "asap": True,
        }  # fmt: skip
        rec = Recording(
            id=queries.new_id(), call_id=call.id, domain_id=call.domain_id, state=QUEUED, options=options,
            format=options["format"], storage=ctx.storage_spec(settings.storage), created_at=now, updated_at=now,
        )  # fmt: skip
        s.add(rec)
        s.flush()
        out = recording_json(rec, base_url(request))
    # asked for now: a re-mix does not wait for the domain's mixing window
    service.pipeline.schedule(rec.id, settings)  # "asap": it does not wait for a window
    return out





@router.get("/interactions/{interaction_id}", response_model=InteractionOut, summary="The calls of an interaction")
def get_interaction(
    interaction_id: str, request: Request, service: ServiceDep, principal: ReadDep, domain: DomainName = None
) -> dict[str, Any]:
    with service.ctx.sessions() as s:
        # one domain's calls: an admin key names the domain when several have this interaction id
        domain_id = interaction_domain(s, principal, interaction_id, domain)
        query = select(Call).where(Call.domain_id == domain_id, Call.interaction_id == interaction_id)
        rows: list[Call] = list(s.scalars(query.order_by(Call.started_at, Call.id)))
        if not rows:
            raise ServiceError(f"no interaction {interaction_id[:60]!r}", 404)
        return {"id": interaction_id, "calls": _cards(s, rows, base_url(request), service.ctx.clock.now())}
