"""Crash recovery: ``callrec record`` killed with SIGKILL during three live calls, then started again.

Every tape must come back closed, marked interrupted, and mix into a recording that holds what was
sent up to the last second before the kill (tapes are flushed at least once a second). The restarted
recorder, run with ``--mix``, mixes the recovered tapes by itself too.
"""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.support.audio import FFMPEG, decode, mix_json, need, xcorr
from tests.support.recorder_proc import RecorderProcess, read_call

pytestmark = pytest.mark.slow  # real recorder processes killed and restarted

RATE = 8000
FRAME = 160  # 20 ms of G.711
CALLS = 3
SEND_BEFORE_KILL_S = 3.0
FLUSH_S = 1.0  # the recorder's promise: at most this much is lost by a crash
MAX_LAG = int(0.020 * RATE)

INVITE = """INVITE sip:srs@127.0.0.1:{port} SIP/2.0\r
Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{branch};rport\r
From: <sip:src@127.0.0.1:{lport}>;tag={tag}\r
To: <sip:srs@127.0.0.1:{port}>\r
Call-ID: {call_id}\r
CSeq: 1 INVITE\r
Contact: <sip:src@127.0.0.1:{lport}>;+sip.src\r
Max-Forwards: 70\r
Require: siprec\r
Content-Type: multipart/mixed;boundary=b1\r
Content-Length: {length}\r
\r
"""
BODY = """--b1\r
Content-Type: application/sdp\r
\r
v=0\r
o=src 1 1 IN IP4 127.0.0.1\r
s=-\r
c=IN IP4 127.0.0.1\r
t=0 0\r
m=audio 9 RTP/AVP 0\r
a=label:1\r
a=sendonly\r
m=audio 9 RTP/AVP 0\r
a=label:2\r
a=sendonly\r
\r
--b1\r
Content-Type: application/rs-metadata+xml\r
\r
<?xml version="1.0"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
 <participant participant_id="p1"><nameID aor="sip:100@pbx"/></participant>
 <participant participant_id="p2"><nameID aor="sip:200@pbx"/></participant>
 <stream stream_id="s1"><label>1</label></stream>
 <stream stream_id="s2"><label>2</label></stream>
 <participantstreamassoc participant_id="p1"><send>s1</send></participantstreamassoc>
 <participantstreamassoc participant_id="p2"><send>s2</send></participantstreamassoc>
</recording>\r
--b1--\r
"""


