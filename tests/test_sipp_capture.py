"""A real SIP peer: ``sipp -sn uac_pcap`` calls ``sipp -sn uas`` on 127.0.0.1, tshark captures the call on
``lo``, and ``callrec mix`` mixes the capture.

Oracles: ffmpeg's A-law decoding of the RTP payloads of sipp's own ``g711a.pcap`` (what the caller plays,
so what the left channel must hold), and ``tshark -z rtp,streams`` on the same capture (per-stream
packets, loss and jitter). sipp's uas sends no media, so the right channel must be silence.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import pytest

from tests.support.audio import FFMPEG, decode, mix_json, need, rfc3550_jitter_ms, xcorr
from tests.support.recorder_proc import free_udp_block

pytestmark = pytest.mark.slow  # two sipp instances captured by tshark

RATE = 8000
MAX_LAG = int(0.020 * RATE)  # the left channel must hold sipp's audio within 20 ms of where it arrived
SILENCE = 100  # max abs sample value of a silent channel
PORTS = 12  # uas SIP, uac SIP, then four ports for each side's media (RTP, RTCP, and sipp's video pair)
TIMEOUT_S = 30
# both tshark and callrec run the RFC 3550 estimator on the same arrival times and RTP timestamps and
# print it to 0.001 ms; a different estimator (no 1/16 smoothing, sequence instead of arrival order,
# another clock) differs by a whole millisecond or more on this capture
JITTER_TOLERANCE_MS = 0.01
SIPP_PCAP_DIRS = ("/usr/share/sip-tester", "/usr/share/sipp/pcap", "/usr/local/share/sipp/pcap")
SIPP_PCAPS = ("g711a.pcap", "dtmf_2833_1.pcap")  # every file the uac_pcap scenario plays


@dataclass
class TsharkStream:
    """One row of ``tshark -q -z rtp,streams``."""

    ssrc: int
    payload: str
    packets: int
    lost: int  # expected minus received: negative when duplicates outnumber losses
    mean_jitter_ms: float
    max_jitter_ms: float


@dataclass
class SeenStream:
    """What the capture itself holds for one SSRC."""

    packets: int
    lost: int
    duplicates: int
    first_arrival: float


def test_sipp_call_captured_on_loopback(tmp_path: Path) -> None:
    tools = _tools()
    pcap_dir = _sipp_pcap_dir()
    capture = tmp_path / "call.pcapng"
    _record_sipp_call(tools, pcap_dir, tmp_path, capture)

    # 1. one call in the capture and in our output, which is stereo 8000 Hz
    call_ids = set(_tshark_fields(tools["tshark"], capture, "sip", "sip.Call-ID"))
    assert len(call_ids) == 1, f"the capture should hold one call, it holds {sorted(call_ids)}"
    out = tmp_path / "call.wav"
    results = mix_json(str(capture), "-o", str(out), "--format", "wav")
    assert len(results) == 1, f"one call expected, callrec mixed {len(results)}: {results}"
    result = results[0]
    assert result["call_id"] in call_ids, result
    assert (result["sample_rate"], result["channels"]) == (RATE, 2), result
    audio = decode(out)
    assert audio.shape[1] == 2

    # 2. sipp's audio on the left at its arrival time, silence on the right
    ref_ssrc, ref = _sipp_reference(pcap_dir / "g711a.pcap")
    seen = _seen_streams(tools["tshark"], capture)
    assert ref_ssrc in seen, f"sipp's stream {ref_ssrc:#010x} is not in the capture: {sorted(seen)}"
    first_media = min(s.first_arrival for s in seen.values())  # t = 0 of the output
    expected_lag = round((seen[ref_ssrc].first_arrival - first_media) * RATE)
    ours = {s["ssrc"]: s for s in result["streams"]}
    audio_stream = ours.get(ref_ssrc)
    assert audio_stream is not None, f"sipp's stream {ref_ssrc:#010x} is missing from {result['streams']}"
    assert (audio_stream["party"], audio_stream["codec"]) == ("A", "PCMA/8000"), (
        f"sipp plays PCMA (static payload type 8) from the caller; callrec reports {audio_stream}"
    )
    left = audio[:, 0]
    lag, peak = xcorr(left[expected_lag:], ref, MAX_LAG)
    assert abs(lag) <= MAX_LAG and peak > 0.99, (
        f"left channel vs ffmpeg's decoding of g711a.pcap: lag {lag} samples after the expected "
        f"{expected_lag}, normalised peak {peak:.3f}; left max abs {int(np.abs(left).max(initial=0))}"
    )
    # the RFC 4733 event that follows the audio is never decoded as speech
    tail = left[expected_lag + lag + len(ref) :]
    assert int(np.abs(tail).max(initial=0)) < SILENCE, "the left channel is not silent after sipp's audio"
    right_peak = int(np.abs(audio[:, 1]).max(initial=0))
    assert right_peak < SILENCE, f"sipp's uas sends no media, yet the right channel peaks at {right_peak}"

    # 3. per-stream figures: ours vs tshark vs the capture's own sequence numbers
    theirs = _tshark_rtp_streams(tools["tshark"], capture)
    assert set(ours) == set(theirs) == set(seen), (
        f"SSRCs: callrec {sorted(ours)}, tshark {sorted(theirs)}, capture {sorted(seen)}"
    )
    jitter_ref = rfc3550_jitter_ms(_rtp_packets(tools["tshark"], capture))
    for ssrc, mine in ours.items():
        t, s = theirs[ssrc], seen[ssrc]
        figures = (
            f"stream {ssrc:#010x} ({t.payload}): callrec packets={mine['packets']} lost={mine['lost']} "
            f"duplicates={mine['duplicates']} max_jitter_ms={mine['max_jitter_ms']}; "
            f"tshark packets={t.packets} lost={t.lost} mean_jitter_ms={t.mean_jitter_ms} "
            f"max_jitter_ms={t.max_jitter_ms}; capture lost={s.lost} duplicates={s.duplicates}; "
            f"tests.support.audio RFC 3550 max {jitter_ref.get(ssrc, 0.0):.3f}"
        )
        assert mine["packets"] == t.packets == s.packets, figures
        # tshark's "lost" nets duplicates against losses; the capture separates them
        assert s.lost - s.duplicates == t.lost, "the oracles disagree: " + figures
        assert (mine["lost"], mine["duplicates"]) == (s.lost, s.duplicates), figures
        assert mine["max_jitter_ms"] == pytest.approx(t.max_jitter_ms, abs=JITTER_TOLERANCE_MS), figures
    print(f"\nsipp call {result['call_id']}: {len(ref)} reference samples, lag {lag}, peak {peak:.4f}")
    for ssrc, mine in ours.items():
        t = theirs[ssrc]
        print(
            f"  {ssrc:#010x} {t.payload}: packets {mine['packets']}/{t.packets}, "
            f"lost {mine['lost']}/{t.lost}, duplicates {mine['duplicates']}, "
            f"max jitter {mine['max_jitter_ms']}/{t.max_jitter_ms} ms (callrec/tshark)"
        )


# the tools and the machine
def _tools() -> dict[str, str]:
    tools = {name: need(shutil.which(name), name) for name in ("sipp", "tshark")}
    need(FFMPEG, "ffmpeg")
    if os.geteuid() != 0:
        reason = "capturing on lo and sipp's pcap play (raw sockets) need root"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " under CI")
        pytest.skip(reason)
    return tools


def _sipp_pcap_dir() -> Path:
    """Where the sipp package keeps the pcaps its built-in scenarios play."""
    candidates = [Path(d) for d in SIPP_PCAP_DIRS]
    dpkg = shutil.which("dpkg")
    if dpkg is not None:
        listed = subprocess.run([dpkg, "-L", "sip-tester"], capture_output=True, text=True, timeout=10).stdout
        candidates += [Path(line).parent for line in listed.splitlines() if line.endswith("/g711a.pcap")]
    found = next((d for d in candidates if all((d / name).is_file() for name in SIPP_PCAPS)), None)
    return Path(need(str(found) if found else None, "sipp's pcap/g711a.pcap (package sip-tester)"))


# the call
def _record_sipp_call(tools: dict[str, str], pcap_dir: Path, work: Path, capture: Path) -> None:
    """Capture one uac_pcap -> uas call on lo into ``capture``, every process bounded and stopped."""
    base = free_udp_block(PORTS, 20000, 29000)
    uas_sip, uac_sip, uas_media, uac_media = base, base + 2, base + 4, base + 8
    # sipp's uac_pcap scenario plays pcap/<name> relative to its working directory
    (work / "pcap").mkdir()
    for name in SIPP_PCAPS:
        (work / "pcap" / name).symlink_to(pcap_dir / name)
    sipp = [tools["sipp"], "-i", "127.0.0.1", "-mi", "127.0.0.1", "-m", "1", "-nostdin", "-trace_err",
            "-timeout", f"{TIMEOUT_S}s"]
    tshark_log = (work / "tshark.log").open("w")
    uas_log = (work / "uas.log").open("w")
    tshark = uas = None
    try:
        tshark = subprocess.Popen(
            [tools["tshark"], "-i", "lo", "-w", str(capture), "-f",
             f"udp and host 127.0.0.1 and portrange {base}-{base + PORTS - 1}"],
            stdin=subprocess.DEVNULL, stdout=tshark_log, stderr=tshark_log, cwd=work,
        )
        _wait_capturing(tshark, work / "tshark.log", capture)
        uas = subprocess.Popen(
            [*sipp, "-sn", "uas", "-p", str(uas_sip), "-mp", str(uas_media)],
            stdin=subprocess.DEVNULL, stdout=uas_log, stderr=uas_log, cwd=work,
        )
        _wait_bound(uas, uas_sip, work / "uas.log")
        uac = subprocess.run(
            [*sipp, "-sn", "uac_pcap", "-p", str(uac_sip), "-mp", str(uac_media), f"127.0.0.1:{uas_sip}"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=work, timeout=TIMEOUT_S,
        )
        assert uac.returncode == 0, f"sipp uac_pcap exited {uac.returncode}: {uac.stdout[-2000:]}{uac.stderr}"
        time.sleep(0.5)  # let dumpcap read the last packets (200 OK to BYE) before it is stopped
    finally:
        for proc in (uas, tshark):
            if proc is not None:
                _stop(proc)
        tshark_log.close()
        uas_log.close()
    assert tshark.returncode == 0, f"tshark exited {tshark.returncode}: {(work / 'tshark.log').read_text()}"


def _wait_capturing(proc: subprocess.Popen[Any], log: Path, capture: Path) -> None:
    """Return once tshark says it captures and the file has its header; fail if it exits or hangs."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"tshark exited {proc.returncode}: {log.read_text()}")
        if "Capturing on" in log.read_text() and capture.exists() and capture.stat().st_size >= 24:
            return
        time.sleep(0.05)
    raise AssertionError(f"tshark did not start capturing within 10 s: {log.read_text()}")


