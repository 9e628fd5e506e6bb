"""Audio decoders for RTP payloads, behind one interface (``Decoder``) and one factory (``decoder_for``).

G.711 and L16 are decoded with numpy alone; every other codec goes through PyAV (libavcodec), which is
imported only when such a codec is first needed (it costs ~60 ms at start-up, a G.711-only mix needs none).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from callrec.errors import UnsupportedCodec
from callrec.media.codecs.base import Decoder, PcmArray
from callrec.media.codecs.g711 import L16Decoder, alaw_decoder, ulaw_decoder

__all__ = [
    "NON_AUDIO",
    "Decoder",
    "PcmArray",
    "decoder_for",
    "is_audio",
]

# payloads that share an audio stream but are not speech: DTMF and tones (RFC 4733) and comfort
# noise (RFC 3389); the mixer reads them as silence rather than as an unsupported codec
NON_AUDIO = frozenset({"telephone-event", "tone", "cn"})


def is_audio(encoding: str) -> bool:
    """Whether ``encoding`` (an rtpmap encoding name, any case) carries speech to decode."""
    return encoding.lower() not in NON_AUDIO


def _flag(fmtp: dict[str, str], key: str) -> bool:
    return fmtp.get(key, "0").strip() == "1"


def _ilbc(clock_rate: int, channels: int, fmtp: dict[str, str]) -> Decoder:
    from callrec.media.codecs.framed import IlbcDecoder

    mode = fmtp.get("mode", "").strip()
    return IlbcDecoder(clock_rate, int(mode) if (mode.isascii() and mode.isdigit()) else None)


def _amr(clock_rate: int, channels: int, fmtp: dict[str, str]) -> Decoder:
    from callrec.media.codecs.amr import AmrDecoder

    if clock_rate != 8000 or channels != 1:
        raise ValueError("AMR-NB is 8000 Hz mono")
    if "interleaving" in fmtp or _flag(fmtp, "robust-sorting"):
        raise ValueError("interleaved AMR payloads are not supported")
    return AmrDecoder(clock_rate, octet_align=_flag(fmtp, "octet-align"), crc=_flag(fmtp, "crc"))


def _g722(clock_rate: int, channels: int, fmtp: dict[str, str]) -> Decoder:
    from callrec.media.codecs.pyav import G722Decoder

    return G722Decoder(clock_rate)


def _gsm(clock_rate: int, channels: int, fmtp: dict[str, str]) -> Decoder:
    from callrec.media.codecs.framed import GsmDecoder

    return GsmDecoder(clock_rate)


def _g729(clock_rate: int, channels: int, fmtp: dict[str, str]) -> Decoder:
    from callrec.media.codecs.framed import G729Decoder

    return G729Decoder(clock_rate)


def _opus(clock_rate: int, channels: int, fmtp: dict[str, str]) -> Decoder:
    from callrec.media.codecs.pyav import OpusDecoder

    return OpusDecoder(clock_rate, channels)


def _speex(clock_rate: int, channels: int, fmtp: dict[str, str]) -> Decoder:
    from callrec.media.codecs.pyav import SpeexDecoder

    return SpeexDecoder(clock_rate)


def _g726(bits: int, big_endian: bool) -> Decoder:
    from callrec.media.codecs.pyav import G726Decoder

    return G726Decoder(bits, big_endian=big_endian)


_Factory = Callable[[int, int, dict[str, str]], Decoder]

_FACTORIES: dict[str, _Factory] = {
    "pcma": lambda rate, ch, fmtp: alaw_decoder(rate),
    "pcmu": lambda rate, ch, fmtp: ulaw_decoder(rate),
    "l16": lambda rate, ch, fmtp: L16Decoder(rate, ch),
    "g722": _g722,
    "gsm": _gsm,
    "g729": _g729,
    "g729a": _g729,  # not registered, but some devices send it
    "opus": _opus,
    "ilbc": _ilbc,
    "amr": _amr,
    "speex": _speex,
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
            return _g726(int(g726.group(2)) // 8, bool(g726.group(1)))
        if factory is not None and clock_rate > 0:
            return factory(clock_rate, channels, params)
    except ValueError as exc:
        raise UnsupportedCodec(f"no decoder for {label} ({exc})") from exc
    except Exception as exc:
        import av

        if isinstance(exc, av.FFmpegError):
            raise UnsupportedCodec(f"no decoder for {label} ({exc})") from exc
        raise
    raise UnsupportedCodec(f"no decoder for {label}")
