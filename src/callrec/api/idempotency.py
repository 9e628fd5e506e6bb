"""``Idempotency-Key``: a retried request gets the first one's answer instead of being carried out twice.

One row of ``idempotent_requests`` per (API key id, Idempotency-Key), made before the work starts. The
unique constraint on (scope, key) is the lock, so it holds across processes and hosts on SQLite and
PostgreSQL alike:

- the row is inserted with ``status`` 0 (in progress) and a fingerprint of the request;
- the request that inserted it does the work; on success it stores the status and JSON body; on a
  failure that left nothing behind it deletes the row, so the same key may be sent again;
- a request that finds the row finished gets that answer again (``Idempotent-Replayed: true``), or 422
  if its body is not the one the key was first used with; one that finds it in progress gets 409 with
  ``Retry-After: 1``.

While the work runs, the row's ``alive_at`` is renewed every ``HEARTBEAT_S``; a row in progress that has
not been renewed for ``STALE_AFTER`` belongs to a process that died (or lost its database) mid-request,
and the next request with that key takes it over. Rows are kept ``KEEP`` (24 h) and deleted a few at a
time whenever a new one is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from callrec.db.engine import transaction
from callrec.db.schema import IdempotentRequest
from callrec.errors import ServiceError
from callrec.service.context import Context

log = logging.getLogger("callrec.api.idempotency")

HEADER = "Idempotency-Key"
MAX_KEY = 200
# how long an answer is kept and replayed
KEEP = timedelta(hours=24)
# how often a request in progress says it is still alive, and after how long without that it is not
HEARTBEAT_S = 10.0
STALE_AFTER = timedelta(seconds=60)
# expired rows deleted per new row, so the table never grows past a day's keys and no insert waits long
PURGE_BATCH = 100
# a claim that keeps colliding with rows that vanish (released or expired meanwhile) gives up
_ATTEMPTS = 5


def parse_key(value: str | None) -> str | None:
    """The request's Idempotency-Key (None without one); 400 unless it is 1-200 printable ASCII characters."""
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_KEY or not all(" " <= c <= "~" for c in value):
        raise ServiceError(f"{HEADER} must be 1 to {MAX_KEY} printable ASCII characters", 400)
    return value


