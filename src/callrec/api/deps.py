"""What every route needs: the service, the caller's key and the domain it may see, cursors and times.

A key belongs to one domain or is an admin key. Every lookup a route makes goes through ``scope`` (or
compares ``domain_id`` itself), so another domain's object is exactly as absent as a missing one.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Protocol, TypeVar, TypeVarTuple

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import Domain
from callrec.errors import ServiceError
from callrec.service.context import Context
from callrec.service.pipeline import Service

# a key's last use is written at most this often, so reads do not each cost a write
LAST_USED_EVERY = timedelta(minutes=1)
# ids the service makes are hex; anything else cannot name one of its objects
_ID = re.compile(r"[0-9a-f]{1,32}")
Ts = TypeVarTuple("Ts")

bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer KEY`")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an admin key (``domain_id`` None) or a key of one domain."""

    key_id: str
    domain_id: int | None

    @property
    def admin(self) -> bool:
        return self.domain_id is None

    def may_see(self, domain_id: int) -> bool:
        return self.domain_id is None or self.domain_id == domain_id


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def get_ctx(request: Request) -> Context:
    return get_service(request).ctx


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def get_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """The caller's key, checked by its hash; 401 when it is missing, unknown or revoked."""
    if credentials is None or not credentials.credentials:
        raise unauthorized("an API key is required: send Authorization: Bearer KEY")
    secret = credentials.credentials
    if len(secret) > 200 or not secret.isascii():
        raise unauthorized("the API key is not valid")
    ctx = get_ctx(request)
    now = ctx.clock.now()
    with transaction(ctx.sessions) as s:
        key = queries.key_by_secret(s, secret)
        if key is None:
            raise unauthorized("the API key is not valid")
        if key.last_used_at is None or now - key.last_used_at > LAST_USED_EVERY:
            key.last_used_at = now
        return Principal(key.id, key.domain_id)


def get_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """The caller, who must hold an admin key (403 for a domain's key)."""
    if not principal.admin:
        raise ServiceError("this needs an admin key", 403)
    return principal


ServiceDep = Annotated[Service, Depends(get_service)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(get_admin)]


def scope(query: Select[*Ts], principal: Principal, column: InstrumentedAttribute[Any]) -> Select[*Ts]:
    """``query`` limited to the caller's domain (admin keys see every domain)."""
    return query if principal.admin else query.where(column == principal.domain_id)


def is_id(text: str) -> bool:
    return _ID.fullmatch(text) is not None


class _Owned(Protocol):
    @property
    def domain_id(self) -> int: ...


Owned = TypeVar("Owned", bound=_Owned)


def find_owned(s: Session, principal: Principal, model: type[Owned], object_id: str, noun: str) -> Owned:
    """The ``model`` row with the service's id ``object_id`` in the caller's domain; 404 otherwise (another
    domain's row is exactly as absent as a missing one)."""
    row = s.get(model, object_id) if is_id(object_id) else None
    if row is None or not principal.may_see(row.domain_id):
        raise ServiceError(f"no {noun} {object_id[:40]!r}", 404)
    return row


def visible_domain(s: Session, principal: Principal, name: str) -> Domain:
    """The domain called ``name`` if the caller may see it; 404 otherwise, whether or not it exists."""
    domain = queries.domain_by_name(s, name) if len(name) <= 64 and "\x00" not in name else None
    if domain is None or not principal.may_see(domain.id):
        raise ServiceError(f"no domain named {name[:64]!r}", 404)
    return domain


def domain_names(s: Session) -> dict[int, str]:
    return {d.id: d.name for d in s.query(Domain)}


def base_url(request: Request) -> str:
    """Where clients reach the API: ``CALLREC_PUBLIC_URL``, else the address this request came to."""
    return get_ctx(request).config.public_url or str(request.base_url).rstrip("/")


# --- cursors and times ------------------------------------------------------------------------------


def encode_cursor(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> dict[str, Any]:
    """The data of a cursor this API made; 400 for anything else."""
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise ServiceError("the cursor is not valid", 400) from exc
    if not isinstance(data, dict):
        raise ServiceError("the cursor is not valid", 400)
    return data


def parse_time(text: str, name: str) -> datetime:
    """ISO 8601 with a time zone, or seconds since the epoch; 422 naming the parameter otherwise."""
    problem = f"{name} must be an ISO 8601 time with a time zone, or seconds since the epoch"
    try:
        if re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", text.strip()):
            return datetime.fromtimestamp(float(text), UTC)
        value = datetime.fromisoformat(text.strip())
        if value.tzinfo is None:
            raise ServiceError(problem, 422)
        return value.astimezone(UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise ServiceError(problem, 422) from exc
