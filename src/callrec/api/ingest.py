"""An upload's calls become closed tapes handed to the pipeline, like the recorder's.

The capture is checked and split into its calls (or taken whole with the tape's ``call.json``); each call
becomes a tape folder (``_write_tape``: ``media.pcap`` a hard link to the call's own packets, ``call.json``)
that is registered from the upload's staging folder and then handed to the outbox. A failure once the first
call is handed over is ``CutShort``, carrying the calls registered before it: ``callrec.api.uploads`` answers it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from callrec.api.deps import Principal
from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import Call, Domain
from callrec.errors import CaptureError, ParseError, ServiceError
from callrec.files import tape
from callrec.files.magic import looks_like_capture
from callrec.files.scan import split_capture
from callrec.models import CallInfo
from callrec.service.context import Context
from callrec.service.domain_settings import ensure_domain
from callrec.service.pipeline import Service
from callrec.storage.base import os_reason

log = logging.getLogger("callrec.api.uploads")


class CutShort(Exception):
    """Registering the upload's calls failed part-way: ``calls`` were registered before ``cause``."""

    def __init__(self, calls: list[str], total: int, cause: BaseException) -> None:
        super().__init__(f"{len(calls)} of {total} calls registered")
        self.calls, self.total, self.cause = calls, total, cause


def ingest(
    service: Service, principal: Principal, media: Path, fields: dict[str, bytes], name: Callable[[int], str] | None
) -> list[str]:
    """Check the capture, split it into its calls, and hand each one to the pipeline as a closed tape.

    The capture is read once: each call's tape gets a ``media.pcap`` of its own packets only. Tapes are
    written and registered in the upload's staging folder, out of the outbox's reach; one that storage did
    not take at once moves into ``DATA/tapes`` only after it was registered (the outbox delivers it).
    ``name`` names each call's tape by its index (random names without it); a tape of that name already
    registered is not registered again. A failure once the first call is handed over raises ``CutShort``.
    """
    with media.open("rb") as f:
        if not looks_like_capture(f.read(4)):
            raise ServiceError("the file is not a pcap or pcapng capture", 400)
    domain = _domain(service, principal, fields.get("domain"))
    ctx = service.ctx
    staged = media.parent / "tapes"
    staged.mkdir(exist_ok=True)
    if "call" in fields:
        found = [(_tape_info(fields["call"]), media)]
    else:
        found = _calls(media, ctx.config.max_calls_per_upload)
    now = ctx.clock.now()
    names = [name(i) if name is not None else f"upload-{secrets.token_hex(8)}" for i in range(len(found))]
    known = _registered(ctx, names) if name is not None else {}
    calls: list[str] = []
    for tape_name, (info, call_media) in zip(names, found, strict=True):
        if tape_name in known:
            calls.append(known[tape_name])
            continue
        folder = staged / tape_name
        handed = False
        try:
            info = _without_nul(info)
            info.domain, info.source, info.closed_cleanly, info.interrupted = domain, "upload", True, False
            _write_tape(folder, call_media, info)
            handed = True
            call_id = service.pipeline.tape_closed(folder)
            _hand_to_outbox(ctx, call_id, folder, tape.tape_folder(ctx.config.tapes_dir, now, tape_name))
            calls.append(call_id)
        except Exception as exc:
            if not handed:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                if (settled := _settle(ctx, folder)) is not None:
                    calls.append(settled)
                # a tape that may be registered must outlive the request's staging folder
                _rescue(folder, tape.tape_folder(ctx.config.tapes_dir, now, tape_name))
            raise CutShort(calls, len(found), exc) from exc
    return calls


def _hand_to_outbox(ctx: Context, call_id: str, folder: Path, dest: Path) -> None:
    """A registered tape storage did not take yet: into ``DATA/tapes``, where the outbox delivers it."""
    if not folder.is_dir():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(folder, dest)
    with transaction(ctx.sessions) as s:
        call = s.get(Call, call_id)
        if call is not None and call.tape_local:
            call.tape_local = str(dest.resolve())


