"""SRTP keys kept with a tape: sealed with the service's secret box for ``call.json``, opened by the mixer.

Each entry names its stream (its index in ``call.json``'s streams), the suite and the tag in clear, and
holds the whole ``a=crypto`` value (keys, lifetimes, MKIs, session parameters) only sealed. A stream that
re-keyed (a re-INVITE with a new ``a=crypto``) has several entries, in the order they were offered.

A passive capture's tape keeps the SIP with its keys replaced (``wire/sdes_redact.py``): its entries name
where each key was announced instead of a stream, ``sdp_party`` (the party that sends with it), ``m_index``
(its ``m=`` line in that party's SDP) and the tag; ``open_keys`` leaves them to ``open_sdp_keys``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeGuard

from callrec.config import ConfigError
from callrec.errors import CallrecError, ParseError
from callrec.secretbox import SecretBox
from callrec.wire.sdes import CryptoAttribute


class SealedKeysError(CallrecError):
    """The SRTP keys kept with a tape cannot be opened; the message says which stream's and why."""


def seal_keys(box: SecretBox, keys: Iterable[tuple[int, CryptoAttribute]]) -> list[dict[str, Any]]:
    """``call.json``'s ``srtp`` list for (stream index, offered ``a=crypto``) pairs; no key in clear."""
    return [
        {"stream": stream, "suite": crypto.suite, "tag": crypto.tag, "sealed": box.encrypt(crypto.value())}
        for stream, crypto in keys
    ]


def seal_sdp_keys(box: SecretBox, keys: Iterable[tuple[str, int, CryptoAttribute]]) -> list[dict[str, Any]]:
    """A capture tape's ``srtp`` entries for (sending party, ``m=`` line index, ``a=crypto``); no key in clear."""
    return [
        {"sdp_party": party, "m_index": m_index, "suite": crypto.suite, "tag": crypto.tag,
         "sealed": box.encrypt(crypto.value())}  # fmt: skip
        for party, m_index, crypto in keys
    ]


def open_sdp_keys(box: SecretBox, sealed: object) -> dict[tuple[str, int, int], list[CryptoAttribute]]:
    """A capture tape's keys by (sending party, ``m=`` line index, tag), in their order; ``SealedKeysError``
    as ``open_keys``. Entries naming a stream are ``open_keys``'s and left out."""
    if not isinstance(sealed, list):
        raise SealedKeysError("the SRTP keys in call.json are not a list")
    opened: dict[tuple[str, int, int], list[CryptoAttribute]] = {}
    for entry in sealed:
        if not _is_sdp_entry(entry):
            continue
        party, m_index = entry.get("sdp_party"), entry.get("m_index")
        if party not in ("A", "B") or not isinstance(m_index, int) or isinstance(m_index, bool) or m_index < 0:
            raise SealedKeysError("an entry of the SRTP keys in call.json names no party and m= line")
        where = f"party {party}'s m= line {m_index}"
        crypto = _open_value(box, where, entry)
        opened.setdefault((party, m_index, crypto.tag), []).append(crypto)
    return opened


def _is_sdp_entry(entry: object) -> TypeGuard[dict[Any, Any]]:
    return isinstance(entry, dict) and "sdp_party" in entry


def open_keys(box: SecretBox, sealed: object) -> dict[int, list[CryptoAttribute]]:
    """Each stream's ``a=crypto`` attributes from ``call.json``'s ``srtp`` list, in their order;
    ``SealedKeysError`` with one sentence when the list is damaged or sealed with another secret."""
    if not isinstance(sealed, list):
        raise SealedKeysError("the SRTP keys in call.json are not a list")
    opened: dict[int, list[CryptoAttribute]] = {}
    for position, entry in enumerate(sealed, 1):
        if _is_sdp_entry(entry):
            continue  # a capture tape's: open_sdp_keys
        stream, crypto = _open_entry(box, position, entry)
        opened.setdefault(stream, []).append(crypto)
    return opened


def _open_entry(box: SecretBox, position: int, entry: object) -> tuple[int, CryptoAttribute]:
    if not isinstance(entry, dict):
        raise SealedKeysError(f"entry {position} of the SRTP keys in call.json is not an object")
    stream = entry.get("stream")
    if not isinstance(stream, int) or isinstance(stream, bool) or stream < 0:
        raise SealedKeysError(f"entry {position} of the SRTP keys in call.json names no stream")
    return stream, _open_value(box, f"stream {stream}", entry)


def _open_value(box: SecretBox, where: str, entry: dict[Any, Any]) -> CryptoAttribute:
    token = entry.get("sealed")
    if not isinstance(token, str):
        raise SealedKeysError(f"the SRTP keys of {where} in call.json have no sealed key")
    try:
        value = box.decrypt(token)
    except ConfigError:
        raise SealedKeysError(f"the SRTP keys of {where} cannot be opened with this service's secret") from None
    try:
        crypto = CryptoAttribute.parse(value)
    except ParseError as exc:
        # the sentence names the tag, never the key
        raise SealedKeysError(f"the SRTP keys of {where} are damaged: {exc}") from None
    if entry.get("suite") != crypto.suite or entry.get("tag") != crypto.tag:
        raise SealedKeysError(f"the SRTP keys of {where} do not match the suite and tag beside them")
    return crypto
