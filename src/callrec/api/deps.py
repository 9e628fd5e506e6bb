"""What every route needs: the service, the caller's key and the domain it may see, cursors and times.

A key belongs to one domain or is an admin key. Every lookup a route makes goes through ``scope`` (or
compares ``domain_id`` itself), so another domain's object is exactly as absent as a missing one.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated, Any, Protocol, TypeVar, TypeVarTuple

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from callrec.db import queries
from callrec.db.engine import after_commit, transaction
from callrec.db.schema import ApiKey, Domain
from callrec.errors import ServiceError
from callrec.service import disk
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
    """Who is calling: an admin key (``domain_id`` None) or a key of one domain, and what it may do."""

    key_id: str
    domain_id: int | None
    scopes: frozenset[str] = frozenset(queries.DOMAIN_SCOPES)

    @property
    def admin(self) -> bool:
        return self.domain_id is None

    def has(self, scope: str) -> bool:
        """Whether the key may do what ``scope`` covers; an admin key may do everything."""
        return self.admin or scope in self.scopes

    def may_see(self, domain_id: int) -> bool:
        return self.domain_id is None or self.domain_id == domain_id


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def get_ctx(request: Request) -> Context:
    return get_service(request).ctx


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def principal_of(key: ApiKey) -> Principal:
    return Principal(key.id, key.domain_id, queries.key_scopes(key))


def get_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """The caller's key, checked by its hash; 401 when it is missing, unknown or revoked, 429 when its
    address sent too many wrong keys lately (``throttle``)."""
    if credentials is None or not credentials.credentials:
        raise unauthorized("an API key is required: send Authorization: Bearer KEY")
    guard = throttle(request)
    source = source_address(request)
    guard.check(source)
    secret = credentials.credentials
    if len(secret) > 200 or not secret.isascii():
        guard.failed(source)
        raise unauthorized("the API key is not valid")
    ctx = get_ctx(request)
    now = ctx.clock.now()
    with transaction(ctx.sessions) as s:
        key = queries.key_by_secret(s, secret)
        if key is None:
            guard.failed(source)
            raise unauthorized("the API key is not valid")
        if key.last_used_at is None or now - key.last_used_at > LAST_USED_EVERY:
            # on its own after this transaction, best effort: a full disk must not fail a read
            after_commit(s, partial(disk.note_key_use, ctx, key.id, now))
        return principal_of(key)


def need(*scopes: str) -> Callable[[Principal], Principal]:
    """A dependency: the caller, whose key must have one of ``scopes`` (403 naming them otherwise)."""

    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not any(principal.has(s) for s in scopes):
            if scopes == (queries.ADMIN,):
                raise ServiceError("this needs an admin key", 403)
            named = " or ".join(repr(s) for s in scopes)
            raise ServiceError(f"this key lacks the {named} scope this needs", 403)
        return principal

    return check


ServiceDep = Annotated[Service, Depends(get_service)]
# any valid key, whatever its scopes
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(need(queries.ADMIN))]
# a domain's settings and keys, and changes to its calls (tags, retention, re-mix) and webhook redelivery
SettingsDep = Annotated[Principal, Depends(need(queries.SETTINGS))]
# calls, recordings, audio, pictures, interactions, stitches, links, jobs, webhook deliveries
ReadDep = Annotated[Principal, Depends(need(queries.READ))]
UploadDep = Annotated[Principal, Depends(need(queries.UPLOAD))]
# the domain itself and its settings (secrets masked): a key that reads or one that manages
ViewDep = Annotated[Principal, Depends(need(queries.READ, queries.SETTINGS))]


# --- throttling wrong keys ------------------------------------------------------------------------------

# after THROTTLE_FAILURES wrong keys or sign-ins from one address within THROTTLE_WINDOW_S, every further
# attempt from it (right or wrong: no oracle) is answered 429 until the oldest of them is that old
THROTTLE_FAILURES = 10
THROTTLE_WINDOW_S = 60.0
# addresses remembered at most (the oldest are forgotten first)
THROTTLE_SOURCES = 10_000


class Throttle:
    """Wrong keys per source address, in this process's memory (each API process counts its own)."""

    def __init__(self, failures: int = THROTTLE_FAILURES, window_s: float = THROTTLE_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.failures, self.window_s, self.clock = failures, window_s, clock
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, source: str) -> int:
        """Seconds until ``source`` may try again; 0 when it may now."""
        now = self.clock()
        with self._lock:
            times = self._seen.get(source)
            if times is None:
                return 0
            while times and now - times[0] >= self.window_s:
                times.popleft()
            if len(times) < self.failures:
                return 0
            return max(1, math.ceil(self.window_s - (now - times[0])))

    def check(self, source: str) -> None:
        """429 with Retry-After when ``source`` must wait."""
        wait = self.retry_after(source)
        if wait:
            raise HTTPException(429, f"too many wrong keys from this address; try again in {wait} s",
                                headers={"Retry-After": str(wait)})  # fmt: skip

    def failed(self, source: str) -> None:
        now = self.clock()
        with self._lock:
            times = self._seen.pop(source, None) or deque(maxlen=self.failures)
            times.append(now)
            self._seen[source] = times
            while len(self._seen) > THROTTLE_SOURCES:
                self._seen.popitem(last=False)


_throttle_lock = threading.Lock()


def throttle(request: Request) -> Throttle:
    """The app's throttle of wrong keys and sign-ins (made on first use)."""
    state = request.app.state
    with _throttle_lock:
        found: Throttle | None = getattr(state, "auth_throttle", None)
        if found is None:
            found = state.auth_throttle = Throttle()
    return found


def source_address(request: Request) -> str:
    """The address the request came from (behind a proxy, the proxy's: every client shares its count)."""
    return request.client.host if request.client else ""


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
