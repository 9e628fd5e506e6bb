"""Recordings: their state, and their audio (stored format or converted, HTTP Range supported)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from callrec.api import audio
from callrec.api.deps import Principal, ReadDep, ServiceDep, base_url, find_owned
from callrec.api.schemas import RecordingOut
from callrec.db.schema import COMPLETED, DELETED, Recording
from callrec.errors import ServiceError
from callrec.service.cards import recording_json

router = APIRouter(tags=["recordings"])

AUDIO_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the whole file", "content": {"audio/mpeg": {}, "audio/wav": {}}},
    206: {"description": "the range asked for", "content": {"audio/mpeg": {}, "audio/wav": {}}},
    409: {"description": "the recording is not completed yet"},
    410: {"description": "the recording was deleted"},
    416: {"description": "the range is outside the file"},
}


def find_recording(s: Session, principal: Principal, recording_id: str) -> Recording:
    """The recording in the caller's domain; 404 otherwise."""
    return find_owned(s, principal, Recording, recording_id, "recording")


@router.get("/recordings/{recording_id}", response_model=RecordingOut, summary="A recording and its state")
def get_recording(recording_id: str, request: Request, service: ServiceDep, principal: ReadDep) -> dict[str, Any]:
    with service.ctx.sessions() as s:
        return recording_json(find_recording(s, principal, recording_id), base_url(request))


@router.get("/recordings/{recording_id}/audio", responses=AUDIO_RESPONSES, response_class=Response,
            summary="The audio, in the stored format or converted (format=mp3|wav)")  # fmt: skip
def get_audio(
    recording_id: str,
    service: ServiceDep,
    principal: ReadDep,
    format: Literal["mp3", "wav"] | None = None,
    range_header: Annotated[str | None, Header(alias="Range", max_length=200)] = None,
) -> Response:
    ctx = service.ctx
    with ctx.sessions() as s:
        rec = find_recording(s, principal, recording_id)
        if rec.state == DELETED:
            audio.forget(ctx, rec.id)
            raise ServiceError("the recording was deleted", 410)
        if rec.state != COMPLETED:
            raise ServiceError(f"the recording is {rec.state}", 409)
        return audio.recording_response(ctx, rec, format, range_header)
