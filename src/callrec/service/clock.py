"""Which clock the service reads: the database's, once hosts share a database.

Leases, back-off and schedules are compared across hosts, so they must all be read off one clock. The
database's is the one every host can see. ``DatabaseClock`` asks it for its time now and then and keeps
the difference to this host's clock, so reading it costs nothing; a host whose clock runs 40 s ahead
(``CALLREC_CLOCK_OFFSET_S`` makes one, for tests) still reads the database's time.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from callrec.service.schedule import Clock

log = logging.getLogger("callrec.clock")
# how often the difference is measured again: clocks drift slowly, and hosts are stepped by NTP rarely
REFRESH_S = 10.0


class DatabaseClock:
    """``host``'s clock corrected to the database's, measured every ``REFRESH_S`` seconds."""

    def __init__(self, engine: Engine, host: Clock, refresh_s: float = REFRESH_S) -> None:
        self._engine = engine
        self._host = host
        self._refresh_s = refresh_s
        self._offset = timedelta(0)
        self._measured = -float("inf")
        self._lock = threading.Lock()

    @property
    def offset(self) -> timedelta:
        """The database's clock minus this host's, as last measured."""
        return self._offset

    def now(self) -> datetime:
        if time.monotonic() - self._measured >= self._refresh_s:
            self._measure()
        return self._host.now() + self._offset

    def _measure(self) -> None:
        with self._lock:
            if time.monotonic() - self._measured < self._refresh_s:
                return
            try:
                before = self._host.now()
                with self._engine.connect() as conn:
                    db_now = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
                after = self._host.now()
            except Exception as exc:  # noqa: BLE001 - keep the last difference; the database is away
                log.warning("cannot read the database's clock (%s); using the last difference", exc)
                self._measured = time.monotonic() - self._refresh_s + 1.0  # try again in a second
                return
            if db_now.tzinfo is None:
                db_now = db_now.replace(tzinfo=UTC)
            offset = db_now - (before + (after - before) / 2)
            if abs((offset - self._offset).total_seconds()) > 1.0:
                log.info("this host's clock is %.3f s behind the database's", offset.total_seconds())
            self._offset = offset
            self._measured = time.monotonic()
