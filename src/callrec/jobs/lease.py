"""The lease of a claimed background row, renewed while its worker runs.

A recording or a stitch is claimed with a conditional UPDATE that sets ``worker`` and ``lease_until``;
the heartbeat keeps the lease fresh, so only a dead worker's row is ever taken over.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import update

from callrec.db.engine import transaction
from callrec.db.schema import MIXING, STORING, Recording, Stitch
from callrec.service.context import Context

log = logging.getLogger("callrec.worker")


class Heartbeat:
    """Renews the lease of one ``Recording`` or ``Stitch`` row while this worker holds it."""

    def __init__(self, ctx: Context, model: type[Recording] | type[Stitch], object_id: str) -> None:
        self._ctx = ctx
        self._model = model
        self._id = object_id
        self._stop = threading.Event()
        name = f"lease-{model.__tablename__}-{object_id[:8]}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        model = self._model
        period = max(0.2, self._ctx.config.lease_s / 3)
        while not self._stop.wait(period):
            until = self._ctx.clock.now() + timedelta(seconds=self._ctx.config.lease_s)
            try:
                with transaction(self._ctx.sessions) as s:
                    s.execute(
                        update(model)
                        .where(model.id == self._id, model.worker == self._ctx.node)
                        .where(model.state.in_((MIXING, STORING)))
                        .values(lease_until=until)
                    )
            except Exception:  # noqa: BLE001 - a missed renewal only risks a duplicate run, which is harmless
                log.warning("lease renewal of %s %s failed", model.__tablename__, self._id, exc_info=True)
