"""Every output format is read back by ffprobe/ffmpeg with the right codec, rate, channels and size."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support import synth
from tests.support.audio import decode, mix_json, need, probe, xcorr

pytestmark = pytest.mark.slow  # callrec and ffmpeg processes on long calls (seconds each)

CASES = [
    # (args, codec_name, sample_rate, channels)
    (["--format", "mp3", "--bitrate", "8"], "mp3", 8000, 2),
    (["--format", "mp3", "--bitrate", "16"], "mp3", 8000, 2),
    (["--format", "mp3", "--bitrate", "24"], "mp3", 16000, 2),
    (["--format", "mp3", "--bitrate", "32"], "mp3", 16000, 2),
    (["--format", "wav"], "pcm_s16le", 8000, 2),
    (["--format", "wav", "--codec", "alaw"], "pcm_alaw", 8000, 2),
    (["--format", "wav", "--codec", "ulaw"], "pcm_mulaw", 8000, 2),
    (["--format", "wav", "--codec", "gsm"], "gsm_ms", 8000, 1),
    (["--format", "wav", "--rate", "16000"], "pcm_s16le", 16000, 2),
]


@pytest.fixture(scope="module")
def minute_call(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.Built]:
    need(synth.FFMPEG, "ffmpeg")
    built = synth.build(synth.Scenario(duration=60.0))
    path = tmp_path_factory.mktemp("minute") / "call.pcap"
    return synth.write_pcap(path, built.datagrams), built


@pytest.mark.parametrize(("args", "codec", "rate", "channels"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_format_reads_back(
    tmp_path: Path,
    minute_call: tuple[Path, synth.Built],
    args: list[str],
    codec: str,
    rate: int,
    channels: int,
) -> None:
    pcap, built = minute_call
    ext = "mp3" if "mp3" in args else "wav"
    out = tmp_path / f"call.{ext}"
    [report] = mix_json(str(pcap), "-o", str(out), *args)
    info = probe(out)
    [stream] = info["streams"]
    assert stream["codec_name"] == codec
    assert int(stream["sample_rate"]) == rate
    assert stream["channels"] == channels
    # ffprobe's container estimate counts the MP3 encoder delay; the decoded length is exact
    assert float(info["format"]["duration"]) == pytest.approx(built.duration, abs=0.25)
    assert report["bytes"] == out.stat().st_size
    assert report["channels"] == channels
    audio = decode(out, rate=rate, channels=channels)
    assert len(audio) / rate == pytest.approx(built.duration, abs=0.04)
    # the audio is really there: the caller's voice is in the (first) channel
    audio = decode(out, channels=channels)
    truth = built.truth["A"].audio
    lag, peak = xcorr(audio[: len(truth), 0], truth[: len(audio)], 400)
    assert abs(lag) <= 160
    assert peak > (0.2 if channels == 1 or ext == "mp3" else 0.9)


@pytest.mark.parametrize(("bitrate", "per_minute"), [(16, 120_000), (8, 60_000)])
def test_mp3_size_per_minute(
    tmp_path: Path, minute_call: tuple[Path, synth.Built], bitrate: int, per_minute: int
) -> None:
    pcap, built = minute_call
    out = tmp_path / "call.mp3"
    mix_json(str(pcap), "-o", str(out), "--bitrate", str(bitrate))
    size_per_minute = out.stat().st_size / (built.duration / 60)
    assert size_per_minute == pytest.approx(per_minute, rel=0.05)


def test_gsm_is_a_mono_mix_of_both_parties(tmp_path: Path, minute_call: tuple[Path, synth.Built]) -> None:
    pcap, built = minute_call
    out = tmp_path / "call.wav"
    mix_json(str(pcap), "-o", str(out), "--format", "wav", "--codec", "gsm")
    audio = decode(out, channels=1)[:, 0]
    for party in ("A", "B"):
        truth = built.truth[party].audio
        _, peak = xcorr(audio[: len(truth)], truth[: len(audio)], 400)
        assert peak > 0.2, f"party {party} missing from the mono mix"


def test_wav_past_4_gb_is_rf64(tmp_path: Path) -> None:
    """A WAV that grows past 4 GB switches to RF64 (and one under stays plain RIFF)."""
    from callrec.media.encode import WavWriter

    if shutil.disk_usage(tmp_path).free < 12 * 2**30:
        pytest.skip("needs 12 GB of free disk for a 4.3 GB file")
    small = tmp_path / "small.wav"
    w = WavWriter(small, rate=8000, channels=2)
    w.write(np.zeros((8000, 2), np.int16))
    w.close()
    assert small.read_bytes()[:4] == b"RIFF"
    big = tmp_path / "big.wav"
    w = WavWriter(big, rate=8000, channels=2)
    block = np.zeros((16 * 2**20, 2), np.int16)  # 64 MiB
    for _ in range(65):  # 4.06 GiB of samples: past the 32-bit RIFF size
        w.write(block)
    w.close()
    try:
        with open(big, "rb") as f:
            assert f.read(4) == b"RF64"
        info = probe(big)
        frames = 65 * 16 * 2**20
        assert float(info["streams"][0]["duration"]) == pytest.approx(frames / 8000, rel=1e-4)
    finally:
        big.unlink()
