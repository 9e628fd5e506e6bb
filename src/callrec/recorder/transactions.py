"""SIP server transactions (RFC 3261 section 17.2) and the UAS's 2xx retransmission (section 13.3.1.4).

A retransmitted request is answered with the last response sent for it and goes no further; a final
response to INVITE sent over UDP is repeated (T1, 2·T1, … capped at T2) until its ACK arrives or 64·T1
have passed. Completed transactions are remembered for 64·T1 to absorb late retransmissions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from callrec.wire.sip import SipMessage

T1_S = 0.5
T2_S = 4.0
TIMEOUT_FACTOR = 64  # Timers B, H, J: 64·T1

Send = Callable[[bytes], None]


@dataclass(slots=True)
class _Entry:
    request: SipMessage
    send: Send
    reliable: bool
    response: bytes | None = None
    status: int = 0
    timer: asyncio.TimerHandle | None = None
    interval: float = T1_S
    waited: float = 0.0


def transaction_key(msg: SipMessage) -> tuple[str, ...]:
    """The key of a request's server transaction; ACK and CANCEL map onto their INVITE's branch."""
    via = msg.header("via") or ""
    branch = ""
    for param in via.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "branch":
            branch = value.strip()
    method = msg.method or ""
    if method == "ACK":
        method = "INVITE"
    if branch.startswith("z9hG4bK"):
        sent_by = via.split(";")[0].strip()
        return (branch, sent_by, method)
    # RFC 2543 peers: no magic cookie, so match on the dialog and sequence instead (section 17.2.3)
    number = (msg.header("cseq") or "").split(" ")[0]
    return (msg.call_id, msg.from_tag or "", msg.to_tag or "", number, via, method)


class ServerTransactions:
    """Remembers responses per transaction and repeats final INVITE responses until ACK."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_ack_timeout: Callable[[SipMessage], None],
        t1: float = T1_S,
        t2: float = T2_S,
    ) -> None:
        self._loop = loop
        self._on_ack_timeout = on_ack_timeout
        self._t1, self._t2 = t1, t2
        self._entries: dict[tuple[str, ...], _Entry] = {}
        # 2xx to INVITE waiting for an ACK (a new transaction of its own): (Call-ID, CSeq number)
        self._unacked: dict[tuple[str, int], _Entry] = {}
        self.retransmissions_absorbed = 0

    def __len__(self) -> int:
        return len(self._entries)

    def received(self, msg: SipMessage, send: Send, reliable: bool) -> bool:
        """Take a request; True when the transaction layer dealt with it (the core must not see it)."""
        key = transaction_key(msg)
        entry = self._entries.get(key)
        if msg.method == "ACK":
            if entry is not None and entry.status >= 300:
                self._stop(entry)  # the ACK of a failure belongs to its INVITE transaction
                return True
            try:
                number = msg.cseq[0]
            except ValueError:
                return True
            pending = self._unacked.pop((msg.call_id, number), None)
            if pending is not None:
                self._stop(pending)
            return False
        if entry is not None:
            self.retransmissions_absorbed += 1
            if entry.response is not None:
                entry.send(entry.response)
            return True
        self._entries[key] = _Entry(msg, send, reliable, interval=self._t1)
        self._loop.call_later(self._t1 * TIMEOUT_FACTOR, self._forget, key)
        return False

    def respond(self, request: SipMessage, response: SipMessage) -> None:
        """Send a response to a request taken by ``received`` and remember it for retransmissions."""
        entry = self._entries.get(transaction_key(request))
        data = response.serialize()
        if entry is None:  # the transaction is gone (a very late answer): send once
            return
        if entry.status >= 200:
            return  # a final response was already sent
        entry.response, entry.status = data, response.status or 0
        entry.send(data)
        if request.method != "INVITE" or entry.status < 200:
            return
        if entry.status < 300:
            with contextlib.suppress(ValueError):
                self._unacked[(request.call_id, request.cseq[0])] = entry
        if not entry.reliable or entry.status < 300:
            # a 2xx is repeated by the UAS core even over TCP; a failure only where packets get lost
            entry.timer = self._loop.call_later(entry.interval, self._retransmit, entry)

    def _retransmit(self, entry: _Entry) -> None:
        entry.waited += entry.interval
        if entry.waited >= self._t1 * TIMEOUT_FACTOR - 1e-9:  # float sums of the intervals
            entry.timer = None
            if entry.status < 300:
                with contextlib.suppress(ValueError):
                    self._unacked.pop((entry.request.call_id, entry.request.cseq[0]), None)
                self._on_ack_timeout(entry.request)
            return
        if entry.response is not None:
            entry.send(entry.response)
        entry.interval = min(entry.interval * 2, self._t2, self._t1 * TIMEOUT_FACTOR - entry.waited)
        entry.timer = self._loop.call_later(entry.interval, self._retransmit, entry)

    def _stop(self, entry: _Entry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None

    def _forget(self, key: tuple[str, ...]) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        if entry.timer is not None:  # still waiting for an ACK: look again later
            self._loop.call_later(self._t1 * TIMEOUT_FACTOR, self._forget, key)
            return
        del self._entries[key]

    def pending_invite(self, call_id: str) -> list[SipMessage]:
        """INVITE requests of ``call_id`` that have no final response yet (what a CANCEL may stop)."""
        return [
            e.request
            for e in self._entries.values()
            if e.request.method == "INVITE" and e.request.call_id == call_id and e.status < 200
        ]

    def invite_for_cancel(self, cancel: SipMessage) -> SipMessage | None:
        """The INVITE a CANCEL names (same branch), whatever its state; None when unknown."""
        key = transaction_key(cancel)
        entry = self._entries.get((*key[:-1], "INVITE"))
        return entry.request if entry is not None else None

    def has_final(self, request: SipMessage) -> bool:
        entry = self._entries.get(transaction_key(request))
        return entry is not None and entry.status >= 200

    def close(self) -> None:
        for entry in self._entries.values():
            self._stop(entry)
        self._entries.clear()
        self._unacked.clear()
