"""An interaction's stitched recording: its state and chapters, a remake on request, and its audio.

Asking for it is what makes it: the first GET queues the stitch (202 until it is done); afterwards each
GET checks that it still matches the interaction's calls and queues a remake when it does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from callrec.api.audio import CHUNK_BYTES, MEDIA_TYPES, ranged_response, verify_stored
from callrec.api.deps import Principal, ReadDep, ServiceDep, base_url, scope
from callrec.api.schemas import PRINTABLE
from callrec.db.schema import COMPLETED, DELETED, Call, Domain, Stitch
from callrec.errors import ServiceError
from callrec.names import safe_name
from callrec.service import stitches as stitching
from callrec.service.context import Context

router = APIRouter(tags=["interactions"])
# what a client waiting for a stitch is told to wait before asking again
RETRY_AFTER_S = 5
DomainName = Annotated[
    str | None, Query(max_length=64, pattern=PRINTABLE, description="admin keys: the interaction's domain")
]


class Chapter(BaseModel):
    call_id: str
    who: list[str]
    from_s: float
    to_s: float
    started_at: str


class StitchOut(BaseModel):
    interaction_id: str
    state: str
    reason: str
    duration_s: float
    bytes: int
    format: str
    chapters: list[Chapter]
    calls: list[str]
    customer: dict[str, str]
    audio_url: str


def interaction_domain(s: Session, principal: Principal, interaction_id: str, domain: str | None) -> int:
    """The domain whose calls carry ``interaction_id``: the key's own, or for an admin key the one
    ``?domain=`` names. 404 when it has none; 400 when an admin key names none and several domains have
    calls of this interaction id (their calls are never merged into one view)."""
    missing = ServiceError(f"no interaction {interaction_id[:60]!r}", 404)
    if not interaction_id or "\x00" in interaction_id or len(interaction_id) > 300:
        raise missing
    query = scope(select(Call.domain_id), principal, Call.domain_id).where(Call.interaction_id == interaction_id)
    if domain is not None:
        query = query.where(Call.domain_id.in_(select(Domain.id).where(Domain.name == domain)))
    found = sorted(set(s.scalars(query.distinct())))
    if not found:
        raise missing
    if len(found) > 1:
        raise ServiceError("several domains have calls of this interaction; name one with ?domain=", 400)
    return found[0]


def _domain_of(s: Session, principal: Principal, interaction_id: str, domain: str | None) -> int:
    """The domain whose interaction ``interaction_id`` the caller means; 404 when they may see none."""
    domain_id = interaction_domain(s, principal, interaction_id, domain)
    if not stitching.members(s, domain_id, interaction_id):
        raise ServiceError(f"no interaction {interaction_id[:60]!r}", 404)
    return domain_id


def _out(ctx: Context, row: Stitch, url: str) -> JSONResponse:
    with ctx.sessions() as s:
        calls = stitching.members(s, row.domain_id, row.interaction_id)
        customer = stitching.customer_json(calls)
    body = StitchOut(
        interaction_id=row.interaction_id, state=row.state, reason=row.reason, duration_s=round(row.duration_s, 3),
        bytes=row.bytes, format=row.format, chapters=[Chapter(**c) for c in row.chapters],
        calls=[c.id for c in calls], customer=customer,
        audio_url=f"{url}/api/v1/interactions/{quote(row.interaction_id, safe='')}/stitched/audio",
    )  # fmt: skip
    return JSONResponse(body.model_dump(mode="json"), status_code=202 if row.state in stitching.PENDING else 200)


def ask_stitch(service: Any, principal: Principal, interaction_id: str, domain: str | None, force: bool) -> Stitch:
    """The caller's interaction's stitch, asked for (made again when its calls changed, or with ``force``)."""
    ctx = service.ctx
    with ctx.sessions() as s:
        domain_id = _domain_of(s, principal, interaction_id, domain)
    return stitching.request(ctx, service.queue, domain_id, interaction_id, force=force)


@router.get("/interactions/{interaction_id}/stitched", response_model=StitchOut,
            responses={202: {"model": StitchOut, "description": "being made"}},
            summary="The interaction's stitched recording (asked for if there is none)")  # fmt: skip
def get_stitched(
    interaction_id: str, request: Request, service: ServiceDep, principal: ReadDep, domain: DomainName = None
) -> JSONResponse:
    row = ask_stitch(service, principal, interaction_id, domain, force=False)
    return _out(service.ctx, row, base_url(request))


@router.post("/interactions/{interaction_id}/stitched", status_code=202, response_model=StitchOut,
             summary="Make the interaction's stitched recording again")  # fmt: skip
def remake_stitched(
    interaction_id: str, request: Request, service: ServiceDep, principal: ReadDep, domain: DomainName = None
) -> JSONResponse:
    row = ask_stitch(service, principal, interaction_id, domain, force=True)
    return _out(service.ctx, row, base_url(request))


@router.get("/interactions/{interaction_id}/stitched/audio", summary="The stitched audio (HTTP Range supported)",
            response_class=Response,
            responses={200: {"content": {"audio/mpeg": {}, "audio/wav": {}}}, 206: {"description": "a range"},
                       409: {"description": "not made yet (Retry-After)"}})  # fmt: skip
def get_stitched_audio(
    interaction_id: str,
    service: ServiceDep,
    principal: ReadDep,
    domain: DomainName = None,
    range_header: Annotated[str | None, Header(alias="range")] = None,
) -> Response:
    row = ask_stitch(service, principal, interaction_id, domain, force=False)
    return stitch_response(service.ctx, row, range_header)


def stitch_response(ctx: Context, stitch: Stitch, range_header: str | None) -> Response:
    """A completed stitch's audio with Range support; 409 with Retry-After while it is being made."""
    if stitch.state == DELETED:
        return JSONResponse({"detail": "the interaction's recordings were deleted"}, status_code=410)
    if stitch.state != COMPLETED or not stitch.storage_key:
        detail = f"the stitched recording is not ready ({stitch.state}{': ' + stitch.reason if stitch.reason else ''})"
        headers = {"Retry-After": str(RETRY_AFTER_S)} if stitch.state in stitching.PENDING else {}
        return JSONResponse({"detail": detail}, status_code=409, headers=headers)
    storage, key = ctx.storage(stitch.storage), stitch.storage_key
    verify_stored(storage, key, stitch.bytes, stitch.md5, f"stitched recording {stitch.id}")
    fmt = stitch.format if stitch.format in MEDIA_TYPES else "mp3"

    def read(start: int, end: int) -> Iterator[bytes]:
        return storage.read_range(key, start, end, CHUNK_BYTES)

    name = f"interaction-{safe_name(stitch.interaction_id, limit=80)}.{fmt}"
    return ranged_response(range_header, stitch.bytes, read, MEDIA_TYPES[fmt], name)
