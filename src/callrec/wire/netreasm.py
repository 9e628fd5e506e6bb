"""Reassembly of what the network split: IP fragments and TCP byte streams.

Both tables are bounded (pending fragment sets, tracked flows, buffered segments) so a capture of any
length, or a hostile one, is read in constant memory; whatever is evicted is counted in ``stats``.
"""

from __future__ import annotations

MAX_FRAGMENT_SETS = 256
FRAGMENT_TIMEOUT_S = 30.0
# an IP datagram is at most 64 KiB; duplicates may add some, more than this is an attack or garbage
MAX_FRAGMENT_SET_BYTES = 2 * 65535
MAX_TCP_FLOWS = 4096
MAX_TCP_PENDING_SEGMENTS = 64
# out-of-order bytes waiting across all flows; past this a gap is taken as lost in the capture
MAX_TCP_PENDING_BYTES = 32 << 20

SEQ_MASK = 0xFFFFFFFF
TCP_SYN = 0x02
TCP_RST = 0x04

FragmentKey = tuple[bytes, bytes, int, int]
FlowKey = tuple[bytes, int, bytes, int]


def _count(stats: dict[str, int], name: str, n: int = 1) -> None:
    stats[name] = stats.get(name, 0) + n


class _FragmentSet:
    __slots__ = ("first_ts", "parts", "total", "size")

    def __init__(self, first_ts: float) -> None:
        self.first_ts = first_ts
        self.parts: list[tuple[int, bytes]] = []
        self.total: int | None = None  # known once the last fragment (more-fragments clear) arrives
        self.size = 0


class FragmentTable:
    """Collects IPv4/IPv6 fragments and hands back the whole payload once every byte is present.

    Keyed by (src, dst, identification, protocol); fragments may arrive in any order and overlap. Sets
    that never complete are dropped when they are older than ``FRAGMENT_TIMEOUT_S`` (capture time) or
    when more than ``MAX_FRAGMENT_SETS`` are pending, and counted as ``fragments_dropped``.
    """

    def __init__(self, stats: dict[str, int]) -> None:
        self.stats = stats
        self._sets: dict[FragmentKey, _FragmentSet] = {}

    def add(self, key: FragmentKey, offset: int, more: bool, data: bytes, ts: float) -> bytes | None:
        """Add one fragment; return the reassembled payload when this fragment completes it."""
        _count(self.stats, "fragments")
        end = offset + len(data)
        if end > 65535:
            _count(self.stats, "malformed")
            return None
        fs = self._sets.get(key)
        if fs is None:
            self._make_room(ts)
            fs = self._sets[key] = _FragmentSet(ts)
        fs.size += len(data)
        if fs.size > MAX_FRAGMENT_SET_BYTES:
            del self._sets[key]
            _count(self.stats, "fragments_dropped", len(fs.parts) + 1)
            return None
        fs.parts.append((offset, data))
        if not more:
            fs.total = end
        if fs.total is None:
            return None
        # every byte from 0 to total must be covered; overlaps are allowed (retransmitted fragments)
        fs.parts.sort(key=lambda part: part[0])
        covered = 0
        for off, chunk in fs.parts:
            if off > covered:
                return None
            covered = max(covered, off + len(chunk))
        if covered < fs.total:
            return None
        whole = bytearray(covered)
        for off, chunk in fs.parts:
            whole[off : off + len(chunk)] = chunk
        del self._sets[key]
        _count(self.stats, "reassembled")
        return bytes(whole[: fs.total])

    def _make_room(self, ts: float) -> None:
        # dicts keep insertion order, so the first entries are the oldest sets
        sets = self._sets
        while sets:
            oldest_key = next(iter(sets))
            oldest = sets[oldest_key]
            if len(sets) < MAX_FRAGMENT_SETS and ts - oldest.first_ts <= FRAGMENT_TIMEOUT_S:
                break
            del sets[oldest_key]
            _count(self.stats, "fragments_dropped", len(oldest.parts))


class _Flow:
    __slots__ = ("next_seq", "pending")

    def __init__(self) -> None:
        self.next_seq: int | None = None
        self.pending: dict[int, bytes] = {}


def _seq_delta(seq: int, ref: int) -> int:
    """Signed distance from ``ref`` to ``seq`` in 32-bit sequence space."""
    d = (seq - ref) & SEQ_MASK
    return d - 0x100000000 if d & 0x80000000 else d


class TcpStreams:
    """Puts TCP segment payloads of each flow (one direction) back in sequence order, each byte once.

    A flow starts at its SYN or, when the capture began mid-connection, at its first data segment.
    Segments ahead of the expected sequence number wait in a small buffer; if the buffer overflows the
    gap is taken as lost in the capture and the stream resumes at the earliest buffered segment.
    """

    def __init__(self, stats: dict[str, int]) -> None:
        self.stats = stats
        self._flows: dict[FlowKey, _Flow] = {}
        self._pending_bytes = 0

    def segment(self, key: FlowKey, seq: int, flags: int, payload: bytes) -> list[bytes]:
        """Feed one segment; return the payload pieces that are now deliverable, in order."""
        flows = self._flows
        flow = flows.pop(key, None)  # re-inserted below: the dict order is least recently used first
        if flags & TCP_RST:
            if flow is not None:
                self._pending_bytes -= sum(map(len, flow.pending.values()))
            return []
        if flow is None:
            if len(flows) >= MAX_TCP_FLOWS:
                evicted = flows.pop(next(iter(flows)))
                self._pending_bytes -= sum(map(len, evicted.pending.values()))
                _count(self.stats, "tcp_flows_dropped")
            flow = _Flow()
        flows[key] = flow
        if flags & TCP_SYN:
            seq = (seq + 1) & SEQ_MASK  # the SYN itself takes one sequence number
            flow.next_seq = seq
            self._pending_bytes -= sum(map(len, flow.pending.values()))
            flow.pending.clear()
        if not payload:
            return []
        if flow.next_seq is None:
            flow.next_seq = seq
        delta = _seq_delta(seq, flow.next_seq)
        if delta < 0:
            if -delta >= len(payload):
                _count(self.stats, "tcp_retransmitted")
                return []
            payload = payload[-delta:]
            delta = 0
        out: list[bytes] = []
        if delta == 0:
            out.append(payload)
            flow.next_seq = (flow.next_seq + len(payload)) & SEQ_MASK
        else:
            kept = flow.pending.get(seq)
            if kept is None or len(kept) < len(payload):
                flow.pending[seq] = payload
                self._pending_bytes += len(payload) - (len(kept) if kept else 0)
            if len(flow.pending) <= MAX_TCP_PENDING_SEGMENTS and self._pending_bytes <= MAX_TCP_PENDING_BYTES:
                return out
            ref = flow.next_seq
            flow.next_seq = min(flow.pending, key=lambda s: _seq_delta(s, ref))
            _count(self.stats, "tcp_gaps")
        if flow.pending:
            self._drain(flow, out)
        return out

    def _drain(self, flow: _Flow, out: list[bytes]) -> None:
        pending = flow.pending
        while pending:
            assert flow.next_seq is not None
            ref = flow.next_seq
            seq = min(pending, key=lambda s: _seq_delta(s, ref))
            delta = _seq_delta(seq, ref)
            if delta > 0:
                return
            chunk = pending.pop(seq)
            self._pending_bytes -= len(chunk)
            if -delta >= len(chunk):
                _count(self.stats, "tcp_retransmitted")
                continue
            chunk = chunk[-delta:] if delta else chunk
            out.append(chunk)
            flow.next_seq = (ref + len(chunk)) & SEQ_MASK