def _wait_bound(proc: subprocess.Popen[Any], port: int, log: Path) -> None:
    """Return once sipp's uas holds its SIP port (binding it ourselves then fails)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sipp uas exited {proc.returncode}: {log.read_text()}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.05)
    raise AssertionError(f"sipp uas did not bind 127.0.0.1:{port} within 10 s: {log.read_text()}")


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# the oracles
def _sipp_reference(path: Path) -> tuple[int, np.ndarray]:
    """The SSRC of sipp's g711a.pcap and its payloads in sequence order, decoded by ffmpeg."""
    packets: list[tuple[int, bytes]] = []
    ssrcs = set()
    with path.open("rb") as f:
        for _ts, frame in dpkt.pcap.Reader(f):
            udp = dpkt.ethernet.Ethernet(frame).data.data
            data = bytes(udp.data)
            seq, _rtp_ts, ssrc = struct.unpack_from("!HII", data, 2)
            assert data[1] & 0x7F == 8 and data[0] & 0x3F == 0, "g711a.pcap should hold plain PCMA RTP"
            packets.append((seq, data[12:]))
            ssrcs.add(ssrc)
    assert len(ssrcs) == 1, f"g711a.pcap holds {len(ssrcs)} SSRCs"
    packets.sort()  # sipp's file does not wrap its sequence numbers
    alaw = b"".join(payload for _seq, payload in packets)
    pcm = subprocess.run(
        [need(FFMPEG, "ffmpeg"), "-v", "error", "-f", "alaw", "-ar", str(RATE), "-ac", "1", "-i", "-",
         "-f", "s16le", "-"],
        input=alaw, capture_output=True, check=True, timeout=TIMEOUT_S,
    ).stdout
    return ssrcs.pop(), np.frombuffer(pcm, np.int16)


