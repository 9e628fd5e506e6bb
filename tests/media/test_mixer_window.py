"""The mixer's output window: channel-major sums that slide along a buffer of SLIDE_WINDOWS windows more, moved
back to the front only when the buffer's end is reached, and the limiter that turns them into interleaved
int16. Where the window moves must never change the recording."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from callrec.media import mixer
from callrec.media.mixer import FULL_SCALE, LIMITER_CEILING, CallMixer
from callrec.media_limits import OutputOptions
from callrec.mix import mix
from tests.support import synth

PLAIN = (synth.StreamPlan("A", seed=11), synth.StreamPlan("B", seed=12, start=0.4))
ROUGH = (
    synth.StreamPlan("A", seed=13, jitter_s=0.05, loss=0.03, duplicates=0.02),
    synth.StreamPlan("B", seed=14, start=1.3, silence_gap=True, dtmf=True),
)


class _Sink:
    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []

    def write(self, block: np.ndarray) -> None:
        self.blocks.append(block)

    def close(self) -> None:
        pass


def _mixer() -> CallMixer:
    from callrec.models import CallInfo

    return CallMixer(CallInfo(call_ids=["x"]), _Sink(), rate=8000, channels=2)


@pytest.mark.parametrize("plans", [PLAIN, ROUGH], ids=["plain", "rough"])
@pytest.mark.parametrize("codec", ["pcm", "gsm"], ids=["stereo", "mono-gsm"])
def test_where_the_window_moves_back_does_not_change_the_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plans: tuple[synth.StreamPlan, synth.StreamPlan], codec: str
) -> None:
    built = synth.build(synth.Scenario(duration=40.0, a=plans[0], b=plans[1]))
    pcap = synth.write_pcap(tmp_path / "call.pcap", built.datagrams)
    offsets: list[int] = []
    slide = CallMixer._slide

    def spy(self: CallMixer, k: int) -> None:
        slide(self, k)
        offsets.append(self._off)

    monkeypatch.setattr(CallMixer, "_slide", spy)
    outputs = []
    for windows in (0, 1, mixer.SLIDE_WINDOWS):
        monkeypatch.setattr(mixer, "SLIDE_WINDOWS", windows)
        offsets.clear()
        out = tmp_path / f"slide-{windows}.wav"
        mix(pcap, out, OutputOptions("wav", codec, 16, 8000))
        samples, _ = sf.read(out, dtype="int16", always_2d=True)
        outputs.append(samples)
        # the window did move back to the front, and (but for 0) only after sliding along
        assert offsets.count(0) >= (40 if windows == 0 else 2)
        if windows:
            assert max(offsets) > 0
    assert len(outputs[0]) > 39 * 8000
    for other in outputs[1:]:
        assert other.shape == outputs[0].shape
        assert (other == outputs[0]).all()


def test_the_limiter_interleaves_channel_major_sums_left_first() -> None:
    m = _mixer()
    window = np.zeros((2, 320), np.int32)
    window[0] = np.arange(320) - 160
    window[1] = -7
    out = m._limit(window)
    assert out.dtype == np.int16 and out.shape == (320, 2) and out.flags.c_contiguous
    assert (out[:, 0] == np.arange(320) - 160).all() and (out[:, 1] == -7).all()


def test_the_limiter_brings_sums_over_full_scale_under_the_ceiling_on_both_channels_alike() -> None:
    m = _mixer()
    frames = 8000
    window = np.zeros((2, frames), np.int32)
    t = np.arange(frames)
    window[0] = (60000 * np.sin(t / 7)).astype(np.int32)  # two loud voices summed: twice full scale
    window[1] = (20000 * np.sin(t / 5)).astype(np.int32)
    out = m._limit(window)
    assert out.shape == (frames, 2)
    assert int(np.abs(out.astype(np.int32)).max()) <= LIMITER_CEILING
    # one gain per 20 ms block for both channels: the ratio out/in is the same on each side of a block
    block = slice(160, 320)
    gains = out[block].astype(np.float64) / np.where(window[:, block].T == 0, 1, window[:, block].T)
    big = np.abs(window[:, block].T) > 1000
    assert np.ptp(gains[big]) < 0.01
    assert m._gain < 1.0
    # after the peaks, quiet audio: the gain comes back by LIMITER_RELEASE a block until it is 1 again
    quiet = np.full((2, 160 * 40), 1000, np.int32)
    later = m._limit(quiet)
    assert later[-1, 0] == 1000 and m._gain >= 1.0
    assert int(np.abs(later.astype(np.int32)).max()) <= FULL_SCALE
