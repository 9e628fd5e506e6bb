"""Wrap-around arithmetic for 16-bit sequence numbers and 32-bit timestamps, in one place."""

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32


def unwrap(value: int, reference: int, modulus: int) -> int:
    """Return the extended value ≡ ``value`` (mod ``modulus``) nearest to the extended ``reference``."""
    half = modulus >> 1
    delta = (value - reference) % modulus
    if delta >= half:
        delta -= modulus
    return reference + delta


def unwrap_seq(seq: int, reference: int) -> int:
    """Extend a 16-bit RTP sequence number next to an extended reference."""
    return unwrap(seq, reference, SEQ_MOD)


def unwrap_ts(ts: int, reference: int) -> int:
    """Extend a 32-bit RTP timestamp next to an extended reference."""
    return unwrap(ts, reference, TS_MOD)
