"""The output options of a recording: format, WAV codec, MP3 bitrate and sample rate, in one place.

``callrec mix``, a domain's settings, the API's re-mix request, the worker and the mixer all take their
choices, defaults and checks from here. Light on purpose (no numpy, no av): the command line checks its
arguments with it before it loads the media stack.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, get_args

from callrec.errors import OutputError

# the choices, as the API's and the settings' JSON schemas show them
Format = Literal["mp3", "wav"]
Codec = Literal["pcm", "alaw", "ulaw", "gsm"]  # WAV only: 16-bit PCM, A-law, µ-law, GSM 6.10 (mono)
Bitrate = Literal[8, 16, 24, 32]  # MP3 only, kbit/s
Rate = Literal[8000, 16000]  # Hz

FORMATS: tuple[str, ...] = get_args(Format)
WAV_CODECS: tuple[str, ...] = get_args(Codec)
MP3_BITRATES_KBPS: tuple[int, ...] = get_args(Bitrate)
SAMPLE_RATES: tuple[int, ...] = get_args(Rate)
OUTPUT_SUFFIXES = tuple(f".{f}" for f in FORMATS)


# the same choices as str-enums, as the command line's parser takes them (without pydantic); a test checks
# that they list what Format and Codec do
class OutputFormat(StrEnum):
    mp3 = "mp3"
    wav = "wav"


class WavCodec(StrEnum):
    pcm = "pcm"
    alaw = "alaw"
    ulaw = "ulaw"
    gsm = "gsm"


DEFAULT_FORMAT: Format = "mp3"
DEFAULT_CODEC: Codec = "pcm"
DEFAULT_BITRATE_KBPS: Bitrate = 16  # MPEG-2.5 at 8 kHz: voice stays clear
DEFAULT_RATE_HZ: Rate = 8000


def one_of(values: Iterable[object]) -> str:
    """The choices as a refusal lists them: ``8, 16, 24, 32``."""
    return ", ".join(map(str, values))


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise OutputError(f"output format must be {' or '.join(FORMATS)}")


def check_codec(codec: str) -> None:
    if codec not in WAV_CODECS:
        raise OutputError(f"WAV codec must be one of {one_of(WAV_CODECS)}")


def check_bitrate(kbps: int) -> None:
    if kbps not in MP3_BITRATES_KBPS:
        raise OutputError(f"MP3 bitrate must be one of {one_of(MP3_BITRATES_KBPS)} kbit/s")


def check_rate(hz: int) -> None:
    if hz not in SAMPLE_RATES:
        raise OutputError(f"sample rate must be one of {one_of(SAMPLE_RATES)} Hz")


@dataclass(frozen=True, slots=True)
class OutputOptions:
    """How a recording is written; every value is checked (``OutputError`` with an exact sentence)."""

    format: str = DEFAULT_FORMAT
    codec: str = DEFAULT_CODEC  # WAV only
    bitrate_kbps: int = DEFAULT_BITRATE_KBPS  # MP3 only
    rate_hz: int = DEFAULT_RATE_HZ

    def __post_init__(self) -> None:
        check_format(self.format)
        check_codec(self.codec)
        check_bitrate(self.bitrate_kbps)
        check_rate(self.rate_hz)

    @property
    def channels(self) -> int:
        """Stereo, except GSM 6.10 in WAV: it is mono in every player, so the mix is mono."""
        return 1 if self.format == "wav" and self.codec == "gsm" else 2

    @property
    def extension(self) -> str:
        return "." + self.format

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OutputOptions:
        """From a recording's stored options (``format``, ``codec``, ``bitrate``, ``rate``); a key left
        out is the default."""
        return cls(
            format=str(data.get("format", DEFAULT.format)),
            codec=str(data.get("codec", DEFAULT.codec)),
            bitrate_kbps=int(data.get("bitrate", DEFAULT.bitrate_kbps)),
            rate_hz=int(data.get("rate", DEFAULT.rate_hz)),
        )

    def to_json(self) -> dict[str, Any]:
        """As a recording's options and a domain's settings store them."""
        return {"format": self.format, "codec": self.codec, "bitrate": self.bitrate_kbps, "rate": self.rate_hz}


DEFAULT = OutputOptions()
