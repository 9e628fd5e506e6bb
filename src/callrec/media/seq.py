"""Wrap-around arithmetic for RTP's 16-bit sequence numbers and 32-bit timestamps, in one place.

A sequence number counts modulo 2**16 and a timestamp modulo 2**32 (RFC 3550 section 5.1). A receiver
extends them to unbounded integers: each new value becomes the one nearest to a reference (the highest
extended value seen, or the packet before), so a distance of exactly half the range counts as backwards.

Everything that compares or extends them uses this module. :meth:`SsrcTimeline.push
<callrec.media.timeline.SsrcTimeline.push>` runs for every packet and writes the arithmetic of
:func:`seq_distance` and :func:`unwrap_ts` out with the constants below, because a function call there
would cost more than the arithmetic; runs of packets use the numpy forms (:func:`seq_steps`,
:func:`extend_timestamps`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SEQ_MOD = 1 << 16
SEQ_MASK = SEQ_MOD - 1
SEQ_HALF = SEQ_MOD >> 1  # a distance of this many or more steps forward is a step backwards
TS_MOD = 1 << 32
TS_MASK = TS_MOD - 1
TS_HALF = TS_MOD >> 1

_Ints = npt.NDArray[np.int64]


def unwrap(value: int, reference: int, modulus: int) -> int:
    """Return the extended value ≡ ``value`` (mod ``modulus``) nearest to the extended ``reference``
    (of two equally near, the one below)."""
    half = modulus >> 1
    delta = (value - reference) % modulus
    if delta >= half:
        delta -= modulus
    return reference + delta


def seq_distance(seq: int, reference: int) -> int:
    """Steps from ``reference`` forward to ``seq`` (negative: backwards), in [-2**15, 2**15).

    Either may be extended: only their 16 low bits count."""
    step = (seq - reference) & SEQ_MASK
    return step - SEQ_MOD if step >= SEQ_HALF else step


def next_seq(seq: int) -> int:
    """The 16-bit sequence number after ``seq`` (which may be extended)."""
    return (seq + 1) & SEQ_MASK


def unwrap_seq(seq: int, reference: int) -> int:
    """Extend a 16-bit RTP sequence number next to an extended reference."""
    return reference + seq_distance(seq, reference)


def unwrap_ts(ts: int, reference: int) -> int:
    """Extend a 32-bit RTP timestamp next to an extended reference."""
    delta = (ts - reference) & TS_MASK
    return reference + (delta - TS_MOD if delta >= TS_HALF else delta)


def seq_steps(seq: _Ints) -> _Ints:
    """Steps forward (mod 2**16, so in [0, 2**16)) from each sequence number to the next: 1 where a packet
    follows the one before, across a wrap too."""
    steps: _Ints = (seq[1:] - seq[:-1]) & SEQ_MASK
    return steps


def extend_timestamps(ts: _Ints, reference: int) -> _Ints:
    """Extended timestamps of an in-order run of 32-bit timestamps (at least one): each is unwrapped next to
    the one before, the first next to the extended ``reference``; what :func:`unwrap_ts` gives packet by
    packet."""
    steps = np.empty(len(ts), np.int64)
    steps[0] = ts[0] - (reference & TS_MASK)
    steps[1:] = np.diff(ts)
    steps &= TS_MASK
    steps[steps >= TS_HALF] -= TS_MOD
    extended: _Ints = reference + np.cumsum(steps)
    return extended
