"""SDES (RFC 4568): the SDP ``a=crypto`` attribute that carries SRTP keys, and choosing our answer to an offer.

The key material never leaves this module in text: ``repr``/``str`` of every object show the suite and tag
only, and every ``ParseError`` sentence names the tag, never the line (a garbled line may hold a key).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from callrec.errors import CallrecError, ParseError

SDES_PROFILES = frozenset({"RTP/SAVP", "RTP/SAVPF"})
MAX_MKI_LENGTH = 128  # bytes, RFC 4568 §9.2
MAX_LIFETIME_POWER = 64
_TAG = re.compile(r"[0-9]{1,9}")
_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
# names we echo in a reason: registered ones all have an underscore, which base64 keys never hold, so a key
# that slipped into the suite's or a parameter's place is never shown
_SHOWN_NAME = re.compile(r"[A-Za-z0-9]+(_[A-Za-z0-9]+)+")
_PARAM_NAMES = frozenset({"KDR", "WSH", "FEC_ORDER", "FEC_KEY"})


@dataclass(frozen=True)
class Suite:
    """A crypto suite we decrypt: its master key and salt lengths and its authentication tags, in bytes."""

    name: str
    key_length: int
    salt_length: int
    srtp_tag_length: int
    srtcp_tag_length: int
    aead: bool = False

    @property
    def key_salt_length(self) -> int:
        return self.key_length + self.salt_length


SUITES = {
    s.name: s
    for s in (
        Suite("AES_CM_128_HMAC_SHA1_80", 16, 14, 10, 10),
        Suite("AES_CM_128_HMAC_SHA1_32", 16, 14, 4, 10),
        Suite("AEAD_AES_128_GCM", 16, 12, 16, 16, aead=True),
        Suite("AEAD_AES_256_GCM", 32, 12, 16, 16, aead=True),
    )
}
# registered suites we do not decrypt, with their key+salt lengths so their lines are still checked
KNOWN_UNSUPPORTED = {
    "F8_128_HMAC_SHA1_80": 30,
    "AES_192_CM_HMAC_SHA1_80": 38,
    "AES_192_CM_HMAC_SHA1_32": 38,
    "AES_256_CM_HMAC_SHA1_80": 46,
    "AES_256_CM_HMAC_SHA1_32": 46,
}
# RFC 4568 §6.3: these three must be answered alike; KDR, WSH and FEC_* only describe the offerer's sending
NEGOTIATED_PARAMS = frozenset({"UNENCRYPTED_SRTP", "UNENCRYPTED_SRTCP", "UNAUTHENTICATED_SRTP"})
# what the decryptor copes with: libsrtp reads SRTCP's E bit itself; we never receive FEC
_SUPPORTED_PARAMS = frozenset({"UNENCRYPTED_SRTCP", "WSH", "FEC_ORDER"})


class NoUsableCrypto(CallrecError):
    """None of the offered ``a=crypto`` lines can be answered so that we can decrypt what we record."""


def is_srtp_profile(proto: str) -> bool:
    """Whether an ``m=`` line's transport is SRTP keyed by SDES (RTP/SAVP or RTP/SAVPF)."""
    return proto.strip().upper() in SDES_PROFILES


@dataclass(frozen=True, repr=False)
class KeyParam:
    """One ``inline:`` key: master key || master salt, its lifetime in packets and its MKI, if any."""

    key_salt: bytes
    lifetime: int | None = None
    mki: int | None = None
    mki_length: int | None = None

    def __repr__(self) -> str:
        mki = "" if self.mki is None else f", mki={self.mki}:{self.mki_length}"
        return f"KeyParam(<key hidden>, lifetime={self.lifetime}{mki})"

    @property
    def mki_bytes(self) -> bytes:
        """The MKI as it appears in each packet (empty without one)."""
        if self.mki is None or self.mki_length is None:
            return b""
        return self.mki.to_bytes(self.mki_length, "big")

    def text(self) -> str:
        parts = ["inline:" + base64.b64encode(self.key_salt).decode("ascii")]
        if self.lifetime is not None:
            power = self.lifetime.bit_length() - 1
            parts.append(f"2^{power}" if self.lifetime == 1 << power else str(self.lifetime))
        if self.mki is not None:
            parts.append(f"{self.mki}:{self.mki_length}")
        return "|".join(parts)


