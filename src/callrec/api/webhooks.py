"""Webhook deliveries: the log of what was sent to each receiver, and sending one again.

Receivers, events and the signing secret are domain settings (``webhooks``, ``webhook_secret``); how a
receiver checks a delivery is described in ``callrec.service.webhooks``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from callrec.api.deps import (
    Principal,
    ReadDep,
    ServiceDep,
    SettingsDep,
    decode_cursor,
    domain_names,
    encode_cursor,
    find_owned,
    is_id,
    scope,
)
from callrec.db.schema import WebhookDelivery
from callrec.errors import ServiceError
from callrec.service import webhooks
from callrec.service.domain_settings import Event

router = APIRouter(tags=["webhooks"])
State = Literal["pending", "delivering", "delivered", "failed"]
HEX_ID = r"^[0-9a-f]{1,32}$"


class Attempt(BaseModel):
    at: datetime
    status: int | None
    error: str
    ms: int


class DeliveryOut(BaseModel):
    id: str
    domain: str
    event: str
    recording_id: str
    url: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime | None


class DeliveryDetail(DeliveryOut):
    log: list[Attempt]
    body: dict[str, Any]


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class Accepted(BaseModel):
    id: str
    state: str


def _json(row: WebhookDelivery, domain: str) -> dict[str, Any]:
    return {
        "id": row.id, "domain": domain, "event": row.event, "recording_id": row.recording_id, "url": row.url,
        "state": row.state, "attempts": row.attempts, "last_status": row.last_status, "last_error": row.last_error,
        "created_at": row.created_at, "updated_at": row.updated_at, "delivered_at": row.delivered_at,
        "next_attempt_at": row.next_attempt_at,
    }  # fmt: skip


def _find(s: Session, principal: Principal, delivery_id: str) -> WebhookDelivery:
    """The delivery in the caller's domain; 404 otherwise (another domain's is as absent as a missing one)."""
    return find_owned(s, principal, WebhookDelivery, delivery_id, "webhook delivery")


@router.get("/webhooks/deliveries", response_model=DeliveryPage, summary="Webhook deliveries, newest first")
def list_deliveries(
    service: ServiceDep,
    principal: ReadDep,
    state: State | None = None,
    event: Event | None = None,
    recording_id: Annotated[str | None, Query(pattern=HEX_ID, description="a recording's id")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> dict[str, Any]:
    D = WebhookDelivery
    query = scope(select(D), principal, D.domain_id)
    if state is not None:
        query = query.where(D.state == state)
    if event is not None:
        query = query.where(D.event == event)
    if recording_id is not None:
        query = query.where(D.recording_id == recording_id)
    if cursor is not None:
        query = _after(query, cursor)
    with service.ctx.sessions() as s:
        rows = list(s.scalars(query.order_by(D.created_at.desc(), D.id.desc()).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1] if more else None
        names = domain_names(s)
        return {
            "items": [_json(r, names.get(r.domain_id, "")) for r in rows],
            "next_cursor": encode_cursor({"t": last.created_at.isoformat(), "id": last.id}) if last else None,
        }


def _after(query: Select[WebhookDelivery], cursor: str) -> Select[WebhookDelivery]:
    """Rows after the cursor's (created_at, id) in the listing's order: a keyset, never an offset."""
    D = WebhookDelivery
    data = decode_cursor(cursor)
    try:
        made, last_id = datetime.fromisoformat(str(data["t"])), str(data["id"])
        if made.tzinfo is None or not is_id(last_id):
            raise ValueError("a cursor's time has a zone and its id is ours")
        made = made.astimezone(UTC)
    except (KeyError, ValueError, OverflowError) as exc:
        raise ServiceError("the cursor is not valid", 400) from exc
    return query.where(or_(D.created_at < made, and_(D.created_at == made, D.id < last_id)))


@router.get("/webhooks/deliveries/{delivery_id}", response_model=DeliveryDetail,
            summary="One delivery: the body sent and every attempt")  # fmt: skip
def get_delivery(delivery_id: str, service: ServiceDep, principal: ReadDep) -> dict[str, Any]:
    with service.ctx.sessions() as s:
        row = _find(s, principal, delivery_id)
        body = webhooks.as_shown(row.body)
        return _json(row, domain_names(s).get(row.domain_id, "")) | {"log": list(row.log), "body": body}


@router.post("/webhooks/deliveries/{delivery_id}/redeliver", status_code=202, response_model=Accepted,
             summary="Send a delivery again: the same body, a fresh timestamp and signature")  # fmt: skip
def redeliver(delivery_id: str, service: ServiceDep, principal: SettingsDep) -> dict[str, Any]:
    with service.ctx.sessions() as s:
        _find(s, principal, delivery_id)
    webhooks.redeliver(service.ctx, service.queue, delivery_id)
    return {"id": delivery_id, "state": webhooks.PENDING}
