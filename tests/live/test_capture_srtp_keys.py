"""A passive capture never writes an SDES key in clear: the tape's SIP holds each ``a=crypto`` key as ``*``
of its length, the keys are sealed in call.json with the service's box, and ``callrec mix`` with that box
gives the audio the capture itself mixes to (another box, or none: the sealed keys' refusal). Needs no root.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import stat
import struct
from pathlib import Path

import dpkt
import numpy as np
import pytest

from callrec.files import tape
from callrec.live.tracker import LiveTracker, TrackerSettings
from callrec.media.srtp_keys import SealedKeysError
from callrec.media_limits import OutputOptions
from callrec.mix.run import NO_BOX, mix
from callrec.recorder.srtp import KEY_FILE, SrtpKeys
from callrec.secretbox import SecretBox, load_or_create_key, new_key
from callrec.wire.netparse import Datagram
from callrec.wire.sdes_redact import redact_crypto, redacted_tags
from tests.support import srtp_calls, synth

SUITES = ["AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM"]
WAV = OutputOptions("wav", "pcm", 16, 8000)


@pytest.fixture(scope="module")
def call() -> synth.Built:
    return synth.build(synth.Scenario(call_id="srtp-live@test", duration=3.0, seed=5))


def keys_for(suite: str) -> dict[str, bytes]:
    n = srtp_calls.KEY_LENGTHS[suite]
    return {"A": secrets.token_bytes(n), "B": secrets.token_bytes(n)}


def capture_tape(tmp: Path, datagrams: list[srtp_calls.Datagram], keys: SrtpKeys | None) -> Path:
    """The tape the live tracker writes for ``datagrams`` fed as the ring's decoder gives them."""
    opened: list[Path] = []
    tracker = LiveTracker(TrackerSettings(tapes_dir=tmp / "tapes"), on_closed=opened.append, keys=keys)
    for ts, src, sport, dst, dport, payload in datagrams:
        tracker.datagram(Datagram(ts, 17, socket.inet_aton(src), sport, socket.inet_aton(dst), dport, payload))
    tracker.close_all()
    [folder] = opened
    return folder


def wav(path: Path) -> bytes:
    return path.read_bytes()


def samples(path: Path) -> np.ndarray:
    """The int16 samples of a WAV callrec wrote (the data chunk found by name)."""
    data = path.read_bytes()
    pos = 12
    while pos + 8 <= len(data):
        name, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if name == b"data":
            return np.frombuffer(data[pos + 8 : pos + 8 + size], np.int16)
        pos += 8 + size + (size & 1)
    raise AssertionError(f"{path} has no data chunk")


def tape_sip(folder: Path) -> list[bytes]:
    with (folder / tape.MEDIA_FILE).open("rb") as f:
        return [bytes(ip.data.data) for _, frame in dpkt.pcap.Reader(f) for ip in [dpkt.ip.IP(frame)]
                if ip.data.sport == 5060]  # fmt: skip


def clear_forms(key: bytes) -> list[bytes]:
    b64 = base64.b64encode(key)
    return [b64, b64.rstrip(b"="), base64.urlsafe_b64encode(key).rstrip(b"="), key.hex().encode(),
            key.hex().upper().encode(), key]  # fmt: skip


@pytest.mark.parametrize("suite", SUITES)
def test_the_tape_holds_no_key_in_clear_and_mixes_as_the_capture(
    tmp_path: Path, call: synth.Built, suite: str
) -> None:
    keys = keys_for(suite)
    box = SecretBox(new_key())
    datagrams = srtp_calls.make_srtp(call.datagrams, suite, keys)
    folder = capture_tape(tmp_path, datagrams, SrtpKeys(tmp_path, box))
    on_tape = (folder / tape.MEDIA_FILE).read_bytes() + (folder / tape.META_FILE).read_bytes()
    for party, key in keys.items():
        for form in clear_forms(key):
            assert form not in on_tape, f"{party}'s key is on the tape in clear"
    # every SIP message is there, the same length, each key replaced by as many '*'
    sent = [d[5] for d in datagrams if d[2] == 5060]
    got = tape_sip(folder)
    assert [len(m) for m in got] == [len(m) for m in sent]
    crypto = [m for m in got if b"a=crypto:" in m]
    assert len(crypto) == 2
    for party, message in zip("AB", crypto, strict=True):
        stars = b"*" * len(base64.b64encode(keys[party]))
        assert b"a=crypto:1 " + suite.encode() + b" inline:" + stars + b"\r\n" in message
    assert [m for m in got if b"a=crypto:" not in m] == [m for m in sent if b"a=crypto:" not in m]
    info = json.loads((folder / tape.META_FILE).read_text())
    assert sorted((e["sdp_party"], e["m_index"], e["tag"], e["suite"]) for e in info["srtp"]) == [
        ("A", 0, 1, suite),
        ("B", 0, 1, suite),
    ]
    assert all(isinstance(e["sealed"], str) and e["sealed"] for e in info["srtp"])

    direct = mix(synth.write_pcap(tmp_path / "capture.pcap", datagrams), tmp_path / "direct.wav", WAV)
    from_tape = mix(folder, tmp_path / "tape.wav", WAV, box=box)
    assert direct.calls[0].reasons == [] and from_tape.calls[0].reasons == []
    assert wav(tmp_path / "tape.wav") == wav(tmp_path / "direct.wav")
    plain = mix(synth.write_pcap(tmp_path / "plain.pcap", call.datagrams), tmp_path / "plain.wav", WAV)
    assert plain.calls[0].reasons == []
    plain_audio = samples(tmp_path / "plain.wav")
    assert np.abs(plain_audio).max() > 1000  # voice, so equal outputs compare something
    assert np.array_equal(samples(tmp_path / "tape.wav"), plain_audio)


