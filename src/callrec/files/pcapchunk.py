"""A chunk of a classic pcap, read with numpy: where its complete records start, their captured lengths, and
fixed-size fields gathered at many offsets at once (the array side of ``CaptureReader.batches``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from callrec.wire.netparse import MAX_FRAME_BYTES

# records of one length in a row before the scanner checks the rest of the run at once with numpy
SAME_LENGTH_RUN = 4

IntArray = npt.NDArray[np.int64]
_BYTES = [np.arange(k, dtype=np.int64) for k in range(5)]


def gather(data: npt.NDArray[np.uint8], at: IntArray, size: int, dtype: str) -> npt.NDArray[np.int64]:
    """The unsigned ``size``-byte field of ``dtype``'s byte order (``">u4"``, ``"<u2"``...) at each offset."""
    raw = np.ascontiguousarray(data[at[:, None] + _BYTES[size]])
    return raw.view(dtype)[:, 0].astype(np.int64)


def scan_records(
    buf: bytes, header_len: int, caplen_at: Callable[[bytes, int], tuple[int, ...]], endian: str
) -> tuple[IntArray, IntArray, int, bool]:
    """Where the complete records of ``buf`` start and their captured lengths; where the first incomplete
    record starts, and whether it is damaged (longer than any frame can be).

    Records are found one after the other, but once a few in a row have had the same length (RTP of one
    codec), the rest of the run is checked at once: each next length field sits one stride further on.
    """
    n = len(buf)
    data = np.frombuffer(buf, np.uint8)
    starts: list[IntArray] = []
    lengths: list[IntArray] = []
    one_by_one: list[int] = []
    their_lengths: list[int] = []
    off = same = 0
    prev = -1
    while off + header_len <= n:
        (caplen,) = caplen_at(buf, off + 8)
        end = off + header_len + caplen
        if caplen > MAX_FRAME_BYTES or end > n:
            break
        one_by_one.append(off)
        their_lengths.append(caplen)
        off = end
        same = same + 1 if caplen == prev else 0
        prev = caplen
        if same < SAME_LENGTH_RUN:
            continue
        same = 0
        stride = header_len + caplen
        count = (n - off) // stride
        if not count:
            continue
        at = off + stride * np.arange(count, dtype=np.int64)
        differ = np.flatnonzero(gather(data, at + 8, 4, endian + "u4") != caplen)
        run = int(differ[0]) if len(differ) else count
        if run:
            starts += [np.array(one_by_one, np.int64), at[:run]]
            lengths += [np.array(their_lengths, np.int64), np.full(run, caplen, np.int64)]
            one_by_one, their_lengths = [], []
            off += run * stride
    starts.append(np.array(one_by_one, np.int64))
    lengths.append(np.array(their_lengths, np.int64))
    damaged = off + header_len <= n and caplen_at(buf, off + 8)[0] > MAX_FRAME_BYTES
    return np.concatenate(starts), np.concatenate(lengths), off, damaged
