"""A tape handed over during an upload outlives the request, even when the request is cut short."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from callrec.db.schema import Call
from callrec.service import outbox as outbox_module
from callrec.service.outbox import TapeOutbox
from callrec.service.pipeline import pending_tapes
from tests.api.conftest import Api, Captures, Tenant


def test_a_registered_tape_is_kept_for_the_outbox_when_the_upload_is_cut_short(
    api: Api, tenant: Tenant, captures: Captures, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = api.service.pipeline
    real_store, real_rename = pipeline.store_tape, os.rename
    failed: list[str] = []

    def storage_away(*args: Any, **kwargs: Any) -> bool:
        return False  # the tape stays where it is, as when storage refuses it

    def rename_once(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        # the move of the registered tape out of the request's staging folder fails, once
        if not failed and "/uploads/" in str(src) and "/tapes/" in str(dst):
            failed.append(str(src))
            raise OSError(5, "Input/output error")
        real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(pipeline, "store_tape", storage_away)
    monkeypatch.setattr(os, "rename", rename_once)
    files = {"file": ("c.pcap", captures.one.read_bytes())}
    answer = api.client.post("/api/v1/uploads", headers=tenant.headers, files=files)
    assert failed, "the move was tried"
    assert answer.status_code == 503, answer.text
    (call_id,) = answer.json()["calls"]  # registered, and said so
    monkeypatch.setattr(os, "rename", real_rename)
    monkeypatch.setattr(pipeline, "store_tape", real_store)
    tapes = api.service.ctx.config.data_dir / "tapes"
    kept = [f for f in pending_tapes(tapes, -1.0)]
    assert kept, "the tape was deleted with the request's staging folder"
    # the outbox delivers it: the call gets its tape in storage
    monkeypatch.setattr(outbox_module, "pending_tapes", lambda d, min_age_s=2.0, **kw: pending_tapes(d, -1.0, **kw))
    TapeOutbox(pipeline).run_once()
    with api.service.ctx.sessions() as s:
        call = s.scalar(select(Call).where(Call.id == call_id))
        assert call is not None and call.tape_key, (call.tape_key if call else None)
    assert not any(Path(f).exists() for f in kept)
