"""Stitching calls' audio: gaps cut to a pause, overlaps kept on their real timeline, channel routing,
streaming output (through the real WAV and MP3 writers, decoded back by libsndfile and ffmpeg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from callrec.errors import OutputError
from callrec.media.encode import open_writer
from callrec.media.stitch import ArraySource, Piece, Placement, WavSource, place, stitch
from tests.support.audio import decode, xcorr

RATE = 8000
T0 = 1_700_000_000.0


class Collect:
    """A sink that keeps every block (and how big each was)."""

    def __init__(self) -> None:
        self.blocks: list[npt.NDArray[np.int16]] = []
        self.closed = False

    def write(self, block: npt.NDArray[np.int16]) -> None:
        self.blocks.append(block.copy())

    def close(self) -> None:
        self.closed = True

    @property
    def audio(self) -> npt.NDArray[np.int16]:
        return np.concatenate(self.blocks) if self.blocks else np.zeros((0, 2), np.int16)


def noise(seconds: float, seed: int, amplitude: int = 8000) -> npt.NDArray[np.int16]:
    rng = np.random.default_rng(seed)
    return rng.integers(-amplitude, amplitude, int(seconds * RATE), dtype=np.int16)


def stereo(left: npt.NDArray[np.int16] | None, right: npt.NDArray[np.int16] | None) -> npt.NDArray[np.int16]:
    n = len(left if left is not None else right)  # type: ignore[arg-type]
    out = np.zeros((n, 2), np.int16)
    if left is not None:
        out[:, 0] = left
    if right is not None:
        out[:, 1] = right
    return out


def test_a_long_gap_between_calls_becomes_the_pause() -> None:
    got = place([(T0, 3 * RATE), (T0 + 3 + 40, 2 * RATE), (T0 + 45 + 600, RATE)], RATE, pause_s=1.0)
    assert got == [Placement(0, 3 * RATE), Placement(4 * RATE, 2 * RATE), Placement(7 * RATE, RATE)]


def test_a_gap_shorter_than_the_pause_is_kept_as_it_was() -> None:
    got = place([(T0, RATE), (T0 + 1.5, RATE)], RATE, pause_s=1.0)
    assert got == [Placement(0, RATE), Placement(int(1.5 * RATE), RATE)]


def test_overlapping_calls_keep_their_real_offsets_and_the_gap_after_them_is_cut() -> None:
    # a consult (2) starts 2 s into call 1 and ends after it; call 3 comes 30 s after the consult ends
    pieces = [(T0, 5 * RATE), (T0 + 2, 6 * RATE), (T0 + 8 + 30, RATE)]
    got = place(pieces, RATE, pause_s=1.0)
    assert got == [Placement(0, 5 * RATE), Placement(2 * RATE, 6 * RATE), Placement(9 * RATE, RATE)]


def test_pieces_given_out_of_order_are_placed_by_time_and_answered_in_the_order_given() -> None:
    got = place([(T0 + 100, RATE), (T0, RATE)], RATE, pause_s=1.0)
    assert got == [Placement(2 * RATE, RATE), Placement(0, RATE)]


def test_stitched_audio_holds_each_piece_at_its_place_with_silence_in_the_pause() -> None:
    a, b = stereo(noise(2, 1), noise(2, 2)), stereo(noise(3, 3), noise(3, 4))
    sink = Collect()
    placements = stitch([Piece(ArraySource(a), T0), Piece(ArraySource(b), T0 + 2 + 120)], sink, rate=RATE, pause_s=1.0)
    out = sink.audio
    assert sink.closed and placements == [Placement(0, 2 * RATE), Placement(3 * RATE, 3 * RATE)]
    assert len(out) == 6 * RATE
    assert np.array_equal(out[: 2 * RATE], a)
    assert not out[2 * RATE : 3 * RATE].any()
    assert np.array_equal(out[3 * RATE :], b)
    # streamed: no block is longer than a second of output
    assert max(len(b) for b in sink.blocks) <= RATE


def test_a_swapped_piece_puts_its_right_channel_left() -> None:
    customer, agent = noise(1, 5), noise(1, 6)
    sink = Collect()
    stitch([Piece(ArraySource(stereo(agent, customer)), T0, "swap")], sink, rate=RATE)
    assert np.array_equal(sink.audio[:, 0], customer) and np.array_equal(sink.audio[:, 1], agent)


def test_a_both_piece_plays_its_mix_in_both_channels() -> None:
    voice = noise(1, 7)
    sink = Collect()
    stitch([Piece(ArraySource(stereo(voice, voice)), T0, "both")], sink, rate=RATE)
    assert np.array_equal(sink.audio[:, 0], voice) and np.array_equal(sink.audio[:, 1], voice)


def test_overlapping_pieces_add_up_and_clip_at_full_scale() -> None:
    loud = np.full((RATE, 2), 30000, np.int16)
    sink = Collect()
    stitch([Piece(ArraySource(loud), T0), Piece(ArraySource(loud), T0 + 0.5)], sink, rate=RATE)
    out = sink.audio
    assert len(out) == int(1.5 * RATE)
    assert (out[: RATE // 2] == 30000).all()
    assert (out[RATE // 2 : RATE] == 32767).all()
    assert (out[RATE:] == 30000).all()


def test_mono_output_is_the_average_of_left_and_right() -> None:
    sink = Collect()
    pcm = stereo(np.full(RATE, 1000, np.int16), np.full(RATE, 3000, np.int16))
    stitch([Piece(ArraySource(pcm), T0)], sink, rate=RATE, channels=1)
    assert sink.audio.shape == (RATE, 1) and (sink.audio == 2000).all()


def test_a_source_shorter_than_it_said_is_padded_with_silence() -> None:
    class Short(ArraySource):
        def __init__(self) -> None:
            super().__init__(np.full((RATE, 2), 500, np.int16))
            self.frames = 2 * RATE  # it claims twice what it holds

    sink = Collect()
    stitch([Piece(Short(), T0)], sink, rate=RATE)
    assert len(sink.audio) == 2 * RATE and not sink.audio[RATE:].any() and (sink.audio[:RATE] == 500).all()


def _wav(path: Path, pcm: npt.NDArray[np.int16], rate: int = RATE) -> Path:
    soundfile.write(path, pcm, rate, subtype="PCM_16")
    return path


def test_wav_sources_stitch_into_an_mp3_that_ffmpeg_decodes_in_place(tmp_path: Path) -> None:
    cust1, op1 = noise(3, 11), noise(3, 12)
    cust2, op2 = noise(4, 13), noise(4, 14)
    one = _wav(tmp_path / "1.wav", stereo(cust1, op1))
    two = _wav(tmp_path / "2.wav", stereo(op2, cust2))  # the customer was the callee here
    writer = open_writer(tmp_path / "out.mp3", fmt="mp3", rate=RATE, channels=2, bitrate_kbps=32)
    placements = stitch(
        [Piece(WavSource(one, RATE), T0), Piece(WavSource(two, RATE), T0 + 3 + 25, "swap")], writer, rate=RATE
    )
    assert placements == [Placement(0, 3 * RATE), Placement(4 * RATE, 4 * RATE)]
    audio = decode(tmp_path / "out.mp3").astype(np.float64)
    assert abs(len(audio) - 8 * RATE) < RATE // 10
    for (lo, hi), left, right in (((0, 3), cust1, op1), ((4, 8), cust2, op2)):
        seg = audio[lo * RATE : hi * RATE]
        lag, peak = xcorr(seg[:, 0], left.astype(np.float64), 80)
        assert abs(lag) <= 40 and peak > 0.5, (lo, lag, peak)
        _, peak = xcorr(seg[:, 1], right.astype(np.float64), 80)
        assert peak > 0.5, (lo, peak)
        _, leak = xcorr(seg[:, 0], right.astype(np.float64), 80)
        assert abs(leak) < 0.1, (lo, leak)


def test_a_wav_source_at_another_rate_is_refused_with_a_sentence(tmp_path: Path) -> None:
    path = _wav(tmp_path / "x.wav", np.zeros((100, 2), np.int16), rate=16000)
    with pytest.raises(OutputError, match=r"^x.wav is at 16000 Hz, the stitch at 8000 Hz$"):
        WavSource(path, RATE)
