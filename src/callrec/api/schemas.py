"""The JSON the API takes and gives: request bodies, response shapes, and the call card.

``call_card`` and ``recording_json`` build plain dicts from database rows, so other parts (webhooks,
public links, the UI) show a call exactly as the API does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from callrec.media_limits import Bitrate, Codec, Format, Rate

DOMAIN_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"
# printable text: no control characters (PostgreSQL refuses NUL, and none belongs in a name)
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
MAX_TAGS = 50
Tag = Annotated[str, Field(min_length=1, max_length=100, pattern=PRINTABLE)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ---------------------------------------------------------------------------------------


class DomainIn(_In):
    name: str = Field(pattern=DOMAIN_NAME, description="lowercase letters, digits, '.', '_' and '-'")
    settings: dict[str, Any] | None = Field(default=None, description="settings that differ from the defaults")


Scope = Literal["admin", "settings", "read", "upload"]


class KeyIn(_In):
    name: str = Field(default="", max_length=200, pattern=PRINTABLE, description="what the key is for")
    scopes: list[Scope] | None = Field(
        default=None, max_length=4,
        description="what the key may do: settings, read, upload (default: all three); never more than the "
        "creating key may do",
    )  # fmt: skip


class AdminKeyIn(_In):
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
    domain: str | None = Field(description="the key's domain; null for an admin key")
    scopes: list[str]
    created_at: datetime


class KeyOut(BaseModel):
    id: str
    name: str
    domain: str | None = Field(description="the key's domain; null for an admin key")
    scopes: list[str]
    origin: str = Field(description="env (set by CALLREC_ADMIN_KEY), first-start, api, cli, or empty")
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
    uses: int = Field(
        description="how often the link was used, as a person counts: each opening of its page (GET /r/{token}; "
        "not the page's own reload while a recording is prepared) and each download (a GET of /r/{token}/audio "
        "served as an attachment, with download=1 or on a download-only link, or without Range, from its first "
        "byte); the player's Range requests, the picture and HEAD are not uses"
    )


class CallCard(BaseModel):
    id: str
    call_id: str
    call_ids: list[str] = Field(description="the Call-IDs of the SIP dialogs recorded as this call")
    original_call_ids: list[str] = Field(
        default_factory=list,
        description="the recorded call's own Call-ID(s) or Session-ID as its SIPREC client named them "
        "(rs-metadata <sipSessionID>, vendor extension data); a search by call_id finds them too",
    )
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

