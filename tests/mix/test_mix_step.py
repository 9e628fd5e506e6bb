"""The mixer's release step (STEP_S, 1 s) and the demultiplexer's tick (TICK_S, 1 s: how often the mixers are
moved on) are cost knobs: the 0.5 s they replaced gives the same recording — byte for byte where no stream is
resampled, within 2 LSB where soxr is (its chunks end elsewhere)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from callrec.media import mixer
from callrec.media_limits import OutputOptions
from callrec.mix import demux, mix
from tests.support import synth

PLAIN = (synth.StreamPlan("A", seed=1), synth.StreamPlan("B", seed=2, start=0.3))
# the per-packet path: jitter, loss, duplicates, a codec change, a silence gap, events; G.722 is 16 kHz
ROUGH = (
    synth.StreamPlan("A", seed=3, jitter_s=0.06, loss=0.03, duplicates=0.02, second_codec="PCMU"),
    synth.StreamPlan("B", seed=4, start=1.1, silence_gap=True, dtmf=True, codec="G722"),
)


@pytest.mark.parametrize(
    ("plans", "rate", "resampled"),
    [(PLAIN, 8000, False), (PLAIN, 16000, True), (ROUGH, 8000, True), (ROUGH, 16000, True)],
)
def test_the_release_step_does_not_change_the_recording(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    plans: tuple[synth.StreamPlan, synth.StreamPlan],
    rate: int,
    resampled: bool,
) -> None:
    built = synth.build(synth.Scenario(duration=9.0, a=plans[0], b=plans[1]))
    pcap = synth.write_pcap(tmp_path / "call.pcap", built.datagrams)
    outputs = []
    for step in (0.5, mixer.STEP_S):
        monkeypatch.setattr(mixer, "STEP_S", step)
        out = tmp_path / f"step-{step}.wav"
        report = mix(pcap, out, OutputOptions("wav", "pcm", 16, rate))
        assert [c.output for c in report.calls] == [out]
        samples, _ = sf.read(out, dtype="int16")
        outputs.append(samples.astype(np.int32))
    before, now = outputs
    assert before.shape == now.shape and len(now) > 8.5 * rate
    if resampled:
        assert int(np.abs(before - now).max()) <= 2
    else:
        assert (before == now).all()


@pytest.mark.parametrize(
    ("plans", "rate", "resampled"),
    [(PLAIN, 8000, False), (PLAIN, 16000, True), (ROUGH, 8000, True), (ROUGH, 16000, True)],
)
def test_the_tick_does_not_change_the_recording(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    plans: tuple[synth.StreamPlan, synth.StreamPlan],
    rate: int,
    resampled: bool,
) -> None:
    built = synth.build(synth.Scenario(duration=9.0, a=plans[0], b=plans[1]))
    pcap = synth.write_pcap(tmp_path / "call.pcap", built.datagrams)
    outputs = []
    reports = []
    for tick in (0.5, demux.TICK_S):
        monkeypatch.setattr(demux, "TICK_S", tick)
        out = tmp_path / f"tick-{tick}.wav"
        report = mix(pcap, out, OutputOptions("wav", "pcm", 16, rate))
        assert [c.output for c in report.calls] == [out]
        samples, _ = sf.read(out, dtype="int16")
        outputs.append(samples.astype(np.int32))
        call = report.calls[0].to_json()
        del call["output"]
        reports.append(call)
    first = outputs[0]
    assert len(first) > 8.5 * rate
    for other, report in zip(outputs[1:], reports[1:], strict=True):
        assert other.shape == first.shape
        if resampled:
            assert int(np.abs(other - first).max()) <= 2
        else:
            assert (other == first).all()
        assert report == reports[0]
