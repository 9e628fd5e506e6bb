"""SRTP keys kept with a tape: sealed with the service's secret box for ``call.json``, opened by the mixer.

Each entry names its stream (its index in ``call.json``'s streams), the suite and the tag in clear, and
holds the whole ``a=crypto`` value (keys, lifetimes, MKIs, session parameters) only sealed. A stream that
re-keyed (a re-INVITE with a new ``a=crypto``) has several entries, in the order they were offered.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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


def open_keys(box: SecretBox, sealed: object) -> dict[int, list[CryptoAttribute]]:
    """Each stream's ``a=crypto`` attributes from ``call.json``'s ``srtp`` list, in their order;
    ``SealedKeysError`` with one sentence when the list is damaged or sealed with another secret."""
    if not isinstance(sealed, list):
        raise SealedKeysError("the SRTP keys in call.json are not a list")
    opened: dict[int, list[CryptoAttribute]] = {}
    for position, entry in enumerate(sealed, 1):
        stream, crypto = _open_entry(box, position, entry)
        opened.setdefault(stream, []).append(crypto)
    return opened


def _open_entry(box: SecretBox, position: int, entry: object) -> tuple[int, CryptoAttribute]:
    if not isinstance(entry, dict):
        raise SealedKeysError(f"entry {position} of the SRTP keys in call.json is not an object")
    stream = entry.get("stream")
    if not isinstance(stream, int) or isinstance(stream, bool) or stream < 0:
        raise SealedKeysError(f"entry {position} of the SRTP keys in call.json names no stream")
    token = entry.get("sealed")
    if not isinstance(token, str):
        raise SealedKeysError(f"the SRTP keys of stream {stream} in call.json have no sealed key")
    try:
        value = box.decrypt(token)
    except ConfigError:
        raise SealedKeysError(f"the SRTP keys of stream {stream} cannot be opened with this service's secret") from None
    try:
        crypto = CryptoAttribute.parse(value)
    except ParseError as exc:
        # the sentence names the tag, never the key
        raise SealedKeysError(f"the SRTP keys of stream {stream} are damaged: {exc}") from None
    if entry.get("suite") != crypto.suite or entry.get("tag") != crypto.tag:
        raise SealedKeysError(f"the SRTP keys of stream {stream} do not match the suite and tag beside them")
    return stream, crypto
