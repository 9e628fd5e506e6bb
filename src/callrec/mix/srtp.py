"""SRTP in the mixer: each SRTP stream's decryption before its RTP is read, its counters, its reasons.

A stream is SRTP when its receiver's ``m=`` line says so (RTP/SAVP, RTP/SAVPF; a tape: it has keys). Its
keys are the SDES ``a=crypto`` its sender announced (a capture's SDP, or a tape's sealed keys): one
:class:`~callrec.media.srtp.SrtpDecryptor` per key, the newest tried first, except that the key that
decrypted the packet before is always tried first (a re-key costs one failed try, not one per packet).
A packet no key decrypts is dropped and counted (``srtp_auth_failures``, ``srtp_replayed``,
``srtp_undecryptable``), never mixed: a wrong or missing key gives silence and a reason, not noise.
Keys are never shown: every sentence here names a stream, a party and counts only.

SRTP streams always take the mixer's per-packet path (:mod:`callrec.mix.demux` keeps their routes apart
from plain RTP's, so plain RTP pays nothing for them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from callrec.media.srtp import SrtpDecryptor, UnsupportedSrtp

if TYPE_CHECKING:
    from callrec.wire.sdes import CryptoAttribute

# the share of a stream's packets failing authentication above which its key is called wrong
WRONG_KEY_SHARE = 0.9
COUNTERS = ("srtp_auth_failures", "srtp_replayed", "srtp_undecryptable")
_OK, _AUTH, _REPLAY, _OTHER = range(4)


class SrtpStream:
    """Decrypts what one party sends to one endpoint (one stream of the call), SSRC by SSRC."""

    __slots__ = ("_order", "_taken", "unsupported", "counts")

    def __init__(self, keys: Iterable[CryptoAttribute] = ()) -> None:
        self._order: list[SrtpDecryptor] = []  # the order keys are tried in
        self._taken: set[str] = set()
        self.unsupported: list[str] = []  # why a key offered cannot be used (no key in the sentence)
        # SSRC -> [decrypted, authentication failures, replayed, undecryptable]
        self.counts: dict[int, list[int]] = {}
        self.update(keys)

    def __repr__(self) -> str:
        return f"SrtpStream(keys={len(self._order)}, ssrcs={len(self.counts)})"

    @property
    def has_keys(self) -> bool:
        return bool(self._order)

    def update(self, keys: Iterable[CryptoAttribute]) -> None:
        """Take the keys not taken yet (``keys`` oldest first: a newer one is tried before an older)."""
        for crypto in keys:
            value = crypto.value()
            if value in self._taken:
                continue
            self._taken.add(value)
            try:
                decryptor = SrtpDecryptor(crypto)
            except UnsupportedSrtp as exc:
                self.unsupported.append(str(exc))
                continue
            # newest first, after the key that decrypted the last packet (if any did)
            self._order.insert(1 if self._order and self._worked() else 0, decryptor)

    def _worked(self) -> bool:
        return any(c[_OK] for c in self.counts.values())

    def unprotect(self, packet: bytes, ssrc: int) -> bytes | None:
        """The RTP packet inside one SRTP packet of ``ssrc``, or None (counted) when no key decrypts it."""
        counts = self.counts.get(ssrc)
        if counts is None:
            counts = self.counts[ssrc] = [0, 0, 0, 0]
        order = self._order
        replayed = failed = False
        for i, decryptor in enumerate(order):
            replay, auth = decryptor.replay, decryptor.auth_failures
            plain = decryptor.unprotect(packet)
            if plain is not None:
                counts[_OK] += 1
                if i:
                    order.insert(0, order.pop(i))
                return plain
            if decryptor.replay != replay:
                replayed = True
            elif decryptor.auth_failures != auth:
                failed = True
        # authentic but replayed under one key wins over failing under another
        counts[_REPLAY if replayed else _AUTH if failed else _OTHER] += 1
        return None

    def counters(self, ssrc: int) -> dict[str, int]:
        """One SSRC's counters, as ``--json`` gives them."""
        c = self.counts.get(ssrc, [0, 0, 0, 0])
        return {"srtp_auth_failures": c[_AUTH], "srtp_replayed": c[_REPLAY], "srtp_undecryptable": c[_OTHER]}

    def totals(self) -> list[int]:
        """[decrypted, authentication failures, replayed, undecryptable] over every SSRC."""
        return [sum(c[i] for c in self.counts.values()) for i in range(4)]


def reasons(index: int, party: str, stream: SrtpStream) -> list[str]:
    """What a call is told about one SRTP stream (``index`` into the call's streams): nothing when it
    decrypted, else why its audio is (mostly) silence."""
    ok, auth, _replayed, other = totals = stream.totals()
    packets = sum(totals)
    if packets == 0:
        return []
    which = f"stream {index} (from {party})"
    if not stream.has_keys:
        if stream.unsupported:
            return [f"{which} is SRTP and cannot be decrypted: {'; '.join(stream.unsupported)}: its audio is silence"]
        return [f"{which} is SRTP and its key is missing: its audio is silence"]
    if ok == 0 and auth == packets:
        return [f"{which}: SRTP authentication failed for every packet: wrong key; its audio is silence"]
    if ok == 0:
        return [
            f"{which}: no SRTP packet could be decrypted ({auth} failed authentication, {other} were not SRTP):"
            " its audio is silence"
        ]
    if auth >= WRONG_KEY_SHARE * packets:
        return [f"{which}: SRTP authentication failed for {auth} of {packets} packets: wrong key for most of it"]
    return []


def add_counters(streams: list[dict[str, Any]], srtp: Sequence[tuple[str, SrtpStream]]) -> None:
    """Add each SRTP SSRC's counters to its entry of ``--json``'s streams (matched by party and SSRC)."""
    for entry in streams:
        found = [s for party, s in srtp if party == entry.get("party") and entry.get("ssrc") in s.counts]
        if not found:
            continue
        sums = dict.fromkeys(COUNTERS, 0)
        for s in found:
            for name, value in s.counters(int(entry["ssrc"])).items():
                sums[name] += value
        entry.update(sums)