def fingerprint(*parts: bytes) -> str:
    """One hash of a request's parts (each length-prefixed, so parts never run into each other)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Replay:
    """The answer a finished request with this key got."""

    status: int
    body: dict[str, Any]

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status, headers={"Idempotent-Replayed": "true"})


@dataclass(slots=True)
class Claim:
    """This request holds the key: it does the work, then ``finish``es or ``release``s."""

    ctx: Context
    row_id: int
    request: str

    def touch(self) -> None:
        """Say the request is still being carried out."""
        self._update(body=_pending(self.request, self.ctx.clock.now()))

    def finish(self, status: int, body: dict[str, Any]) -> bool:
        """Keep the answer for the retries; False if the key was taken over meanwhile (it is logged)."""
        held = self._update(status=status, body={"request": self.request, "answer": body})
        if not held:
            log.warning("idempotent request %d was taken over before it finished", self.row_id)
        return held

    def release(self) -> None:
        """Forget the key (nothing was done, or what was done is found again by a retry); best effort:
        a row left behind goes stale and the next request with the key takes it over."""
        try:
            with transaction(self.ctx.sessions) as s:
                s.execute(delete(IdempotentRequest).where(IdempotentRequest.id == self.row_id,
                                                          IdempotentRequest.status == 0))  # fmt: skip
        except Exception as exc:
            log.warning("idempotent request %d not released (%s); it goes stale in %ds", self.row_id,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                        STALE_AFTER.total_seconds())  # fmt: skip

    def _update(self, **values: Any) -> bool:
        with transaction(self.ctx.sessions) as s:
            done = s.execute(
                update(IdempotentRequest)
                .where(IdempotentRequest.id == self.row_id, IdempotentRequest.status == 0)
                .values(**values)
            )
            return bool(done.rowcount == 1)  # type: ignore[attr-defined]

    @contextlib.asynccontextmanager
    async def kept_alive(self) -> AsyncIterator[None]:
        """Renew the claim every ``HEARTBEAT_S`` while the block runs."""
        task = asyncio.create_task(self._beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await run_in_threadpool(self.touch)
            except Exception as exc:  # the next beat tries again; the work itself decides the answer
                log.warning("idempotent request %d: heartbeat failed: %s", self.row_id, type(exc).__name__)


def claim(ctx: Context, scope: str, key: str, request: str) -> Claim | Replay:
    """Take ``key`` for this request, or the answer of the finished request that took it before.

    ``scope`` is the caller's API key id; ``request`` the fingerprint of what is asked. Raises 409 while
    another request with the key is in progress and 422 when the key was used for another request.
    """
    now = ctx.clock.now()
    _purge(ctx, now)
    for _ in range(_ATTEMPTS):
        made = _insert(ctx, scope, key, request, now)
        if made is not None:
            return Claim(ctx, made, request)
        with transaction(ctx.sessions) as s:
            row = s.scalar(
                select(IdempotentRequest).where(IdempotentRequest.scope == scope, IdempotentRequest.key == key)
            )
            if row is None:  # released (or purged) since the insert collided with it
                continue
            if row.status != 0 and row.created_at > now - KEEP:
                if row.body.get("request") != request:
                    raise ServiceError(f"this {HEADER} was already used with a different request body", 422)
                answer = row.body.get("answer")
                return Replay(row.status, answer if isinstance(answer, dict) else {})
            if row.status == 0 and not _stale(row, now):
                raise HTTPException(409, f"a request with this {HEADER} is still being carried out; retry shortly",
                                    headers={"Retry-After": "1"})  # fmt: skip
            # expired, or abandoned in progress: take it over (the delete and insert are one transaction,
            # so of two requests taking it over at once only one deletes it and the other collides again)
            gone = s.execute(delete(IdempotentRequest).where(IdempotentRequest.id == row.id,
                                                             IdempotentRequest.status == row.status))  # fmt: skip
            if gone.rowcount != 1:  # type: ignore[attr-defined]
                continue
            if row.status == 0:
                log.warning("idempotent request %d was abandoned in progress; taken over", row.id)
            fresh = IdempotentRequest(scope=scope, key=key, status=0, body=_pending(request, now), created_at=now)
            s.add(fresh)
            s.flush()
            return Claim(ctx, fresh.id, request)
    raise HTTPException(409, f"requests with this {HEADER} keep colliding; retry shortly",
                        headers={"Retry-After": "1"})  # fmt: skip


def _insert(ctx: Context, scope: str, key: str, request: str, now: datetime) -> int | None:
    """The new row's id, or None when the key is already taken."""
    try:
        with transaction(ctx.sessions) as s:
            row = IdempotentRequest(scope=scope, key=key, status=0, body=_pending(request, now), created_at=now)
            s.add(row)
            s.flush()
            return row.id
    except IntegrityError:
        return None


def _purge(ctx: Context, now: datetime) -> None:
    """Delete up to ``PURGE_BATCH`` rows older than ``KEEP``."""
    with transaction(ctx.sessions) as s:
        old = select(IdempotentRequest.id).where(IdempotentRequest.created_at < now - KEEP).limit(PURGE_BATCH)
        ids = list(s.scalars(old))
        if ids:
            s.execute(delete(IdempotentRequest).where(IdempotentRequest.id.in_(ids)))


def _pending(request: str, now: datetime) -> dict[str, Any]:
    return {"request": request, "alive_at": now.isoformat()}


def _stale(row: IdempotentRequest, now: datetime) -> bool:
    try:
        alive = datetime.fromisoformat(str(row.body.get("alive_at")))
    except ValueError:
        alive = row.created_at
    if alive.tzinfo is None:
        alive = alive.replace(tzinfo=now.tzinfo)
    return now - alive > STALE_AFTER
