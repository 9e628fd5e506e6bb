"""The SIPREC session recording server: SIP dialogs in, one tape per recording session out.

Signalling runs through ``SipListener`` (UDP and TCP) and ``ServerTransactions``; ``SrsDialogs`` turns each
accepted INVITE into a ``RecordingSession`` of the ``SessionTable``, with one RTP/RTCP port pair per
recordable ``m=`` line (``SessionMedia``), whose packets ``MediaReceiver`` appends to the session's tape as
they arrive. ``SipOut`` sends the answers and our own BYEs. Disk work that may block (creating a tape,
rewriting ``call.json``, closing) runs in a small thread pool so that media is never held up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from callrec.config import RecorderConfig
from callrec.errors import CallrecError
from callrec.recorder.listener import Origin, SipListener
from callrec.recorder.media_io import MediaReceiver
from callrec.recorder.ports import PORT_REST_S, PortAllocator
from callrec.recorder.recovery import TapeRegistry
from callrec.recorder.recstats import RecorderStats
from callrec.recorder.session import RecordingSession
from callrec.recorder.sipout import BYE_CONNECT_S, SipOut
from callrec.recorder.srs import SrsDialogs
from callrec.recorder.srtp import SrtpKeys
from callrec.recorder.table import STOP_WAIT_S, SessionTable
from callrec.recorder.transactions import T1_S, T2_S, ServerTransactions
from callrec.secretbox import SecretBox

log = logging.getLogger("callrec.recorder")

HOUSEKEEPING_S = 1.0


class Recorder:
    """``callrec record``: accepts SIPREC sessions and writes their tapes under ``cfg.tapes_dir``.

    A composition: ``table`` (the sessions, their limits and tapes), ``streams`` (their RTP ports and
    media), ``sip`` (what goes out on the wire) and ``srs`` (what each SIP request does).
    """

    def __init__(
        self,
        cfg: RecorderConfig,
        on_tape_closed: Callable[[Path], object] | None = None,
        *,
        on_tape_opened: Callable[[Path], object] | None = None,
        on_tape_discarded: Callable[[Path], object] | None = None,
        t1: float = T1_S,
        port_rest_s: float = PORT_REST_S,
        box: SecretBox | None = None,
    ) -> None:
        """``t1`` is SIP's round-trip estimate (RFC 3261 timer T1); retransmissions and timeouts scale with it.
        ``port_rest_s``: how long a closed session's RTP port pair rests before reuse (see ``PortAllocator``).
        ``box``: the service's secret box, which seals SRTP keys onto tapes (by default loaded as
        ``recorder/srtp.py`` says, the first time an SRTP stream is offered)."""
        self.cfg = cfg
        self._t1 = t1
        self.stats = RecorderStats()
        ports = PortAllocator(cfg.rtp_first, cfg.rtp_last, rest_s=port_rest_s)
        self.table = SessionTable(
            cfg,
            self.stats,
            ports,
            on_tape_opened=on_tape_opened,
            on_tape_closed=on_tape_closed,
            on_tape_discarded=on_tape_discarded,
        )
        self.sessions: dict[str, RecordingSession] = self.table.sessions
        self.streams = self.table.streams
        if box is not None:
            self.streams.keys = SrtpKeys(cfg.data_dir, box)
        self._listener = SipListener(self._handle)
        self.sip = SipOut(cfg, self.stats, self._listener)
        self.srs = SrsDialogs(cfg, self.stats, self.table, self.sip)
        self._housekeeping: asyncio.Task[None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where the recorder listens for SIP (set by ``start``)."""
        return self.sip.address

    # ---- life cycle -------------------------------------------------------------------------------
    async def start(self) -> list[Path]:
        """Recover tapes left open by a dead recorder, then listen; returns the recovered tapes."""
        table = self.table
        loop = table.loop = self.sip.loop = asyncio.get_running_loop()
        self.cfg.tapes_dir.mkdir(parents=True, exist_ok=True)
        table.registry = TapeRegistry(self.cfg.tapes_dir)
        recovered = await loop.run_in_executor(table.disk, table.registry.recover)
        self.stats.tapes_recovered = len(recovered)
        for folder in recovered:
            log.warning("tape %s was left open by a recorder that died: closed and marked interrupted", folder)
            if table.on_tape_closed is not None:
                table.on_tape_closed(folder)
        self.streams.receiver = MediaReceiver(loop, self.cfg.listen_host if self.cfg.listen_host else "0.0.0.0")
        self.sip.transactions = ServerTransactions(loop, self.srs.ack_timeout, self._t1, min(T2_S, 8 * self._t1))
        self.sip.address = await self._listener.start(self.cfg.listen_host, self.cfg.listen_port)
        self._housekeeping = loop.create_task(self._housekeep())
        return recovered

    async def stop(self) -> None:
        """Close every session's tape cleanly (telling each SRC with a BYE) and stop listening."""
        table = self.table
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        table.stopping = True  # new sessions get 503 from now on
        # tapes being created are finished first, so that each is then closed like any other
        if table.pending:
            # bounded: a hung disk must not hang the shutdown (such a tape is recovered at the next start)
            await asyncio.wait(list(table.pending), timeout=STOP_WAIT_S)
        for session in list(self.sessions.values()):
            self.sip.send_bye(session)
            table.close(session, "shutdown")
        await asyncio.sleep(0)  # let the BYEs leave
        if self.sip.byes:
            await asyncio.wait(list(self.sip.byes), timeout=2 * BYE_CONNECT_S)
        await self._listener.close()
        if self.sip.transactions is not None:
            self.sip.transactions.close()
        if self.streams.receiver is not None:
            self.streams.receiver.close_all()
        table.publish_figures()
        await table.closed_tapes_handed_on()
        table.disk.shutdown(wait=True)
        table.meta.shutdown(wait=True)
        if table.registry is not None:
            table.registry.close()

    def figures(self) -> dict[str, int]:
        """The counters ``/metrics`` shows (see ``recstats``)."""
        return self.table.figures()

    # ---- signalling -------------------------------------------------------------------------------
    def _handle(self, data: bytes, origin: Origin) -> None:
        # the one place that catches everything: a message that trips a bug must not take the recorder (and
        # every call it is recording) down with it; it is logged with its traceback and counted
        try:
            self.srs.dispatch(data, origin)
        except Exception:  # noqa: BLE001
            self.stats.sip_errors += 1
            log.exception("unexpected error handling a message from %s:%d", *origin.remote)

    # ---- housekeeping -----------------------------------------------------------------------------
    async def _housekeep(self) -> None:
        """Once a second: push every tape's packets to the OS; close sessions gone idle; publish figures."""
        while True:
            await asyncio.sleep(min(HOUSEKEEPING_S, self.cfg.flush_interval_s))
            self.table.publish_figures()
            now = time.monotonic()
            for session in list(self.sessions.values()):
                writer = session.tape
                if writer is None:
                    continue
                try:
                    writer.flush()
                except CallrecError as exc:
                    log.error("tape %s: %s", session.folder, exc)
                packets = writer.packets + self.streams.held(session)
                if packets != session.packets_at_check:
                    session.packets_at_check = packets
                    session.last_activity = now
                elif now - session.last_activity > self.cfg.idle_timeout_s:
                    log.warning("session %s idle for %.0f s: closing it", session.call_id, self.cfg.idle_timeout_s)
                    self.sip.send_bye(session)
                    self.table.close(session, "idle")
