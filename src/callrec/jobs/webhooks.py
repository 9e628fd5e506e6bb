"""Webhooks: each event becomes one delivery row per subscribed receiver, sent by a background job.

A receiver gets ``POST <url>`` with the JSON body stored on the row and these headers:

- ``Content-Type: application/json``
- ``Callrec-Event``: ``recording.completed``, ``recording.failed`` or ``recording.deleted``
- ``Callrec-Delivery``: the delivery's id, the same on every retry and redelivery (deduplicate on it;
  it is also the body's ``id``)
- ``Callrec-Timestamp``: this attempt's time in Unix seconds
- ``Callrec-Signature``: ``v1=`` and the hex HMAC-SHA256, keyed with the domain's ``webhook_secret``, of
  ``f"{timestamp}.{body}"`` (the raw body as sent). A receiver recomputes it, compares in constant time
  and refuses a timestamp far (say 5 minutes) from its own clock, so a captured request cannot be replayed.

Any 2xx answer delivers. Anything else (another status, a redirect, a refused connection, no answer
within ``TIMEOUT_S``) is retried after ``BACKOFF_BASE_S`` doubling up to ``BACKOFF_MAX_S`` (±25 % jitter);
after ``MAX_ATTEMPTS`` attempts the delivery is ``failed``. A worker claims the row with a conditional
UPDATE and a lease before sending, so a message that arrives twice sends once, and a sweep re-queues
deliveries whose message was lost or whose worker died.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from pydantic_core import to_jsonable_python
from sqlalchemy import and_, or_, select, update

from callrec.config import ConfigError, ServiceConfig
from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import Domain, Recording, WebhookDelivery
from callrec.errors import ServiceError
from callrec.secretbox import is_encrypted
from callrec.service import links
from callrec.service.cards import call_card, recording_json
from callrec.service.context import Context
from callrec.service.pipeline import Pipeline

log = logging.getLogger("callrec.webhooks")

KIND = "webhook"  # queue messages read "webhook:<delivery id>"
PENDING, DELIVERING, DELIVERED, FAILED = "pending", "delivering", "delivered", "failed"
STATES = (PENDING, DELIVERING, DELIVERED, FAILED)
TIMEOUT_S = 10.0
BACKOFF_BASE_S = 10.0
BACKOFF_MAX_S = 3600.0
MAX_ATTEMPTS = 15  # about 8.5 hours of trying: 10 s, 20 s, ... then hourly
# longer than any one POST can take (each phase of it times out after TIMEOUT_S), so no heartbeat is needed
LEASE_S = 120.0
# a message up to this early still runs: the queue's timer and the database's clock never agree exactly
EARLY_S = 1.0
MAX_LOG = 100
BATCH = 500
USER_AGENT = "callrec-webhooks/1"


def install(pipeline: Pipeline) -> None:
    """Register the webhook hook, delivery handler and sweep on ``pipeline``."""
    hooks = Webhooks(pipeline)
    pipeline.hooks.append(hooks.on_event)
    pipeline.handlers[KIND] = hooks.deliver
    pipeline.sweeps.append(hooks.sweep)


def public_base(config: ServiceConfig) -> str:
    """Where receivers reach the API: ``CALLREC_PUBLIC_URL``, else the HTTP address the service listens on."""
    if config.public_url:
        return config.public_url.rstrip("/")
    host = f"[{config.http_host}]" if ":" in config.http_host else config.http_host
    return f"http://{host}:{config.http_port}"


def signature(secret: str, timestamp: int, body: str) -> str:
    """The ``Callrec-Signature`` header's value for one attempt."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.{body}".encode(), hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def backoff_s(attempts: int) -> float:
    """The wait before the next attempt after ``attempts`` failed ones, with jitter so receivers coming back
    are not hit by every waiting delivery at the same moment."""
    plain = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0 ** max(0, min(attempts - 1, 30)))
    return float(plain * random.uniform(0.75, 1.25))


def redeliver(ctx: Context, pipeline: Pipeline, delivery_id: str) -> None:
    """Send a delivery again (the same body, a fresh timestamp and signature) with a fresh set of retries."""
    now = ctx.clock.now()
    with transaction(ctx.sessions) as s:
        row = s.get(WebhookDelivery, delivery_id)
        if row is None:
            raise ServiceError(f"no delivery {delivery_id[:40]!r}", 404)
        if row.state == DELIVERING and row.lease_until is not None and row.lease_until > now:
            raise ServiceError("the delivery is being sent right now; ask again once it is done", 409)
        # the log keeps every attempt; ``attempts`` counts this round's, against MAX_ATTEMPTS
        row.state, row.attempts, row.next_attempt_at, row.enqueued_at = PENDING, 0, now, now
        row.lease_until, row.updated_at = None, now
    pipeline.queue.submit(KIND, delivery_id)