@dataclass(frozen=True, repr=False)
class CryptoAttribute:
    """One ``a=crypto`` attribute: ``<tag> <crypto-suite> <key-params> [<session-params>]``."""

    tag: int
    suite: str
    keys: tuple[KeyParam, ...]
    session_params: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"CryptoAttribute(tag={self.tag}, suite={self.suite})"

    __str__ = __repr__

    @classmethod
    def parse(cls, text: str) -> CryptoAttribute:
        """Parse an attribute given as ``a=crypto:...``, ``crypto:...`` or its bare value."""
        return _parse(text)

    @property
    def key(self) -> KeyParam:
        """The first (usually the only) key."""
        return self.keys[0]

    @property
    def known_suite(self) -> Suite | None:
        return SUITES.get(self.suite)

    @property
    def unsupported_reason(self) -> str | None:
        """Why we cannot decrypt media sent under this attribute, or None when we can."""
        if self.suite not in SUITES:
            shown = f"crypto suite {self.suite}" if _SHOWN_NAME.fullmatch(self.suite) else "an unknown crypto suite"
            return f"{shown} is not supported (callrec decrypts {', '.join(SUITES)})"
        for param in self.session_params:
            name = param.partition("=")[0]
            if name.startswith("-") or (name in _SUPPORTED_PARAMS) or param == "KDR=0":
                continue
            known = name in _PARAM_NAMES or _SHOWN_NAME.fullmatch(name)
            shown = f"session parameter {name}" if known else "an unknown session parameter"
            return f"{shown} of a=crypto tag {self.tag} is not supported"
        return None

    @property
    def window_size_hint(self) -> int | None:
        for param in self.session_params:
            if param.startswith("WSH="):
                return int(param[4:])
        return None

    def value(self) -> str:
        """The attribute's value (without ``a=crypto:``)."""
        fields = [str(self.tag), self.suite, ";".join(key.text() for key in self.keys), *self.session_params]
        return " ".join(fields)

    def line(self) -> str:
        """The SDP line ``a=crypto:...`` (without the line end)."""
        return "a=crypto:" + self.value()


@dataclass(frozen=True, repr=False)
class SdesAnswer:
    """The offered attribute we accepted (its key decrypts what the offerer sends) and our answer to it."""

    offer: CryptoAttribute
    answer: CryptoAttribute

    def __repr__(self) -> str:
        return f"SdesAnswer(tag={self.offer.tag}, suite={self.offer.suite})"

    __str__ = __repr__


def choose_answer(offers: Sequence[str | CryptoAttribute]) -> SdesAnswer:
    """RFC 4568 §7.1.2: the first offered attribute we can decrypt, answered with the same tag and suite and
    a fresh random key of our own. Malformed or unsupported lines are passed over; when none is left,
    ``NoUsableCrypto`` says why each was."""
    reasons: list[str] = []
    for offered in offers:
        try:
            crypto = offered if isinstance(offered, CryptoAttribute) else CryptoAttribute.parse(offered)
        except ParseError as exc:
            reasons.append(str(exc))
            continue
        reason = crypto.unsupported_reason
        if reason is not None:
            reasons.append(reason)
            continue
        return SdesAnswer(crypto, answer_for(crypto))
    if not reasons:
        raise NoUsableCrypto("the offer has no a=crypto line")
    raise NoUsableCrypto(f"no offered a=crypto line can be recorded: {'; '.join(reasons)}")


def answer_for(offer: CryptoAttribute) -> CryptoAttribute:
    """Our answer to one supported offer: same tag and suite, our own key, its negotiated parameters echoed."""
    suite = SUITES[offer.suite]
    key = KeyParam(secrets.token_bytes(suite.key_salt_length))
    echoed = tuple(p for p in offer.session_params if p in NEGOTIATED_PARAMS)
    return CryptoAttribute(offer.tag, offer.suite, (key,), echoed)


@dataclass(frozen=True, repr=False)
class MediaCrypto:
    """The ``a=crypto`` lines of one ``m=`` section (in the order of ``Sdp.media``); malformed lines are kept
    as their reasons."""

    proto: str
    offers: tuple[CryptoAttribute, ...]
    errors: tuple[str, ...]

    def __repr__(self) -> str:
        return f"MediaCrypto({self.proto}, {list(self.offers)}, errors={len(self.errors)})"

    @property
    def is_srtp(self) -> bool:
        return is_srtp_profile(self.proto)


def crypto_by_media(sdp: str | bytes) -> list[MediaCrypto]:
    """Every ``m=`` section's transport and ``a=crypto`` lines, read from an SDP body."""
    if isinstance(sdp, bytes):
        sdp = sdp.decode("utf-8", "replace")
    sections: list[tuple[str, list[CryptoAttribute], list[str]]] = []
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            fields = line[2:].split()
            sections.append((fields[2] if len(fields) > 2 else "", [], []))
        elif line.startswith("a=crypto:") and sections:
            try:
                sections[-1][1].append(CryptoAttribute.parse(line))
            except ParseError as exc:
                sections[-1][2].append(str(exc))
    return [MediaCrypto(proto, tuple(offers), tuple(errors)) for proto, offers, errors in sections]


def _parse(text: str) -> CryptoAttribute:
    value = text.strip()
    for prefix in ("a=crypto:", "crypto:"):
        if value[: len(prefix)].lower() == prefix:
            value = value[len(prefix) :]
            break
    fields = value.split()
    if len(fields) < 3:
        raise ParseError("an a=crypto line needs a tag, a crypto suite and key parameters")
    tag_text, suite, key_text, *params = fields
    if not _TAG.fullmatch(tag_text):
        raise ParseError("the a=crypto tag is not a number of 1 to 9 digits")
    tag = int(tag_text)
    if not _NAME.fullmatch(suite):
        raise ParseError(f"the crypto suite of a=crypto tag {tag} is not a name")
    suite = suite.upper()
    known = SUITES.get(suite)
    length = known.key_salt_length if known else KNOWN_UNSUPPORTED.get(suite)
    keys = tuple(_key_param(tag, suite, length, part) for part in key_text.split(";"))
    _check_mkis(tag, keys)
    for param in params:
        _check_session_param(tag, param)
    return CryptoAttribute(tag, suite, keys, tuple(params))


