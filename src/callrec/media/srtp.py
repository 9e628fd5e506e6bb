"""SRTP and SRTCP decryption (RFC 3711, RFC 7714) of one direction, with libsrtp through pylibsrtp.

One ``SrtpDecryptor`` per sending party and ``a=crypto``: every SSRC that party sends is accepted
("any inbound"), each with its own replay window. A packet that does not authenticate, is replayed or is
not SRTP at all is dropped and counted, never raised: the call is still mixed from the rest.

With ``UNENCRYPTED_SRTCP`` the audio decrypts as usual, but libsrtp refuses SRTCP packets whose E flag
differs from its policy and pylibsrtp cannot set that policy: those SRTCP packets are counted as ``other``.
"""

from __future__ import annotations

from pylibsrtp import Error, Policy, Session

from callrec.errors import CallrecError
from callrec.wire.sdes import SUITES, CryptoAttribute, Suite

_PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}
# a recording is not a security endpoint: a packet late by up to this many is still authentic audio, so the
# replay window is wider than libsrtp's 128 (libsrtp allows up to 32768)
REPLAY_WINDOW = 1024
MAX_REPLAY_WINDOW = 0x8000
SRTCP_INDEX_LENGTH = 4  # bytes: the E flag and the 31-bit SRTCP index
_AUTH_FAILURE = "authentication failure"
_REPLAY = frozenset({"replay check failed (bad index)", "replay check failed (index too old)"})


class UnsupportedSrtp(CallrecError):
    """The ``a=crypto`` names a suite or session parameter we cannot decrypt; the message says which."""


def is_rtcp(packet: bytes) -> bool:
    """Whether a datagram on a multiplexed port (RFC 5761) is RTCP: its packet type is 192–223."""
    return len(packet) > 1 and 192 <= packet[1] <= 223


class SrtpDecryptor:
    """Decrypts what one party sends under one ``a=crypto`` (several keys when they carry MKIs)."""

    __slots__ = ("auth_failures", "replay", "other", "_suite", "_tag", "_sessions", "_single", "_mki_length")

    def __init__(self, crypto: CryptoAttribute, window: int | None = None) -> None:
        reason = crypto.unsupported_reason
        if reason is not None:
            raise UnsupportedSrtp(reason)
        self._suite: Suite = SUITES[crypto.suite]
        self._tag = crypto.tag
        hint = crypto.window_size_hint or 0
        window = min(max(window or REPLAY_WINDOW, hint), MAX_REPLAY_WINDOW)
        self._sessions = {key.mki_bytes: _session(crypto.suite, key.key_salt, window) for key in crypto.keys}
        self._mki_length = crypto.key.mki_length or 0
        self._single: Session | None = self._sessions[b""] if self._mki_length == 0 else None
        self.auth_failures = 0
        self.replay = 0
        self.other = 0

    def __repr__(self) -> str:
        return (
            f"SrtpDecryptor(tag={self._tag}, suite={self._suite.name}, auth_failures={self.auth_failures},"
            f" replay={self.replay}, other={self.other})"
        )

    @property
    def dropped(self) -> int:
        return self.auth_failures + self.replay + self.other

    def unprotect(self, packet: bytes) -> bytes | None:
        """The RTP packet inside an SRTP packet, or None (counted) when it cannot be had."""
        session = self._single
        if session is None:
            session, packet = self._strip_mki(packet, rtcp=False)
            if session is None:
                return None
        try:
            return session.unprotect(packet)
        except (Error, ValueError) as exc:
            self._count(exc)
            return None
        except TypeError:
            # pylibsrtp takes bytes only; a bytearray or memoryview is copied once, on this slow path
            if isinstance(packet, bytes):
                self.other += 1
                return None
            return self.unprotect(bytes(packet))

    def unprotect_rtcp(self, packet: bytes) -> bytes | None:
        """The RTCP compound packet inside an SRTCP packet, or None (counted) when it cannot be had."""
        session = self._single
        if session is None:
            session, packet = self._strip_mki(packet, rtcp=True)
            if session is None:
                return None
        try:
            return session.unprotect_rtcp(packet)
        except (Error, ValueError) as exc:
            self._count(exc)
            return None
        except TypeError:
            # pylibsrtp takes bytes only; a bytearray or memoryview is copied once, on this slow path
            if isinstance(packet, bytes):
                self.other += 1
                return None
            return self.unprotect_rtcp(bytes(packet))

    def unprotect_any(self, packet: bytes) -> bytes | None:
        """``unprotect`` or ``unprotect_rtcp``, chosen as RFC 5761 demultiplexes RTP and RTCP on one port."""
        return self.unprotect_rtcp(packet) if is_rtcp(packet) else self.unprotect(packet)

    def _count(self, exc: Exception) -> None:
        text = str(exc)
        if text == _AUTH_FAILURE:
            self.auth_failures += 1
        elif text in _REPLAY:
            self.replay += 1
        else:
            self.other += 1

    def _strip_mki(self, packet: bytes, rtcp: bool) -> tuple[Session | None, bytes]:
        # The MKI is never authenticated (RFC 3711 §3.1, RFC 7714 §8): it sits before the HMAC tag, or
        # last after an AEAD tag; libsrtp is given the packet without it, keyed by its value.
        suite = self._suite
        tag = 0 if suite.aead else (suite.srtcp_tag_length if rtcp else suite.srtp_tag_length)
        end = len(packet) - tag
        start = end - self._mki_length
        if start < (8 + SRTCP_INDEX_LENGTH if rtcp else 12):
            self.other += 1
            return None, packet
        session = self._sessions.get(bytes(packet[start:end]))
        if session is None:
            self.other += 1
            return None, packet
        return session, bytes(packet[:start]) + bytes(packet[end:])


def _session(suite: str, key_salt: bytes, window: int) -> Session:
    policy = Policy(key=key_salt, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=_PROFILES[suite])
    policy.window_size = window
    return Session(policy)
