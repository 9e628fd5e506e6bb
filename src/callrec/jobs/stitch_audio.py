"""Each member call of a stitch as stereo audio with the customer on the left.

From the call's tape when it still exists: mixed again with the customer's parties routed left and every
other party right, which separates the voices exactly, conferences too. Otherwise from the stored
recording, decoded: a two-party recording (caller left, callee right) is swapped when the customer was
the callee; a stored conference recording has every voice in both channels, so it can only be played as
one mix in both channels (the customer is then not alone on the left for that call).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from callrec.db.schema import Call, Recording
from callrec.errors import CallrecError, OutputError, StorageError, Transient
from callrec.files import tape
from callrec.media.encode import open_writer
from callrec.media.stitch import Layout, Piece, WavSource
from callrec.media_limits import OutputOptions
from callrec.mix import mix
from callrec.service.context import Context
from callrec.service.stitches import describe

log = logging.getLogger("callrec.stitch")


@dataclass(slots=True)
class Member:
    """What a stitch needs of one member call, read while the database session is open."""

    call_id: str
    sip_call_id: str
    started_at: float
    customer: frozenset[str]  # party labels of the customer in this call
    parties: int
    customer_roles: frozenset[str]
    who: list[str] = field(default_factory=list)
    tape_local: str = ""
    tape_key: str = ""
    tape_spec: dict[str, Any] = field(default_factory=dict)
    tape_deleted: bool = False
    rec_key: str = ""
    rec_spec: dict[str, Any] = field(default_factory=dict)
    rec_format: str = ""


def member_of(call: Call, rec: Recording, customer: frozenset[str]) -> Member:
    return Member(
        call_id=call.id, sip_call_id=call.sip_call_id, started_at=call.started_at.timestamp(), customer=customer,
        parties=len(call.parties), customer_roles=frozenset(p.role for p in call.parties if p.label in customer),
        who=[describe(p.name, p.number, p.uri, p.label) for p in call.parties if p.label not in customer],
        tape_local=call.tape_local, tape_key=call.tape_key, tape_spec=dict(call.tape_storage),
        tape_deleted=call.tape_deleted_at is not None, rec_key=rec.storage_key, rec_spec=dict(rec.storage),
        rec_format=rec.format,
    )  # fmt: skip


def piece_for(ctx: Context, member: Member, scratch: Path, rate: int) -> Piece:
    """The member's audio as a WAV in ``scratch`` at ``rate``, customer left."""
    folder = scratch / member.call_id
    folder.mkdir(parents=True, exist_ok=True)
    if not member.tape_deleted:
        try:
            found = _remix(ctx, member, folder, rate)
        except Transient:
            raise
        except CallrecError as exc:
            # the stored recording is still there: a damaged tape costs the exact separation, not the call
            log.warning("stitch: call %s: mixing its tape again failed (%s); using its recording", member.call_id, exc)
            found = None
        if found is not None:
            return found
    return _stored(ctx, member, folder, rate)


def _tape_folder(ctx: Context, member: Member, folder: Path) -> Path | None:
    """The call's tape on this machine: where it lies, in a local storage, or fetched into ``folder``."""
    if member.tape_local and tape.is_tape(member.tape_local):
        return Path(member.tape_local)
    if not member.tape_key:
        return None
    storage = ctx.storage(member.tape_spec)
    found = storage.local_path(f"{member.tape_key}/{tape.MEDIA_FILE}")
    if found is not None and tape.is_tape(found.parent):
        return found.parent
    target = folder / "tape"
    try:
        for name in (tape.MEDIA_FILE, tape.META_FILE):
            storage.download(f"{member.tape_key}/{name}", target / name)
    except StorageError as exc:
        if storage.stat(f"{member.tape_key}/{tape.META_FILE}") is None:
            return None  # gone from storage: the recording will do
        raise Transient(f"fetching the tape of call {member.call_id} failed: {exc}") from exc
    return target


def _remix(ctx: Context, member: Member, folder: Path, rate: int) -> Piece | None:
    source = _tape_folder(ctx, member, folder)
    if source is None:
        return None
    wav = OutputOptions(format="wav", rate_hz=rate)
    try:
        report = mix(source, folder / "mix", wav, call_id=member.sip_call_id or None, left=member.customer)
    except OSError as exc:
        raise CallrecError(f"mixing the tape again failed: {exc.strerror or exc}") from exc
    made = [c for c in report.calls if c.output is not None]
    if not made or made[0].output is None:
        return None
    started = made[0].started_at if made[0].started_at is not None else member.started_at
    return Piece(WavSource(made[0].output, rate), started, "keep")


def _stored(ctx: Context, member: Member, folder: Path, rate: int) -> Piece:
    if not member.rec_key:
        raise CallrecError(f"call {member.call_id} has neither a tape nor a stored recording")
    storage = ctx.storage(member.rec_spec)
    source = storage.local_path(member.rec_key)
    if source is None or not source.is_file():
        source = folder / f"recording.{member.rec_format or 'mp3'}"
        try:
            storage.download(member.rec_key, source)
        except StorageError as exc:
            raise Transient(f"fetching the recording of call {member.call_id} failed: {exc}") from exc
    wav = folder / "recording.wav"
    channels = _decode(source, wav, rate)
    layout: Layout = "keep"
    if channels == 1 or member.parties > 2:
        layout = "both"
    elif "callee" in member.customer_roles and "caller" not in member.customer_roles:
        layout = "swap"
    return Piece(WavSource(wav, rate), member.started_at, layout)


def _decode(source: Path, dest: Path, rate: int) -> int:
    """Decode a stored MP3/WAV to 16-bit stereo WAV at ``rate``; returns the source's channel count."""
    try:
        with av.open(str(source)) as container:
            stream = container.streams.audio[0]
            channels = stream.channels
            resampler = av.AudioResampler(format="s16", layout="stereo", rate=rate)
            writer = open_writer(dest, fmt="wav", rate=rate, channels=2)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    writer.write(np.asarray(out.to_ndarray(), np.int16).reshape(-1, 2))
            for out in resampler.resample(None):
                writer.write(np.asarray(out.to_ndarray(), np.int16).reshape(-1, 2))
            writer.close()
    except (av.error.FFmpegError, IndexError) as exc:
        raise OutputError(f"the stored recording {source.name} cannot be decoded: {exc}") from exc
    return int(channels)


def clear(scratch: Path) -> None:
    shutil.rmtree(scratch, ignore_errors=True)
