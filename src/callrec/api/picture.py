"""The picture of a conversation: both channels' waveforms, who spoke when, silences and overlaps.

What comes from the audio (peaks, per-channel speech) is computed once per version of the file and
cached as JSON in this host's cache beside the converted copies (``callrec.service.cache``: keyed by the
row's id and md5, bounded, cleaned of deleted recordings); who the speakers are is read from the call each time,
so the picture follows the call card. A party's own speaking segments (measured by the mixer on that
party's audio, ``streams[i].quality["speech"]``) are used when the card has them: that is how a
conference, whose voices share both channels, shows each participant. Otherwise the channels speak
for the parties: left the caller, right the callee.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from callrec.api import interactions
from callrec.api.audio import check_completed, verify_file
from callrec.api.deps import ReadDep, ServiceDep
from callrec.api.interactions import DomainName
from callrec.api.recordings import find_recording
from callrec.db.schema import COMPLETED, DELETED, Call, Party, Recording, Stitch
from callrec.errors import ServiceError, StorageError
from callrec.media import analyze
from callrec.service import cache
from callrec.service import stitches as stitching
from callrec.service.context import Context

# bumped when the cached analysis changes shape or method, so old cache files are not read
VERSION = 1
PICTURE_SUFFIX = "picture.json"
CHANNEL_NAMES = {1: ["mono"], 2: ["left", "right"]}
ROLES = {"caller": "Caller", "callee": "Callee", "participant": "Participant"}
Segments = list[list[float]]


class Speaker(BaseModel):
    party: str = Field(description='the party ("A", "B", "P1", ...) or, in a stitch, who')
    label: str = Field(description="a name or number to show")
    channel: int | None = Field(description="the channel carrying this voice alone; null when it shares both")
    segments: list[list[float]] = Field(description="[from_s, to_s] spans where this speaker speaks")


class Channel(BaseModel):
    index: int
    name: str
    peaks: list[list[float]] = Field(description="[min, max] in -1..1 per equal slice of the recording")


class Chapter(BaseModel):
    call_id: str
    who: list[str] = Field(description="the employees of this call")
    from_s: float
    to_s: float


class Picture(BaseModel):
    duration_s: float
    channels: list[Channel]
    speakers: list[Speaker]
    silences: list[list[float]] = Field(description="spans where nobody speaks for more than 2 s")
    overlaps: list[list[float]] = Field(description="spans where two or more speak at once")
    chapters: list[Chapter] = Field(description="a stitch's member calls in its time; empty for one recording")


# --- the audio's part, cached ------------------------------------------------------------------------


def _analysis(ctx: Context, row: Recording | Stitch) -> dict[str, Any]:
    """The analysis of a completed row's stored file, from this host's cache or made now (and cached)."""
    store, key = cache.of(ctx), cache.Key.of(row, PICTURE_SUFFIX)
    path = store.get(key)
    if path is not None:
        try:
            cached = json.loads(path.read_text("utf-8"))
            if isinstance(cached, dict) and cached.get("version") == VERSION:
                return cached
        except (OSError, ValueError):
            pass  # evicted meanwhile, or unreadable: make it again
    made: dict[str, Any] = {}

    def build(folder: Path) -> Path:
        source = cache.stored_file(ctx, row.storage, row.storage_key, folder, row.format)
        verify_file(source, row.bytes, row.md5, f"{'recording' if isinstance(row, Recording) else 'stitch'} {row.id}")
        found = analyze.analyze(source)
        made.update(version=VERSION, duration_s=found.duration_s,
                    peaks=[[list(p) for p in channel] for channel in found.peaks],
                    segments=[[list(s) for s in channel] for channel in found.segments])  # fmt: skip
        part = folder / "picture.json"
        part.write_text(json.dumps(made, separators=(",", ":")), "utf-8")
        return part

    try:
        store.build(key, build)
    except analyze.AnalysisError as exc:
        raise StorageError(str(exc)) from exc
    except OSError as exc:
        raise StorageError(f"the picture of {key.name} cannot be made: {exc.strerror or exc}") from exc
    return made


def _channels(data: dict[str, Any]) -> list[dict[str, Any]]:
    count = len(data["peaks"])
    names = CHANNEL_NAMES.get(count, [f"channel {k + 1}" for k in range(count)])
    return [{"index": k, "name": names[k], "peaks": peaks} for k, peaks in enumerate(data["peaks"])]


def _finish(data: dict[str, Any], speakers: list[dict[str, Any]], chapters: list[dict[str, Any]]) -> dict[str, Any]:
    spans = [[(a, b) for a, b in s["segments"]] for s in speakers]
    return {
        "duration_s": data["duration_s"],
        "channels": _channels(data),
        "speakers": speakers,
        "silences": [list(s) for s in analyze.silences(spans, data["duration_s"])],
        "overlaps": [list(s) for s in analyze.overlaps(spans)],
        "chapters": chapters,
    }


# --- one recording -----------------------------------------------------------------------------------


def label_of(name: str, number: str, fallback: str) -> str:
    """A party as the UI shows it to a signed-in user: name and number."""
    if name and number and name != number:
        return f"{name} ({number})"
    return name or number or fallback


def _public_label(party: Party) -> str:
    """A party as anyone holding a public link sees it: the name, else the role; never a number."""
    if party.name:
        return party.name
    role = ROLES.get(party.role, "Participant")
    return f"{role} {party.label}" if party.role not in ("caller", "callee") else role


def _party_speech(call: Call) -> dict[str, Segments] | None:
    """Each party's own speaking segments from the mixer, or None when this call's streams have none."""
    found: dict[str, Segments] = {}
    for row in call.streams:
        speech = row.quality.get("speech") if isinstance(row.quality, dict) else None
        if isinstance(speech, list):
            mine = found.setdefault(row.party, [])
            mine += [[float(a), float(b)] for a, b in speech]
    if not found:
        return None
    return {party: sorted(segs) for party, segs in found.items()}


def speakers_of(call: Call, channel_segments: list[Segments], numbers: bool) -> list[dict[str, Any]]:
    """Who spoke when in a call's recording: per party when measured, else per channel."""

    def name(p: Party) -> str:
        return label_of(p.name, p.number, p.label) if numbers else _public_label(p)

    parties = sorted(call.parties, key=lambda p: (p.role != "caller", p.role != "callee", p.label))
    two = len(parties) <= 2 and len(channel_segments) == 2
    per_party = _party_speech(call)
    if per_party is not None:
        known = {p.label for p in parties}
        out = []
        for p in parties:
            channel = (0 if p.role == "caller" else 1 if p.role == "callee" else None) if two else None
            out.append({"party": p.label, "label": name(p), "channel": channel,
                        "segments": per_party.get(p.label, [])})  # fmt: skip
        # a stream whose party has no row (an odd capture) still shows
        out += [{"party": party, "label": party, "channel": None, "segments": segs}
                for party, segs in per_party.items() if party not in known]  # fmt: skip
        return out
    if len(channel_segments) == 1:
        names = ", ".join(name(p) for p in parties) or "everyone"
        return [{"party": "", "label": names, "channel": 0, "segments": channel_segments[0]}]
    by_role = {p.role: p for p in parties}
    out = []
    for channel, role in enumerate(("caller", "callee")):
        if channel >= len(channel_segments):
            break
        who = by_role.get(role)
        label = name(who) if who is not None else role.title()
        out.append({"party": who.label if who is not None else "", "label": label, "channel": channel,
                    "segments": channel_segments[channel]})  # fmt: skip
    return out


