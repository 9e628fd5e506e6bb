"""The one output-options type: its choices, defaults and refusals, and everyone who takes them from it."""

from __future__ import annotations

from typing import get_args

import pytest

from callrec.errors import OutputError
from callrec.media_limits import (
    DEFAULT,
    FORMATS,
    MP3_BITRATES_KBPS,
    OUTPUT_SUFFIXES,
    SAMPLE_RATES,
    WAV_CODECS,
    OutputFormat,
    OutputOptions,
    WavCodec,
)
from callrec.service.domain_settings import DomainSettings


def test_the_command_lines_choices_are_the_same_as_the_types() -> None:
    assert tuple(OutputFormat) == FORMATS == ("mp3", "wav")
    assert tuple(WavCodec) == WAV_CODECS == ("pcm", "alaw", "ulaw", "gsm")
    assert MP3_BITRATES_KBPS == (8, 16, 24, 32)
    assert SAMPLE_RATES == (8000, 16000)
    assert OUTPUT_SUFFIXES == (".mp3", ".wav")


def test_defaults_are_a_domains_defaults() -> None:
    assert OutputOptions("mp3", "pcm", 16, 8000) == DEFAULT
    settings = DomainSettings()
    assert settings.output == DEFAULT
    assert (settings.format, settings.codec, settings.bitrate, settings.rate) == ("mp3", "pcm", 16, 8000)
    # the settings' JSON schema lists the same choices
    fields = DomainSettings.model_fields
    assert get_args(fields["format"].annotation) == FORMATS
    assert get_args(fields["bitrate"].annotation) == MP3_BITRATES_KBPS


@pytest.mark.parametrize(
    ("changes", "sentence"),
    [
        ({"format": "ogg"}, "output format must be mp3 or wav"),
        ({"codec": "opus"}, "WAV codec must be one of pcm, alaw, ulaw, gsm"),
        ({"bitrate_kbps": 17}, "MP3 bitrate must be one of 8, 16, 24, 32 kbit/s"),
        ({"rate_hz": 44100}, "sample rate must be one of 8000, 16000 Hz"),
    ],
)
def test_a_bad_value_is_refused_with_its_sentence(changes: dict[str, object], sentence: str) -> None:
    with pytest.raises(OutputError) as caught:
        OutputOptions(**changes)  # type: ignore[arg-type]
    assert str(caught.value) == sentence


def test_channels_and_extension() -> None:
    assert (DEFAULT.channels, DEFAULT.extension) == (2, ".mp3")
    assert OutputOptions("wav", "alaw").channels == 2
    assert (OutputOptions("wav", "gsm").channels, OutputOptions("wav", "gsm").extension) == (1, ".wav")
    assert OutputOptions("mp3", "gsm").channels == 2  # the codec is WAV's only


def test_a_recordings_stored_options_round_trip_and_fill_in_defaults() -> None:
    options = OutputOptions("wav", "ulaw", 24, 16000)
    assert options.to_json() == {"format": "wav", "codec": "ulaw", "bitrate": 24, "rate": 16000}
    assert OutputOptions.from_json(options.to_json()) == options
    # what the worker finds in Recording.options: the four keys, maybe "asap", maybe an older row's fewer keys
    assert OutputOptions.from_json({"format": "wav", "asap": True}) == OutputOptions(format="wav")
    assert OutputOptions.from_json({}) == DEFAULT
    assert DomainSettings(format="wav", rate=16000).output.to_json() == {
        "format": "wav", "codec": "pcm", "bitrate": 16, "rate": 16000,
    }  # fmt: skip
