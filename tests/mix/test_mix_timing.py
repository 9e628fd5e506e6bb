"""Where the mixer places each stream in time: nothing received is dropped, nothing skipped (issue 13).

Captures are built here packet by packet, with chosen arrival times: a party's first 300 ms held back
and delivered in one burst, a stream's first packet 5 ms later (or earlier) than its successors, the
call's first packet alone for a while. Payloads come from ffmpeg's A-law encoder, the truth is ffmpeg's
decoding of each payload at its send time (no callrec code), and t = 0 of the truth is the earliest
media of the call at its true place. The mixed output is checked in 1 s windows: each window matches the
truth at one and the same lag (0, within a sample), the audio equals the truth sample for sample (so a
skipped or repeated stretch would show), and a party's first 300 ms are there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from callrec.media.lane import Block, LaneRun
from callrec.media.playout import Pending
from callrec.media.timeline import SsrcTimeline
from callrec.media_limits import OutputOptions
from callrec.mix import demux, mix
from callrec.models import RtpMap
from tests.support import synth
from tests.support.audio import decode, need, windows, xcorr

pytestmark = pytest.mark.slow  # callrec mix and ffmpeg processes (seconds each)

RATE = 8000
FRAME = 160  # 20 ms of PCMA
BASE = 1_700_000_000.0
DURATION_S = 7.0  # longer than the anchor's 3 s window, so its slide is seen too

# arrival delay (s) of the k-th packet of a stream sent at `send` (s after the stream's start)
Delay = Callable[[int, float], float]


def on_time(k: int, send: float) -> float:
    return 0.0


def burst(held_s: float) -> Delay:
    """The first ``held_s`` of packets held back and delivered together, in order, at ``held_s``."""

    def delay(k: int, send: float) -> float:
        return held_s - send + k * 1e-5 if send < held_s else 0.0

    return delay


def first_late(by_s: float) -> Delay:
    """The first packet ``by_s`` later than every packet after it (which are all on time)."""
    return lambda k, send: by_s if k == 0 else 0.0


def first_early(by_s: float) -> Delay:
    """Every packet but the first ``by_s`` later than the first."""
    return lambda k, send: 0.0 if k == 0 else by_s


def lone_first(late_s: float, alone_s: float) -> Delay:
    """The first packet ``late_s`` late, then nothing of the stream until ``alone_s``: the packets sent
    in between come in one burst then."""

    def delay(k: int, send: float) -> float:
        if k == 0:
            return late_s
        return alone_s - send + k * 1e-5 if send < alone_s else 0.0

    return delay


@dataclass
class Party:
    start: float  # send time of the first frame (s, call clock)
    delay: Delay
    seed: int
    silent: tuple[float, float] = (0.0, 0.0)  # frames sent in [from, to) s after the start are left out
    pt: int = 8  # PCMA; another (not in the SDP, not static) is a stream no one can decode
    # the packets of the stream's first ``written_late`` s reach the capture file only then (+50 ms),
    # after everything that arrived before, with their true arrival times: the recorder holds an
    # unlatched stream back until its latch is decided
    written_late: float = 0.0


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Band-limited noise under a syllable-rate envelope that never falls silent: every 20 ms of it is
    distinct, so a lag or a skipped stretch anywhere shows."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    noise = np.convolve(rng.standard_normal(n), np.hanning(9) / np.hanning(9).sum(), mode="same")
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * (2.5 + seed % 3) * t + seed)
    sig = noise * envelope
    out: np.ndarray = (sig / np.abs(sig).max() * 11000).astype(np.int16)
    return out


def build(tmp_path: Path, a: Party, b: Party, duration: float = DURATION_S) -> tuple[Path, dict[str, np.ndarray]]:
    """The capture of one call, and each party's truth on the call clock (t = 0: the earliest media)."""
    need(synth.FFMPEG, "ffmpeg")
    offer = synth.sdp(synth.A_IP, 20000, ["PCMA"])
    answer = synth.sdp(synth.B_IP, 30000, ["PCMA"])
    call = "timing@test"
    a_ip, b_ip, sip = synth.A_IP, synth.B_IP, synth.sip
    datagrams = [
        (BASE - 0.5, a_ip, 5060, b_ip, 5060, sip(f"INVITE sip:200@{b_ip} SIP/2.0", call, "1 INVITE", offer)),
        (BASE - 0.1, b_ip, 5060, a_ip, 5060, sip("SIP/2.0 200 OK", call, "1 INVITE", answer, "xyz")),
        (BASE - 0.05, a_ip, 5060, b_ip, 5060, sip(f"ACK sip:200@{b_ip} SIP/2.0", call, "1 ACK", to_tag="xyz")),
    ]
    earliest = min(a.start, b.start)
    truths: dict[str, np.ndarray] = {}
    held: list[tuple[float, tuple[float, str, int, str, int, bytes]]] = []  # (when written, the datagram)
    for party, plan, src, dst, port in (("A", a, a_ip, b_ip, 30000), ("B", b, b_ip, a_ip, 20000)):
        frames = int((duration - plan.start) / 0.02)
        encoded = synth.ffmpeg_encode(speech_like(frames * 0.02, plan.seed), "PCMA")
        decoded = synth.ffmpeg_decode(encoded, "PCMA")
        truth = np.zeros(int((duration + 1) * RATE), np.int16)
        ssrc, seq0, ts0 = 0x1000 + plan.seed, 4000 * plan.seed, 90000 * plan.seed
        written = plan.start + plan.written_late + 0.05  # when the held packets are written (s)
        for k in range(frames):
            send = plan.start + k * 0.02
            if plan.silent[0] <= k * 0.02 < plan.silent[1]:
                continue  # silence suppression: nothing sent, the timestamp runs on
            arrival = send + plan.delay(k, k * 0.02)
            rtp = synth._rtp(synth.Packet(send, arrival, (seq0 + k) & 0xFFFF, ts0 + k * FRAME, ssrc, plan.pt, k == 0,
                                          encoded[k * FRAME : (k + 1) * FRAME]))  # fmt: skip
            datagram = (BASE + arrival, src, port - 10000 if port == 30000 else port + 10000, dst, port, rtp)
            if k * 0.02 < plan.written_late:
                held.append((BASE + written, datagram))
            else:
                datagrams.append(datagram)
            at = int(round((send - earliest) * RATE))
            truth[at : at + FRAME] = decoded[k * FRAME : (k + 1) * FRAME]
        truths[party] = truth
    end = BASE + duration + 0.3
    datagrams.append((end, a_ip, 5060, b_ip, 5060, sip(f"BYE sip:200@{b_ip} SIP/2.0", call, "2 BYE", to_tag="xyz")))
    datagrams.sort(key=lambda d: d[0])
    for when, datagram in sorted(held, key=lambda h: h[0]):
        # written after everything that arrived before then, in the order they arrived
        at = next((i for i, d in enumerate(datagrams) if d[0] > when), len(datagrams))
        datagrams.insert(at, datagram)
    return synth.write_pcap(tmp_path / "call.pcap", datagrams), truths


