"""Bad input: a one-line error and a non-zero exit, never a traceback; a cut capture still yields its calls."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import synth
from tests.support.audio import callrec, decode, need

pytestmark = pytest.mark.slow  # callrec mix processes


def assert_one_line_error(proc: object, contains: str) -> None:
    assert proc.returncode != 0  # type: ignore[attr-defined]
    err = proc.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("callrec: error: ")
    assert contains in err


def test_garbage_file(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pcap"
    bad.write_bytes(os.urandom(5000))
    out = tmp_path / "out"
    proc = callrec("mix", str(bad), "-o", str(out), check=False)
    assert_one_line_error(proc, "not a pcap or pcapng capture")
    assert not out.exists() or not list(out.iterdir())


def test_text_file(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("INVITE sip:bob@example.com SIP/2.0\r\nthis is not a capture\r\n")
    assert_one_line_error(callrec("mix", str(bad), check=False), "not a pcap or pcapng capture")


def test_empty_file(tmp_path: Path) -> None:
    bad = tmp_path / "empty.pcap"
    bad.write_bytes(b"")
    assert_one_line_error(callrec("mix", str(bad), check=False), "not a pcap or pcapng capture")


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(callrec("mix", str(tmp_path / "nope.pcap"), check=False), "no such file")


def test_capture_without_calls(tmp_path: Path) -> None:
    # only media, no SIP: nothing can be attributed to a call
    built = synth.build(synth.Scenario(duration=2.0))
    pcap = synth.write_pcap(tmp_path / "media-only.pcap", built.media)
    assert_one_line_error(
        callrec("mix", str(pcap), "-o", str(tmp_path), check=False), "no call with media found"
    )


def test_bad_options(tmp_path: Path) -> None:
    pcap = Path(__file__).parents[2] / "samples" / "sample-call.pcap"
    assert_one_line_error(callrec("mix", str(pcap), "--bitrate", "17", check=False), "--bitrate")
    assert_one_line_error(callrec("mix", str(pcap), "--rate", "44100", check=False), "--rate")
    assert_one_line_error(callrec("mix", str(pcap), "--codec", "alaw", check=False), "--codec")


def test_unwritable_output(tmp_path: Path) -> None:
    pcap = Path(__file__).parents[2] / "samples" / "sample-call.pcap"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(callrec("mix", str(pcap), "-o", str(blocker / "sub"), check=False), "cannot create")


def test_broken_tape(tmp_path: Path) -> None:
    tape = tmp_path / "tape"
    tape.mkdir()
    (tape / "media.pcap").write_bytes(b"")
    (tape / "call.json").write_text("{not json")
    assert_one_line_error(callrec("mix", str(tape), check=False), "call.json")


def test_truncated_capture_still_yields_its_calls(tmp_path: Path) -> None:
    need(synth.FFMPEG, "ffmpeg")
    built = synth.build(synth.Scenario(duration=6.0))
    pcap = synth.write_pcap(tmp_path / "call.pcap", built.datagrams)
    data = pcap.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 2 // 3 + 7])  # in the middle of a packet
    out = tmp_path / "cut.wav"
    proc = callrec("mix", str(cut), "-o", str(out), "--format", "wav")
    assert proc.returncode == 0
    assert "truncated" in proc.stderr and "Traceback" not in proc.stderr
    audio = decode(out)
    # about two thirds of the call made it into the file
    assert len(audio) / 8000 == pytest.approx(built.duration * 2 / 3, abs=0.5)


@pytest.mark.parametrize("tail", [b"\x81\xc9\x00\x01\x00\x00\x00\x01", b""], ids=["8-byte-rtcp-rr", "empty-udp"])
def test_a_short_datagram_last_in_the_capture_is_no_internal_error(tmp_path: Path, tail: bytes) -> None:
    # the vectorised reader reads each datagram's RTP header fields at once: the capture's last datagram
    # being shorter than an RTP header (an RTCP receiver report with no blocks, an empty datagram) must not
    # read past the end of the file's chunk (it was an IndexError)
    built = synth.build(synth.Scenario(call_id="short-tail@test", duration=3.0))
    last = built.datagrams[-1][0]
    datagrams = [*built.datagrams, (last + 0.01, synth.A_IP, 20001, synth.B_IP, 30001, tail)]
    pcap = synth.write_pcap(tmp_path / "short-tail.pcap", datagrams)
    proc = callrec("mix", str(pcap), "-o", str(tmp_path / "out.wav"), "--format", "wav", check=False)
    assert proc.returncode == 0, proc.stderr
    audio = decode(tmp_path / "out.wav")
    assert audio.shape[1] == 2 and len(audio) >= 2.5 * synth.RATE
