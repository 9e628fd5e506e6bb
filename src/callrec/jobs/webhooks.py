"""The webhook delivery job: ``webhook:<delivery id>`` on a worker, its hook and its sweep.

What a receiver gets, and how to check it, is described in ``callrec.service.webhooks``. The row is
claimed, fenced and settled by ``service.leased`` like every other piece of background work, so a message
that arrives twice sends once and a delivery whose sender died is sent again by the sweep.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import httpx

from callrec.config import ConfigError
from callrec.db.schema import Domain, WebhookDelivery
from callrec.errors import CallrecError, EgressRefused, Permanent
from callrec.secretbox import is_encrypted
from callrec.service import egress, leased
from callrec.service import webhooks as spec
from callrec.service.context import Context
from callrec.service.domain_settings import load_settings
from callrec.service.egress import Policy
from callrec.service.leased import LeaseLost
from callrec.service.pipeline import Pipeline
from callrec.service.webhooks import (
    DELIVERED,
    KIND,
    MAX_LOG,
    USER_AGENT,
    WEBHOOKS,
    record,
    signature,
)

log = logging.getLogger("callrec.webhooks")


def install(pipeline: Pipeline) -> None:
    """Register the webhook hook, delivery handler and sweep on ``pipeline``."""
    hooks = Webhooks(pipeline)
    pipeline.hooks.append(hooks.on_event)
    pipeline.handlers[KIND] = hooks.deliver
    pipeline.sweeps.append(hooks.sweep)


@dataclass(frozen=True, slots=True)
class _Claim:
    url: str
    body: str
    event: str
    secret: str
    problem: str  # why it cannot be sent at all ("" when it can)


class _Refused(CallrecError):
    """The receiver did not take the delivery (an answer other than 2xx, no answer, no connection)."""


class Webhooks:
    """The hook that records deliveries, the job that sends one, and the sweep that finds lost ones."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._sealed = False

    def on_event(self, ctx: Context, event: str, recording_id: str) -> None:
        try:
            ids = record(ctx, event, recording_id)
        except Exception:  # noqa: BLE001 - a webhook must never undo or stop the pipeline's work
            log.exception("webhooks for %s of %s were not recorded", event, recording_id)
            return
        for delivery_id in ids:
            leased.enqueue_or_leave(ctx, WEBHOOKS, self.pipeline.queue.put, delivery_id)

    def deliver(self, delivery_id: str) -> None:
        ctx = self.pipeline.ctx
        held = leased.claim(ctx, WEBHOOKS, delivery_id)
        if held is None:
            return
        try:
            what = _what_to_send(held)
            if not what.problem:  # the link's token is opened only now, for this POST (and signed with it)
                what = replace(what, body=spec.as_sent(ctx, what.body))
            at = ctx.clock.now()
            refused = False
            if what.problem:
                status, error, ms = None, what.problem, 0
            else:
                status, error, ms, refused = _post(what, int(at.timestamp()), delivery_id, ctx.egress)
            entry = {"at": at.isoformat(), "status": status, "error": error, "ms": ms}
            if not error:
                with held.fenced() as s:
                    row = s.get(WebhookDelivery, delivery_id)
                    assert row is not None
                    _log(row, entry, status)
                    row.state, row.delivered_at, row.next_attempt_at = DELIVERED, ctx.clock.now(), None
                    row.lease_until, row.last_error, row.updated_at = None, "", ctx.clock.now()
                return
            problem = Permanent(error) if what.problem or refused else _Refused(error)

            def logged(s: Any, claim: leased.Claim, final: bool, reason: str, next_at: datetime | None) -> None:
                row = s.get(WebhookDelivery, delivery_id)
                if row is not None:
                    _log(row, entry, status)

            held.retry_or_fail(problem, self.pipeline.queue.put, also=logged)
        except LeaseLost as exc:
            log.warning("%s", exc)

    def sweep(self) -> None:
        if not self._sealed:  # once per process: links older versions stored in plain form
            spec.seal_plain_links(self.pipeline.ctx)
            self._sealed = True
        self.requeue()

    def requeue(self) -> int:
        """Queue deliveries that have been due a while without being sent (their message was lost) and
        those whose sender's lease ran out (it died mid-send)."""
        ctx = self.pipeline.ctx
        where = leased.lost(WEBHOOKS, ctx, ctx.config.requeue_after_s) | leased.expired(WEBHOOKS, ctx)
        return leased.requeue(ctx, WEBHOOKS, self.pipeline.queue.put, where)[0]


def _log(row: WebhookDelivery, entry: dict[str, Any], status: int | None) -> None:
    row.log = [*row.log, entry][-MAX_LOG:]  # a new list: the JSON column sees the change
    row.last_status = status


def _what_to_send(held: leased.Claim) -> _Claim:
    """What to send, and with which key; ``problem`` says why it cannot be sent at all."""
    ctx = held.ctx
    with held.fenced() as s:
        row = s.get(WebhookDelivery, held.id)
        domain = s.get(Domain, row.domain_id) if row is not None else None
        if row is None or domain is None:
            return _Claim("", "", "", "", "the delivery's domain is gone")
        settings = load_settings(s, domain)
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


def _post(claim: _Claim, timestamp: int, delivery_id: str, rules: Policy) -> tuple[int | None, str, int, bool]:
    """One POST: (status or None, error or "", milliseconds, refused by the egress policy).

    The connection is made through the egress policy (``service.egress``): a receiver on a refused
    address gets nothing, and the attempt fails for good saying why, with no answer body in the log (nor
    the body of a receiver on an inside address the operator allow-listed)."""
    headers = {
        "Content-Type": "application/json", "User-Agent": USER_AGENT, "Callrec-Event": claim.event,
        "Callrec-Delivery": delivery_id, "Callrec-Timestamp": str(timestamp),
        "Callrec-Signature": signature(claim.secret, timestamp, claim.body),
    }  # fmt: skip
    started = time.monotonic()
    status: int | None = None
    refused, guard = False, egress.Guard(rules)
    try:
        with (
            httpx.Client(
                timeout=spec.TIMEOUT_S, follow_redirects=False, transport=egress.transport(guard), trust_env=False
            ) as client,
            client.stream("POST", claim.url, content=claim.body.encode("utf-8"), headers=headers) as answer,
        ):
            status = answer.status_code
            # an inside receiver (admitted by the operator's allow-list) answers for the operator, not the tenant
            excerpt = "" if guard.inside else _excerpt(answer)
            error = "" if 200 <= status < 300 else f"the receiver answered {status}{excerpt}"
    except EgressRefused as exc:
        error, refused = f"not sent: {exc}", True
    except httpx.TimeoutException:
        error = f"no answer within {spec.TIMEOUT_S:g} s"
    except Exception as exc:  # noqa: BLE001 - whatever stops the request is this attempt's error
        error = f"the request failed: {exc}" if str(exc) else f"the request failed: {type(exc).__name__}"
    return status, error, round((time.monotonic() - started) * 1000), refused


def _excerpt(answer: httpx.Response, limit: int = 200) -> str:
    """The start of an error answer's body, printable, for the log (never more than ``limit`` bytes read)."""
    try:
        chunk = next(answer.iter_bytes(limit), b"")[:limit]
    except httpx.HTTPError:
        return ""
    text = "".join(c for c in chunk.decode("utf-8", "replace") if c.isprintable()).strip()
    return f": {text}" if text else ""

