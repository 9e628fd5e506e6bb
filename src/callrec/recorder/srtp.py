"""SRTP keyed by SDES (RFC 4568) on the SRS's side: which ``a=crypto`` an ``m=`` line is answered with, and
the SRC's keys kept on the tape, sealed.

An SRC offering RTP/SAVP or RTP/SAVPF with ``a=crypto`` is answered in the same profile with the first
offered line we can decrypt (``sdes.choose_answer``: same tag and suite, a fresh key of ours). The packets
are recorded as received, still encrypted; the offered key is what decrypts them, so it is sealed with the
service's secret box and added to ``call.json``'s ``srtp`` list, naming the stream by its index in
``streams``. A re-offer of the same key changes nothing; a new key adds an entry. An ``m=`` line with no
usable ``a=crypto`` is answered with port 0, and the reason logged in one line (the reasons of
``wire/sdes.py`` never hold a key).

The secret box is the service's: ``CALLREC_SECRET_KEY``, else the key file ``DATA/secret.key`` (created,
mode 0600, when there is none) — the rule ``service.context.Context.open`` follows, so a recorder run with
or without the service seals with the key the service and the mixer open with. It is loaded the first time
an SRTP stream is offered.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from callrec.config import ConfigError
from callrec.media.srtp_keys import seal_keys
from callrec.secretbox import SecretBox, load_or_create_key
from callrec.wire.sdes import CryptoAttribute, MediaCrypto, NoUsableCrypto, SdesAnswer, choose_answer

log = logging.getLogger("callrec.recorder")

KEY_FILE = "secret.key"


def service_box(data_dir: Path, env: Mapping[str, str] | None = None) -> SecretBox:
    """The service's secret box: ``CALLREC_SECRET_KEY``, else ``data_dir/secret.key`` (created when missing);
    ``ConfigError`` (naming the file, never a key) when neither gives a key."""
    env = os.environ if env is None else env
    return SecretBox(env.get("CALLREC_SECRET_KEY", "") or load_or_create_key(data_dir / KEY_FILE))


class SrtpKeys:
    """Chooses our answers to ``a=crypto`` offers and seals the SRC's keys with ``box`` (the service's,
    loaded from ``data_dir`` the first time it is needed when none is given)."""

    def __init__(self, data_dir: Path, box: SecretBox | None = None) -> None:
        self._data_dir = data_dir
        self._box = box

    def __repr__(self) -> str:
        return f"SrtpKeys({self._data_dir})"

    @property
    def box(self) -> SecretBox:
        if self._box is None:
            self._box = service_box(self._data_dir)
        return self._box

    def answer(self, current: SdesAnswer | None, offered: MediaCrypto | None) -> tuple[SdesAnswer | None, str]:
        """(our answer, "") for an SRTP ``m=`` line's offer, or (None, why it cannot be recorded).

        ``current`` is what the line was answered with before: when the offer still holds that key, it
        stands (no new key on the tape)."""
        offers = offered.offers if offered is not None else ()
        errors = offered.errors if offered is not None else ()
        if current is not None and any(same_key(o, current.offer) for o in offers):
            return current, ""
        try:
            chosen = choose_answer(offers)
        except NoUsableCrypto as exc:
            reason = str(exc)
            if errors:
                reason = (reason + "; " if offers else "no offered a=crypto line can be recorded: ") + "; ".join(errors)
            return None, reason
        try:
            self.box  # noqa: B018 - loaded now, so that a missing secret refuses the stream, not the tape
        except ConfigError as exc:
            return None, f"the SRTP keys cannot be kept: {exc}"
        return chosen, ""

    def seal(self, stream: int, offer: CryptoAttribute) -> list[dict[str, object]]:
        """``call.json``'s ``srtp`` entries for the SRC's ``offer`` on stream number ``stream``."""
        return seal_keys(self.box, [(stream, offer)])


def same_key(a: CryptoAttribute, b: CryptoAttribute) -> bool:
    """Whether two attributes describe the same SRTP context (tag, suite, keys and parameters)."""
    return a.value() == b.value()