def _open_call(sip: socket.socket, port: int, call_id: str) -> list[int]:
    """INVITE, 200 OK, ACK; returns the two answered RTP ports."""
    lport = sip.getsockname()[1]
    tag, branch = uuid.uuid4().hex[:8], uuid.uuid4().hex[:10]
    head = INVITE.format(port=port, lport=lport, branch=branch, tag=tag, call_id=call_id, length=len(BODY))
    sip.sendto((head + BODY).encode(), ("127.0.0.1", port))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = sip.recv(65535).decode()
        if data.startswith("SIP/2.0 200") and call_id in data:
            break
    else:
        raise AssertionError(f"no 200 OK for {call_id}")
    to = re.search(r"^To: (.*)$", data, re.MULTILINE | re.IGNORECASE)
    assert to is not None
    ack = (
        f"ACK sip:srs@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{branch}a\r\n"
        f"From: <sip:src@127.0.0.1:{lport}>;tag={tag}\r\nTo: {to.group(1).strip()}\r\nCall-ID: {call_id}\r\n"
        f"CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    sip.sendto(ack.encode(), ("127.0.0.1", port))
    return [int(p) for p in re.findall(r"^m=audio (\d+)", data, re.MULTILINE)]


class Sender(threading.Thread):
    """Sends every stream of every call in real time, noting when each packet left."""

    def __init__(self, targets: list[int], payload: bytes) -> None:
        super().__init__(daemon=True)
        self.targets = targets
        self.payload = payload
        self.sent_at: list[float] = []  # per packet index, the time all streams' packet went out
        self.stop = threading.Event()

    def run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        start = time.monotonic()
        for n in range(len(self.payload) // FRAME):
            if self.stop.is_set():
                break
            delay = start + n * FRAME / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            frame = self.payload[n * FRAME : (n + 1) * FRAME]
            for i, port in enumerate(self.targets):
                header = struct.pack("!BBHII", 0x80, 0, n, n * FRAME, 0x1000 + i)
                sock.sendto(header + frame, ("127.0.0.1", port))
            self.sent_at.append(time.time())
        sock.close()


def _noise(work: Path) -> tuple[bytes, np.ndarray]:
    ffmpeg = need(FFMPEG, "ffmpeg")
    ulaw = subprocess.run(
        [ffmpeg, "-v", "error", "-f", "lavfi", "-i", "anoisesrc=color=pink:seed=3:amplitude=0.3:d=20",
         "-ar", str(RATE), "-ac", "1", "-f", "mulaw", "-"],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    pcm = subprocess.run(
        [ffmpeg, "-v", "error", "-f", "mulaw", "-ar", str(RATE), "-ac", "1", "-i", "-", "-f", "s16le", "-"],
        input=ulaw, check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    return ulaw, np.frombuffer(pcm, np.int16)


def test_kill_9_during_three_calls_then_restart_recovers_every_tape(tmp_path: Path) -> None:
    ulaw, noise = _noise(tmp_path)
    data = tmp_path / "data"
    first = RecorderProcess(data).start()
    call_ids = [f"crash-{i}-{uuid.uuid4().hex[:6]}" for i in range(CALLS)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sip:
        sip.bind(("127.0.0.1", 0))
        sip.settimeout(10)
        ports = [_open_call(sip, first.sip_port, c) for c in call_ids]
    assert all(len(p) == 2 for p in ports), ports
    sender = Sender([p for pair in ports for p in pair], ulaw)
    sender.start()
    time.sleep(SEND_BEFORE_KILL_S)
    killed_at = time.time()
    first.kill()
    time.sleep(0.3)
    sender.stop.set()
    sender.join(timeout=10)
    # what the tapes must hold at least: every packet sent a full flush interval before the kill
    must_have = sum(1 for t in sender.sent_at if t < killed_at - FLUSH_S)
    assert must_have >= int((SEND_BEFORE_KILL_S - FLUSH_S - 0.5) * RATE / FRAME), sender.sent_at[:3]

    # before the restart the tapes are still marked open, and nothing says they ended
    tapes = first.tapes()
    assert len(tapes) == CALLS, tapes
    assert all(not read_call(t)["closed_cleanly"] and read_call(t)["ended_at"] is None for t in tapes)

    with RecorderProcess(data, "--mix") as second:
        assert "left open by a recorder that died" in _wait_for(second, "left open by a recorder that died")
        recordings = _wait_recordings(data / "recordings", CALLS)
        assert second.stop() == 0

    assert not list((data / "tapes" / ".open").iterdir()), "recovered tapes must not stay marked open"
    for tape in tapes:
        info = read_call(tape)
        assert info["interrupted"] and not info["closed_cleanly"] and info["end_reason"] == "crash", info
        assert info["ended_at"] is not None and info["ended_at"] <= killed_at + 1, info
        [result] = mix_json(str(tape), "-o", str(tmp_path / f"{tape.name}.wav"))
        by_party = {s["party"]: s for s in result["streams"]}
        for party in ("A", "B"):
            assert by_party[party]["packets"] >= must_have, (party, by_party[party], must_have)
            assert by_party[party]["lost"] == 0, by_party[party]
        audio = decode(tmp_path / f"{tape.name}.wav")
        kept = must_have * FRAME
        for channel in (0, 1):
            lag, peak = xcorr(audio[:kept, channel], noise[:kept], MAX_LAG)
            assert abs(lag) <= MAX_LAG and peak > 0.99, (tape.name, channel, lag, peak)
    for mp3 in recordings:
        assert decode(mp3).shape[0] >= must_have * FRAME * 0.95, mp3


def _wait_for(recorder: RecorderProcess, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = recorder.log()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the recorder's log: {recorder.log()}")


def _wait_recordings(folder: Path, count: int, timeout: float = 60) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # the mixer writes into a hidden staging folder and renames the finished file out of it
        found = (
            sorted(
                f
                for f in folder.rglob("*.mp3")
                if not any(part.startswith(".") for part in f.relative_to(folder).parts)
            )
            if folder.exists()
            else []
        )
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{count} recordings expected in {folder}, found {found}")
