"""Admin keys: listed, made (shown once) and revoked through the API, like a domain's keys.

``CALLREC_ADMIN_KEY`` only bootstraps one (``queries.ensure_admin_key``); every admin key lives in the
database. The last live admin key cannot be revoked, so the API never locks every operator out (the
database host can still make one: ``callrec keys create --admin``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response
from sqlalchemy import func, select

from callrec.api.deps import AdminDep, ServiceDep, is_id
from callrec.api.domains import key_json
from callrec.api.schemas import AdminKeyIn, KeyCreated, KeyList
from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import ApiKey
from callrec.errors import ServiceError

router = APIRouter(tags=["admin"])


@router.get("/admin/keys", response_model=KeyList, summary="The admin keys, revoked ones too, without secrets (admin)")
def list_admin_keys(service: ServiceDep, _admin: AdminDep) -> dict[str, Any]:
    with service.ctx.sessions() as s:
        rows = s.scalars(select(ApiKey).where(ApiKey.domain_id.is_(None)).order_by(ApiKey.created_at, ApiKey.id))
        return {"items": [key_json(k, None) for k in rows]}


@router.post("/admin/keys", status_code=201, response_model=KeyCreated, summary="A new admin key, shown once (admin)")
def create_admin_key(
    service: ServiceDep, _admin: AdminDep, body: Annotated[AdminKeyIn | None, Body()] = None
) -> dict[str, Any]:
    ctx = service.ctx
    with transaction(ctx.sessions) as s:
        key, secret = queries.create_key(s, None, ctx.clock.now(), name=body.name if body else "")
        s.flush()
        return {"id": key.id, "key": secret, "domain": None, "scopes": sorted(queries.key_scopes(key)),
                "created_at": key.created_at}  # fmt: skip


@router.delete("/admin/keys/{key_id}", status_code=204, response_class=Response,
               summary="Revoke an admin key; never the last live one (admin)")  # fmt: skip
def revoke_admin_key(key_id: str, service: ServiceDep, _admin: AdminDep) -> Response:
    ctx = service.ctx
    with transaction(ctx.sessions) as s:
        query = select(ApiKey).where(ApiKey.id == key_id, ApiKey.domain_id.is_(None)).with_for_update()
        key = s.scalar(query) if is_id(key_id) else None
        if key is None:
            raise ServiceError(f"there is no admin key {key_id[:40]!r}", 404)
        if key.revoked_at is None:
            live = select(func.count()).where(ApiKey.domain_id.is_(None), ApiKey.revoked_at.is_(None))
            if (s.scalar(live) or 0) <= 1:
                raise ServiceError("this is the last live admin key; make another before revoking it", 409)
            key.revoked_at = ctx.clock.now()
    return Response(status_code=204)