def test_another_box_or_none_cannot_open_the_keys(tmp_path: Path, call: synth.Built) -> None:
    suite = SUITES[0]
    datagrams = srtp_calls.make_srtp(call.datagrams, suite, keys_for(suite))
    folder = capture_tape(tmp_path, datagrams, SrtpKeys(tmp_path, SecretBox(new_key())))
    with pytest.raises(SealedKeysError) as err:
        mix(folder, tmp_path / "other.wav", WAV, box=SecretBox(new_key()))
    assert str(err.value) in (
        f"the SRTP keys of party {p}'s m= line 0 cannot be opened with this service's secret" for p in "AB"
    )
    with pytest.raises(SealedKeysError, match=NO_BOX):
        mix(folder, tmp_path / "none.wav", WAV)
    assert not (tmp_path / "other.wav").exists() and not (tmp_path / "none.wav").exists()


def test_a_replaced_key_with_nothing_sealed_for_it_is_a_missing_key(tmp_path: Path, call: synth.Built) -> None:
    suite = SUITES[0]
    box = SecretBox(new_key())
    datagrams = srtp_calls.make_srtp(call.datagrams, suite, keys_for(suite))
    folder = capture_tape(tmp_path, datagrams, SrtpKeys(tmp_path, box))
    info = tape.read_info(folder)
    info.srtp = [e for e in info.srtp if e["sdp_party"] != "A"]  # the caller's key lost
    tape.write_info(folder, info)
    report = mix(folder, tmp_path / "out.wav", WAV, box=box)
    assert report.calls[0].reasons == ["stream 1 (from A) is SRTP and its key is missing: its audio is silence"]


def test_without_a_given_box_the_data_folders_key_file_is_made_and_seals(
    tmp_path: Path, call: synth.Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CALLREC_SECRET_KEY", raising=False)
    suite = SUITES[0]
    datagrams = srtp_calls.make_srtp(call.datagrams, suite, keys_for(suite))
    folder = capture_tape(tmp_path, datagrams, None)  # the tracker's default: the data folder above tapes/
    key_file = tmp_path / KEY_FILE
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    report = mix(folder, tmp_path / "out.wav", WAV, box=SecretBox(load_or_create_key(key_file)))
    assert report.calls[0].reasons == []


def test_redaction_keeps_lengths_and_every_other_byte() -> None:
    key1, key2 = base64.b64encode(bytes(range(30))), base64.b64encode(bytes(range(1, 31))).rstrip(b"=")
    sdp = (b"v=0\r\nm=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + key1
           + b"|2^20|1:4;inline:" + key2 + b"|2^20|2:4 KDR=0\r\nm=video 4002 RTP/SAVP 96\r\n"
           b"a=crypto:7 AES_CM_128_HMAC_SHA1_32 INLINE:" + key2 + b"\r\na=x-inline:notakey\r\n")  # fmt: skip
    out = redact_crypto(sdp)
    assert len(out) == len(sdp) and key1 not in out and key2 not in out
    assert out.replace(b"*", b"") == sdp.replace(key1, b"").replace(key2, b"")
    assert redacted_tags(out) == [[1], [7]] and redacted_tags(sdp) == [[], []]
    assert redact_crypto(b"INVITE sip:x SIP/2.0\r\n\r\n") == b"INVITE sip:x SIP/2.0\r\n\r\n"
