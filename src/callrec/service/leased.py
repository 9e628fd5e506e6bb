"""The one machine for background work held by a lease: claim, fence, heartbeat, back-off, requeue.

Recordings, stitches and webhook deliveries are rows with a ``state``, ``attempts``, ``next_attempt_at``,
``enqueued_at``, ``lease_until``, ``worker`` and ``lease_token``. A queue message only says "look at this
row"; the row decides:

- **claim**: a conditional UPDATE takes a row that is due (``ready`` state, ``next_attempt_at`` passed) or
  whose holder's lease ran out, sets the lease and increments ``lease_token``, the claim's fencing token.
  Times come from ``ctx.clock``, which on a shared database is the database's clock (see
  ``service.clock``), so a host whose own clock is wrong neither steals a lease nor keeps one too long.
- **fence**: every later write of the job is made inside ``Claim.fenced()``, a transaction that first
  renews the lease with ``WHERE lease_token = <ours>``; when another worker has taken the row meanwhile
  (this one was frozen, or lost its database for longer than the lease) the write is refused with
  ``LeaseLost`` and the job's result is discarded. Output keys are per job, so a discarded result
  overwrites nothing.
- **settle**: ``Claim.retry_or_fail`` puts the row back with back-off (a ``Transient`` error: without
  limit and without counting the attempt) or fails it once its attempts are used up.
- **requeue**: ``requeue`` (run by the sweep) queues rows that are due but whose message is gone and
  rows whose holder's lease ran out. ``enqueued_at`` is set only once a message was really queued, so a
  queue that was down is caught up with at the next sweep, not a minute later.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from callrec.db.engine import transaction
from callrec.errors import CallrecError, Permanent, Transient
from callrec.service.context import Context

log = logging.getLogger("callrec.leased")

# a message up to this early still runs: a queue's timer and the database's clock never agree exactly
EARLY = timedelta(seconds=1)
BATCH = 1000


class LeaseLost(CallrecError):
    """Another worker holds the row now: this worker's result is discarded."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits between attempts: ``base_s`` doubling up to ``max_s``, ±``jitter`` so that work failing
    together does not come back together; ``attempts`` counted failures make the row failed."""

    base_s: float
    max_s: float
    attempts: int
    jitter: float = 0.25

    def delay_s(self, attempts: int) -> float:
        plain = min(self.max_s, self.base_s * 2.0 ** max(0, min(attempts - 1, 30)))
        return float(plain * random.uniform(1 - self.jitter, 1 + self.jitter))


@dataclass(frozen=True, slots=True)
class Work:
    """One kind of leased row: its model, its states, its queue message and its back-off."""

    name: str
    model: Any  # a mapped class with the columns named in the module docstring
    ready: str  # waiting to be claimed
    held: tuple[str, ...]  # states a worker holds it in; the first is the one a claim sets
    failed: str
    message: Callable[[str], str]  # the queue message that names one row
    backoff: Callable[[Context], Backoff]
    lease_s: Callable[[Context], float]


@dataclass(slots=True)
class Claim:
    """A row this worker holds: ``token`` is its fencing token, ``attempts`` this attempt's number."""

    ctx: Context
    work: Work
    id: str
    token: int
    attempts: int

    def _mine(self) -> ColumnElement[bool]:
        m = self.work.model
        return and_(m.id == self.id, m.lease_token == self.token, m.state.in_(self.work.held))

    def touch(self, s: Session) -> bool:
        """Renew the lease if the row is still ours (and lock it until ``s`` commits)."""
        until = self.ctx.clock.now() + timedelta(seconds=self.work.lease_s(self.ctx))
        done = s.execute(update(self.work.model).where(self._mine()).values(lease_until=until))
        return bool(done.rowcount == 1)  # type: ignore[attr-defined]

    @contextmanager
    def fenced(self) -> Iterator[Session]:
        """A transaction in which the row is still ours; ``LeaseLost`` (nothing written) when it is not."""
        with transaction(self.ctx.sessions) as s:
            if not self.touch(s):
                raise LeaseLost(f"{self.work.name} {self.id}: another worker holds it now; this result is discarded")
            yield s

    @contextmanager
    def heartbeat(self) -> Iterator[threading.Event]:
        """Keep the lease fresh while the body runs; the event is set if the lease was lost."""
        lost = threading.Event()
        stop = threading.Event()
        period = max(0.2, self.work.lease_s(self.ctx) / 3)

        def beat() -> None:
            while not stop.wait(period):
                try:
                    with transaction(self.ctx.sessions) as s:
                        if not self.touch(s):
                            lost.set()
                            return
                except Exception:  # noqa: BLE001 - a missed renewal only risks a takeover, which the fence makes safe
                    log.warning("lease renewal of %s %s failed", self.work.name, self.id, exc_info=True)

        thread = threading.Thread(target=beat, name=f"lease-{self.work.name}-{self.id[:8]}", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            stop.set()
            thread.join(timeout=5)

    def release(self, s: Session, *, delay_s: float, reason: str, count: bool = True) -> datetime:
        """Back to ``ready`` after ``delay_s`` (inside ``fenced``); ``count=False`` gives the attempt back."""
        m = self.work.model
        now = self.ctx.clock.now()
        due = now + timedelta(seconds=delay_s)
        values: dict[str, Any] = {
            "state": self.work.ready, "next_attempt_at": due, "enqueued_at": now, "lease_until": None,
            "reason_col": reason, "updated_at": now,
        }  # fmt: skip
        _reason(m, values)
        if not count:
            values["attempts"] = m.attempts - 1
        s.execute(update(m).where(m.id == self.id).values(**values))
        return due

    def retry_or_fail(
        self, exc: BaseException, enqueue: Callable[[str, float], None], also: Settled | None = None
    ) -> tuple[bool, str, float]:
        """Settle a failed attempt: (failed for good, reason, delay before the next attempt).

        A ``Transient`` error is retried without limit and gives its attempt back; a ``Permanent`` one
        fails at once; any other error is retried with back-off until the kind's attempts are used up.
        ``also`` writes what else goes with it in the same fenced transaction. ``LeaseLost`` when
        another worker holds the row: nothing is written.
        """
        reason = str(exc) if isinstance(exc, CallrecError) else f"{type(exc).__name__}: {exc}"
        transient = isinstance(exc, Transient)
        policy = self.work.backoff(self.ctx)
        final = isinstance(exc, Permanent) or (not transient and self.attempts >= policy.attempts)
        delay = 0.0 if final else policy.delay_s(max(1, self.attempts))
        m = self.work.model
        with self.fenced() as s:
            if final:
                now = self.ctx.clock.now()
                values: dict[str, Any] = {"state": self.work.failed, "next_attempt_at": None, "lease_until": None,
                                          "reason_col": reason, "updated_at": now}  # fmt: skip
                _reason(m, values)
                s.execute(update(m).where(m.id == self.id).values(**values))
                next_at = None
            else:
                next_at = self.release(s, delay_s=delay, reason=reason, count=not transient)
            if also is not None:
                also(s, self, final, reason, next_at)
        log.warning("%s %s: %s (%s)", self.work.name, self.id, reason, "failed" if final else f"retry in {delay:.1f} s")
        if not final and not _enqueue_quietly(enqueue, self.work.message(self.id), delay):
            with transaction(self.ctx.sessions) as s:  # not queued: the next sweep queues it when due
                s.execute(update(m).where(m.id == self.id, m.enqueued_at.is_not(None)).values(enqueued_at=None))
        return final, reason, delay


# what a kind writes beside a settled failure: (session, claim, failed for good, reason, next attempt)
Settled = Callable[[Session, "Claim", bool, str, "datetime | None"], None]


def _reason(model: Any, values: dict[str, Any]) -> None:
    """Each table names its failure text differently: ``reason`` or ``last_error``."""
    text = values.pop("reason_col")
    if hasattr(model, "reason"):
        values["reason"] = text
    elif hasattr(model, "last_error"):
        values["last_error"] = text


def claim(ctx: Context, work: Work, object_id: str, *, extra: ColumnElement[bool] | None = None) -> Claim | None:
    """Take the row if it is due (or its holder's lease ran out); None when it is not this worker's to run."""
    m = work.model
    now = ctx.clock.now()
    takeable = or_(
        (m.state == work.ready) & or_(m.next_attempt_at.is_(None), m.next_attempt_at <= now + EARLY),
        m.state.in_(work.held) & (m.lease_until < now),
    )
    where = and_(m.id == object_id, takeable) if extra is None else and_(m.id == object_id, takeable, extra)
    values: dict[str, Any] = {
        "state": work.held[0], "lease_until": now + timedelta(seconds=work.lease_s(ctx)),
        "attempts": m.attempts + 1, "lease_token": m.lease_token + 1, "updated_at": now,
    }  # fmt: skip
    if hasattr(m, "worker"):
        values["worker"] = ctx.node
    with transaction(ctx.sessions) as s:
        done = s.execute(update(m).where(where).values(**values))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return None
        token, attempts = s.execute(select(m.lease_token, m.attempts).where(m.id == object_id)).one()
    return Claim(ctx, work, object_id, int(token), int(attempts))


def lost(work: Work, ctx: Context, requeue_after_s: float) -> ColumnElement[bool]:
    """Rows that are due but were not queued recently: their message may be lost."""
    m = work.model
    now = ctx.clock.now()
    stale = now - timedelta(seconds=requeue_after_s)
    return and_(
        m.state == work.ready, or_(m.next_attempt_at.is_(None), m.next_attempt_at <= now),
        or_(m.enqueued_at.is_(None), m.enqueued_at <= stale),
    )  # fmt: skip


def expired(work: Work, ctx: Context) -> ColumnElement[bool]:
    """Rows whose holder stopped renewing its lease (it died, or froze)."""
    m = work.model
    return and_(m.state.in_(work.held), m.lease_until < ctx.clock.now())


def requeue(
    ctx: Context, work: Work, enqueue: Callable[[str, float], None], where: ColumnElement[bool]
) -> tuple[int, bool]:
    """Queue every row ``where`` selects: (how many were queued, whether the queue took them all).

    ``enqueued_at`` is set only for the messages really queued."""
    m = work.model
    with ctx.sessions() as s:
        ids = list(s.scalars(select(m.id).where(where).limit(BATCH)))
    sent: list[str] = []
    for object_id in ids:
        try:
            enqueue(work.message(object_id), 0.0)
        except Exception as exc:  # noqa: BLE001 - the queue is down: the next sweep tries again
            log.warning("cannot queue %s %s (%s); the next sweep tries again", work.name, object_id, exc)
            break
        sent.append(object_id)
    if sent:
        with transaction(ctx.sessions) as s:
            s.execute(update(m).where(m.id.in_(sent)).values(enqueued_at=ctx.clock.now()))
        log.info("sweep queued %d %s rows", len(sent), work.name)
    return len(sent), len(sent) == len(ids)


def _enqueue_quietly(enqueue: Callable[[str, float], None], message: str, delay_s: float) -> bool:
    """Queue a message; False when the queue is down (the row holds the state, and the sweep finds it)."""
    try:
        enqueue(message, delay_s)
    except Exception as exc:  # noqa: BLE001 - the row holds the state; the sweep finds it
        log.warning("cannot queue %s (%s); the sweep will", message, exc)
        return False
    return True


def enqueue_or_leave(ctx: Context, work: Work, enqueue: Callable[[str, float], None], object_id: str,
                     delay_s: float = 0.0) -> bool:  # fmt: skip
    """Queue a row's message and note it; when the queue is down, leave it to the sweep (and say so)."""
    if not _enqueue_quietly(enqueue, work.message(object_id), delay_s):
        return False
    m = work.model
    with transaction(ctx.sessions) as s:
        s.execute(update(m).where(m.id == object_id).values(enqueued_at=ctx.clock.now()))
    return True
