"""The session table: the recording sessions by Call-ID and by SRC address, the limits on new ones, and the
life cycle of their tapes.

Disk work that may block (creating a tape, rewriting ``call.json``, closing) runs off the event loop: tapes
are created on a small thread pool, and ``call.json`` rewrites and closes go one at a time, in the order
asked, on a thread of their own (a later ``call.json`` never loses to an earlier one; the close comes last).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from callrec.config import RecorderConfig, source_ip
from callrec.errors import CallrecError
from callrec.files import tape
from callrec.models import CallInfo
from callrec.recorder import recstats
from callrec.recorder.ports import PortAllocator, PortsExhausted
from callrec.recorder.recovery import TapeRegistry
from callrec.recorder.recstats import RecorderStats
from callrec.recorder.session import RecordingSession
from callrec.recorder.streams import SessionMedia

log = logging.getLogger("callrec.recorder")

DISK_CHECK_S = 2.0
STOP_WAIT_S = 5.0

TapeHook = Callable[[Path], object]


class SourceShareTaken(PortsExhausted):
    """The SRC already holds its share of the RTP port pairs (twice its session limit)."""


class SessionTable:
    """``sessions`` by Call-ID, the Call-IDs each SRC holds, their media (``streams``) and their tapes.

    ``loop`` and ``registry`` are set once the recorder runs; ``stopping`` refuses new sessions.
    """

    def __init__(
        self,
        cfg: RecorderConfig,
        stats: RecorderStats,
        ports: PortAllocator,
        *,
        on_tape_opened: TapeHook | None,
        on_tape_closed: TapeHook | None,
        on_tape_discarded: TapeHook | None,
    ) -> None:
        self.cfg = cfg
        self.stats = stats
        self.sessions: dict[str, RecordingSession] = {}
        # the Call-IDs of the sessions each SRC address holds (the per-source limit)
        self.by_source: dict[str, set[str]] = {}
        self.streams = SessionMedia(cfg, ports, self.check_source_share)
        self.on_tape_closed = on_tape_closed
        # the service's hand-off: a call appears (state "recording") as soon as its tape exists
        self.on_tape_opened = on_tape_opened
        self.on_tape_discarded = on_tape_discarded
        self.disk = ThreadPoolExecutor(max_workers=4, thread_name_prefix="callrec-disk")
        # call.json rewrites and tape closes, one at a time in the order asked: a later call.json never
        # loses to an earlier one, and the closing one comes last
        self.meta = ThreadPoolExecutor(max_workers=1, thread_name_prefix="callrec-meta")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.registry: TapeRegistry | None = None
        self.pending: set[asyncio.Task[None]] = set()  # tapes being created
        self.closing: set[asyncio.Future[None]] = set()  # tapes being closed on the meta thread
        self.stopping = False
        self._disk_ok = True
        self._disk_checked = 0.0
        self._published: dict[str, int] = {}

    # ---- admission --------------------------------------------------------------------------------
    def refusal(self) -> str | None:
        """Why a new session cannot be taken now (503), or None."""
        if self.stopping:
            return "Service Unavailable: shutting down"
        if len(self.sessions) >= self.cfg.max_sessions:
            return "Service Unavailable: session limit reached"
        now = time.monotonic()
        if now - self._disk_checked > DISK_CHECK_S:
            self._disk_checked = now
            try:
                self._disk_ok = shutil.disk_usage(self.cfg.tapes_dir).free >= self.cfg.min_free_bytes
            except OSError:
                self._disk_ok = False
        if not self._disk_ok:
            return "Service Unavailable: low disk space"
        return None

    def source_refusal(self, source: str) -> str | None:
        """Why this SRC address may not open another session now (503), or None."""
        if len(self.by_source.get(source, ())) >= self.cfg.per_source_limit():
            return "Service Unavailable: session limit for this source reached"
        return None

    def check_source_share(self, session: RecordingSession) -> None:
        """Refuse another RTP port pair to a session whose SRC holds twice its session limit in pairs (a
        source offering many streams per session must not take every port either)."""
        held = sum(len(s.ports()) for c in self.by_source.get(session.source, ()) if (s := self.sessions.get(c)))
        if session.call_id not in self.by_source.get(session.source, ()):
            held += len(session.ports())  # a session being set up is not counted yet
        if held >= 2 * self.cfg.per_source_limit():
            raise SourceShareTaken(f"source {session.source} holds {held} RTP port pairs, its share")

    def add(self, session: RecordingSession) -> None:
        self.sessions[session.call_id] = session
        self.by_source.setdefault(session.source, set()).add(session.call_id)
        self.stats.sessions_total += 1

    def drop(self, session: RecordingSession) -> None:
        self.streams.release(session)
        session.closed = True
        self.sessions.pop(session.call_id, None)
        held = self.by_source.get(session.source)
        if held is not None:
            held.discard(session.call_id)
            if not held:
                del self.by_source[session.source]

    # ---- tapes ------------------------------------------------------------------------------------
    async def create_tape(self, session: RecordingSession) -> bool:
        """Create and register the session's tape off the event loop; False (session dropped) if it cannot."""
        assert self.loop is not None and self.registry is not None
        registry = self.registry
        folder, info = session.folder, session.info

        def create() -> tape.TapeWriter:
            folder.mkdir(parents=True, exist_ok=True)
            registry.register(folder)
            return tape.TapeWriter(folder, info)

        try:
            writer = await self.loop.run_in_executor(self.disk, create)
        except (OSError, CallrecError) as exc:
            log.error("cannot create tape %s: %s", folder, exc)
            self.drop(session)
            return False
        session.tape = writer
        if self.on_tape_opened is not None:
            self.on_tape_opened(folder)
        return True

    def close(self, session: RecordingSession, reason: str, *, discard: bool = False) -> None:
        """End a session: keep what is still queued in its sockets, release its ports, close its tape."""
        if session.closed:
            return
        assert self.streams.receiver is not None and self.loop is not None
        writer = session.tape
        if writer is not None:
            self.streams.drain(session)
        self.drop(session)
        self.stats.closed[reason] = self.stats.closed.get(reason, 0) + 1
        if writer is None:
            return
        registry, folder, notify = self.registry, session.folder, self.on_tape_closed
        discarded = self.on_tape_discarded
        session.info.end_reason = reason
        ended = time.time()

        def finish() -> None:
            try:
                writer.close(ended_at=ended, cleanly=True)
            except (OSError, CallrecError) as exc:
                # the marker stays: the next start-up closes the tape as interrupted, nothing is lost
                log.error("tape %s: cannot close it: %s", folder, exc)
                raise
            if discard and writer.packets == 0:
                shutil.rmtree(folder, ignore_errors=True)
            if registry is not None:
                registry.unregister(folder)

        future = self.loop.run_in_executor(self.meta, finish)
        self.closing.add(future)
        future.add_done_callback(self.closing.discard)
        if notify is not None and not discard:
            future.add_done_callback(lambda f: f.exception() is None and notify(folder))
        if discarded is not None and discard:
            future.add_done_callback(lambda f: f.exception() is None and not folder.exists() and discarded(folder))

    async def closed_tapes_handed_on(self) -> None:
        # the tapes closed by the shutdown are announced (on_tape_closed) before stop() returns: the caller
        # then stops whatever the announcement hands the tape to
        if self.closing:
            await asyncio.wait(list(self.closing), timeout=STOP_WAIT_S)
        await asyncio.sleep(0)  # the futures' done callbacks, scheduled with their results, run now

    def save_info(self, session: RecordingSession) -> None:
        writer = session.tape
        if writer is None or self.loop is None:
            return
        # a copy: the loop goes on changing the session's info while the copy is written
        snapshot, folder = CallInfo.from_json(writer.info.to_json()), session.folder

        def save() -> None:
            try:
                tape.write_info(folder, snapshot)
            except OSError as exc:
                log.error("tape %s: cannot rewrite call.json: %s", folder, exc)

        self.loop.run_in_executor(self.meta, save)

    # ---- figures ----------------------------------------------------------------------------------
    def figures(self) -> dict[str, int]:
        """The counters ``/metrics`` shows (see ``recstats``)."""
        media = self.streams.receiver
        return {
            "callrec_recorder_sessions": self.stats.sessions_total,
            "callrec_recorder_sessions_rejected": self.stats.sessions_rejected,
            "callrec_recorder_packets_recorded": media.received if media is not None else 0,
            "callrec_recorder_packets_malformed": media.dropped if media is not None else 0,
            "callrec_recorder_packets_foreign": media.foreign if media is not None else 0,
            "callrec_recorder_streams_latched": media.latches if media is not None else 0,
        }

    def publish_figures(self) -> None:
        """Rewrite the figures file for ``/metrics`` (off the event loop) when a figure changed."""
        figures = self.figures()
        if figures == self._published or self.loop is None:
            return
        self._published = figures
        folder = self.cfg.data_dir

        def write() -> None:
            try:
                recstats.write(folder, figures)
            except OSError as exc:
                log.warning("cannot write %s for /metrics: %s", folder / recstats.STATS_FILE, exc)

        self.disk.submit(write)


def source_key(address: str) -> str:
    """One key per SRC host, whatever the port or IPv4-mapped spelling."""
    ip = source_ip(address)
    return str(ip) if ip is not None else address
