"""``callrec mix`` on SRTP: captures whose SDP offers RTP/SAVP with SDES ``a=crypto`` and whose RTP libsrtp
protected (pylibsrtp, tests/support/srtp_calls.py), and tapes holding the SRC's keys sealed.

The oracle is the plain-RTP version of the same call mixed by the same code: the SRTP one must give the
same samples. A wrong or missing key must give that channel silence and a reason; keys never show.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from callrec.files import tape
from callrec.media.srtp_keys import SealedKeysError
from callrec.media_limits import OutputOptions
from callrec.mix import mix
from callrec.mix.run import NO_BOX
from callrec.mix.srtp import SrtpStream
from callrec.secretbox import SecretBox, new_key
from callrec.wire.dialogs import DialogTracker
from callrec.wire.sdes import CryptoAttribute, KeyParam
from tests.support import srtp_calls, synth

SUITES = ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32", "AEAD_AES_128_GCM"]
WAV = OutputOptions("wav", "pcm", 16, 8000)
SECONDS = 3.0


def keys_for(suite: str) -> dict[str, bytes]:
    n = srtp_calls.KEY_LENGTHS[suite]
    return {"A": secrets.token_bytes(n), "B": secrets.token_bytes(n)}


def samples(path: Path) -> np.ndarray:
    """The int16 frames of a WAV callrec wrote (any fmt chunk: the data chunk is found by name)."""
    data = path.read_bytes()
    pos = 12
    while pos + 8 <= len(data):
        name, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if name == b"data":
            return np.frombuffer(data[pos + 8 : pos + 8 + size], np.int16).reshape(-1, 2)
        pos += 8 + size + (size & 1)
    raise AssertionError(f"{path} has no data chunk")


def mixed(tmp: Path, name: str, datagrams: list[srtp_calls.Datagram]) -> tuple[np.ndarray, object]:
    capture = synth.write_pcap(tmp / f"{name}.pcap", datagrams)
    report = mix(capture, tmp / f"{name}.wav", WAV)
    assert len(report.calls) == 1
    return samples(tmp / f"{name}.wav"), report.calls[0]


@pytest.fixture(scope="module")
def call() -> synth.Built:
    return synth.build(synth.Scenario(call_id="srtp-1@test", duration=SECONDS, seed=3))


@pytest.mark.parametrize("suite", SUITES)
def test_srtp_capture_mixes_to_the_same_samples_as_plain_rtp(tmp_path: Path, call: synth.Built, suite: str) -> None:
    keys = keys_for(suite)
    plain, plain_call = mixed(tmp_path, "plain", call.datagrams)
    audio, out = mixed(tmp_path, "srtp", srtp_calls.make_srtp(call.datagrams, suite, keys))
    assert np.abs(plain).max() > 1000  # there is voice to compare
    assert np.array_equal(audio, plain)
    assert out.warnings == [] and out.reasons == []  # type: ignore[attr-defined]
    for stream, plain_stream in zip(out.streams, plain_call.streams, strict=True):  # type: ignore[attr-defined]
        assert stream["packets"] == plain_stream["packets"] > 0
        assert stream["srtp_auth_failures"] == stream["srtp_replayed"] == stream["srtp_undecryptable"] == 0
    assert all("srtp_auth_failures" not in s for s in plain_call.streams)  # type: ignore[attr-defined]


@pytest.mark.parametrize("suite", SUITES)
def test_a_wrong_key_gives_silence_on_that_channel_and_the_reason(
    tmp_path: Path, call: synth.Built, suite: str
) -> None:
    keys = keys_for(suite)
    wrong = {"A": secrets.token_bytes(len(keys["A"])), "B": keys["B"]}
    plain, _ = mixed(tmp_path, "plain", call.datagrams)
    audio, out = mixed(tmp_path, "wrong", srtp_calls.make_srtp(call.datagrams, suite, keys, wrong))
    assert not audio[:, 0].any()  # the caller's channel: silence, not noise
    assert np.array_equal(audio[:, 1], plain[:, 1])  # the callee's is untouched
    reason = "stream 1 (from A): SRTP authentication failed for every packet: wrong key; its audio is silence"
    assert out.reasons == [reason]  # type: ignore[attr-defined]
    assert reason in out.warnings  # type: ignore[attr-defined]
    sent = sum(1 for d in call.media if d[1] == synth.A_IP)
    a_stream = next(s for s in out.streams if s["party"] == "A")  # type: ignore[attr-defined]
    assert a_stream["srtp_auth_failures"] == sent and a_stream["packets"] == 0


def test_a_missing_key_gives_silence_and_says_so(tmp_path: Path, call: synth.Built) -> None:
    suite = SUITES[0]
    keys = keys_for(suite)
    # the caller's SDP says RTP/SAVP but carries no a=crypto (DTLS-SRTP, or keys a capture did not see)
    audio, out = mixed(
        tmp_path, "nokey", srtp_calls.make_srtp(call.datagrams, suite, keys, {"A": None, "B": keys["B"]})
    )
    assert not audio[:, 0].any() and audio[:, 1].any()
    assert out.reasons == ["stream 1 (from A) is SRTP and its key is missing: its audio is silence"]  # type: ignore[attr-defined]
    a_stream = next(s for s in out.streams if s["party"] == "A")  # type: ignore[attr-defined]
    assert a_stream["srtp_undecryptable"] > 0 and a_stream["srtp_auth_failures"] == 0


def test_a_re_invite_with_a_new_key_keeps_the_audio(tmp_path: Path, call: synth.Built) -> None:
    """The caller re-keys halfway (a re-INVITE with a new a=crypto): both halves decrypt, nothing is lost."""
    suite = SUITES[0]
    first, second = keys_for(suite), keys_for(suite)
    half = call.t0 + SECONDS / 2
    before = srtp_calls.make_srtp([d for d in call.datagrams if d[0] < half], suite, first)
    after = srtp_calls.make_srtp([d for d in call.datagrams if d[0] >= half and d[2] != 5060], suite,
                                 {"A": second["A"], "B": first["B"]})  # fmt: skip
    after += [d for d in srtp_calls.make_srtp(call.datagrams, suite, first) if d[0] >= half and d[2] == 5060]
    offer = synth.sdp(synth.A_IP, 20000, ["PCMA"]).replace(b" RTP/AVP ", b" RTP/SAVP ")
    offer += (srtp_calls.crypto_line(suite, second["A"]) + "\r\n").encode()
    answer = synth.sdp(synth.B_IP, 30000, ["PCMA"]).replace(b" RTP/AVP ", b" RTP/SAVP ")
    answer += (srtp_calls.crypto_line(suite, first["B"]) + "\r\n").encode()
    reinvite = [
        (half - 0.01, synth.A_IP, 5060, synth.B_IP, 5060,
         synth.sip(f"INVITE sip:200@{synth.B_IP} SIP/2.0", call_id="srtp-1@test", cseq="2 INVITE", body=offer,
                   to_tag="xyz")),
        (half - 0.005, synth.B_IP, 5060, synth.A_IP, 5060,
         synth.sip("SIP/2.0 200 OK", call_id="srtp-1@test", cseq="2 INVITE", body=answer, to_tag="xyz")),
    ]  # fmt: skip
    datagrams = sorted(before + reinvite + after, key=lambda d: d[0])
    plain, _ = mixed(tmp_path, "plain", call.datagrams)
    audio, out = mixed(tmp_path, "rekeyed", datagrams)
    assert np.array_equal(audio, plain)
    assert out.reasons == []  # type: ignore[attr-defined]
    for stream in out.streams:  # type: ignore[attr-defined]
        assert stream["srtp_auth_failures"] == stream["srtp_undecryptable"] == 0


def test_the_offerers_key_decrypts_what_the_offerer_sends() -> None:
    """RFC 4568: each side's a=crypto is the key it sends with; the stream sent to the answerer is the offerer's."""
    suite = SUITES[0]
    keys = keys_for(suite)
    built = synth.build(synth.Scenario(call_id="keys@test", duration=0.2))
    tracker = DialogTracker()
    for _ts, _src, sport, _dst, _dport, payload in srtp_calls.make_srtp(built.datagrams, suite, keys):
        if sport == 5060:
            tracker.feed(0.0, payload)
    by_party = {b.stream.party: b for b in tracker.bindings.values()}
    assert by_party["A"].srtp and by_party["B"].srtp
    assert [k.key.key_salt for k in by_party["A"].sdes_keys()] == [keys["A"]]
    assert [k.key.key_salt for k in by_party["B"].sdes_keys()] == [keys["B"]]


def test_counters_tell_replays_from_failures() -> None:
    from pylibsrtp import Policy, Session

    suite = SUITES[0]
    key = keys_for(suite)["A"]
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=srtp_calls.PROFILES[suite]))
    stream = SrtpStream([CryptoAttribute(1, suite, (KeyParam(key),))])
    packet, later = (tx.protect(struct.pack("!BBHII", 0x80, 8, seq, 160, 0x1234) + bytes(160)) for seq in (7, 8))
    assert stream.unprotect(packet, 0x1234) is not None
    assert stream.unprotect(packet, 0x1234) is None  # the same packet again: replayed
    assert stream.unprotect(later[:-1] + bytes([later[-1] ^ 1]), 0x1234) is None  # a bit flipped
    assert stream.unprotect(later, 0x1234) is not None
    assert stream.counters(0x1234) == {"srtp_auth_failures": 1, "srtp_replayed": 1, "srtp_undecryptable": 0}
    assert key.hex() not in repr(stream) and base64.b64encode(key).decode() not in repr(stream)


@pytest.mark.parametrize("suite", SUITES)
def test_a_tape_with_sealed_keys_mixes_with_the_services_box(tmp_path: Path, call: synth.Built, suite: str) -> None:
    box, keys = SecretBox(new_key()), keys_for(suite)
    plain_tape = srtp_calls.srtp_tape(tmp_path / "plain", call, suite, keys, None)
    sealed_tape = srtp_calls.srtp_tape(tmp_path / "sealed", call, suite, keys, box)
    assert not any(k.hex() in (sealed_tape / tape.META_FILE).read_text() for k in keys.values())
    mix(plain_tape, tmp_path / "plain.wav", WAV)
    report = mix(sealed_tape, tmp_path / "sealed.wav", WAV, box=box)
    assert np.array_equal(samples(tmp_path / "sealed.wav"), samples(tmp_path / "plain.wav"))
    assert report.calls[0].reasons == []
    with pytest.raises(SealedKeysError, match="cannot be opened with this service's secret"):
        mix(sealed_tape, tmp_path / "other.wav", WAV, box=SecretBox(new_key()))
    with pytest.raises(SealedKeysError, match=NO_BOX):
        mix(sealed_tape, tmp_path / "none.wav", WAV)
    assert not (tmp_path / "other.wav").exists() and not (tmp_path / "none.wav").exists()


def callrec(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("CALLREC_DATA", "CALLREC_SECRET_KEY")}
    clean["PYTHONPATH"] = os.pathsep.join(sys.path)
    return subprocess.run([sys.executable, "-m", "callrec.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**clean, **(env or {})})  # fmt: skip


@pytest.mark.slow  # the command line, three processes
def test_the_command_line_finds_the_services_secret_and_shows_no_key(tmp_path: Path, call: synth.Built) -> None:
    suite = SUITES[0]
    data = tmp_path / "service-data"  # not ./data, which the command reads when no --data is given
    data.mkdir()
    secret = new_key()
    (data / "secret.key").write_text(secret + "\n")
    keys = keys_for(suite)
    sealed = srtp_calls.srtp_tape(tmp_path / "tape", call, suite, keys, SecretBox(secret))
    shown = [k.hex() for k in keys.values()] + [base64.b64encode(k).decode() for k in keys.values()]

    refused = callrec("mix", str(sealed), "-o", str(tmp_path / "x.wav"), cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "SRTP keys are sealed" in refused.stderr and "--data" in refused.stderr

    other = callrec("mix", str(sealed), "-o", str(tmp_path / "y.wav"), cwd=tmp_path,
                    env={"CALLREC_SECRET_KEY": new_key()})  # fmt: skip
    assert other.returncode == 2 and other.stderr.count("\n") == 1
    assert "cannot be opened with this service's secret" in other.stderr
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "y.wav").exists()

    done = callrec("mix", str(sealed), "-o", str(tmp_path / "ok.wav"), "--data", str(data), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [line] = [json.loads(x) for x in done.stdout.splitlines()]
    assert {s["srtp_auth_failures"] for s in line["streams"]} == {0} and len(line["streams"]) == 2

    wrong = {"A": secrets.token_bytes(30), "B": keys["B"]}
    capture = synth.write_pcap(tmp_path / "wrong.pcap", srtp_calls.make_srtp(call.datagrams, suite, keys, wrong))
    bad = callrec("mix", str(capture), "-o", str(tmp_path / "out"), "--json", cwd=tmp_path)
    assert bad.returncode == 0, bad.stderr
    assert "SRTP authentication failed for every packet: wrong key" in bad.stderr
    [line] = [json.loads(x) for x in bad.stdout.splitlines()]
    assert max(s["srtp_auth_failures"] for s in line["streams"]) > 0
    for proc in (refused, other, done, bad):
        assert not any(k in proc.stdout + proc.stderr for k in shown)


def test_srtp_beside_plain_rtp_gives_the_same_files_with_and_without_the_lane(
    tmp_path: Path, call: synth.Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SRTP call takes the per-packet path while a plain call in the same capture keeps the vectorised
    lane: both give what the per-packet path alone gives, to the last bit."""
    import callrec.mix.demux as demux

    suite = SUITES[2]
    plain_call = synth.build(synth.Scenario(call_id="plain-2@test", duration=SECONDS, seed=5, a_port=22000,
                                            b_port=32000))  # fmt: skip
    datagrams = sorted(srtp_calls.make_srtp(call.datagrams, suite, keys_for(suite)) + plain_call.datagrams,
                       key=lambda d: d[0])  # fmt: skip
    capture = synth.write_pcap(tmp_path / "both.pcap", datagrams)
    outputs = {}
    for lane in (True, False):
        monkeypatch.setattr(demux, "VECTOR_LANE", lane)
        report = mix(capture, tmp_path / f"lane-{lane}", WAV)
        assert sorted(c.call_id for c in report.calls) == ["plain-2@test", "srtp-1@test"]
        assert all(c.warnings == [] for c in report.calls)
        outputs[lane] = {c.call_id: samples(c.output) for c in report.calls if c.output is not None}
    for call_id in ("plain-2@test", "srtp-1@test"):
        assert np.array_equal(outputs[True][call_id], outputs[False][call_id])
        assert outputs[True][call_id].any()