@dataclass(frozen=True, slots=True)
class _Claim:
    url: str
    body: str
    event: str
    secret: str
    problem: str  # why it cannot be sent at all ("" when it can)


class Webhooks:
    """The hook that records deliveries, the job that sends one, and the sweep that finds lost ones."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    # --- the hook: runs in the worker right after the event -------------------------------------------

    def on_event(self, ctx: Context, event: str, recording_id: str) -> None:
        try:
            ids = self._record(ctx, event, recording_id)
        except Exception:  # noqa: BLE001 - a webhook must never undo or stop the pipeline's work
            log.exception("webhooks for %s of %s were not recorded", event, recording_id)
            return
        for delivery_id in ids:
            try:
                self.pipeline.queue.submit(KIND, delivery_id)
            except Exception:  # noqa: BLE001 - the row exists: the sweep queues it once the queue is back
                log.warning("delivery %s not queued; the sweep will", delivery_id, exc_info=True)

    def _record(self, ctx: Context, event: str, recording_id: str) -> list[str]:
        now, base = ctx.clock.now(), public_base(ctx.config)
        with transaction(ctx.sessions) as s:
            rec = s.get(Recording, recording_id)
            domain = s.get(Domain, rec.domain_id) if rec is not None else None
            if rec is None or domain is None:
                return []
            receivers = [w for w in queries.load_settings(s, domain).webhooks if event in w.events]
            # an event told twice (a repeated hook) makes no second delivery
            done = set(s.scalars(select(WebhookDelivery.url).where(
                WebhookDelivery.recording_id == recording_id, WebhookDelivery.event == event)))  # fmt: skip
            card, ids = None, []
            for hook in receivers:
                if hook.url in done:
                    continue
                done.add(hook.url)
                card = card or call_card(rec.call, domain.name, base)
                delivery_id = queries.new_id()
                body = {
                    "id": delivery_id, "event": event, "at": now, "domain": domain.name,
                    "recording": recording_json(rec, base), "recording_url": f"{base}/api/v1/recordings/{rec.id}",
                    "call": card,
                    "link": _link(s, ctx, rec, base) if hook.with_link and event == "recording.completed" else None,
                }  # fmt: skip
                s.add(WebhookDelivery(
                    id=delivery_id, domain_id=rec.domain_id, event=event, recording_id=rec.id, url=hook.url,
                    body=json.dumps(to_jsonable_python(body), separators=(",", ":")), state=PENDING, attempts=0,
                    next_attempt_at=now, enqueued_at=now, last_error="", log=[], created_at=now, updated_at=now,
                ))  # fmt: skip
                ids.append(delivery_id)
        return ids

    # --- the job: ``webhook:<delivery id>`` on a worker ----------------------------------------------

    def deliver(self, delivery_id: str) -> None:
        ctx = self.pipeline.ctx
        claim = self._claim(delivery_id)
        if claim is None:
            return
        at = ctx.clock.now()
        if claim.problem:
            status, error, ms = None, claim.problem, 0
        else:
            status, error, ms = _post(claim, int(at.timestamp()), delivery_id)
        delay = self._finish(delivery_id, at, status, error, ms, final=bool(claim.problem))
        if delay is not None:
            self.pipeline.queue.submit(KIND, delivery_id, delay_s=delay)

    def _claim(self, delivery_id: str) -> _Claim | None:
        """Take the delivery if it is due (or its sender's lease ran out); what to send, and with which key."""
        ctx = self.pipeline.ctx
        now = ctx.clock.now()
        D = WebhookDelivery
        with transaction(ctx.sessions) as s:
            claimed = s.execute(
                update(D).where(D.id == delivery_id).where(or_(
                    (D.state == PENDING)
                    & or_(D.next_attempt_at.is_(None), D.next_attempt_at <= now + timedelta(seconds=EARLY_S)),
                    (D.state == DELIVERING) & (D.lease_until < now),
                )).values(state=DELIVERING, lease_until=now + timedelta(seconds=LEASE_S),
                          attempts=D.attempts + 1, updated_at=now)
            )  # fmt: skip
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            row = s.get(D, delivery_id)
            domain = s.get(Domain, row.domain_id) if row is not None else None
            if row is None or domain is None:
                return None
            settings = queries.load_settings(s, domain)
            secret, problem = settings.webhook_secret, ""
            if not any(w.url == row.url for w in settings.webhooks):
                problem = "the receiver is no longer among the domain's webhooks"
            elif not secret:
                problem = "the domain has no webhook_secret to sign with; set one and redeliver"
            elif is_encrypted(secret):
                try:
                    secret = ctx.box.decrypt(secret)
                except ConfigError:
                    problem = "the domain's webhook_secret cannot be decrypted with this service's key"
            return _Claim(row.url, row.body, row.event, secret, problem)

    def _finish(
        self, delivery_id: str, at: datetime, status: int | None, error: str, ms: int, *, final: bool
    ) -> float | None:
        """Log the attempt and settle the delivery; the delay before the next attempt, if there is one."""
        ctx = self.pipeline.ctx
        now = ctx.clock.now()
        with transaction(ctx.sessions) as s:
            row = s.get(WebhookDelivery, delivery_id)
            if row is None:
                return None
            entry = {"at": at.isoformat(), "status": status, "error": error, "ms": ms}
            row.log = [*row.log, entry][-MAX_LOG:]  # a new list: the JSON column sees the change
            row.last_status, row.last_error, row.lease_until, row.updated_at = status, error, None, now
            if not error:
                row.state, row.delivered_at, row.next_attempt_at = DELIVERED, now, None
                return None
            if final or row.attempts >= MAX_ATTEMPTS:
                row.state, row.next_attempt_at = FAILED, None
                log.warning("webhook %s to %s failed for good: %s", delivery_id, row.url, error)
                return None
            delay = backoff_s(row.attempts)
            row.state, row.next_attempt_at, row.enqueued_at = PENDING, now + timedelta(seconds=delay), now
        log.info("webhook %s: %s; retry in %.0f s", delivery_id, error, delay)
        return delay

    # --- the sweep -----------------------------------------------------------------------------------

    def sweep(self) -> None:
        self.requeue()

    def requeue(self) -> int:
        """Queue deliveries that have been due a while without being sent (their message was lost) and
        those whose sender's lease ran out (it died mid-send)."""
        ctx = self.pipeline.ctx
        now = ctx.clock.now()
        stale = now - timedelta(seconds=ctx.config.requeue_after_s)
        D = WebhookDelivery
        lost = and_(
            D.state == PENDING, or_(D.next_attempt_at.is_(None), D.next_attempt_at <= stale),
            or_(D.enqueued_at.is_(None), D.enqueued_at <= stale),
        )  # fmt: skip
        expired = and_(D.state == DELIVERING, D.lease_until < now)
        with transaction(ctx.sessions) as s:
            ids = list(s.scalars(select(D.id).where(or_(lost, expired)).limit(BATCH)))
            if ids:
                s.execute(update(D).where(D.id.in_(ids)).values(enqueued_at=now))
        for delivery_id in ids:
            self.pipeline.queue.submit(KIND, delivery_id)
        if ids:
            log.info("sweep queued %d webhook deliveries", len(ids))
        return len(ids)


def _link(s: Any, ctx: Context, rec: Recording, base: str) -> dict[str, Any] | None:
    try:
        made, token = links.create(s, ctx, domain_id=rec.domain_id, kind=links.RECORDING, target_id=rec.id,
                                   created_by="webhook")  # fmt: skip
    except ServiceError as exc:  # the event still goes out, without a link
        log.warning("no link for the webhook of %s: %s", rec.id, exc)
        return None
    return {"url": links.url_for(base, token), "expires_at": made.expires_at}


def _post(claim: _Claim, timestamp: int, delivery_id: str) -> tuple[int | None, str, int]:
    """One POST: (status or None, error or "", milliseconds)."""
    headers = {
        "Content-Type": "application/json", "User-Agent": USER_AGENT, "Callrec-Event": claim.event,
        "Callrec-Delivery": delivery_id, "Callrec-Timestamp": str(timestamp),
        "Callrec-Signature": signature(claim.secret, timestamp, claim.body),
    }  # fmt: skip
    started = time.monotonic()
    status: int | None = None
    try:
        with (
            httpx.Client(timeout=TIMEOUT_S, follow_redirects=False) as client,
            client.stream("POST", claim.url, content=claim.body.encode("utf-8"), headers=headers) as answer,
        ):
            status = answer.status_code
            error = "" if 200 <= status < 300 else f"the receiver answered {status}{_excerpt(answer)}"
    except httpx.TimeoutException:
        error = f"no answer within {TIMEOUT_S:g} s"
    except Exception as exc:  # noqa: BLE001 - whatever stops the request is this attempt's error
        error = f"the request failed: {exc}" if str(exc) else f"the request failed: {type(exc).__name__}"
    return status, error, round((time.monotonic() - started) * 1000)


def _excerpt(answer: httpx.Response, limit: int = 200) -> str:
    """The start of an error answer's body, printable, for the log (never more than ``limit`` bytes read)."""
    try:
        chunk = next(answer.iter_bytes(limit), b"")[:limit]
    except httpx.HTTPError:
        return ""
    text = "".join(c for c in chunk.decode("utf-8", "replace") if c.isprintable()).strip()
    return f": {text}" if text else ""
