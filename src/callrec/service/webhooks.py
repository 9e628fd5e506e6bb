"""Webhooks: each event becomes one delivery row per subscribed receiver, sent by a background job.

A receiver gets ``POST <url>`` with the JSON body stored on the row (a ``with_link`` link's URL is stored
sealed with the service's key and opened only for the POST) and these headers:

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
import socket
from typing import Any

from pydantic_core import to_jsonable_python
from sqlalchemy import select

from callrec.config import ConfigError, ServiceConfig
from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import Domain, Recording, WebhookDelivery
from callrec.errors import Conflict, NotFound, ServiceError
from callrec.secretbox import is_encrypted
from callrec.service import leased, links
from callrec.service.cards import call_card, recording_json
from callrec.service.context import Context
from callrec.service.domain_settings import load_settings
from callrec.service.queue import JobQueue

log = logging.getLogger("callrec.webhooks")

KIND = "webhook"  # queue messages read "webhook:<delivery id>"
PENDING, DELIVERING, DELIVERED, FAILED = "pending", "delivering", "delivered", "failed"
STATES = (PENDING, DELIVERING, DELIVERED, FAILED)
TIMEOUT_S = 10.0
BACKOFF_BASE_S = 10.0
BACKOFF_MAX_S = 3600.0
MAX_ATTEMPTS = 15  # about 8.5 hours of trying: 10 s, 20 s, ... then hourly
# longer than any one POST can take (each phase of it times out after TIMEOUT_S)
LEASE_S = 120.0
MAX_LOG = 100
USER_AGENT = "callrec-webhooks/1"

# a delivery: one POST to one receiver, retried for hours (receivers go down for longer than mixing does)
WEBHOOKS = leased.Work(
    name="webhook", model=WebhookDelivery, ready=PENDING, held=(DELIVERING,), failed=FAILED,
    message=lambda delivery_id: f"{KIND}:{delivery_id}",
    backoff=lambda ctx: leased.Backoff(BACKOFF_BASE_S, BACKOFF_MAX_S, MAX_ATTEMPTS),
    lease_s=lambda ctx: LEASE_S,
)  # fmt: skip


def public_base(config: ServiceConfig) -> str:
    """Where receivers reach the API: ``CALLREC_PUBLIC_URL``, else the HTTP address the service listens on
    (this host's name when that is every address). ``serve`` hands it to its worker as
    ``CALLREC_PUBLIC_URL``; a worker started alone needs it set."""
    if config.public_url:
        return config.public_url.rstrip("/")
    host = config.http_host if config.http_host not in ("0.0.0.0", "::", "") else socket.gethostname()
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.http_port}"


def signature(secret: str, timestamp: int, body: str) -> str:
    """The ``Callrec-Signature`` header's value for one attempt."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.{body}".encode(), hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def redeliver(ctx: Context, queue: JobQueue, delivery_id: str) -> None:
    """Send a delivery again (the same body, a fresh timestamp and signature) with a fresh set of retries."""
    now = ctx.clock.now()
    with transaction(ctx.sessions) as s:
        row = s.get(WebhookDelivery, delivery_id)
        if row is None:
            raise NotFound(f"no delivery {delivery_id[:40]!r}")
        if row.state == DELIVERING and row.lease_until is not None and row.lease_until > now:
            raise Conflict("the delivery is being sent right now; ask again once it is done")
        # the log keeps every attempt; ``attempts`` counts this round's, against MAX_ATTEMPTS
        row.state, row.attempts, row.next_attempt_at, row.enqueued_at = PENDING, 0, now, None
        row.lease_until, row.updated_at = None, now
    leased.enqueue_or_leave(ctx, WEBHOOKS, queue.put, delivery_id)


def record(ctx: Context, event: str, recording_id: str) -> list[str]:
    """One delivery row per receiver subscribed to ``event``; their ids (an event told twice makes none)."""
    now, base = ctx.clock.now(), public_base(ctx.config)
    with transaction(ctx.sessions) as s:
        rec = s.get(Recording, recording_id)
        domain = s.get(Domain, rec.domain_id) if rec is not None else None
        if rec is None or domain is None:
            return []
        receivers = [w for w in load_settings(s, domain).webhooks if event in w.events]
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
                next_attempt_at=now, enqueued_at=None, last_error="", log=[], created_at=now, updated_at=now,
            ))  # fmt: skip
            ids.append(delivery_id)
    return ids


def _link(s: Any, ctx: Context, rec: Recording, base: str) -> dict[str, Any] | None:
    try:
        made, token = links.create(s, ctx, domain_id=rec.domain_id, kind=links.RECORDING, target_id=rec.id,
                                   created_by="webhook")  # fmt: skip
    except ServiceError as exc:  # the event still goes out, without a link
        log.warning("no link for the webhook of %s: %s", rec.id, exc)
        return None
    # the token is stored sealed (only the sender opens it, just before the POST): the database and the
    # delivery log never hold a working link
    return {"id": made.id, "url": ctx.box.encrypt(links.url_for(base, token)), "expires_at": made.expires_at}


HIDDEN_LINK = "(sent to the receiver only)"


def as_sent(ctx: Context, body: str) -> str:
    """The body a receiver gets: a stored body with its link's URL opened (the signature covers this)."""
    data = json.loads(body)
    link = data.get("link") if isinstance(data, dict) else None
    if not isinstance(link, dict) or not isinstance(link.get("url"), str) or not is_encrypted(link["url"]):
        return body  # no link, or a row from before links were sealed
    try:
        link["url"] = ctx.box.decrypt(link["url"])
    except ConfigError:  # another service key: the event still goes out, without a link
        log.warning("the link of delivery %s cannot be opened with this service's key; sent without it", data.get("id"))
        data["link"] = None
    return json.dumps(data, separators=(",", ":"))


# how a delivery recorded before links were sealed starts its link (a sealed one starts with its "id")
_PLAIN_LINK = '"link":{"url":"'


def seal_plain_links(ctx: Context, batch: int = 200) -> int:
    """Seal the link URLs that deliveries recorded before this version keep in plain form (each a working
    token); how many were sealed. Run once per process by the webhook sweep."""
    sealed, after = 0, ""
    while True:
        with transaction(ctx.sessions) as s:
            query = select(WebhookDelivery).where(
                WebhookDelivery.body.contains(_PLAIN_LINK, autoescape=True), WebhookDelivery.id > after)
            rows = list(s.scalars(query.order_by(WebhookDelivery.id).limit(batch)))  # fmt: skip
            for row in rows:
                data = json.loads(row.body)
                link = data.get("link") if isinstance(data, dict) else None
                if isinstance(link, dict) and isinstance(link.get("url"), str) and not is_encrypted(link["url"]):
                    link["url"] = ctx.box.encrypt(link["url"])
                    row.body = json.dumps(data, separators=(",", ":"))
                    sealed += 1
        if len(rows) < batch:
            if sealed:
                log.info("sealed the public link in %d webhook deliveries recorded before links were sealed", sealed)
            return sealed
        after = rows[-1].id


def as_shown(body: str) -> dict[str, Any]:
    """A stored body as the deliveries API shows it: the link's URL (a bearer token) never appears."""
    data: dict[str, Any] = json.loads(body)
    link = data.get("link")
    if isinstance(link, dict) and "url" in link:
        data["link"] = link | {"url": HIDDEN_LINK}
    return data
