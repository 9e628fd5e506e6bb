"""16- and 32-bit wrap arithmetic of RTP sequence numbers and timestamps: every edge, scalar and numpy."""

from __future__ import annotations

import numpy as np
import pytest

from callrec.media.seq import (
    SEQ_HALF,
    SEQ_MASK,
    SEQ_MOD,
    TS_HALF,
    TS_MASK,
    TS_MOD,
    extend_timestamps,
    next_seq,
    seq_distance,
    seq_steps,
    unwrap,
    unwrap_seq,
    unwrap_ts,
)


def test_constants() -> None:
    assert (SEQ_MOD, SEQ_MASK, SEQ_HALF) == (65536, 0xFFFF, 0x8000)
    assert (TS_MOD, TS_MASK, TS_HALF) == (2**32, 0xFFFFFFFF, 0x80000000)


@pytest.mark.parametrize(
    ("seq", "reference", "distance"),
    [
        (0, 0, 0),
        (1, 0, 1),
        (0, 65535, 1),  # forward across the wrap
        (65535, 0, -1),  # backwards across the wrap
        (5, 65530, 11),
        (65530, 5, -11),
        (32767, 0, 32767),  # the farthest forward
        (32768, 0, -32768),  # exactly half the range counts as backwards
        (0, 32768, -32768),
        (32769, 0, -32767),
        (3, 65536 * 7 + 1, 2),  # an extended reference: only its 16 low bits count
        (0, -1, 1),  # a reference extended below zero
    ],
)
def test_seq_distance(seq: int, reference: int, distance: int) -> None:
    assert seq_distance(seq, reference) == distance
    assert unwrap_seq(seq, reference) == reference + distance
    assert unwrap_seq(seq, reference) == unwrap(seq, reference, SEQ_MOD)


def test_unwrap_seq_extends_across_many_wraps() -> None:
    ext = 65530
    for k in range(1, 200_000, 97):
        ext = unwrap_seq((65530 + k) & 0xFFFF, ext)
        assert ext == 65530 + k
    # and backwards, below the first value
    assert unwrap_seq(65535, 65536 * 3) == 65536 * 3 - 1
    assert unwrap_seq(65535, 0) == -1


def test_next_seq() -> None:
    assert next_seq(0) == 1
    assert next_seq(65534) == 65535
    assert next_seq(65535) == 0
    assert next_seq(65536 * 5 + 65535) == 0  # extended


@pytest.mark.parametrize(
    ("ts", "reference", "extended"),
    [
        (5, 2**32 - 5, 2**32 + 5),  # forward across the wrap
        (2**32 - 5, 2**32, 2**32 - 5),  # backwards across the wrap
        (2**32 - 1, 0, -1),
        (160, 0, 160),
        (2**31 - 1, 0, 2**31 - 1),  # the farthest forward
        (2**31, 0, -(2**31)),  # exactly half the range counts as backwards
        (0, 2**31, 0),
        (0, 3 * 2**32 + 2**31, 3 * 2**32),  # an extended reference: half back
        (1, 3 * 2**32 + 2**31, 3 * 2**32 + 1),  # just under half back
        (2**32 - 1, 3 * 2**32 + 2**31, 4 * 2**32 - 1),  # just under half forward
    ],
)
def test_unwrap_ts(ts: int, reference: int, extended: int) -> None:
    assert unwrap_ts(ts, reference) == extended
    assert unwrap_ts(ts, reference) == unwrap(ts, reference, TS_MOD)


def test_seq_steps() -> None:
    seq = np.array([65533, 65534, 65535, 0, 1, 1, 0, 5, 32773, 4], np.int64)
    assert seq_steps(seq).tolist() == [1, 1, 1, 1, 0, 65535, 5, 32768, 32767]
    assert seq_steps(np.array([7], np.int64)).tolist() == []


def test_extend_timestamps_matches_unwrap_ts_packet_by_packet() -> None:
    rng = np.random.default_rng(15)
    for reference in (0, 2**32 - 480, -320, 5 * 2**32 + 2**31 - 160, 2**31 - 1):
        steps = rng.choice([160, 160, 160, 320, -160, 2**31 - 1, -(2**31), 2**31], 400)
        ts = (reference + np.cumsum(steps)) & TS_MASK
        got = extend_timestamps(ts.astype(np.int64), reference).tolist()
        want = []
        ref = reference
        for t in ts.tolist():
            ref = unwrap_ts(t, ref)
            want.append(ref)
        assert got == want


def test_extend_timestamps_across_the_wrap() -> None:
    ts = np.array([2**32 - 320, 2**32 - 160, 0, 160, 320], np.int64)
    assert extend_timestamps(ts, 2**32 - 480).tolist() == [2**32 - 320, 2**32 - 160, 2**32, 2**32 + 160, 2**32 + 320]
    # the first unwrapped next to an extended reference one wrap further on
    assert extend_timestamps(ts, 2 * 2**32 - 480).tolist() == [
        2 * 2**32 - 320,
        2 * 2**32 - 160,
        2 * 2**32,
        2 * 2**32 + 160,
        2 * 2**32 + 320,
    ]
    # a single packet, backwards of the reference
    assert extend_timestamps(np.array([2**32 - 1], np.int64), 0).tolist() == [-1]
