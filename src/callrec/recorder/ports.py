"""RTP/RTCP port pairs from a configured range: even port for RTP, the odd one above for RTCP."""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable

# how long a closed session's pair rests before it is handed out again: an SRC that does not stop sending
# when the session ends (a lost BYE, a 405 to our BYE) keeps its stale RTP going to the old ports
PORT_REST_S = 30.0


class PortsExhausted(Exception):
    """Every port pair of the range is in use (or resting after its session)."""


class PortAllocator:
    """Hands out port pairs round-robin from a random place in the range; a released pair rests first.

    Stray packets of a finished call (a slow SRC, a media proxy still forking an old call to us) must not
    land in the next call's tape, so a port is reused as late as possible:

    - the first pair offered is picked at random (``secrets``-grade, ``random.SystemRandom``): a recorder
      restarted while an SRC still sends to the old ports does not hand those same ports out first;
    - a pair given back rests ``rest_s`` seconds (``PORT_REST_S``) before it joins the back of the queue.
      Resting pairs are never handed out early: when only resting pairs are left, ``take`` raises
      ``PortsExhausted`` (the INVITE gets 503 with Retry-After) rather than giving a new call ports that
      may still receive another call's audio. Size the range for the peak plus ``rest_s`` of call turnover.

    ``clock`` (monotonic seconds) and ``start`` (index of the first pair offered) are for tests.
    """

    def __init__(
        self,
        first: int,
        last: int,
        *,
        rest_s: float = PORT_REST_S,
        clock: Callable[[], float] = time.monotonic,
        start: int | None = None,
    ) -> None:
        first += first & 1
        pairs = list(range(first, last, 2))
        if start is None:
            start = random.SystemRandom().randrange(len(pairs)) if pairs else 0
        start = start % len(pairs) if pairs else 0
        self._free: deque[int] = deque(pairs[start:] + pairs[:start])
        self._resting: deque[tuple[float, int]] = deque()  # (free again at, port), in release order
        self._used: set[int] = set()
        self._rest_s = rest_s
        self._clock = clock
        self.capacity = len(pairs)

    @property
    def in_use(self) -> int:
        return len(self._used)

    @property
    def resting(self) -> int:
        return len(self._resting)

    def take(self) -> int:
        """The RTP port of a free pair; ``PortsExhausted`` when none is left (resting pairs are not free)."""
        self._wake()
        if not self._free:
            raise PortsExhausted(
                f"no free RTP port pair left in the configured range ({len(self._resting)} resting after their "
                "sessions)"
            )
        port = self._free.popleft()
        self._used.add(port)
        return port

    def give_back(self, port: int) -> None:
        """Return a pair; it rests ``rest_s`` before reuse (unknown or already returned ports are ignored)."""
        if port in self._used:
            self._used.remove(port)
            self._resting.append((self._clock() + self._rest_s, port))

    def set_aside(self, port: int) -> None:
        """A pair that could not be bound (another program holds it) goes to the back of the queue.

        No session used it, so it does not rest.
        """
        if port in self._used:
            self._used.remove(port)
            self._free.append(port)

    def _wake(self) -> None:
        now, resting = self._clock(), self._resting
        while resting and resting[0][0] <= now:
            self._free.append(resting.popleft()[1])
