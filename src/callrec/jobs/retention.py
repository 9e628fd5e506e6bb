"""Deleting what has been kept long enough: expired recordings and raw tapes, each with an audit record."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select

from callrec.db.engine import transaction
from callrec.db.schema import COMPLETED, DELETED, FAILED, Audit, Call, Domain, Recording
from callrec.errors import StorageError
from callrec.service.context import Context
from callrec.service.domain_settings import load_settings
from callrec.service.retention import RetentionPolicy, expires_at, facts_of
from callrec.storage import integrity, keys

log = logging.getLogger("callrec.service.retention")
BATCH = 500


def sweep(ctx: Context, hook: Any = None) -> int:
    """Delete every recording past its expiry (checked again against the current policy) and expired tapes."""
    now = ctx.clock.now()
    deleted = 0
    with ctx.sessions() as s:
        due = list(
            s.scalars(
                select(Recording.id)
                .where(Recording.state.in_((COMPLETED, FAILED)), Recording.expires_at <= now)
                .limit(BATCH)
            )
        )
        tapes = list(
            s.scalars(
                select(Call.id).where(Call.tape_expires_at <= now, Call.tape_deleted_at.is_(None)).limit(BATCH)
            )
        )
    for rec_id in due:
        if delete_recording(ctx, rec_id, "retention period over", actor="retention"):
            deleted += 1
            if hook is not None:
                hook("recording.deleted", rec_id)
    for call_id in tapes:
        delete_tape(ctx, call_id, "tape retention period over")
    return deleted


def delete_recording(ctx: Context, recording_id: str, why: str, actor: str) -> bool:
    """Delete a recording's object and mark it deleted, unless a legal hold or the policy now keeps it."""
    now = ctx.clock.now()
    with ctx.sessions() as s:
        rec = s.get(Recording, recording_id)
        if rec is None or rec.state == DELETED:
            return False
        domain = s.get(Domain, rec.domain_id)
        assert domain is not None
        if actor == "retention":
            policy = RetentionPolicy.from_json(load_settings(s, domain).retention)
            until = expires_at(policy, facts_of(rec.call))
            if until is None or until > now:  # held, or the rules changed since expiry was computed
                with transaction(ctx.sessions) as s2:
                    fresh = s2.get(Recording, recording_id)
                    if fresh is not None:
                        fresh.expires_at = until
                return False
        key, spec, domain_id, size, md5 = rec.storage_key, dict(rec.storage), rec.domain_id, rec.bytes, rec.md5
    if key:
        try:
            storage = ctx.storage(spec)
            found = storage.stat(key)
            # only the object this row stored: one another writer put under the same key stays
            theirs = found and integrity.differs(found.size, found.md5, size, md5)
            if theirs:
                log.warning("recording %s: the object under %s is not the one it stored (%s); left in place",
                            recording_id, key, theirs)  # fmt: skip
            elif found is not None:
                storage.delete(key)
        except StorageError as exc:
            log.warning("cannot delete %s yet: %s", key, exc)
            return False
    with transaction(ctx.sessions) as s:
        rec = s.get(Recording, recording_id)
        if rec is None:
            return False
        rec.state, rec.deleted_at, rec.updated_at = DELETED, now, now
        # copies converted on request (?format=) go with it
        for cached in (ctx.config.data_dir / "cache").glob(f"{recording_id}.*"):
            cached.unlink(missing_ok=True)
        s.add(Audit(at=now, domain_id=domain_id, action="delete", object_kind="recording",
                    object_id=recording_id, storage_key=key, detail=why, actor=actor))  # fmt: skip
    log.info("deleted recording %s (%s): %s", recording_id, key, why)
    return True


def delete_tape(ctx: Context, call_id: str, why: str) -> bool:
    """Delete a call's raw tape from storage (and any local copy) and record it."""
    now = ctx.clock.now()
    with ctx.sessions() as s:
        call = s.get(Call, call_id)
        if call is None or call.tape_deleted_at is not None or call.legal_hold:
            return False
        key, spec, local, domain_id = call.tape_key, dict(call.tape_storage), call.tape_local, call.domain_id
    if key:
        storage = ctx.storage(spec)
        try:
            # only the files the tape put there (store_tape), never whatever else lies under its key
            for name in keys.TAPE_FILES:
                storage.delete(f"{key}/{name}")
        except StorageError as exc:
            log.warning("cannot delete tape %s yet: %s", key, exc)
            return False
    if local:
        shutil.rmtree(Path(local), ignore_errors=True)
    with transaction(ctx.sessions) as s:
        call = s.get(Call, call_id)
        if call is None:
            return False
        call.tape_deleted_at, call.tape_local = now, ""
        s.add(Audit(at=now, domain_id=domain_id, action="delete", object_kind="tape", object_id=call_id,
                    storage_key=key or local, detail=why, actor="retention"))  # fmt: skip
    return True
