"""Public links: made, listed and revoked with an API key; opened at ``/r/{token}`` without one.

The key-side routes live here; the public pages are in ``callrec.web.link_pages``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from callrec.api.deps import Principal, ReadDep, ServiceDep, base_url, find_owned
from callrec.api.interactions import interaction_domain
from callrec.api.recordings import find_recording
from callrec.api.schemas import LinkOut
from callrec.db.engine import transaction
from callrec.db.schema import COMPLETED, DELETED, Link
from callrec.errors import ServiceError
from callrec.service import links, stitches
from callrec.service.cards import link_json

router = APIRouter(tags=["links"])
DomainName = Annotated[str | None, Query(max_length=64, description="the domain (admin keys only, when the "
                                                                    "interaction id is used in several)")]  # fmt: skip


class LinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_in_s: int | None = Field(
        default=None, description="seconds until the link expires; the domain's default when left out"
    )
    download_only: bool = Field(default=False, description="the page offers the download but no player")


class LinkCreated(LinkOut):
    url: str = Field(description="the public page; its token is shown this once")


class LinkList(BaseModel):
    items: list[LinkOut]


def _shareable_recording(s: Session, principal: Principal, recording_id: str) -> tuple[int, str]:
    rec = find_recording(s, principal, recording_id)
    if rec.state == DELETED:
        raise ServiceError("the recording was deleted, so it cannot be shared", 409)
    if rec.state != COMPLETED:
        raise ServiceError(f"the recording is {rec.state}; only a completed recording can be shared", 409)
    return rec.domain_id, rec.id


def _find_link(s: Session, principal: Principal, link_id: str) -> Link:
    return find_owned(s, principal, Link, link_id, "link")


def _created(s: Session, request: Request, link: Link, token: str) -> dict[str, Any]:
    now = request.app.state.service.ctx.clock.now()
    return link_json(link, now) | {"url": links.url_for(base_url(request), token)}


@router.post("/recordings/{recording_id}/links", status_code=201, response_model=LinkCreated,
             summary="A public link to a completed recording")  # fmt: skip
def create_recording_link(
    recording_id: str, request: Request, service: ServiceDep, principal: ReadDep, body: LinkIn | None = None
) -> dict[str, Any]:
    asked = body or LinkIn()
    with transaction(service.ctx.sessions) as s:
        domain_id, target = _shareable_recording(s, principal, recording_id)
        link, token = links.create(
            s, service.ctx, domain_id=domain_id, kind=links.RECORDING, target_id=target,
            expires_in_s=asked.expires_in_s, download_only=asked.download_only, created_by=principal.key_id,
        )  # fmt: skip
        return _created(s, request, link, token)


@router.post("/interactions/{interaction_id}/links", status_code=201, response_model=LinkCreated,
             summary="A public link to an interaction's stitched recording (asks for the stitch)")  # fmt: skip
def create_interaction_link(
    interaction_id: str,
    request: Request,
    service: ServiceDep,
    principal: ReadDep,
    body: LinkIn | None = None,
    domain: DomainName = None,
) -> dict[str, Any]:
    asked = body or LinkIn()
    ctx = service.ctx
    with transaction(ctx.sessions) as s:
        domain_id = interaction_domain(s, principal, interaction_id, domain)
        link, token = links.create(
            s, ctx, domain_id=domain_id, kind=links.INTERACTION, target_id=interaction_id,
            expires_in_s=asked.expires_in_s, download_only=asked.download_only, created_by=principal.key_id,
        )  # fmt: skip
        out = _created(s, request, link, token)
    stitches.request(ctx, service.queue, domain_id, interaction_id)
    return out


@router.get("/recordings/{recording_id}/links", response_model=LinkList, summary="A recording's links, newest first")
def list_recording_links(recording_id: str, service: ServiceDep, principal: ReadDep) -> dict[str, Any]:
    with service.ctx.sessions() as s:
        rec = find_recording(s, principal, recording_id)
        rows = links.for_target(s, rec.domain_id, links.RECORDING, rec.id)
        now = service.ctx.clock.now()
        return {"items": [link_json(link, now) for link in rows]}


@router.get("/interactions/{interaction_id}/links", response_model=LinkList,
            summary="An interaction's links, newest first")  # fmt: skip
def list_interaction_links(
    interaction_id: str, service: ServiceDep, principal: ReadDep, domain: DomainName = None
) -> dict[str, Any]:
    with service.ctx.sessions() as s:
        domain_id = interaction_domain(s, principal, interaction_id, domain)
        rows = links.for_target(s, domain_id, links.INTERACTION, interaction_id)
        now = service.ctx.clock.now()
        return {"items": [link_json(link, now) for link in rows]}


@router.get("/links/{link_id}", response_model=LinkOut, summary="A link (never its token)")
def get_link(link_id: str, service: ServiceDep, principal: ReadDep) -> dict[str, Any]:
    with service.ctx.sessions() as s:
        return link_json(_find_link(s, principal, link_id), service.ctx.clock.now())


@router.delete("/links/{link_id}", status_code=204, response_class=Response, summary="Revoke a link")
def revoke_link(link_id: str, service: ServiceDep, principal: ReadDep) -> Response:
    with transaction(service.ctx.sessions) as s:
        links.revoke(s, service.ctx, _find_link(s, principal, link_id))
    return Response(status_code=204)
