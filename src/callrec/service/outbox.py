"""The tape outbox: every host that accepts tapes (recorder, API) delivers them to storage itself.

A closed tape lies in ``DATA/tapes/`` until it is in storage; the hand-off (or the upload) tries at once,
and when storage is down the tape stays. The outbox then retries every pending tape on this host's
disk with back-off, until stored: after an outage, after a restart (the disk is the outbox's memory),
and for tapes another process on the same data folder left. ``pipeline.store_tape`` locks each tape's
folder, so a tape is never uploaded twice at once.

A tape that cannot be read (its call.json is not JSON, or holds a time that is not finite or out of
range, ...) is quarantined: moved to ``DATA/quarantine/``, logged once and counted in ``/metrics``
(``callrec_tapes_quarantined``), and the outbox goes on with the others.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from pathlib import Path

from callrec.errors import CallrecError, ParseError
from callrec.files import tape
from callrec.service.pipeline import Pipeline, pending_tapes

log = logging.getLogger("callrec.outbox")
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 30.0
SCAN_S = 1.0


class TapeOutbox:
    """Delivers the tapes pending under ``DATA/tapes`` in a background thread; ``run_once`` for tests."""

    def __init__(self, pipeline: Pipeline, *, scan_s: float = SCAN_S) -> None:
        self.pipeline = pipeline
        self._scan_s = scan_s
        self._tapes = pipeline.ctx.config.tapes_dir
        # per tape: (failures so far, monotonic time of the next try)
        self._retry: dict[Path, tuple[int, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="callrec-outbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def run_once(self, now_s: float | None = None) -> int:
        """Try every pending tape that is due; how many were delivered."""
        now_s = time.monotonic() if now_s is None else now_s
        bad: list[tuple[Path, str]] = []
        pending = pending_tapes(self._tapes, bad=bad)
        for folder, reason in bad:
            tape.quarantine(folder, self._tapes.parent, reason)
        self._retry = {f: v for f, v in self._retry.items() if f in set(pending)}
        done = 0
        for folder in pending:
            if self._stop.is_set():
                break
            failures, due = self._retry.get(folder, (0, 0.0))
            if due > now_s:
                continue
            try:
                self.pipeline.tape_closed(folder)
            except ParseError as exc:  # it cannot be read: retrying will not help
                if folder.is_dir():
                    tape.quarantine(folder, self._tapes.parent, str(exc).removeprefix(f"{folder / tape.META_FILE}: "))
            except CallrecError as exc:
                log.warning("tape %s: %s", folder.name, exc)
            except Exception as exc:  # noqa: BLE001 - the database is away: the tape waits on disk
                log.warning("tape %s not delivered yet: %s", folder.name, exc)
            if folder.is_dir():
                failures += 1
                wait = min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** min(failures - 1, 10)) * random.uniform(0.8, 1.2)
                self._retry[folder] = (failures, now_s + wait)
            else:
                self._retry.pop(folder, None)
                done += 1
        return done

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delivered = self.run_once()
                if delivered:
                    log.info("outbox delivered %d tapes", delivered)
            except Exception as exc:  # noqa: BLE001 - a disk hiccup must not end the deliveries
                log.warning("outbox round failed: %s", exc)
            self._stop.wait(self._scan_s)