def _key_param(tag: int, suite: str, length: int | None, text: str) -> KeyParam:
    method, colon, info = text.partition(":")
    if not colon or method.lower() != "inline":
        raise ParseError(f"a key of a=crypto tag {tag} does not start with inline:")
    key_text, *extras = info.split("|")
    if len(extras) > 2:
        raise ParseError(f"a key of a=crypto tag {tag} has more than a lifetime and an MKI after it")
    key_salt = _base64(tag, key_text)
    if length is not None and len(key_salt) != length:
        raise ParseError(
            f"the key of a=crypto tag {tag} is {len(key_salt)} bytes long where {suite} needs {length}"
            " (master key and salt)"
        )
    lifetime: int | None = None
    mki: int | None = None
    mki_length: int | None = None
    for i, extra in enumerate(extras):
        if ":" in extra:
            if i != len(extras) - 1:
                raise ParseError(f"a key of a=crypto tag {tag} has a lifetime after its MKI")
            mki, mki_length = _mki(tag, extra)
        elif i == 0:
            lifetime = _lifetime(tag, extra)
        else:
            raise ParseError(f"a key of a=crypto tag {tag} has two lifetimes")
    return KeyParam(key_salt, lifetime, mki, mki_length)


def _base64(tag: int, text: str) -> bytes:
    if not _BASE64.fullmatch(text):
        raise ParseError(f"the key of a=crypto tag {tag} is not base64")
    stripped = text.rstrip("=")
    if len(stripped) % 4 == 1:
        raise ParseError(f"the key of a=crypto tag {tag} is not base64")
    try:
        # some peers leave the padding out
        return base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(f"the key of a=crypto tag {tag} is not base64") from None


def _lifetime(tag: int, text: str) -> int:
    power = text[2:] if text.startswith("2^") else None
    digits = power if power is not None else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > 20:
        raise ParseError(f"the key lifetime of a=crypto tag {tag} is not a number or a power of 2")
    if power is None:
        lifetime = int(digits)
    elif int(power) > MAX_LIFETIME_POWER:
        raise ParseError(f"the key lifetime of a=crypto tag {tag} is more than 2^{MAX_LIFETIME_POWER}")
    else:
        lifetime = 1 << int(power)
    if lifetime == 0:
        raise ParseError(f"the key lifetime of a=crypto tag {tag} is 0")
    return lifetime


def _mki(tag: int, text: str) -> tuple[int, int]:
    value_text, _, length_text = text.partition(":")
    if not (value_text.isascii() and value_text.isdigit() and length_text.isascii() and length_text.isdigit()):
        raise ParseError(f"the MKI of a=crypto tag {tag} is not <value>:<length in bytes>")
    if len(length_text) > 3 or not 1 <= int(length_text) <= MAX_MKI_LENGTH:
        raise ParseError(f"the MKI length of a=crypto tag {tag} is not from 1 to {MAX_MKI_LENGTH} bytes")
    length = int(length_text)
    # 2^1024 has 309 digits: a longer value cannot fit, and int() of a huge string would refuse it anyway
    if len(value_text) > 310 or int(value_text).bit_length() > 8 * length:
        raise ParseError(f"the MKI value of a=crypto tag {tag} does not fit in its {length} bytes")
    return int(value_text), length


def _check_mkis(tag: int, keys: Iterable[KeyParam]) -> None:
    keys = list(keys)
    if len(keys) == 1:
        return
    if any(key.mki is None for key in keys):
        raise ParseError(f"a=crypto tag {tag} has several keys but not each with an MKI")
    if len({key.mki_length for key in keys}) > 1:
        raise ParseError(f"the MKIs of a=crypto tag {tag} differ in length")
    if len({key.mki for key in keys}) < len(keys):
        raise ParseError(f"a=crypto tag {tag} repeats an MKI value")


def _check_session_param(tag: int, param: str) -> None:
    name, eq, value = param.partition("=")
    if name == "KDR" and not (eq and value.isascii() and value.isdigit() and len(value) <= 2 and int(value) <= 24):
        raise ParseError(f"the KDR of a=crypto tag {tag} is not a number from 0 to 24")
    if name == "WSH" and not (eq and value.isascii() and value.isdigit() and len(value) < 10 and int(value) >= 64):
        raise ParseError(f"the WSH of a=crypto tag {tag} is not a window size of at least 64")
    if name == "FEC_ORDER" and value not in ("FEC_SRTP", "SRTP_FEC"):
        raise ParseError(f"the FEC_ORDER of a=crypto tag {tag} is neither FEC_SRTP nor SRTP_FEC")
    if name in NEGOTIATED_PARAMS and eq:
        raise ParseError(f"the {name} of a=crypto tag {tag} takes no value")
