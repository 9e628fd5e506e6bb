"""The recorder's hand-off to the service: tape events go to the database off the event loop, in order."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import delete, select

from callrec.db.engine import transaction
from callrec.db.schema import RECORDING, Call, Recording
from callrec.service.pipeline import Pipeline

log = logging.getLogger("callrec.handoff")


class TapeHandOff:
    """Gives the recorder's callbacks to the pipeline in one background thread (never blocks SIP or RTP).

    A tape whose hand-off fails (database or storage down) stays on disk; the outbox hands it over
    again (``service.outbox``), so nothing waits in memory only.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="callrec-handoff")

    def opened(self, folder: Path) -> Future[None]:
        return self._pool.submit(self._guard, "open", self.pipeline.tape_opened, folder)

    def closed(self, folder: Path) -> Future[None]:
        return self._pool.submit(self._guard, "close", self._closed, folder)

    def discarded(self, folder: Path) -> Future[None]:
        return self._pool.submit(self._guard, "discard", self._discarded, folder)

    def drain(self) -> None:
        """Finish every hand-off asked for so far."""
        self._pool.shutdown(wait=True)

    def _closed(self, folder: Path) -> None:
        self.pipeline.tape_closed(folder)

    def _discarded(self, folder: Path) -> None:
        # a cancelled session's empty tape is gone: so is its call
        with transaction(self.pipeline.ctx.sessions) as s:
            call_id = s.scalar(select(Call.id).where(Call.tape_ref == folder.name))
            if call_id is None:
                return
            states = set(s.scalars(select(Recording.state).where(Recording.call_id == call_id)))
            if states <= {RECORDING}:
                s.execute(delete(Recording).where(Recording.call_id == call_id))
                s.execute(delete(Call).where(Call.id == call_id))

    @staticmethod
    def _guard(what: str, fn: object, folder: Path) -> None:
        try:
            fn(folder)  # type: ignore[operator]
        except Exception as exc:  # noqa: BLE001 - the tape is safe on disk; the sweeper tries again
            log.warning("hand-off of %s (%s) failed: %s", folder, what, exc)
