"""Retention with a moved clock: expired recordings (and tapes) are deleted from storage, marked deleted and
audited; rules, per-call overrides and legal hold win as specified."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from callrec.db.engine import transaction
from callrec.db.schema import COMPLETED, DELETED, Audit, Call, Recording
from callrec.jobs import retention
from callrec.service.pipeline import Service
from callrec.service.retention import refresh_expiry
from callrec.service.schedule import FakeClock
from tests.service.backends import Backend
from tests.service.conftest import drain, set_settings
from tests.support.tapes import make_tape

pytestmark = pytest.mark.slow  # the pipeline mixing real calls on both backends (seconds each)

DAY = timedelta(days=1).total_seconds()


def _record(service: Service, backend: Backend, **kw: object) -> str:
    made = make_tape(backend.config.data_dir / "tapes", seconds=1.0, **kw)  # type: ignore[arg-type]
    call_id = service.pipeline.tape_closed(made.folder)
    drain(service)
    return call_id


def _rec(service: Service, call_id: str) -> Recording:
    with service.ctx.sessions() as s:
        rec = s.scalar(select(Recording).where(Recording.call_id == call_id))
        assert rec is not None
        return rec


def _object_exists(service: Service, rec: Recording) -> bool:
    return service.ctx.storage(rec.storage).stat(rec.storage_key) is not None


def _set_call(service: Service, call_id: str, **values: object) -> None:
    with transaction(service.ctx.sessions) as s:
        call = s.get(Call, call_id)
        assert call is not None
        for key, value in values.items():
            setattr(call, key, value)
    with service.ctx.sessions() as s:
        call = s.get(Call, call_id)
        assert call is not None
        refresh_expiry(service.ctx, call.domain_id, call_id)


def test_rules_overrides_and_legal_hold_decide_what_the_sweep_deletes(
    service: Service, backend: Backend, clock: FakeClock
) -> None:
    set_settings(service, "default", {"retention": {"days": 30, "rules": [
        {"days": 365, "direction": "inbound", "number": "+7495*"},
        {"days": None, "tag": "vip"},
    ]}})  # fmt: skip
    plain = _record(service, backend, numbers=("+78121110000", "201"))
    ruled = _record(service, backend, numbers=("+74951230001", "201"), extra={"direction": "inbound"})
    outbound = _record(service, backend, numbers=("+74951230001", "201"), extra={"direction": "outbound"})
    vip = _record(service, backend, extra={"tags": ["vip"]})
    held = _record(service, backend, numbers=("+78121110000", "202"))
    short = _record(service, backend, numbers=("+78121110000", "203"))
    everything = (plain, ruled, outbound, vip, held, short)
    assert all(_rec(service, c).state == COMPLETED for c in everything)
    _set_call(service, held, legal_hold=True)
    _set_call(service, short, retention_days=5)
    assert _rec(service, ruled).expires_at is not None and _rec(service, vip).expires_at is None

    clock.advance(6 * DAY)
    assert retention.sweep(service.ctx) == 1
    assert _rec(service, short).state == DELETED and not _object_exists(service, _rec(service, short))

    clock.advance(25 * DAY)  # day 31: the domain's 30 days are over
    assert retention.sweep(service.ctx) == 2
    states = {c: _rec(service, c).state for c in everything}
    assert states == {plain: DELETED, ruled: COMPLETED, outbound: DELETED, vip: COMPLETED, held: COMPLETED,
                      short: DELETED}, states  # fmt: skip
    for kept in (ruled, vip, held):
        assert _object_exists(service, _rec(service, kept))
    for gone in (plain, outbound):
        rec = _rec(service, gone)
        assert rec.deleted_at == clock.now() and not _object_exists(service, rec)

    # the hold is lifted: the recording goes at the next sweep, its 30 days being long over
    _set_call(service, held, legal_hold=False)
    assert retention.sweep(service.ctx) == 1 and _rec(service, held).state == DELETED
    # a year on, the rule's 365 days are over too; "keep forever" still keeps
    clock.advance(340 * DAY)
    assert retention.sweep(service.ctx) == 1
    assert _rec(service, ruled).state == DELETED and _rec(service, vip).state == COMPLETED
    with service.ctx.sessions() as s:
        audit = list(s.scalars(select(Audit).where(Audit.object_kind == "recording").order_by(Audit.id)))
    gone = [_rec(service, c).id for c in (short, plain, outbound, held, ruled)]
    # in the order of the sweeps; within one sweep the order is the database's
    assert [a.object_id for a in audit][0] == gone[0] and sorted(a.object_id for a in audit) == sorted(gone)
    assert all(a.action == "delete" and a.actor == "retention" and a.storage_key for a in audit)


def test_a_policy_made_longer_after_expiry_was_computed_keeps_the_recording(
    service: Service, backend: Backend, clock: FakeClock
) -> None:
    set_settings(service, "default", {"retention": {"days": 10, "rules": []}})
    call_id = _record(service, backend)
    # the rules change without a refresh of expiry: the sweep checks the policy again before deleting
    set_settings(service, "default", {"retention": {"days": 100, "rules": []}})
    clock.advance(11 * DAY)
    assert retention.sweep(service.ctx) == 0
    rec = _rec(service, call_id)
    assert rec.state == COMPLETED and rec.expires_at is not None and rec.expires_at > clock.now()


def test_raw_tapes_are_kept_for_their_own_period_and_not_under_legal_hold(
    service: Service, backend: Backend, clock: FakeClock
) -> None:
    set_settings(service, "default", {"keep_tape_days": 2})
    kept = _record(service, backend)
    held = _record(service, backend)
    _set_call(service, held, legal_hold=True)
    with service.ctx.sessions() as s:
        call = s.get(Call, kept)
        assert call is not None and call.tape_key
        tape_storage, tape_key = service.ctx.storage(call.tape_storage), call.tape_key
    assert list(tape_storage.list(tape_key + "/"))
    clock.advance(1 * DAY)
    retention.sweep(service.ctx)
    assert list(tape_storage.list(tape_key + "/")), "one day in, the tape stays"
    clock.advance(1.5 * DAY)
    retention.sweep(service.ctx)
    assert not list(tape_storage.list(tape_key + "/"))
    with service.ctx.sessions() as s:
        assert s.get(Call, kept).tape_deleted_at is not None  # type: ignore[union-attr]
        assert s.get(Call, held).tape_deleted_at is None  # type: ignore[union-attr]
        audit = s.scalars(select(Audit).where(Audit.object_kind == "tape")).all()
    assert [a.object_id for a in audit] == [kept]


def test_keep_tape_days_zero_deletes_the_tape_once_the_recording_is_stored(
    service: Service, backend: Backend
) -> None:
    call_id = _record(service, backend)
    with service.ctx.sessions() as s:
        call = s.get(Call, call_id)
        assert call is not None and call.tape_deleted_at is not None
        assert not list(service.ctx.storage(call.tape_storage).list(call.tape_key + "/"))
