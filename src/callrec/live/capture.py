"""The live capture process's loop: interfaces read through their rings, calls followed, tapes written.

:func:`run_capture` recovers the tapes a capture (or recorder) that died left open on the data folder (each
handed to ``on_closed`` like a tape closed now), opens one :class:`~callrec.live.ring.RingReader` per
interface with the BPF filter, and feeds every block's items to one :class:`~callrec.live.tracker.LiveTracker`
(so a call seen on two interfaces is still one tape) until ``stop`` is set; then it closes every open tape
(reason ``shutdown``). The figures go to ``DATA/capture-stats.json`` (``capstats``) about once a second.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from callrec.live import capstats
from callrec.live.frames import FrameDecoder
from callrec.live.ring import RingReader
from callrec.live.tracker import LiveTracker, TapeEvent, TrackerSettings
from callrec.recorder.recovery import TapeRegistry
from callrec.recorder.srtp import SrtpKeys

log = logging.getLogger("callrec.capture")

# SIP and RTP over UDP (any port: RTP's are negotiated), and SIP over TCP on its usual port
DEFAULT_FILTER = "udp or (tcp port 5060)"
POLL_MS = 200
# blocks read from one ring before the others get their turn
BLOCKS_PER_TURN = 8
STATS_S = 1.0


@dataclass(slots=True)
class CaptureSettings:
    interfaces: list[str]
    data_dir: Path
    bpf: str = DEFAULT_FILTER
    tracker: TrackerSettings | None = None
    block_size: int = 4 << 20
    block_count: int = 32

    def tracker_settings(self) -> TrackerSettings:
        return self.tracker or TrackerSettings(tapes_dir=self.data_dir / "tapes")


def run_capture(
    settings: CaptureSettings,
    stop: threading.Event,
    *,
    on_opened: TapeEvent | None = None,
    on_closed: TapeEvent | None = None,
    on_discarded: TapeEvent | None = None,
    ready: Callable[[], object] | None = None,
) -> LiveTracker:
    """Capture until ``stop`` is set; returns the tracker (its figures). Raises ``ConfigError`` when an
    interface cannot be read (no root, no such interface, a bad filter), ``CaptureError`` when one goes away."""
    tracker_settings = settings.tracker_settings()
    tracker_settings.tapes_dir.mkdir(parents=True, exist_ok=True)
    registry = TapeRegistry(tracker_settings.tapes_dir)
    rings: list[RingReader] = []
    tracker = LiveTracker(
        tracker_settings,
        registry=registry,
        on_opened=on_opened,
        on_closed=on_closed,
        on_discarded=on_discarded,
        keys=SrtpKeys(settings.data_dir),  # SDES keys sealed with the service's box, as callrec record does
    )
    try:
        for folder in registry.recover():
            log.warning("tape %s was left open by a capture or recorder that died: closed and marked interrupted",
                        folder)  # fmt: skip
            if on_closed is not None:
                on_closed(folder)
        for interface in settings.interfaces:
            rings.append(
                RingReader(interface, settings.bpf, block_size=settings.block_size, block_count=settings.block_count)
            )
        decoders = [FrameDecoder(ring.linktype, warn=lambda text: log.debug("capture: %s", text)) for ring in rings]
        poller = select.poll()
        for ring in rings:
            poller.register(ring.fileno(), select.POLLIN | select.POLLERR)
        if ready is not None:
            ready()
        next_stats = 0.0
        while not stop.is_set():
            poller.poll(POLL_MS)
            for ring, decoder in zip(rings, decoders, strict=True):
                for _ in range(BLOCKS_PER_TURN):
                    batch = ring.read(0)
                    if batch is None:
                        break
                    for item in decoder.items(batch):
                        tracker.feed(item)
            now = time.time()
            tracker.tick(now)
            if now >= next_stats:
                next_stats = now + STATS_S
                _write_stats(settings.data_dir, rings, tracker)
        tracker.close_all("shutdown")
    finally:
        tracker.close_all("shutdown")  # after an error too: what was recorded is kept
        for ring in rings:
            ring.close()
        try:
            _write_stats(settings.data_dir, rings, tracker)
        except OSError as exc:
            log.warning("capture figures not written: %s", exc)
        registry.close()
    return tracker


def _write_stats(data_dir: Path, rings: list[RingReader], tracker: LiveTracker) -> None:
    interfaces = {}
    for ring in rings:
        kernel = ring.kernel_stats()
        interfaces[ring.interface] = {
            "callrec_capture_packets": kernel.packets,
            "callrec_capture_drops": kernel.drops,
            "callrec_capture_link_errors": ring.link_errors,
        }
    c = tracker.counts
    totals = {
        "callrec_capture_calls": c["calls"],
        "callrec_capture_calls_refused": c["calls_refused"],
        "callrec_capture_sip_messages": c["sip"],
        "callrec_capture_rtp_packets": c["rtp"],
        "callrec_capture_packets_written": c["written"],
        "callrec_capture_tape_errors": c["tape_errors"],
    }
    capstats.write(data_dir, interfaces, totals, {"callrec_capture_calls_open": len(tracker.calls)})
