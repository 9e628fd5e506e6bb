"""``callrec mix`` on captures with every impairment of SPEC.md, each alone and all together.

Payloads come from ffmpeg's encoders, the capture from dpkt's writer, the output is decoded by ffmpeg,
and the truth (what each channel must hold, and every counter) is computed by tests/support/synth.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tests.support import synth
from tests.support.audio import decode, mix_json, need, rfc3550_jitter_ms, windows, xcorr

pytestmark = pytest.mark.slow  # callrec mix and ffmpeg processes (seconds each)

RATE = 8000
MAX_OFFSET = int(0.020 * RATE)  # both channels within 20 ms of the truth


def scenario(**kw: object) -> synth.Scenario:
    a = dataclasses.replace(
        synth.StreamPlan("A", seed=11), **{k[2:]: v for k, v in kw.items() if k.startswith("a_")}
    )
    b = dataclasses.replace(
        synth.StreamPlan("B", seed=22), **{k[2:]: v for k, v in kw.items() if k.startswith("b_")}
    )
    both = {k: v for k, v in kw.items() if not k.startswith(("a_", "b_"))}
    extra = {k: both.pop(k) for k in list(both) if k in ("duration", "seed", "call_id")}
    a = dataclasses.replace(a, **both)
    b = dataclasses.replace(b, **both)
    return synth.Scenario(a=a, b=b, **extra)  # type: ignore[arg-type]


SCENARIOS = {
    "clean": {},
    "jitter_reorder_200ms": {"jitter_s": 0.2},
    "loss_5pct": {"loss": 0.05},
    "duplicates": {"duplicates": 0.08},
    "seq_and_ts_wrap": {
        "a_seq_start": 65400,
        "a_ts_start": (1 << 32) - 8000,
        "b_seq_start": 65530,
        "b_ts_start": (1 << 32) - 160,
    },
    "ssrc_change": {"ssrc_change": True},
    "dtmf_and_comfort_noise_gap": {"dtmf": True, "silence_gap": True},
    "trailing_dtmf": {"a_dtmf": True, "a_dtmf_at": 0.99, "b_stop": 10.0},
    "trailing_dtmf_own_ssrc": {"a_dtmf": True, "a_dtmf_at": 0.99, "a_dtmf_ssrc": True, "b_stop": 10.0},
    "codec_change_pcma_to_pcmu": {"a_second_codec": "PCMU", "b_codec": "PCMU", "b_second_codec": "PCMA"},
    "g722_8000_clock": {"codec": "G722"},
    "codec_change_to_g722": {"a_second_codec": "G722"},
    "dynamic_payload_type": {"a_dynamic_pt": 96, "a_codec": "PCMU", "b_dynamic_pt": 97},
    "ptime_10_and_60": {"a_ptime_ms": 10, "b_ptime_ms": 60},
    "ptime_30": {"ptime_ms": 30},
    "one_way_audio": {"b_silent": True},
    "late_start_early_stop": {"b_start": 3.0, "b_stop": 8.0},
    "all_together": {
        "jitter_s": 0.2,
        "loss": 0.04,
        "duplicates": 0.05,
        "ssrc_change": True,
        "dtmf": True,
        "silence_gap": True,
        "a_seq_start": 65500,
        "a_ts_start": (1 << 32) - 4000,
        "a_ptime_ms": 30,
        "b_ptime_ms": 20,
        "b_start": 1.5,
        "b_stop": 13.0,
        "a_second_codec": "PCMU",
        "b_dynamic_pt": 98,
        "duration": 16.0,
    },
}


def mix_scenario(tmp_path: Path, scn: synth.Scenario, *args: str) -> tuple[synth.Built, dict, np.ndarray]:
    need(synth.FFMPEG, "ffmpeg")
    built = synth.build(scn)
    pcap = synth.write_pcap(tmp_path / "call.pcap", built.datagrams)
    out = tmp_path / "out.wav"
    reports = mix_json(str(pcap), "-o", str(out), "--format", "wav", *args)
    assert len(reports) == 1
    return built, reports[0], decode(out)


def check_channels(built: synth.Built, audio: np.ndarray) -> None:
    """Left holds the caller, right the callee, each within 20 ms of the truth, with no crosstalk."""
    for ch, party, other in ((0, "A", "B"), (1, "B", "A")):
        truth = built.truth[party].audio
        wins = windows(truth, RATE)
        if not wins:
            # a silent party: its channel is silence
            assert np.abs(audio[:, ch].astype(np.int32)).max() < 100, f"channel {ch} should be silent"
            continue
        for lo, hi in wins:
            lag, peak = xcorr(audio[lo:hi, ch], truth[lo:hi], 2 * RATE // 10)
            assert abs(lag) <= MAX_OFFSET, (
                f"party {party} at {lo / RATE:.1f} s is {lag / RATE * 1000:.0f} ms off"
            )
            assert peak > 0.5, (
                f"party {party} at {lo / RATE:.1f} s: channel does not hold its audio ({peak:.2f})"
            )
            # no crosstalk: the other party's voice is not in this channel
            other_truth = built.truth[other].audio
            if len(other_truth) >= hi:
                _, leak = xcorr(audio[lo:hi, ch], other_truth[lo:hi], MAX_OFFSET)
                assert leak < 0.15, f"party {other} leaks into channel {ch} ({leak:.2f})"
        # where the truth is silent, so is the channel (nothing placed at the wrong time)
        n = min(len(truth), len(audio))
        quiet = np.abs(truth[:n].astype(np.int32)) == 0
        if quiet.sum() > RATE // 2:
            rms = np.sqrt(np.mean(audio[:n, ch][quiet].astype(np.float64) ** 2))
            assert rms < 200, f"channel {ch} holds {rms:.0f} RMS where party {party} was silent"


def check_counters(built: synth.Built, report: dict) -> None:
    """The JSON counters per party equal what was put on the wire."""
    for party in ("A", "B"):
        truth = built.truth[party]
        streams = [s for s in report["streams"] if s["party"] == party]
        assert sorted(s["ssrc"] for s in streams) == sorted(truth.ssrcs)
        assert sum(s["packets"] for s in streams) == truth.sent
        assert sum(s["lost"] for s in streams) == truth.lost
        assert sum(s["duplicates"] for s in streams) == truth.duplicates
        assert sum(s["reordered"] for s in streams) == truth.reordered
        assert sum(s["late"] for s in streams) == 0
    # jitter per RFC 3550, computed here from the wire independently
    src_of = {synth.A_IP: "A", synth.B_IP: "B"}
    per_party: dict[str, list[tuple[float, bytes]]] = {"A": [], "B": []}
    for ts, src, _sp, _dst, _dp, payload in built.media:
        per_party[src_of[src]].append((ts, payload))
    for party, packets in per_party.items():
        expected = rfc3550_jitter_ms(packets)
        for s in report["streams"]:
            if s["party"] == party and s["ssrc"] in expected and s["codec"].endswith("/8000"):
                assert s["max_jitter_ms"] == pytest.approx(expected[s["ssrc"]], abs=0.5)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_impairment(tmp_path: Path, name: str) -> None:
    built, report, audio = mix_scenario(tmp_path, scenario(**SCENARIOS[name]))
    assert report["channels"] == 2 and report["sample_rate"] == RATE
    assert len(audio) / RATE == pytest.approx(built.duration, abs=0.04)
    assert report["duration_s"] == pytest.approx(built.duration, abs=0.04)
    check_channels(built, audio)
    check_counters(built, report)


def test_sixteen_khz_output(tmp_path: Path) -> None:
    built, report, _ = mix_scenario(tmp_path, scenario(a_codec="G722", jitter_s=0.1), "--rate", "16000")
    assert report["sample_rate"] == 16000
    audio = decode(tmp_path / "out.wav", rate=RATE)
    check_channels(built, audio)


def test_mp3_keeps_alignment(tmp_path: Path) -> None:
    need(synth.FFMPEG, "ffmpeg")
    built = synth.build(scenario(jitter_s=0.1))
    pcap = synth.write_pcap(tmp_path / "call.pcap", built.datagrams)
    out = tmp_path / "call.mp3"
    mix_json(str(pcap), "-o", str(out))
    audio = decode(out)
    assert len(audio) / RATE == pytest.approx(built.duration, abs=0.04)
    for ch, party in ((0, "A"), (1, "B")):
        truth = built.truth[party].audio
        lag, peak = xcorr(audio[: len(truth), ch], truth[: len(audio)], RATE // 5)
        assert abs(lag) <= MAX_OFFSET and peak > 0.3
