"""Audio decoders for RTP payloads, behind one interface (``Decoder``) and one factory (``decoder_for``).

G.711 and L16 are decoded with numpy alone; every other codec goes through PyAV (libavcodec).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import av

from callrec.errors import UnsupportedCodec
from callrec.media.codecs.amr import AmrDecoder
from callrec.media.codecs.base import Decoder, PcmArray
from callrec.media.codecs.framed import G729Decoder, GsmDecoder, IlbcDecoder
from callrec.media.codecs.g711 import L16Decoder, alaw_decoder, ulaw_decoder
from callrec.media.codecs.pyav import G722Decoder, G726Decoder, OpusDecoder, SpeexDecoder

__all__ = [
    "NON_AUDIO",
    "STATIC_PAYLOAD_TYPES",
    "Decoder",
    "PcmArray",
    "decoder_for",
    "is_audio",
]

# RFC 3551 Table 4: static payload type -> (encoding name, RTP clock rate, channels)
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),  # the clock stays 8000 although the audio is 16 kHz (RFC 3551 §4.5.2)
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
}

# payloads that share an audio stream but are not speech: DTMF and tones (RFC 4733) and comfort
# noise (RFC 3389); the mixer reads them as silence rather than as an unsupported codec
NON_AUDIO = frozenset({"telephone-event", "tone", "cn"})


def is_audio(encoding: str) -> bool:
    """Whether ``encoding`` (an rtpmap encoding name, any case) carries speech to decode."""
    return encoding.lower() not in NON_AUDIO


def _flag(fmtp: dict[str, str], key: str) -> bool:
    return fmtp.get(key, "0").strip() == "1"


def _ilbc(clock_rate: int, channels: int, fmtp: dict[str, str]) -> Decoder:
    mode = fmtp.get("mode", "").strip()
    return IlbcDecoder(clock_rate, int(mode) if mode.isdigit() else None)


def _amr(clock_rate: int, channels: int, fmtp: dict[str, str]) -> Decoder:
    if clock_rate != 8000 or channels != 1:
        raise ValueError("AMR-NB is 8000 Hz mono")
    if "interleaving" in fmtp or _flag(fmtp, "robust-sorting"):
        raise ValueError("interleaved AMR payloads are not supported")
    return AmrDecoder(clock_rate, octet_align=_flag(fmtp, "octet-align"), crc=_flag(fmtp, "crc"))


_Factory = Callable[[int, int, dict[str, str]], Decoder]

_FACTORIES: dict[str, _Factory] = {
    "pcma": lambda rate, ch, fmtp: alaw_decoder(rate),
    "pcmu": lambda rate, ch, fmtp: ulaw_decoder(rate),
    "l16": lambda rate, ch, fmtp: L16Decoder(rate, ch),
    "g722": lambda rate, ch, fmtp: G722Decoder(rate),
    "gsm": lambda rate, ch, fmtp: GsmDecoder(rate),
    "g729": lambda rate, ch, fmtp: G729Decoder(rate),
    "g729a": lambda rate, ch, fmtp: G729Decoder(rate),  # not registered, but some devices send it
    "opus": lambda rate, ch, fmtp: OpusDecoder(rate, ch),
    "ilbc": _ilbc,
    "amr": _amr,
    "speex": lambda rate, ch, fmtp: SpeexDecoder(rate),
}

_G726 = re.compile(r"(aal2-)?g726-(16|24|32|40)")


def decoder_for(
    encoding: str, clock_rate: int, channels: int = 1, fmtp: dict[str, str] | None = None
) -> Decoder:
    """A fresh decoder for one stream of ``encoding/clock_rate[/channels]`` as named in an SDP rtpmap.

    ``encoding`` is matched case-insensitively; ``fmtp`` holds the SDP ``a=fmtp`` parameters (for
    iLBC ``mode``, for AMR ``octet-align``/``crc``). A codec without a decoder here, a non-speech
    payload such as ``telephone-event``, or parameters a decoder cannot honour raise
    ``UnsupportedCodec("no decoder for XYZ/8000")``.
    """
    key = encoding.strip().lower()
    params = {name.strip().lower(): value for name, value in (fmtp or {}).items()}
    label = f"{encoding}/{clock_rate}" + (f"/{channels}" if channels > 1 else "")
    factory = _FACTORIES.get(key)
    g726 = _G726.fullmatch(key)
    try:
        if g726:
            return G726Decoder(int(g726.group(2)) // 8, big_endian=bool(g726.group(1)))
        if factory is not None and clock_rate > 0:
            return factory(clock_rate, channels, params)
    except (ValueError, av.FFmpegError) as exc:
        raise UnsupportedCodec(f"no decoder for {label} ({exc})") from exc
    raise UnsupportedCodec(f"no decoder for {label}")
