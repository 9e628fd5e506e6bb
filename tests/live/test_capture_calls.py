"""``callrec capture`` on a switch's view of two phones (``pbx.Phones``: sipp UAs in namespaces on a bridge).

Each call is one tape (source ``capture``), closed by the BYE, with the phones' numbers as parties and the
domain from the Request-URI; ``callrec mix`` of the tape puts what the caller sent on the left and what the
callee sent on the right (xcorr >= 0.99 within 20 ms of the arrival). Over UDP and TCP, and with a
re-INVITE; through a proxy (two legs, one tape). A capture killed mid-call leaves its tape marked open;
the next start recovers it (interrupted, end reason ``crash``). ``serve --capture`` hands the tape to the
service: the call appears in the API and its recording completes. Root and netns: skipped with the reason
elsewhere, never under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import pytest

from tests.live.pbx import MEDIA_PORT, Phones, phones_fixture  # noqa: F401 - the fixture
from tests.support.audio import FFMPEG, decode, mix_json, need, xcorr
from tests.support.serve_proc import ServeProcess

pytestmark = pytest.mark.slow

RATE = 8000
MAX_LAG = int(0.020 * RATE)
READY_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 30.0
TALK_S = 5


class Capture:
    """One ``callrec capture`` process of this test's (stopped by its own pid only)."""

    def __init__(self, data: Path, *extra: str) -> None:
        self.data = data
        self.log_path = data.parent / f"capture-{os.urandom(4).hex()}.log"
        data.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "callrec", "capture", "--data", str(data), *extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "callrec capture: reading" not in self.log():
            assert self.proc.poll() is None, f"callrec capture exited {self.proc.returncode}: {self.log()}"
            assert time.monotonic() < deadline, f"callrec capture not ready in {READY_TIMEOUT_S} s: {self.log()}"
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"callrec capture ignored {sig} for 30 s: {self.log()[-3000:]}") from None
        return self.proc.returncode