def recording_picture(ctx: Context, rec: Recording, *, numbers: bool = False) -> dict[str, Any]:
    """The picture of a completed recording (the caller has checked it may be seen and is completed).

    Speakers are named as a public link shows people (names or roles) unless ``numbers``: the API and
    the UI, behind a key, add their numbers."""
    check_completed(ctx, rec)
    data = _analysis(ctx, rec)
    return _finish(data, speakers_of(rec.call, data["segments"], numbers), [])


# --- a stitched interaction --------------------------------------------------------------------------


def stitch_picture(ctx: Context, stitch: Stitch, *, numbers: bool = False) -> dict[str, Any]:
    """The picture of a completed stitch: the customer on the left, on the right the employees of each
    chapter within that chapter's time. Without ``numbers``, people are named as on a public link."""
    if stitch.state != COMPLETED or not stitch.storage_key:
        forget_stitch(ctx, stitch.id)
        if stitch.state == DELETED:
            raise ServiceError("the interaction's recordings were deleted", 410)
        raise ServiceError(f"the stitched recording is not ready ({stitch.state})", 409)
    # a stitch made again (a member changed) is a new file under the same id: its md5 names the version
    data = _analysis(ctx, stitch)
    with ctx.sessions() as s:
        calls = stitching.members(s, stitch.domain_id, stitch.interaction_id)
        customer = stitching.customer_json(calls)
        theirs = stitching.customers(calls) if calls else {}
        employees_of = {c.id: [_public_label(p) for p in c.parties if p.label not in theirs.get(c.id, ())]
                        for c in calls}  # fmt: skip
    chapters: list[dict[str, Any]] = []
    for c in stitch.chapters:
        if not isinstance(c, dict):
            continue
        call_id = str(c.get("call_id", ""))
        who = [str(w) for w in c.get("who") or []] if numbers else employees_of.get(call_id, [])
        chapters.append({"call_id": call_id, "who": who, "from_s": float(c.get("from_s", 0.0)),
                         "to_s": float(c.get("to_s", 0.0))})  # fmt: skip
    segments = data["segments"]
    if numbers:
        label = label_of(customer.get("name", ""), customer.get("number", ""), "Customer")
    else:
        label = customer.get("name", "") or "Customer"
    speakers: list[dict[str, Any]] = [{"party": "customer", "label": label, "channel": 0,
                                       "segments": segments[0] if segments else []}]  # fmt: skip
    right = segments[1] if len(segments) > 1 else []
    employees = list(dict.fromkeys(", ".join(c["who"]) for c in chapters))
    for names in employees:
        spans = [(c["from_s"], c["to_s"]) for c in chapters if ", ".join(c["who"]) == names]
        speakers.append({"party": names or "employee", "label": names or "Employee", "channel": 1,
                         "segments": _within(right, spans)})  # fmt: skip
    if not employees:
        speakers.append({"party": "employee", "label": "Employee", "channel": 1, "segments": right})
    return _finish(data, speakers, chapters)


