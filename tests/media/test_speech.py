"""Who spoke when: the mixer measures each party's speaking segments on its own audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from callrec.media import speech
from callrec.media.speech import SpeechMeter
from callrec.media_limits import OutputOptions
from callrec.mix import mix
from tests.support import audio, synth

pytestmark = pytest.mark.slow  # whole calls mixed and analysed (seconds each)

RATE = 8000
WAV = OutputOptions(format="wav")


def _covered(segments: list[list[float]], lo: float, hi: float) -> float:
    return sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in segments)


def test_bursts_over_a_noise_floor_are_found_and_short_pauses_bridged() -> None:
    rng = np.random.default_rng(1)
    pcm = (rng.standard_normal(6 * RATE) * 30).astype(np.int16)  # about -60 dBFS of line noise
    loud = (rng.standard_normal(RATE) * 6000).astype(np.int16)
    pcm[1 * RATE : 2 * RATE] = loud
    pcm[2 * RATE + 1600 : 3 * RATE + 1600] = loud  # a 0.2 s pause: the same turn
    pcm[5 * RATE : 5 * RATE + 400] = loud[:400]  # a 50 ms click: not speech
    meter = SpeechMeter(RATE)
    # arrives in uneven pieces, out of order, as the mixer writes them
    cuts = [0, 333, 8000, 12345, 20000, 33333, 48000]
    for lo, hi in reversed(list(zip(cuts, cuts[1:], strict=False))):
        meter.add(lo, pcm[lo:hi])
    assert meter.segments() == [[1.0, 3.2]]


def test_silence_and_nothing_give_no_segments() -> None:
    meter = SpeechMeter(RATE)
    assert meter.segments() == []
    meter.add(0, np.zeros(RATE, np.int16))
    assert meter.segments() == []


def test_each_party_of_a_mixed_call_has_its_own_segments(tmp_path: Path) -> None:
    scn = synth.Scenario(
        duration=6.0, a=synth.StreamPlan("A", seed=1, stop=2.0), b=synth.StreamPlan("B", seed=2, start=3.0)
    )
    built = synth.build(scn)
    capture = synth.write_pcap(tmp_path / "call.pcap", built.datagrams)
    report = mix(capture, tmp_path / "out.wav", WAV)
    (call,) = report.calls
    assert call.started_at == built.t0
    a, b = call.speech["A"], call.speech["B"]
    assert a and b
    assert all(lo >= 0.0 and hi <= 2.1 for lo, hi in a)
    assert all(lo >= 2.9 and hi <= 6.1 for lo, hi in b)
    # the test voice pauses between syllables, so a turn is not all speech
    assert _covered(a, 0, 2) > 0.8 and _covered(b, 3, 6) > 1.2


def test_left_names_the_parties_for_the_left_channel(tmp_path: Path) -> None:
    scn = synth.Scenario(duration=3.0)
    capture = synth.write_pcap(tmp_path / "call.pcap", synth.build(scn).datagrams)
    plain = mix(capture, tmp_path / "plain.wav", WAV)
    swapped = mix(capture, tmp_path / "swapped.wav", WAV, left=frozenset({"B"}))
    assert plain.calls[0].output is not None and swapped.calls[0].output is not None
    one = audio.decode(plain.calls[0].output)
    other = audio.decode(swapped.calls[0].output)
    assert one.shape == other.shape and one.shape[1] == 2
    assert np.array_equal(one[:, 0], other[:, 1]) and np.array_equal(one[:, 1], other[:, 0])


def test_frame_energies_are_exactly_the_sum_of_each_frames_squares() -> None:
    # the vectorised add against the definition, sample by sample: runs at any position and length,
    # partial frames at both ends, full scale (where int16 squares overflow anything narrower than int64)
    rate = 8000
    meter = SpeechMeter(rate)
    frame = meter.frame
    rng = np.random.default_rng(7)
    energy: dict[int, int] = {}
    count: dict[int, int] = {}
    pos = 3
    for _ in range(200):
        n = int(rng.integers(1, 3 * frame))
        pcm = rng.integers(-32768, 32768, n).astype(np.int16)
        if rng.random() < 0.2:
            pcm[:] = -32768
        meter.add(pos, pcm)
        for i, x in enumerate(pcm.tolist()):
            k = (pos + i) // frame
            energy[k] = energy.get(k, 0) + x * x
            count[k] = count.get(k, 0) + 1
        pos += n + int(rng.integers(0, 2 * frame)) * int(rng.random() < 0.3)
    frames = max(energy) + 1
    assert meter._frames == frames
    assert meter._energy[:frames].tolist() == [float(energy.get(k, 0)) for k in range(frames)]
    assert meter._count[:frames].tolist() == [count.get(k, 0) for k in range(frames)]


def _reference_segments(meter: SpeechMeter) -> list[list[float]]:
    # the definition, on a float array of every frame's level: np.percentile for the floor, runs by diff
    db = meter.levels()
    heard = ~np.isnan(db)
    if not heard.any():
        return []
    floor = float(np.percentile(db[heard], 20))
    active = heard & (db > max(speech.ABSOLUTE_FLOOR_DB, floor + speech.ABOVE_FLOOR_DB))
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
    runs = [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2], strict=True)]
    # short pauses bridged, then blips dropped
    bridge = int(round(speech.BRIDGE_S / speech.FRAME_S))
    merged: list[list[int]] = []
    for a, b in runs:
        if merged and a - merged[-1][1] <= bridge:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    shortest = int(round(speech.MIN_SEGMENT_S / speech.FRAME_S))
    f = speech.FRAME_S
    return [[round(a * f, 2), round(b * f, 2)] for a, b in merged if b - a >= shortest]


@pytest.mark.parametrize("seed", range(6))
def test_segments_from_the_one_byte_levels_are_the_definitions(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # small scan chunks, so runs cross chunk edges often
    monkeypatch.setattr(speech, "SCAN_FRAMES", 7 + seed)
    rng = np.random.default_rng(seed)
    meter = SpeechMeter(8000)
    pos = 0
    for _ in range(int(rng.integers(1, 400))):
        n = int(rng.integers(1, 4000))
        level = 10 ** rng.uniform(-4, 0) if rng.random() < 0.7 else 0.0
        meter.add(pos, rng.normal(0, 12000 * level, n).clip(-32768, 32767).astype(np.int16))
        pos += n + (int(rng.integers(0, 8000)) if rng.random() < 0.2 else 0)
    assert meter.segments() == _reference_segments(meter)


def test_settled_frames_keep_their_levels_in_one_byte_and_the_open_window_stays_small() -> None:
    # the mixer settles frames as it emits; the levels must be what a meter that never settles finds, and
    # memory must not grow with the call beyond one byte a frame
    rate = 8000
    settling, keeping = SpeechMeter(rate), SpeechMeter(rate)
    frame = settling.frame
    rng = np.random.default_rng(11)
    pos = 0
    for i in range(3000):  # 3000 writes of 0.1-0.5 s: ~15 minutes
        n = int(rng.integers(800, 4000))
        level = 10 ** rng.uniform(-3.5, 0)
        pcm = (rng.normal(0, 9000 * level, n).clip(-32768, 32767)).astype(np.int16)
        for meter in (settling, keeping):
            meter.add(pos, pcm)
        pos += n + (int(rng.integers(0, 4000)) if rng.random() < 0.1 else 0)
        if i % 3 == 0:
            settling.settle(pos - 2 * frame)  # emitted up to a little behind the last write
    assert len(settling._energy) == len(keeping._energy[:1024]) == 1024, "the open window never grew"
    assert len(keeping._energy) > 40_000
    got, want = settling.levels(), keeping.levels()
    assert len(got) == len(want) > 40_000
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(got[~np.isnan(got)], want[~np.isnan(want)])
    assert settling.segments() == keeping.segments()
    assert sum(chunk.nbytes for chunk in settling._chunks) <= len(got) + speech.SCAN_FRAMES


@pytest.mark.parametrize("seed", range(5))
def test_the_noise_floor_from_the_histogram_is_numpys_percentile(seed: int) -> None:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, speech.NOT_HEARD, int(rng.integers(1, 500))).astype(np.uint8)
    histogram = np.bincount(codes, minlength=256)[: speech.NOT_HEARD]
    levels = codes.astype(np.float64) * -speech.DB_STEP
    for q in (0, 13, 20, 50, 87.5, 100):
        assert speech._floor_db(histogram, q) == float(np.percentile(levels, q)), q
