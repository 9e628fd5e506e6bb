"""The JSON the API takes and gives: request bodies, response shapes, and the call card.

``call_card`` and ``recording_json`` build plain dicts from database rows, so other parts (webhooks,
public links, the UI) show a call exactly as the API does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from callrec import links as link_rules
from callrec.db.schema import Call, Link, Recording

DOMAIN_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"
# printable text: no control characters (PostgreSQL refuses NUL, and none belongs in a name)
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
MAX_TAGS = 50
Format = Literal["mp3", "wav"]
Codec = Literal["pcm", "alaw", "ulaw", "gsm"]
Bitrate = Literal[8, 16, 24, 32]
Rate = Literal[8000, 16000]
Tag = Annotated[str, Field(min_length=1, max_length=100, pattern=PRINTABLE)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ---------------------------------------------------------------------------------------


class DomainIn(_In):
    name: str = Field(pattern=DOMAIN_NAME, description="lowercase letters, digits, '.', '_' and '-'")
    settings: dict[str, Any] | None = Field(default=None, description="settings that differ from the defaults")


class KeyIn(_In):
    name: str = Field(default="", max_length=200, pattern=PRINTABLE, description="what the key is for")


class RetentionIn(_In):
    days: int | None = Field(default=None, ge=1, le=36500, description="keep for this many days (null: the rules)")
    forever: bool = False
    legal_hold: bool = False


class TagsIn(_In):
    tags: list[Tag] = Field(max_length=MAX_TAGS, description=f"at most {MAX_TAGS} tags")


class RemixIn(_In):
    """Output settings of a re-mix; each one left out is the domain's."""

    format: Format | None = None
    codec: Codec | None = None
    bitrate: Bitrate | None = None
    rate: Rate | None = None


# --- responses --------------------------------------------------------------------------------------


class DomainOut(BaseModel):
    name: str
    settings: dict[str, Any]
    created_at: datetime


class DomainList(BaseModel):
    items: list[DomainOut]


class KeyCreated(BaseModel):
    id: str
    key: str = Field(description="the secret, shown this once")
    domain: str
    created_at: datetime


class KeyOut(BaseModel):
    id: str
    name: str
    domain: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyList(BaseModel):
    items: list[KeyOut]


class RecordingOut(BaseModel):
    id: str
    call: str
    state: str
    reason: str
    format: str
    duration_s: float
    bytes: int
    created_at: datetime
    completed_at: datetime | None
    expires_at: datetime | None
    audio_url: str


class PartyOut(BaseModel):
    label: str
    role: str
    number: str
    name: str
    uri: str


class StreamOut(BaseModel):
    party: str
    label: str
    local: str
    remote: str
    codecs: list[str]
    quality: dict[str, Any]


class RetentionOut(BaseModel):
    days: int | None
    forever: bool
    legal_hold: bool
    expires_at: datetime | None


class TapeOut(BaseModel):
    stored: bool
    deleted: bool


class LinkOut(BaseModel):
    id: str
    kind: str
    target_id: str
    download_only: bool
    state: str = Field(description="active, expired or revoked")
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    uses: int


class CallCard(BaseModel):
    id: str
    call_id: str
    call_ids: list[str]
    domain: str
    interaction_id: str
    direction: str
    source: str
    started_at: datetime
    ended_at: datetime | None
    duration_s: float | None
    end_reason: str
    closed_cleanly: bool
    interrupted: bool
    parties: list[PartyOut]
    streams: list[StreamOut]
    tags: list[str]
    retention: RetentionOut
    recording: RecordingOut | None
    recordings: list[RecordingOut]
    tape: TapeOut
    links: list[LinkOut] = Field(description="the public links of the call's recordings, newest first")


class CallPage(BaseModel):
    items: list[CallCard]
    next_cursor: str | None


class InteractionOut(BaseModel):
    id: str
    calls: list[CallCard]


class JobOut(BaseModel):
    id: int
    domain: str | None
    recording_id: str | None
    kind: str
    state: str
    attempt: int
    error: str
    worker: str
    started_at: datetime
    finished_at: datetime | None
    next_attempt_at: datetime | None


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class UploadOut(BaseModel):
    calls: list[str] = Field(description="ids of the calls made from the upload")


# --- builders ---------------------------------------------------------------------------------------


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


def newest(call: Call) -> Recording | None:
    """The call's current recording: the one made last (a re-mix replaces the first)."""
    return max(call.recordings, key=lambda r: (r.created_at, r.id), default=None)


def call_card(
    call: Call, domain_name: str, base_url: str, links: list[Link] | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Everything known about a call, as ``GET /api/v1/calls/{id}`` shows it; ``links`` are its
    recordings' public links (``links_of_calls`` finds them for a page of cards in one query)."""
    current = newest(call)
    ids = call.info.get("call_ids") if isinstance(call.info, dict) else None
    duration = (call.ended_at - call.started_at).total_seconds() if call.ended_at is not None else None
    return {
        "id": call.id,
        "call_id": call.sip_call_id,
        "call_ids": [str(c) for c in ids] if isinstance(ids, list) else [call.sip_call_id],
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