def mixed(pcap: Path, out: Path, lane: bool = True) -> np.ndarray:
    demux.VECTOR_LANE = lane
    try:
        report = mix(pcap, out, OutputOptions(format="wav"))
    finally:
        demux.VECTOR_LANE = True
    assert [c.error for c in report.calls] == [None]
    assert all(s["late"] == 0 for s in report.calls[0].streams)
    return decode(out)


def check_placement(audio: np.ndarray, truths: dict[str, np.ndarray], starts: dict[str, float]) -> None:
    """Each channel is its party's truth at lag 0 in every 1 s window, sample for sample, from the start."""
    earliest = min(starts.values())
    for ch, party in ((0, "A"), (1, "B")):
        truth = truths[party]
        got = audio[:, ch]
        n = min(len(truth), len(got))
        lags = []
        for lo, hi in windows(truth[:n], RATE):
            lag, peak = xcorr(got[lo:hi], truth[lo:hi], RATE // 20)
            lags.append(lag)
            assert peak > 0.99, f"party {party} at {lo / RATE:.0f} s: its audio is not there ({peak:.3f})"
        assert lags and all(lag == 0 for lag in lags), f"party {party}: lags per 1 s window {lags} (samples)"
        # sample for sample: a skipped or repeated stretch, or a gap, leaves a residual where it happens
        frames = n // FRAME
        truth_f = truth[: frames * FRAME].astype(np.float64).reshape(frames, FRAME)
        got_f = got[: frames * FRAME].astype(np.float64).reshape(frames, FRAME)
        energy = (truth_f**2).sum(axis=1)
        residual = ((got_f - truth_f) ** 2).sum(axis=1)
        bad = np.flatnonzero((energy > 0) & (residual > 1e-4 * energy))
        assert not len(bad), f"party {party}: differs from the truth at {[round(f * 0.02, 2) for f in bad[:8]]} s"
        # nothing lost at the start: the party's first 300 ms are all there
        lo = int(round((starts[party] - earliest) * RATE))
        first = got[lo : lo + int(0.3 * RATE)].astype(np.float64)
        want = truth[lo : lo + int(0.3 * RATE)].astype(np.float64)
        assert np.abs(first - want).max() <= 1, f"party {party}: its first 300 ms are not all there"
    assert len(audio) >= int((DURATION_S - earliest - 0.02) * RATE)


CASES = {
    # the caller's first 300 ms held back and delivered in one burst; the callee's first packet is the
    # call's first to arrive, 100 ms after the caller really started
    "caller_first_300ms_late_in_a_burst": (Party(0.0, burst(0.3), 1), Party(0.1, on_time, 2)),
    "callee_first_300ms_late_in_a_burst": (Party(0.1, on_time, 1), Party(0.0, burst(0.3), 2)),
    "caller_first_800ms_late_in_a_burst": (Party(0.0, burst(0.8), 1), Party(0.1, on_time, 2)),
    "caller_first_packet_5ms_late": (Party(0.0, first_late(0.005), 1), Party(0.5, on_time, 2)),
    "callee_first_packet_5ms_late": (Party(0.5, on_time, 1), Party(0.0, first_late(0.005), 2)),
    "caller_first_packet_6ms_late": (Party(0.0, first_late(0.006), 1), Party(0.2, on_time, 2)),
    "caller_first_packet_5ms_early": (Party(0.0, first_early(0.005), 1), Party(0.2, on_time, 2)),
    "callee_first_packet_6ms_early": (Party(0.3, on_time, 1), Party(0.0, first_early(0.006), 2)),
    # the call's first packet is its stream's only one for 250 ms (the rest of those come in a burst)
    "lone_first_packet_of_the_call": (Party(0.0, lone_first(0.004, 0.25), 1), Party(0.15, on_time, 2)),
    # the call's first packet, then its stream is silent for 1 s and comes back 6 ms later than it
    "lone_first_packet_then_silence": (
        Party(0.0, first_early(0.006), 1, silent=(0.02, 1.0)),
        Party(0.1, on_time, 2),
    ),
    # a stream's first second written to the file 1.05 s late (the recorder's latch hold; true arrival
    # times): the callee's, the caller's, both streams' (both latched, one decided 500 ms after the
    # other), and a hold of 1.4 s
    "callee_first_second_written_late": (Party(0.0, on_time, 1), Party(0.05, on_time, 2, written_late=1.0)),
    "caller_first_second_written_late": (Party(0.0, on_time, 1, written_late=1.0), Party(0.05, on_time, 2)),
    "both_first_seconds_written_late": (
        Party(0.0, on_time, 1, written_late=1.0),
        Party(0.5, on_time, 2, written_late=1.0),
    ),
    "callee_first_1400ms_written_late": (Party(0.0, on_time, 1), Party(0.05, on_time, 2, written_late=1.4)),
    # both held 1.4 s: the call's first packet in the file arrived 1.4 s after its earliest media
    "both_first_1400ms_written_late": (
        Party(0.0, on_time, 1, written_late=1.4),
        Party(0.1, on_time, 2, written_late=1.4),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_streams_are_placed_at_their_true_place(tmp_path: Path, name: str) -> None:
    a, b = CASES[name]
    pcap, truths = build(tmp_path, a, b)
    audio = mixed(pcap, tmp_path / "lane.wav")
    check_placement(audio, truths, {"A": a.start, "B": b.start})
    # the per-packet path places every packet exactly where the lane does
    assert np.array_equal(mixed(pcap, tmp_path / "packets.wav", lane=False), audio)


def test_t0_counts_media_that_cannot_be_decoded(tmp_path: Path) -> None:
    """The caller's stream is of a payload type no one declared (silence, but media): t = 0 is still
    where it starts, and the callee, 2 s later, is at its place."""
    pcap, truths = build(tmp_path, Party(0.0, on_time, 1, pt=99), Party(2.0, on_time, 2))
    audio = mixed(pcap, tmp_path / "out.wav")
    assert np.abs(audio[:, 0]).max() == 0
    n = min(len(audio), len(truths["B"]))
    assert n >= int((DURATION_S - 0.02) * RATE)
    assert np.array_equal(audio[:n, 1], truths["B"][:n])


def test_the_lane_moves_a_placement_as_the_per_packet_path_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's delay drops by 60 ms at 3 s, the callee's grows by 40 ms: both placements move while
    runs of the lane wait in the jitter buffer, which then go packet by packet, to the same result."""
    expanded = [0]
    original = Block.packets

    def spy(self: Block) -> list[Pending]:
        expanded[0] += 1
        return original(self)

    monkeypatch.setattr(Block, "packets", spy)
    a = Party(0.0, lambda k, send: 0.06 if send < 3.0 else 0.0, 1)
    b = Party(0.1, lambda k, send: 0.0 if send < 3.0 else 0.04, 2)
    pcap, _ = build(tmp_path, a, b, duration=10.0)
    lane = mixed(pcap, tmp_path / "lane.wav")
    assert expanded[0] > 0
    assert np.array_equal(mixed(pcap, tmp_path / "packets.wav", lane=False), lane)


# -- corrections once audio is placed: never a skip or a repeat of more than 1 ms ----------------------------

PCMA = RtpMap("PCMA", 8000)
STEP = RATE // 1000  # 1 ms


def pcma(k: int) -> tuple[int, int, RtpMap]:
    return 5000 + 160 * k, 8, PCMA


def placed(
    arrivals: list[float | None], kind: Callable[[int], tuple[int, int, RtpMap]] = pcma
) -> dict[int, int]:
    """Push packet k (20 ms; timestamp, payload type and codec from ``kind``) at ``arrivals[k]`` seconds
    (None: never sent) into a timeline and release it as the mixer does (every half second, its jitter
    delay behind); return each packet's output position, in samples from arrival 0."""
    timeline = SsrcTimeline(0x1234, "A", RATE)
    got: dict[int, int] = {}
    sent = sorted((t, k) for k, t in enumerate(arrivals) if t is not None)

    def release(limit: float) -> None:
        for run in timeline.release(limit):
            assert not isinstance(run, LaneRun)
            _pt, _codec, positions, payloads = run
            for pos, payload in zip(positions, payloads, strict=True):
                got[int.from_bytes(payload[:4], "big")] = pos

    tick = 0.0
    for t, k in sent:
        while t >= tick:
            release(tick * RATE - timeline.jitter_delay)
            tick += 0.5
        ts, pt, codec = kind(k)
        timeline.push(t * RATE, k & 0xFFFF, ts & 0xFFFFFFFF, pt, k.to_bytes(4, "big") + bytes(156), codec)
    release(float("inf"))
    assert len(got) == len(sent)
    return got


def steps_within_1ms(got: dict[int, int]) -> None:
    """Two packets that play one after the other are placed 20 ms apart, give or take 1 ms."""
    for k in sorted(got):
        if k + 1 in got:
            step = got[k + 1] - got[k] - 160
            assert abs(step) <= STEP, f"packet {k + 1} is placed {step} samples off the one before"


def send(k: int) -> float:
    return 0.02 * k


@pytest.mark.parametrize("change_ms", [60, -60, 15, -15])
def test_a_network_delay_change_is_followed_1_ms_at_a_time(change_ms: int) -> None:
    """The delay grows (or shrinks) for good at 4 s in continuous speech: the placement follows it within
    a few seconds, in steps of at most 1 ms; before the change, and once caught up, it is exact."""
    base = 0.030
    arrivals: list[float | None] = [
        send(k) + base + (change_ms / 1000 if send(k) >= 4.0 else 0.0) for k in range(600)
    ]
    got = placed(arrivals)
    steps_within_1ms(got)
    # exact before the change, and once caught up
    for k in range(0, 200):
        assert got[k] == round((send(k) + base) * RATE), k
    for k in range(int(9.0 / 0.02), 600):
        assert got[k] == round((send(k) + base + change_ms / 1000) * RATE), k


def test_a_delay_change_across_a_pause_is_taken_at_once() -> None:
    """The delay drops by 60 ms while the sender is silent (1 s, silence suppression): the first packet
    after the pause is at its new place, what came before is within 20 ms of its arrival, and no packet
    that plays right after another moves more than 1 ms."""
    arrivals: list[float | None] = [
        None if 3.0 <= send(k) < 4.0 else send(k) + (0.080 if send(k) < 3.0 else 0.020) for k in range(400)
    ]
    got = placed(arrivals)
    steps_within_1ms(got)
    first_after = int(4.0 / 0.02)
    assert got[first_after] == round((send(first_after) + 0.020) * RATE)
    for k, pos in got.items():
        arrival = arrivals[k]
        assert arrival is not None and abs(pos - arrival * RATE) <= 0.020 * RATE


@pytest.mark.parametrize("ppm", [300, -300])
def test_sender_clock_drift_is_followed_within_20_ms_in_1_ms_steps(ppm: int) -> None:
    """The sender's clock runs 300 ppm fast or slow for 2 minutes (36 ms in all), with a little jitter."""
    rng = np.random.default_rng(5)
    arrivals: list[float | None] = [
        send(k) * (1 - ppm / 1e6) + 0.02 + float(rng.uniform(0, 0.004)) for k in range(6000)
    ]
    got = placed(arrivals)
    steps_within_1ms(got)
    for k, pos in got.items():
        arrival = arrivals[k]
        assert arrival is not None and abs(pos - arrival * RATE) <= 0.020 * RATE, k


def test_a_new_clock_starts_right_after_the_audio_before_it() -> None:
    """At 2 s the sender switches to a codec of another clock (a new segment, placed afresh by arrival)
    whose packets come 20 ms less delayed: its first packet would land inside the last one before; it
    starts right after it instead, and the stream then comes back to its new delay 1 ms at a time."""
    l16 = RtpMap("L16", 16000)

    def kind(k: int) -> tuple[int, int, RtpMap]:
        return (5000 + 160 * k, 8, PCMA) if k < 100 else (777 + 320 * (k - 100), 96, l16)

    arrivals: list[float | None] = [send(k) + (0.030 if k < 100 else 0.010) for k in range(400)]
    got = placed(arrivals, kind)
    assert got[100] - got[99] == 160  # not inside it
    steps_within_1ms(got)
    for k in range(100):
        assert got[k] == round((send(k) + 0.030) * RATE)
    for k in range(200, 400):
        assert got[k] == round((send(k) + 0.010) * RATE)