def _rescue(folder: Path, dest: Path) -> None:
    """Move a handed-over tape still in the staging folder to where the outbox delivers it (a copy when it
    cannot be renamed), so the request's clean-up never deletes a tape a call may have been registered from."""
    if not folder.is_dir():
        return
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(folder, dest)
        except OSError:
            shutil.copytree(folder, dest, dirs_exist_ok=True)
    except OSError as exc:
        log.error("tape %s could not be kept for the outbox: %s", folder.name, os_reason(exc))


def _write_tape(folder: Path, media: Path, info: CallInfo) -> None:
    """A closed tape in ``folder``: ``media.pcap`` the call's media, ``call.json`` the call's ``info``.

    The folder may be left from an attempt cut short; what it holds is then replaced by the same.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / tape.MEDIA_FILE
    target.unlink(missing_ok=True)
    try:
        os.link(media, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(media, target)
    tape.write_info(folder, info)


def _registered(ctx: Context, names: list[str]) -> dict[str, str]:
    """Which of the tape names ``names`` a call was already registered from: name -> call id."""
    found: dict[str, str] = {}
    with ctx.sessions() as s:
        for at in range(0, len(names), 500):
            rows = s.execute(select(Call.tape_ref, Call.id).where(Call.tape_ref.in_(names[at : at + 500])))
            found.update({ref: call_id for ref, call_id in rows})
    return found


def _settle(ctx: Context, folder: Path) -> str | None:
    """After handing ``folder`` over failed: the call it registered all the same, if any. A folder no call
    was registered from is removed; when the database cannot say, it stays (the sweep ingests it)."""
    try:
        call_id = _registered(ctx, [folder.name]).get(folder.name)
    except Exception as exc:
        log.warning("tape %s: whether it was registered is not known (%s)", folder.name, type(exc).__name__)
        return None
    if call_id is None:
        shutil.rmtree(folder, ignore_errors=True)
    return call_id


def _domain(service: Service, principal: Principal, asked: bytes | None) -> str:
    """The domain the upload goes to: the key's own, or (admin keys) the one asked for or ``default``."""
    name = asked.decode("utf-8", "replace").strip() if asked is not None else None
    ctx = service.ctx
    with transaction(ctx.sessions) as s:
        if not principal.admin:
            own = s.get(Domain, principal.domain_id)
            assert own is not None
            if name and name != own.name:
                raise ServiceError("only an admin key may upload into another domain", 403)
            return own.name
        if not name:
            return ensure_domain(s, queries.DEFAULT_DOMAIN, ctx.clock.now()).name
        if len(name) > 64 or "\x00" in name or queries.domain_by_name(s, name) is None:
            raise ServiceError(f"no domain named {name[:64]!r}", 404)
        return name


def _tape_info(raw: bytes) -> CallInfo:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ServiceError("call: the call field is not a valid call.json: not JSON", 400) from exc
    try:
        info = CallInfo.from_json(data)
    except (ParseError, RecursionError) as exc:
        reason = str(exc).removeprefix("call.json: ") if isinstance(exc, ParseError) else "nested too deeply"
        raise ServiceError(f"call: the call field is not a valid call.json: {reason}", 400) from exc
    return info


def _without_nul(info: CallInfo) -> CallInfo:
    """The info with NUL characters dropped: SIP may carry them, no database stores them in text."""
    return CallInfo.from_json(_drop_nul(info.to_json()))


def _drop_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_drop_nul(k): _drop_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_drop_nul(v) for v in value]
    return value


def _calls(media: Path, limit: int) -> list[tuple[CallInfo, Path]]:
    """The capture's calls, each with a file of its own packets (made in one pass over the capture)."""
    parts = media.parent / "split"
    parts.mkdir(exist_ok=True)
    try:
        found = split_capture(media, parts)
    except CaptureError as exc:
        reason = str(exc).removeprefix(f"{media}: ").replace(str(media.parent), "")  # never a server path
        raise ServiceError(f"the capture cannot be read: {reason}", 400) from exc
    if not found:
        raise ServiceError("no SIP call found in the capture", 422)
    if len(found) > limit:
        raise ServiceError(f"the capture holds {len(found)} calls, more than the limit of {limit} calls per "
                           "upload: split it into smaller captures", 413)  # fmt: skip
    return found
