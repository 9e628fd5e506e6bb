"""The picture's data from audio alone: peaks, speech per channel, overlaps and silences where they are."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from callrec.media import analyze

RATE = 8000
# (start, end) of each channel's bursts, in seconds, in a 14 s file
LEFT = [(1.0, 3.0), (8.0, 10.0)]
RIGHT = [(2.5, 5.0), (10.5, 11.0)]
DURATION = 14.0
# the detector keeps speech on for the hangover after the last loud frame
TOL = 0.05


def _stereo(noise_db: float | None = None, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((int(DURATION * RATE), 2))
    if noise_db is not None:
        out += rng.standard_normal(out.shape) * 10 ** (noise_db / 20)
    for channel, bursts in enumerate((LEFT, RIGHT)):
        for a, b in bursts:
            n = int((b - a) * RATE)
            # syllables: 0.2 s of sound, 0.1 s pauses (shorter than the hangover: one turn)
            envelope = (np.arange(n) % int(0.3 * RATE)) < int(0.2 * RATE)
            out[int(a * RATE) : int(a * RATE) + n, channel] += rng.standard_normal(n) * 0.2 * envelope
    return np.clip(out, -1, 1)


def _wav(path: Path, data: np.ndarray) -> Path:
    soundfile.write(path, data, RATE, subtype="PCM_16")
    return path


def _near(found: list[tuple[float, float]], expected: list[tuple[float, float]], tol: float) -> None:
    assert len(found) == len(expected), found
    for (a, b), (x, y) in zip(found, expected, strict=True):
        assert abs(a - x) <= tol and abs(b - y) <= tol, (found, expected)


def _with_hangover(bursts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    # the last syllable of a burst may end up to 0.1 s before the burst does
    return [(a, b + analyze.HANGOVER_S) for a, b in bursts]


def test_speech_overlaps_and_silences_of_a_stereo_wav(tmp_path: Path) -> None:
    result = analyze.analyze(_wav(tmp_path / "call.wav", _stereo()), buckets=700)
    assert result.channels == 2 and result.rate == RATE
    assert result.duration_s == pytest.approx(DURATION, abs=0.001)
    left, right = result.segments
    _near(left, _with_hangover(LEFT), 0.11)
    _near(right, _with_hangover(RIGHT), 0.11)
    # both speak from 2.5 until the left's turn (with its hangover) ends
    _near(analyze.overlaps(result.segments), [(2.5, left[0][1])], TOL)
    # quiet from the right's first turn until the left's second, and after the last turn to the end
    _near(analyze.silences(result.segments, result.duration_s), [(right[0][1], 8.0), (right[1][1], DURATION)], TOL)


def test_peaks_follow_the_loud_parts(tmp_path: Path) -> None:
    result = analyze.analyze(_wav(tmp_path / "call.wav", _stereo()), buckets=70)
    left, right = result.peaks
    assert len(left) == len(right) == 70
    per_bucket = DURATION / 70  # wider than a pause between syllables
    for channel, bursts in ((left, LEFT), (right, RIGHT)):
        for k, (low, high) in enumerate(channel):
            t = (k + 0.5) * per_bucket
            inside = any(a + per_bucket < t < b - per_bucket for a, b in bursts)
            outside = all(t < a - per_bucket or t > b + per_bucket for a, b in bursts)
            if inside:
                assert high > 0.3 and low < -0.3, (k, low, high)
            elif outside:
                assert high == 0 and low == 0, (k, low, high)


def test_the_threshold_follows_a_noisy_line(tmp_path: Path) -> None:
    # line noise at -45 dBFS would be "speech" for a fixed -55 dB threshold
    result = analyze.analyze(_wav(tmp_path / "noisy.wav", _stereo(noise_db=-45)))
    _near(result.segments[0], _with_hangover(LEFT), 0.11)
    _near(result.segments[1], _with_hangover(RIGHT), 0.11)


def test_an_mp3_from_another_encoder(tmp_path: Path) -> None:
    wav = _wav(tmp_path / "call.wav", _stereo())
    mp3 = tmp_path / "call.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-b:a", "32k", str(mp3)], check=True)
    result = analyze.analyze(mp3)
    assert result.channels == 2
    # MP3 adds encoder delay and padding: tens of milliseconds
    assert result.duration_s == pytest.approx(DURATION, abs=0.1)
    _near(result.segments[0], _with_hangover(LEFT), 0.15)
    _near(result.segments[1], _with_hangover(RIGHT), 0.15)


def test_blocks_of_any_size_give_the_same_levels() -> None:
    data = _stereo()
    whole = analyze._accumulate(iter([data]), RATE, 2)
    cuts = [0, 1, 79, 81, 5000, 12345, 50001, len(data)]
    pieces = analyze._accumulate(iter(data[a:b] for a, b in zip(cuts, cuts[1:], strict=False)), RATE, 2)
    assert whole.samples == pieces.samples == len(data)
    np.testing.assert_array_equal(whole.high, pieces.high)
    np.testing.assert_allclose(whole.power, pieces.power)


def test_silent_and_empty_files(tmp_path: Path) -> None:
    quiet = analyze.analyze(_wav(tmp_path / "quiet.wav", np.zeros((RATE * 3, 2))))
    assert quiet.segments == [[], []]
    assert analyze.silences(quiet.segments, quiet.duration_s) == [(0.0, 3.0)]
    assert analyze.overlaps(quiet.segments) == []
    empty = analyze.analyze(_wav(tmp_path / "empty.wav", np.zeros((0, 2))))
    assert empty.duration_s == 0 and empty.peaks == [[], []] and empty.segments == [[], []]


def test_a_file_that_is_not_audio_is_one_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"this is not audio" * 100)
    with pytest.raises(analyze.AnalysisError, match="cannot be decoded"):
        analyze.analyze(bad)


def test_overlaps_and_silences_of_three_speakers() -> None:
    a = [(0.0, 4.0)]
    b = [(3.0, 5.0), (9.0, 10.0)]
    c = [(3.5, 6.0), (6.0, 6.5)]  # touching turns of one speaker are not an overlap with itself
    assert analyze.overlaps([a, b, c]) == [(3.0, 5.0)]
    assert analyze.silences([a, b, c], 13.0) == [(6.5, 9.0), (10.0, 13.0)]
    assert analyze.silences([a, b, c], 13.0, min_s=3.0) == []
