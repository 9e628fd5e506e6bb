"""Domains, their API keys and their settings.

Creating domains and handling keys needs an admin key; a domain's key reads its own domain and reads
and changes its own settings. A storage secret is encrypted before it is stored and never shown again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Body, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from callrec.api.deps import AdminDep, Principal, ServiceDep, SettingsDep, ViewDep, is_id, scope, visible_domain
from callrec.api.schemas import DomainIn, DomainList, DomainOut, KeyCreated, KeyIn, KeyList
from callrec.config import ConfigError
from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import ApiKey, Domain
from callrec.errors import ServiceError
from callrec.secretbox import is_encrypted
from callrec.service import egress
from callrec.service.context import Context
from callrec.service.domain_settings import DomainSettings, load_settings, merge_settings, store_settings
from callrec.service.replan import replan_waiting
from callrec.service.retention import refresh_expiry

router = APIRouter(tags=["domains"])
SettingsUpdate = Annotated[
    dict[str, Any], Body(description="the top-level settings to replace; the others keep their values")
]


def _domain_json(domain: Domain, settings: DomainSettings) -> dict[str, Any]:
    return {"name": domain.name, "settings": settings.public_json(), "created_at": domain.created_at}


def key_json(key: ApiKey, domain: str | None) -> dict[str, Any]:
    return {"id": key.id, "name": key.name, "domain": domain, "scopes": sorted(queries.key_scopes(key)),
            "origin": key.origin, "created_at": key.created_at, "last_used_at": key.last_used_at,
            "revoked_at": key.revoked_at}  # fmt: skip


def _grantable(principal: Principal, asked: Sequence[str] | None) -> tuple[str, ...]:
    """The scopes a new domain key gets: those asked for (default: every domain scope), never the admin
    scope and never one the creating key lacks (422 naming it)."""
    chosen = tuple(queries.DOMAIN_SCOPES if asked is None else dict.fromkeys(asked))
    if queries.ADMIN in chosen:
        raise ServiceError("a domain's key cannot have the 'admin' scope; admin keys are made at /admin/keys", 422)
    if not chosen:
        raise ServiceError("a key needs at least one scope: settings, read or upload", 422)
    missing = [s for s in chosen if not principal.has(s)]
    if missing:
        raise ServiceError(f"a key cannot grant scopes it lacks: {', '.join(missing)}", 403)
    return chosen


def _seal(ctx: Context, settings: DomainSettings) -> DomainSettings:
    """The settings with plain secrets encrypted (one sent encrypted must be ours)."""
    storage = settings.storage.model_copy(
        update={"secret_access_key": _sealed(ctx, settings.storage.secret_access_key, "storage.secret_access_key")}
    )
    return settings.model_copy(
        update={"storage": storage, "webhook_secret": _sealed(ctx, settings.webhook_secret, "webhook_secret")}
    )


def _sealed(ctx: Context, secret: str, field: str) -> str:
    if not secret:
        return secret
    if is_encrypted(secret):
        try:
            ctx.box.decrypt(secret)
        except ConfigError as exc:
            raise ServiceError(f"{field} is encrypted with a key this service does not have", 422) from exc
        return secret
    return ctx.box.encrypt(secret)


def _check_text(value: Any, where: str) -> None:
    """Refuse NUL anywhere in the settings: no database can store it in text."""
    if isinstance(value, str) and "\x00" in value:
        raise ServiceError(f"{where or 'settings'} must not contain NUL characters", 422)
    if isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where)
            _check_text(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for item in value:
            _check_text(item, where)


@router.post("/domains", status_code=201, response_model=DomainOut, summary="Create a domain (admin)")
def create_domain(body: DomainIn, service: ServiceDep, _admin: AdminDep) -> dict[str, Any]:
    ctx = service.ctx
    _check_text(body.settings or {}, "settings")
    settings = _seal(ctx, merge_settings(DomainSettings(), body.settings or {}))
    egress.check_settings(ctx.egress, None, settings)
    exists = ServiceError(f"a domain named {body.name!r} exists already", 409)
    try:
        with transaction(ctx.sessions) as s:
            if queries.domain_by_name(s, body.name) is not None:
                raise exists
            domain = Domain(name=body.name, settings={}, created_at=ctx.clock.now())
            s.add(domain)
            s.flush()
            store_settings(s, domain, settings)
            out = _domain_json(domain, settings)
    except IntegrityError as exc:  # made by another request at the same moment
        raise exists from exc
    return out


@router.get("/domains", response_model=DomainList, summary="The domains this key may see")
def list_domains(service: ServiceDep, principal: ViewDep) -> dict[str, Any]:
    with service.ctx.sessions() as s:
        rows = s.scalars(scope(select(Domain), principal, Domain.id).order_by(Domain.name)).all()
        return {"items": [_domain_json(d, load_settings(s, d)) for d in rows]}


@router.get("/domains/{name}", response_model=DomainOut, summary="One domain")
def get_domain(name: str, service: ServiceDep, principal: ViewDep) -> dict[str, Any]:
    with service.ctx.sessions() as s:
        domain = visible_domain(s, principal, name)
        return _domain_json(domain, load_settings(s, domain))


@router.post("/domains/{name}/keys", status_code=201, response_model=KeyCreated,
             summary="A new key, shown once (admin, or the domain's key with the settings scope)")  # fmt: skip
def create_key(
    name: str, service: ServiceDep, admin: SettingsDep, body: Annotated[KeyIn | None, Body()] = None
) -> dict[str, Any]:
    ctx = service.ctx
    with transaction(ctx.sessions) as s:
        domain = visible_domain(s, admin, name)
        scopes = _grantable(admin, body.scopes if body else None)
        key, secret = queries.create_key(s, domain.id, ctx.clock.now(), name=body.name if body else "", scopes=scopes)
        s.flush()
        return {"id": key.id, "key": secret, "domain": domain.name, "scopes": sorted(queries.key_scopes(key)),
                "created_at": key.created_at}  # fmt: skip


@router.get("/domains/{name}/keys", response_model=KeyList,
            summary="A domain's keys, without secrets (admin, or its key with the settings scope)")  # fmt: skip
def list_keys(name: str, service: ServiceDep, admin: SettingsDep) -> dict[str, Any]:
    with service.ctx.sessions() as s:
        domain = visible_domain(s, admin, name)
        rows = s.scalars(select(ApiKey).where(ApiKey.domain_id == domain.id).order_by(ApiKey.created_at, ApiKey.id))
        return {"items": [key_json(k, domain.name) for k in rows]}


@router.delete("/domains/{name}/keys/{key_id}", status_code=204,
               summary="Revoke a key (admin, or the domain's key with the settings scope)")  # fmt: skip
def revoke_key(name: str, key_id: str, service: ServiceDep, admin: SettingsDep) -> Response:
    ctx = service.ctx
    with transaction(ctx.sessions) as s:
        domain = visible_domain(s, admin, name)
        query = select(ApiKey).where(ApiKey.id == key_id, ApiKey.domain_id == domain.id)
        key = s.scalar(query) if is_id(key_id) else None
        if key is None:
            raise ServiceError(f"domain {domain.name!r} has no key {key_id[:40]!r}", 404)
        if key.revoked_at is None:
            key.revoked_at = ctx.clock.now()
    return Response(status_code=204)


@router.get("/domains/{name}/settings", summary="A domain's settings (its key with read or settings, or admin)")
def get_settings(name: str, service: ServiceDep, principal: ViewDep) -> dict[str, Any]:
    with service.ctx.sessions() as s:
        return load_settings(s, visible_domain(s, principal, name)).public_json()


@router.put("/domains/{name}/settings", summary="Change some of a domain's settings (its key with settings, or admin)")
def put_settings(name: str, update: SettingsUpdate, service: ServiceDep, principal: SettingsDep) -> dict[str, Any]:
    ctx = service.ctx
    _check_text(update, "")
    with transaction(ctx.sessions) as s:
        domain = visible_domain(s, principal, name)
        current = load_settings(s, domain)
        settings = _seal(ctx, merge_settings(current, update))
        egress.check_settings(ctx.egress, current, settings)
        store_settings(s, domain, settings)
        domain_id, retention_changed = domain.id, current.retention != settings.retention
        schedule_changed = current.schedule != settings.schedule
    if retention_changed:
        refresh_expiry(ctx, domain_id)
    if schedule_changed:  # recordings waiting for the old window follow the new schedule
        replan_waiting(service, domain_id)
    return settings.public_json()