def noise(work: Path, name: str, seed: int) -> tuple[Path, np.ndarray]:
    """Pink noise as µ-law bytes (what a phone sends) and ffmpeg's decoding of those bytes."""
    ffmpeg = need(FFMPEG, "ffmpeg")
    path = work / f"{name}.ulaw"
    subprocess.run(
        [ffmpeg, "-v", "error", "-f", "lavfi", "-i", f"anoisesrc=color=pink:seed={seed}:amplitude=0.3:d={TALK_S}",
         "-ar", str(RATE), "-ac", "1", "-f", "mulaw", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    pcm = subprocess.run(
        [ffmpeg, "-v", "error", "-f", "mulaw", "-ar", str(RATE), "-ac", "1", "-i", str(path), "-f", "s16le", "-"],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    return path, np.frombuffer(pcm, np.int16)


def tapes(data: Path) -> list[Path]:
    return sorted(p.parent for p in (data / "tapes").glob("[0-9]*/*/*/*/call.json"))


def info_of(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "call.json").read_text())
    return data


def wait_closed(data: Path, count: int = 1, timeout: float = CLOSE_TIMEOUT_S) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = tapes(data)
        if len(found) >= count and all(info_of(t)["end_reason"] for t in found):
            return found
        time.sleep(0.1)
    raise AssertionError(f"{count} closed tapes did not appear in {timeout} s: {tapes(data)}")


def rtp_arrivals(folder: Path) -> dict[tuple[str, int], float]:
    """Per destination (address, port), the arrival time of the first RTP packet on the tape."""
    out: dict[tuple[str, int], float] = {}
    with (folder / "media.pcap").open("rb") as f:
        for ts, frame in dpkt.pcap.Reader(f):
            packet = dpkt.ip.IP(frame)
            udp = packet.data
            if udp.dport != 5060 and udp.sport != 5060 and bytes(udp.data)[:1] == b"\x80":
                out.setdefault((socket.inet_ntoa(packet.dst), udp.dport), float(ts))
    return out


def check_channels(folder: Path, work: Path, caller: np.ndarray, callee: np.ndarray, phones: Phones) -> None:
    """The tape mixes to the caller's audio on the left and the callee's on the right."""
    out = work / "call.wav"
    [result] = mix_json(str(folder), "-o", str(out))
    assert {s["party"] for s in result["streams"]} == {"A", "B"}, result
    audio = decode(out)
    arrivals = rtp_arrivals(folder)
    t0 = min(arrivals.values())
    lag_a = round((arrivals[phones.ip["b"], MEDIA_PORT] - t0) * RATE)  # what the caller sends goes to the callee
    lag_b = round((arrivals[phones.ip["a"], MEDIA_PORT] - t0) * RATE)
    lag, peak = xcorr(audio[lag_a:, 0], caller, MAX_LAG)
    assert abs(lag) <= MAX_LAG and peak >= 0.99, f"left vs what the caller sent: lag {lag}, peak {peak:.4f}"
    lag, peak = xcorr(audio[lag_b:, 1], callee, MAX_LAG)
    assert abs(lag) <= MAX_LAG and peak >= 0.99, f"right vs what the callee sent: lag {lag}, peak {peak:.4f}"


@pytest.mark.parametrize(
    ("transport", "reinvite"), [("u1", False), ("t1", False), ("u1", True)], ids=["udp", "tcp", "reinvite"]
)
def test_each_call_is_one_tape_closed_on_bye_that_mixes_to_each_side(
    phones: Phones, tmp_path: Path, transport: str, reinvite: bool
) -> None:
    a_path, a_pcm = noise(tmp_path, "caller", 7)
    b_path, b_pcm = noise(tmp_path, "callee", 11)
    data = tmp_path / "data"
    capture = Capture(data, "--interface", phones.bridge, "--domain-from", "ruri")
    try:
        phones.call(tmp_path / "call", a_path, b_path, transport=transport, reinvite=reinvite,
                    talk_ms=TALK_S * 1000 + 800)  # fmt: skip
        [folder] = wait_closed(data)
    finally:
        assert capture.stop() == 0, capture.log()
    info = info_of(folder)
    assert info["source"] == "capture" and info["end_reason"] == "bye", info
    assert info["closed_cleanly"] and not info["interrupted"], info
    assert info["domain"] == "acme.example", info
    parties = {p["id"]: (p["role"], p["number"], p["name"]) for p in info["parties"]}
    assert parties == {"A": ("caller", "1001", "Alice Caller"), "B": ("callee", "2002", "Bob Callee")}, parties
    streams = {(s["party"], s["local_addr"], s["local_port"]) for s in info["streams"]}
    assert streams == {("B", phones.ip["a"], MEDIA_PORT), ("A", phones.ip["b"], MEDIA_PORT)}, streams
    assert len(tapes(data)) == 1
    assert not list((data / "tapes" / ".open").iterdir()), "the closed tape is still marked open"
    check_channels(folder, tmp_path, a_pcm, b_pcm, phones)
    if reinvite:
        with (folder / "media.pcap").open("rb") as f:
            invites = [1 for _, frame in dpkt.pcap.Reader(f) if bytes(dpkt.ip.IP(frame).data.data)[:7] == b"INVITE "]
        assert len(invites) == 2, "the re-INVITE is on the tape"
    # the figures for /metrics
    figures = json.loads((data / "capture-stats.json").read_text())
    assert figures["counters"]["callrec_capture_calls"] == 1 and figures["gauges"]["callrec_capture_calls_open"] == 0
    assert figures["interfaces"][phones.bridge]["callrec_capture_drops"] == 0, figures


def test_a_call_through_a_proxy_is_one_tape(phones: Phones, tmp_path: Path) -> None:
    """The proxy's two legs of the call (caller-proxy, proxy-callee: the same Call-ID) are one call."""
    a_path, a_pcm = noise(tmp_path, "caller", 7)
    b_path, b_pcm = noise(tmp_path, "callee", 11)
    data = tmp_path / "data"
    capture = Capture(data, "--interface", phones.bridge)
    try:
        phones.call(tmp_path / "call", a_path, b_path, talk_ms=TALK_S * 1000 + 800, proxy=True)
        [folder] = wait_closed(data)
    finally:
        assert capture.stop() == 0, capture.log()
    info = info_of(folder)
    assert info["end_reason"] == "bye" and len(tapes(data)) == 1, info
    with (folder / "media.pcap").open("rb") as f:
        invites = {socket.inet_ntoa(dpkt.ip.IP(frame).src) for _, frame in dpkt.pcap.Reader(f)
                   if bytes(dpkt.ip.IP(frame).data.data)[:7] == b"INVITE "}  # fmt: skip
    assert invites == {phones.ip["a"], phones.ip["p"]}, "both legs' INVITEs are on the one tape"
    check_channels(folder, tmp_path, a_pcm, b_pcm, phones)


def test_a_capture_killed_mid_call_leaves_a_tape_the_next_start_recovers(phones: Phones, tmp_path: Path) -> None:
    a_path, _ = noise(tmp_path, "caller", 7)
    b_path, _ = noise(tmp_path, "callee", 11)
    data = tmp_path / "data"
    capture = Capture(data, "--interface", phones.bridge)
    try:
        caller = phones.call(tmp_path / "call", a_path, b_path, talk_ms=TALK_S * 1000, wait=False)
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        while not any(p.stat().st_size > 4096 for t in tapes(data) for p in [t / "media.pcap"]):
            assert time.monotonic() < deadline, "no tape with RTP on it appeared"
            time.sleep(0.1)
    finally:
        capture.stop(signal.SIGKILL)
    [folder] = tapes(data)
    assert list((data / "tapes" / ".open").iterdir()), "the killed capture's tape is marked open"
    assert info_of(folder)["end_reason"] == ""
    caller.wait(timeout=60)
    again = Capture(data, "--interface", phones.bridge)
    try:
        assert "was left open" in again.log()
    finally:
        assert again.stop() == 0, again.log()
    info = info_of(folder)
    assert info["interrupted"] and not info["closed_cleanly"] and info["end_reason"] == "crash", info
    assert not list((data / "tapes" / ".open").iterdir())
    [result] = mix_json(str(folder), "-o", str(tmp_path / "recovered.wav"))
    assert {s["party"] for s in result["streams"]} == {"A", "B"}, result


def test_serve_capture_hands_the_tape_to_the_service(phones: Phones, tmp_path: Path) -> None:
    a_path, _ = noise(tmp_path, "caller", 7)
    b_path, _ = noise(tmp_path, "callee", 11)
    with ServeProcess(tmp_path / "data", "--capture", phones.bridge, "--workers", "1") as serve:
        serve.wait_for("the capture child", lambda: "callrec capture: reading" in serve.log())
        phones.call(tmp_path / "call", a_path, b_path, talk_ms=TALK_S * 1000)

        def completed() -> list[dict[str, Any]] | None:
            answer = serve.api.get("/api/v1/calls")
            assert answer.status_code == 200, f"{answer.status_code} {answer.text[:300]}"
            items = answer.json()["items"]
            done = [c for c in items if c["recording"] and c["recording"]["state"] == "completed"]
            return done or None

        [card] = serve.wait_for("the captured call's recording", completed, timeout=90)
        assert serve.stop() == 0, serve.log()[-3000:]
    assert card["source"] == "capture", card
    assert {p["number"] for p in card["parties"]} == {"1001", "2002"}, card