def _tshark(tshark: str, *args: str) -> str:
    # SIP on unusual ports is found by tshark's SIP heuristics; heuristic RTP finds media whatever the SDP
    proc = subprocess.run(
        [tshark, "-o", "rtp.heuristic_rtp:TRUE", *args],
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, f"tshark {' '.join(args)} failed ({proc.returncode}): {proc.stderr}"
    return proc.stdout


def _tshark_fields(tshark: str, capture: Path, display_filter: str, *fields: str) -> list[str]:
    args = ["-r", str(capture), "-Y", display_filter, "-T", "fields", "-E", "separator=;"]
    for field in fields:
        args += ["-e", field]
    return [line for line in _tshark(tshark, *args).splitlines() if line]


def _rtp_packets(tshark: str, capture: Path) -> list[tuple[float, bytes]]:
    """(arrival, RTP bytes) of every RTP packet of the capture, in capture order."""
    out = []
    for line in _tshark_fields(tshark, capture, "rtp", "frame.time_epoch", "udp.payload"):
        arrival, payload = line.split(";")
        out.append((float(arrival), bytes.fromhex(payload.replace(":", ""))))
    return out


def _seen_streams(tshark: str, capture: Path) -> dict[int, SeenStream]:
    """Per SSRC, packets, losses and duplicates from the sequence numbers, and the first arrival."""
    by_ssrc: dict[int, list[tuple[float, int]]] = {}
    for arrival, data in _rtp_packets(tshark, capture):
        seq, _ts, ssrc = struct.unpack_from("!HII", data, 2)
        by_ssrc.setdefault(ssrc, []).append((arrival, seq))
    out = {}
    for ssrc, rows in by_ssrc.items():
        ext: list[int] = []
        for _arrival, seq in rows:  # unwrap 16-bit sequence numbers against the previous one
            ext.append(seq if not ext else ext[-1] + ((seq - ext[-1] + 0x8000) & 0xFFFF) - 0x8000)
        distinct = len(set(ext))
        out[ssrc] = SeenStream(
            packets=len(rows), lost=max(ext) - min(ext) + 1 - distinct, duplicates=len(rows) - distinct,
            first_arrival=min(a for a, _seq in rows),
        )
    return out


_ROW = re.compile(
    r"^\s*[\d.]+\s+[\d.]+\s+\S+\s+\d+\s+\S+\s+\d+\s+0x(?P<ssrc>[0-9A-Fa-f]+)\s+(?P<payload>.+?)\s+"
    r"(?P<packets>\d+)\s+(?P<lost>-?\d+)\s+\(\s*-?[\d.]+%\)\s+(?:-?[\d.]+\s+){4}"
    r"(?P<mean_jitter>-?[\d.]+)\s+(?P<max_jitter>-?[\d.]+)"
)


def _tshark_rtp_streams(tshark: str, capture: Path) -> dict[int, TsharkStream]:
    text = _tshark(tshark, "-r", str(capture), "-q", "-z", "rtp,streams")
    out = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m:
            ssrc = int(m["ssrc"], 16)
            out[ssrc] = TsharkStream(
                ssrc=ssrc, payload=m["payload"], packets=int(m["packets"]), lost=int(m["lost"]),
                mean_jitter_ms=float(m["mean_jitter"]), max_jitter_ms=float(m["max_jitter"]),
            )
    assert out, f"no stream in tshark's rtp,streams table:\n{text}"
    return out
