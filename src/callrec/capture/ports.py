"""RTP/RTCP port pairs from a configured range: even port for RTP, the odd one above for RTCP."""

from __future__ import annotations

from collections import deque


class PortsExhausted(Exception):
    """Every port pair of the range is in use."""


class PortAllocator:
    """Hands out port pairs round-robin, so a port just released is the last to be reused.

    Reusing a port late keeps stray packets of a finished call (a slow SRC, a retransmitting peer) out of
    the next call's tape.
    """

    def __init__(self, first: int, last: int) -> None:
        first += first & 1
        self._free: deque[int] = deque(range(first, last, 2))
        self._used: set[int] = set()
        self.capacity = len(self._free)

    @property
    def in_use(self) -> int:
        return len(self._used)

    def take(self) -> int:
        """The RTP port of a free pair; ``PortsExhausted`` when none is left."""
        if not self._free:
            raise PortsExhausted("no free RTP port pair left in the configured range")
        port = self._free.popleft()
        self._used.add(port)
        return port

    def give_back(self, port: int) -> None:
        """Return a pair (unknown or already returned ports are ignored)."""
        if port in self._used:
            self._used.remove(port)
            self._free.append(port)

    def set_aside(self, port: int) -> None:
        """A pair that could not be bound (another program holds it) goes to the back of the queue."""
        self.give_back(port)
