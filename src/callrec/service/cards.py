"""The JSON shapes of calls, recordings and links that the API answers with and webhooks send."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from callrec.db.queries import newest
from callrec.db.schema import Call, Link, Recording
from callrec.service import links as link_rules


def recording_json(rec: Recording, base_url: str) -> dict[str, Any]:
    return {
        "id": rec.id,
        "call": rec.call_id,
        "state": rec.state,
        "reason": rec.reason,
        "format": rec.format,
        "duration_s": round(rec.duration_s, 3),
        "bytes": rec.bytes,
        "created_at": rec.created_at,
        "completed_at": rec.completed_at,
        "expires_at": rec.expires_at,
        "audio_url": f"{base_url}/api/v1/recordings/{rec.id}/audio",
    }


def link_json(link: Link, now: datetime) -> dict[str, Any]:
    return {
        "id": link.id, "kind": link.kind, "target_id": link.target_id, "download_only": link.download_only,
        "state": link_rules.state_of(link, now), "created_at": link.created_at, "expires_at": link.expires_at,
        "revoked_at": link.revoked_at, "last_used_at": link.last_used_at, "uses": link.uses,
    }  # fmt: skip


def call_card(
    call: Call, domain_name: str, base_url: str, links: list[Link] | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Everything known about a call, as ``GET /api/v1/calls/{id}`` shows it; ``links`` are its
    recordings' public links (``links_of_calls`` finds them for a page of cards in one query)."""
    current = newest(call)
    ids = call.info.get("call_ids") if isinstance(call.info, dict) else None
    originals = call.info.get("original_call_ids") if isinstance(call.info, dict) else None
    duration = (call.ended_at - call.started_at).total_seconds() if call.ended_at is not None else None
    return {
        "id": call.id,
        "call_id": call.sip_call_id,
        "call_ids": [str(c) for c in ids] if isinstance(ids, list) else [call.sip_call_id],
        "original_call_ids": [str(c) for c in originals] if isinstance(originals, list) else [],
        "domain": domain_name,
        "interaction_id": call.interaction_id,
        "direction": call.direction,
        "source": call.source,
        "started_at": call.started_at,
        "ended_at": call.ended_at,
        "duration_s": None if duration is None else round(max(0.0, duration), 3),
        "end_reason": call.end_reason,
        "closed_cleanly": call.closed_cleanly,
        "interrupted": call.interrupted,
        "parties": [
            {"label": p.label, "role": p.role, "number": p.number, "name": p.name, "uri": p.uri} for p in call.parties
        ],
        "streams": [
            {
                "party": s.party,
                "label": s.label,
                "local": s.local,
                "remote": s.remote,
                "codecs": list(s.codecs),
                "quality": dict(s.quality),
            }
            for s in call.streams
        ],
        "tags": [str(t) for t in call.tags],
        "retention": retention_json(call),
        "recording": recording_json(current, base_url) if current is not None else None,
        "recordings": [recording_json(r, base_url) for r in call.recordings],
        "tape": {
            "stored": bool(call.tape_key) and call.tape_deleted_at is None,
            "deleted": call.tape_deleted_at is not None,
        },
        "links": [link_json(link, now or datetime.now(UTC)) for link in links or []],
    }


def links_of_calls(s: Session, calls: list[Call]) -> dict[str, list[Link]]:
    """The recording links of each call (by the call's id), newest first, in one query."""
    owner = {r.id: c.id for c in calls for r in c.recordings}
    found: dict[str, list[Link]] = {c.id: [] for c in calls}
    if not owner:
        return found
    query = select(Link).where(Link.kind == "recording", Link.target_id.in_(list(owner)))
    for link in s.scalars(query.order_by(Link.created_at.desc(), Link.id.desc())):
        found[owner[link.target_id]].append(link)
    return found


def retention_json(call: Call) -> dict[str, Any]:
    current = newest(call)
    return {
        "days": call.retention_days,
        "forever": call.retention_forever,
        "legal_hold": call.legal_hold,
        "expires_at": current.expires_at if current is not None else None,
    }