def forget_stitch(ctx: Context, stitch_id: str) -> None:
    """Remove a stitch's pictures from this host's cache."""
    cache.of(ctx).forget("stitch", stitch_id)


def _within(segments: Segments, spans: list[tuple[float, float]]) -> Segments:
    """The parts of ``segments`` inside any of ``spans``."""
    out = []
    for a, b in segments:
        for lo, hi in spans:
            start, end = max(a, lo), min(b, hi)
            if end > start:
                out.append([round(start, 3), round(end, 3)])
    return sorted(out)


# --- routes ------------------------------------------------------------------------------------------

router = APIRouter(tags=["recordings"])


@router.get("/recordings/{recording_id}/picture", response_model=Picture,
            summary="The picture of a completed recording: waveforms, who spoke when, silences, overlaps")  # fmt: skip
def get_recording_picture(recording_id: str, service: ServiceDep, principal: ReadDep) -> dict[str, Any]:
    ctx = service.ctx
    with ctx.sessions() as s:
        rec = find_recording(s, principal, recording_id)
        check_completed(ctx, rec)  # 410 or 409, and its cached copies go
        return recording_picture(ctx, rec, numbers=True)


@router.get("/interactions/{interaction_id}/picture", response_model=Picture, tags=["interactions"],
            responses={409: {"description": "the stitched recording is not made yet (Retry-After)"}},
            summary="The picture of an interaction's stitched recording (asked for if there is none)")  # fmt: skip
def get_interaction_picture(
    interaction_id: str, service: ServiceDep, principal: ReadDep, domain: DomainName = None
) -> Response:
    # like the stitched audio, asking for the picture asks for the stitch
    row = interactions.ask_stitch(service, principal, interaction_id, domain, force=False)
    if row.state != COMPLETED or not row.storage_key:
        forget_stitch(service.ctx, row.id)  # a cached picture of an older version is never served
    if row.state == DELETED:
        raise ServiceError("the interaction's recordings were deleted", 410)
    if row.state != COMPLETED or not row.storage_key:
        reason = f": {row.reason}" if row.reason else ""
        headers = {"Retry-After": str(interactions.RETRY_AFTER_S)} if row.state in stitching.PENDING else {}
        return JSONResponse({"detail": f"the stitched recording is not ready ({row.state}{reason})"}, 409, headers)
    return JSONResponse(stitch_picture(service.ctx, row, numbers=True))
