"""SRTP keyed by SDES on the SRS (issue 16 item 2): RTP/SAVP and RTP/SAVPF offers with ``a=crypto`` are
answered in the same profile with a key of ours, the packets land on the tape as received (still
encrypted), and the SRC's keys are kept in ``call.json`` sealed with the service's secret box — never in
clear in call.json, the logs or the API. An ``m=`` line with no usable ``a=crypto`` gets port 0."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pylibsrtp import Policy, Session

from callrec.app import create_app
from callrec.files import tape
from callrec.files.pcap import CaptureReader
from callrec.media.srtp import SrtpDecryptor
from callrec.media.srtp_keys import open_keys
from callrec.models import CallInfo
from callrec.recorder.srtp import KEY_FILE, service_box
from callrec.secretbox import SecretBox, load_or_create_key, new_key
from callrec.wire.sdes import SUITES, CryptoAttribute, crypto_by_media
from callrec.wire.sdp import Sdp
from callrec.wire.sip import SipMessage
from tests.api.conftest import ADMIN_KEY, bearer, make_service
from tests.support.sipclient import (
    HOST,
    Dialog,
    RecorderThread,
    SipClient,
    answered_ports,
    read_call,
    recorder_config,
    rtp_packet,
    wait_for,
)

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}


def key_for(suite: str, seed: int) -> bytes:
    length = SUITES[suite].key_salt_length if suite in SUITES else 30
    return bytes((seed * 37 + i * 11) % 256 for i in range(length))


def crypto_line(tag: int, suite: str, key: bytes, *params: str) -> str:
    return " ".join([f"a=crypto:{tag} {suite} inline:{base64.b64encode(key).decode()}", *params])


def srtp_sdp(ports: list[int], cryptos: list[list[str]], proto: str = "RTP/SAVP", plain: tuple[int, ...] = ()) -> str:
    """An SRC's offer: one PCMA stream per port, labelled 1, 2, ...; each with its ``a=crypto`` lines
    (the streams numbered in ``plain`` are RTP/AVP without them)."""
    lines = ["v=0", "o=src 1 1 IN IP4 127.0.0.1", "s=SIPREC", f"c=IN IP4 {HOST}", "t=0 0"]
    for i, (port, offered) in enumerate(zip(ports, cryptos, strict=True), start=1):
        lines += [f"m=audio {port} {'RTP/AVP' if i in plain else proto} 8", "a=rtpmap:8 PCMA/8000"]
        lines += offered
        lines += [f"a=label:{i}", "a=sendonly"]
    return "\r\n".join(lines) + "\r\n"


def answered_crypto(response: SipMessage) -> list[tuple[str, list[CryptoAttribute]]]:
    body = response.sdp_body()
    assert body
    return [(m.proto, list(m.offers)) for m in crypto_by_media(body)]


class SrtpSource:
    """Sends SRTP (protected by libsrtp with the SRC's key) from a socket of its own to a recorder port."""

    def __init__(self, port: int, suite: str, key: bytes, ssrc: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port = port
        self.session = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=PROFILES[suite]))
        self.ssrc = ssrc
        self.sent: list[bytes] = []
        self.plain: list[bytes] = []

    def rekey(self, suite: str, key: bytes) -> None:
        """Go on from the same address (what the recorder latched to) under a new key."""
        self.session = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=PROFILES[suite]))

    def send(self, count: int) -> None:
        for _ in range(count):
            n = len(self.sent)
            plain = rtp_packet(n, n * 160, self.ssrc, payload=bytes([n % 256]) * 160, marker=n == 0)
            packet = self.session.protect(plain)
            self.sock.sendto(packet, (HOST, self.port))
            self.plain.append(plain)
            self.sent.append(packet)

    def close(self) -> None:
        self.sock.close()


def tape_payloads(folder: Path) -> dict[int, list[bytes]]:
    """The UDP payloads on a tape, per recorder port, in order."""
    found: dict[int, list[bytes]] = {}
    with CaptureReader(folder / tape.MEDIA_FILE) as reader:
        for datagram in reader:
            found.setdefault(datagram.dport, []).append(bytes(datagram.payload))
    return found


def secrets_of(*keys: bytes) -> list[str]:
    """Every spelling of each key that could leak: base64 (padded or not), hex, and the key bytes themselves
    in JSON's latin-1 escape."""
    out: list[str] = []
    for key in keys:
        b64 = base64.b64encode(key).decode()
        out += [b64, b64.rstrip("="), key.hex(), key.hex().upper(), base64.urlsafe_b64encode(key).decode()]
    return out


def assert_nowhere(text: str, keys: list[str], where: str) -> None:
    for secret in keys:
        assert secret not in text, f"a key appears in {where}"


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(new_key())


@pytest.fixture
def srec(data: Path, box: SecretBox) -> Iterator[RecorderThread]:
    with RecorderThread(recorder_config(data), box=box) as running:
        yield running
        assert running.recorder.stats.sip_errors == 0


# ---- answers and tapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", list(SUITES))
@pytest.mark.parametrize("proto", ["RTP/SAVP", "RTP/SAVPF"])
def test_srtp_offer_is_answered_with_our_key_and_recorded_as_received(
    srec: RecorderThread, box: SecretBox, suite: str, proto: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    keys = [key_for(suite, 1), key_for(suite, 2)]
    offer = srtp_sdp([40000, 40002], [[crypto_line(1, suite, keys[0])], [crypto_line(7, suite, keys[1])]], proto)
    with SipClient(srec.address) as sip:
        dialog = Dialog(sip)
        ok = dialog.call(sdp=offer)
        ports = answered_ports(ok)
        assert all(ports)
        answered = answered_crypto(ok)
        assert [p for p, _ in answered] == [proto, proto]
        ours: list[bytes] = []
        for (_, (attr,)), tag in zip(answered, (1, 7), strict=True):
            # RFC 4568 section 7.1.2: the tag and suite of the offer we took, a fresh key of our own
            assert (attr.tag, attr.suite) == (tag, suite)
            assert len(attr.key.key_salt) == SUITES[suite].key_salt_length
            assert attr.key.key_salt not in keys
            ours.append(attr.key.key_salt)
        sources = [
            SrtpSource(port, suite, key, 0x1000 + i) for i, (port, key) in enumerate(zip(ports, keys, strict=True))
        ]
        for source in sources:
            source.send(25)
        wait_for(lambda: tape_count(srec) == 50, what="50 packets on the tape")
        assert dialog.bye().status == 200
        folder = srec.closed_tape_of(dialog.call_id)
        for source in sources:
            source.close()
    # on the tape as received: still encrypted, byte for byte
    assert tape_payloads(folder) == {port: source.sent for port, source in zip(ports, sources, strict=True)}
    text = (folder / tape.META_FILE).read_text("utf-8")
    info = CallInfo.from_json(json.loads(text))
    assert [(e["stream"], e["suite"]) for e in info.srtp] == [(0, suite), (1, suite)]
    opened = open_keys(box, info.srtp)
    assert [[c.key.key_salt for c in opened[i]] for i in (0, 1)] == [[keys[0]], [keys[1]]]
    # what the mixer will do with it: the sealed key decrypts what the SRC sent
    for index, source in enumerate(sources):
        decryptor = SrtpDecryptor(opened[index][0])
        assert [decryptor.unprotect(p) for p in source.sent] == source.plain
    leaks = secrets_of(*keys, *ours)
    assert_nowhere(text, leaks, "call.json")
    assert_nowhere(caplog.text, leaks, "the logs")


def tape_count(rec: RecorderThread) -> int:
    return rec.call(lambda: sum(s.tape.packets for s in rec.recorder.sessions.values() if s.tape is not None))


def test_the_first_offered_line_we_can_decrypt_is_answered(srec: RecorderThread, box: SecretBox) -> None:
    good = key_for("AES_CM_128_HMAC_SHA1_32", 3)
    offered = [
        crypto_line(1, "AES_256_CM_HMAC_SHA1_80", bytes(46)),  # registered, not one we decrypt
        "a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:not-base64!!",  # malformed
        crypto_line(3, "AES_CM_128_HMAC_SHA1_32", good),
        crypto_line(4, "AES_CM_128_HMAC_SHA1_80", key_for("AES_CM_128_HMAC_SHA1_80", 4)),
    ]
    with SipClient(srec.address) as sip:
        dialog = Dialog(sip)
        ok = dialog.call(sdp=srtp_sdp([40000], [offered]))
        ((_, (attr,)),) = answered_crypto(ok)
        assert (attr.tag, attr.suite) == (3, "AES_CM_128_HMAC_SHA1_32")
        assert dialog.bye().status == 200
        folder = srec.closed_tape_of(dialog.call_id)
    entries = read_call(folder)["srtp"]
    assert [(e["stream"], e["tag"]) for e in entries] == [(0, 3)]
    assert open_keys(box, entries)[0][0].key.key_salt == good


def test_an_srtp_line_without_usable_crypto_gets_port_0_and_a_reason(
    srec: RecorderThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    key = key_for("F8_128_HMAC_SHA1_80", 5)
    offer = srtp_sdp([40000, 40002], [[], [crypto_line(1, "F8_128_HMAC_SHA1_80", key)]], plain=(1,))
    with SipClient(srec.address) as sip:
        dialog = Dialog(sip)
        ok = dialog.call(sdp=offer)
        ports = answered_ports(ok)
        assert ports[0] != 0 and ports[1] == 0
        assert [(p, offers) for p, offers in answered_crypto(ok)] == [("RTP/AVP", []), ("RTP/SAVP", [])]
        assert dialog.bye().status == 200
        folder = srec.closed_tape_of(dialog.call_id)
    reasons = [r.getMessage() for r in caplog.records if "answered with port 0" in r.getMessage()]
    assert reasons == [
        f"session {dialog.call_id}: m= line 2 (RTP/SAVP) answered with port 0: no offered a=crypto line can be"
        " recorded: crypto suite F8_128_HMAC_SHA1_80 is not supported (callrec decrypts AES_CM_128_HMAC_SHA1_80,"
        " AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM, AEAD_AES_256_GCM)"
    ]
    assert_nowhere(caplog.text, secrets_of(key), "the logs")
    call = read_call(folder)
    assert "srtp" not in call  # no SRTP stream recorded: call.json as it always was
    assert len(call["streams"]) == 1


@pytest.mark.parametrize(
    ("crypto", "reason"),
    [
        ([], "the offer has no a=crypto line"),
        (
            ["a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ="],
            "no offered a=crypto line can be recorded: the key of a=crypto tag 1 is 5 bytes long where"
            " AES_CM_128_HMAC_SHA1_80 needs 30 (master key and salt)",
        ),
        (
            [crypto_line(2, "AES_CM_128_HMAC_SHA1_80", bytes(30), "FEC_KEY=inline:AAAA")],
            "no offered a=crypto line can be recorded: session parameter FEC_KEY of a=crypto tag 2 is not supported",
        ),
    ],
)
def test_an_offer_with_only_unusable_srtp_is_refused_488_with_the_reason(
    srec: RecorderThread, crypto: list[str], reason: str
) -> None:
    with SipClient(srec.address) as sip:
        dialog = Dialog(sip)
        invite = dialog.invite(sdp=srtp_sdp([40000], [crypto]))
        refused = sip.response(match=invite)
        dialog.ack(refused)
    assert refused.status == 488
    assert refused.reason == f"Not Acceptable Here: {reason}"
    assert srec.session_count() == 0


def test_a_reinvite_with_a_new_key_adds_a_sealed_entry(srec: RecorderThread, box: SecretBox) -> None:
    suite = "AES_CM_128_HMAC_SHA1_80"
    first, second, other = key_for(suite, 10), key_for(suite, 11), key_for(suite, 12)
    lines_a, lines_b = [crypto_line(1, suite, first)], [crypto_line(1, suite, other)]
    with SipClient(srec.address) as sip:
        dialog = Dialog(sip)
        ok = dialog.call(sdp=srtp_sdp([40000, 40002], [lines_a, lines_b]))
        ports = answered_ports(ok)
        ours = [attrs[0].key.key_salt for _, attrs in answered_crypto(ok)]
        source = SrtpSource(ports[0], suite, first, 0x2000)
        source.send(10)
        wait_for(lambda: tape_count(srec) == 10, what="10 packets")
        # the same keys offered again (a hold, a codec change): nothing new on the tape, the same answer
        same = dialog.reinvite(srtp_sdp([40000, 40002], [lines_a, lines_b]))
        assert same.status == 200 and answered_ports(same) == ports
        assert [attrs[0].key.key_salt for _, attrs in answered_crypto(same)] == ours
        # a new key on the first stream: a new answer of ours, a second entry for stream 0
        rekeyed = dialog.reinvite(srtp_sdp([40000, 40002], [[crypto_line(2, suite, second)], lines_b]))
        assert rekeyed.status == 200 and answered_ports(rekeyed) == ports
        answer = answered_crypto(rekeyed)
        assert answer[0][1][0].tag == 2 and answer[0][1][0].key.key_salt not in (ours[0], second)
        assert answer[1][1][0].key.key_salt == ours[1]
        source.rekey(suite, second)
        source.send(10)
        wait_for(lambda: tape_count(srec) == 20, what="20 packets")
        mid = read_call(tape_of(srec, dialog.call_id))
        assert [(e["stream"], e["tag"]) for e in mid["srtp"]] == [(0, 1), (1, 1), (0, 2)]
        assert dialog.bye().status == 200
        folder = srec.closed_tape_of(dialog.call_id)
        source.close()
    entries = read_call(folder)["srtp"]
    opened = open_keys(box, entries)
    assert [c.key.key_salt for c in opened[0]] == [first, second]
    assert [c.key.key_salt for c in opened[1]] == [other]
    assert tape_payloads(folder) == {ports[0]: source.sent}
    decrypt = [SrtpDecryptor(c) for c in opened[0]]
    assert [decrypt[n // 10].unprotect(p) for n, p in enumerate(source.sent)] == source.plain
    assert_nowhere((folder / tape.META_FILE).read_text(), secrets_of(first, second, other), "call.json")


def tape_of(rec: RecorderThread, call_id: str) -> Path:
    return rec.call(lambda: rec.recorder.sessions[call_id].folder)


def test_a_reinvite_without_usable_crypto_rejects_the_stream_but_keeps_the_call(srec: RecorderThread) -> None:
    suite = "AEAD_AES_128_GCM"
    key = key_for(suite, 20)
    with SipClient(srec.address) as sip:
        dialog = Dialog(sip)
        ports = answered_ports(
            dialog.call(sdp=srtp_sdp([40000, 40002], [[crypto_line(1, suite, key)], []], plain=(2,)))
        )
        assert all(ports)
        unusable = [[crypto_line(1, "F8_128_HMAC_SHA1_80", bytes(30))], []]
        refused = dialog.reinvite(srtp_sdp([40000, 40002], unusable, plain=(2,)))
        assert refused.status == 200
        assert answered_ports(refused) == [0, ports[1]]
        assert srec.session_count() == 1
        assert dialog.bye().status == 200
        folder = srec.closed_tape_of(dialog.call_id)
    assert [(e["stream"], e["suite"]) for e in read_call(folder)["srtp"]] == [(0, suite)]


# ---- the secret box ------------------------------------------------------------------------------------


def test_without_a_service_the_keys_are_sealed_with_data_secret_key(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CALLREC_SECRET_KEY", raising=False)
    suite = "AES_CM_128_HMAC_SHA1_80"
    key = key_for(suite, 30)
    with RecorderThread(recorder_config(data)) as rec, SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        dialog.call(sdp=srtp_sdp([40000], [[crypto_line(1, suite, key)]]))
        assert dialog.bye().status == 200
        folder = rec.closed_tape_of(dialog.call_id)
    key_file = data / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    box = SecretBox(load_or_create_key(key_file))
    assert open_keys(box, read_call(folder)["srtp"])[0][0].key.key_salt == key
    assert service_box(data, {}).decrypt(read_call(folder)["srtp"][0]["sealed"])


def test_callrec_secret_key_wins_over_the_key_file(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = new_key()
    monkeypatch.setenv("CALLREC_SECRET_KEY", secret)
    suite = "AEAD_AES_256_GCM"
    key = key_for(suite, 31)
    with RecorderThread(recorder_config(data)) as rec, SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        dialog.call(sdp=srtp_sdp([40000], [[crypto_line(1, suite, key)]]))
        assert dialog.bye().status == 200
        folder = rec.closed_tape_of(dialog.call_id)
    assert not (data / KEY_FILE).exists()
    assert open_keys(SecretBox(secret), read_call(folder)["srtp"])[0][0].key.key_salt == key


def test_a_recorder_without_srtp_offers_creates_no_key_file(rec: RecorderThread, data: Path) -> None:
    with SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        dialog.call()
        assert dialog.bye().status == 200
        rec.wait_closed()
    assert not (data / KEY_FILE).exists()


def test_a_secret_that_cannot_be_loaded_rejects_the_srtp_stream_with_the_reason(
    data: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("CALLREC_SECRET_KEY", raising=False)
    data.mkdir(parents=True)
    (data / KEY_FILE).write_text("not a key\n")
    key = key_for("AES_CM_128_HMAC_SHA1_80", 32)
    offer = srtp_sdp([40000, 40002], [[], [crypto_line(1, "AES_CM_128_HMAC_SHA1_80", key)]], plain=(1,))
    with RecorderThread(recorder_config(data)) as rec, SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        ports = answered_ports(dialog.call(sdp=offer))
        assert ports[0] and ports[1] == 0
        assert dialog.bye().status == 200
    assert (
        f"session {dialog.call_id}: m= line 2 (RTP/SAVP) answered with port 0: the SRTP keys cannot be kept:"
        f" secret key file {data / KEY_FILE} does not hold a valid key (32 bytes in url-safe base64)"
    ) in caplog.text


# ---- what the service shows ----------------------------------------------------------------------------


def test_the_api_shows_no_key_nor_sealed_blob(data: Path, tmp_path: Path) -> None:
    service = make_service(tmp_path / "service", f"sqlite:///{tmp_path / 'callrec.db'}")
    suite = "AES_CM_128_HMAC_SHA1_80"
    key = key_for(suite, 40)
    try:
        with RecorderThread(recorder_config(data), box=service.ctx.box) as rec, SipClient(rec.address) as sip:
            dialog = Dialog(sip)
            ok = dialog.call(sdp=srtp_sdp([40000], [[crypto_line(1, suite, key)]]))
            ours = answered_crypto(ok)[0][1][0].key.key_salt
            source = SrtpSource(answered_ports(ok)[0], suite, key, 0x3000)
            source.send(5)
            wait_for(lambda: tape_count(rec) == 5, what="5 packets")
            assert dialog.bye().status == 200
            folder = rec.closed_tape_of(dialog.call_id)
            source.close()
        sealed = read_call(folder)["srtp"][0]["sealed"]
        call_id = service.pipeline.tape_closed(folder)
        with TestClient(create_app(service)) as client:
            admin = bearer(ADMIN_KEY)
            card = client.get(f"/api/v1/calls/{call_id}", headers=admin)
            listing = client.get("/api/v1/calls", headers=admin)
        assert card.status_code == 200 and listing.status_code == 200
        assert card.json()["call_id"] == dialog.call_id
        for answer, where in ((card, "the call card"), (listing, "the call list")):
            assert_nowhere(answer.text, [*secrets_of(key, ours), sealed, "enc:v1:"], where)
    finally:
        service.close()


def test_an_old_call_json_without_srtp_still_loads_and_writes_no_srtp() -> None:
    old = {"call_ids": ["x@y"], "streams": [], "parties": [], "version": 1}
    info = CallInfo.from_json(old)
    assert info.srtp == []
    assert "srtp" not in info.to_json()
    info.srtp = [{"stream": 0, "suite": "AEAD_AES_128_GCM", "tag": 1, "sealed": "enc:v1:x"}]
    assert CallInfo.from_json(json.loads(json.dumps(info.to_json()))).srtp == info.srtp


def test_sdp_of_the_answer_parses(srec: RecorderThread) -> None:
    suite = "AEAD_AES_256_GCM"
    with SipClient(srec.address) as sip:
        dialog = Dialog(sip)
        ok = dialog.call(sdp=srtp_sdp([40000], [[crypto_line(9, suite, key_for(suite, 50), "UNENCRYPTED_SRTCP")]]))
        media = Sdp.parse(ok.sdp_body() or b"").media[0]
        assert (media.proto, media.direction, media.formats) == ("RTP/SAVP", "recvonly", [8])
        ((_, (attr,)),) = answered_crypto(ok)
        # the negotiated session parameters are echoed (RFC 4568 section 6.3)
        assert attr.session_params == ("UNENCRYPTED_SRTCP",)
        assert dialog.bye().status == 200


# ---- a real peer: Debian's rtpengine encrypting toward the SRS ----------------------------------------


# the suites rtpengine offers before AES_CM_128_HMAC_SHA1_32
EARLIER_SUITES = (
    "AEAD_AES_256_GCM", "AEAD_AES_128_GCM", "AES_256_CM_HMAC_SHA1_80", "AES_256_CM_HMAC_SHA1_32",
    "AES_192_CM_HMAC_SHA1_80", "AES_192_CM_HMAC_SHA1_32", "AES_CM_128_HMAC_SHA1_80",
)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "suite"),
    [
        ({}, None),  # rtpengine's own order: the first suite it offers that we decrypt
        # rtpengine 10.5 takes suites out of its offer with "no-": the first left that we decrypt is SHA1_32
        ({"SDES": [f"no-{s}" for s in EARLIER_SUITES]}, "AES_CM_128_HMAC_SHA1_32"),
    ],
    ids=["rtpengine-order", "sha1-32"],
)
def test_rtpengine_offering_sdes_srtp_is_recorded_sealed_and_mixes_to_what_it_relayed(
    tmp_path: Path, flags: dict[str, Any], suite: str | None
) -> None:
    from tests.support.audio import callrec, decode, xcorr
    from tests.support.rtpengine_srtp import SrtpOfferRig

    data = tmp_path / "data"
    with SrtpOfferRig(tmp_path / "spool", data) as rig:
        sent, result = rig.srtp_call("srtp-call@rtpengine.test", seconds=3.0, flags=flags)
        assert rig.stop_recorder() == 0
        log = rig.recorder_log.read_text("utf-8", "replace")
    # rtpengine offered SRTP with its keys; we answered one of its lines in the same profile
    offered = crypto_by_media(result["offer"])
    assert [m.proto for m in offered] == ["RTP/SAVP"] and offered[0].offers
    ((proto, (ours,)),) = [(m.proto, list(m.offers)) for m in crypto_by_media(result["srs_answer"])]
    assert proto == "RTP/SAVP"
    chosen = next(o for o in offered[0].offers if o.tag == ours.tag)
    assert chosen.suite == ours.suite and chosen.suite in SUITES
    if suite is not None:
        assert chosen.suite == suite
    (folder,) = [p.parent for p in (data / "tapes").rglob("call.json")]
    text = (folder / tape.META_FILE).read_text("utf-8")
    call = json.loads(text)
    assert [(e["stream"], e["suite"], e["tag"]) for e in call["srtp"]] == [(0, chosen.suite, chosen.tag)]
    box = SecretBox(load_or_create_key(data / KEY_FILE))
    assert open_keys(box, call["srtp"])[0][0].value() == chosen.value()
    every_key = [k.key_salt for o in offered[0].offers for k in o.keys] + [ours.key.key_salt]
    assert_nowhere(text, secrets_of(*every_key), "call.json")
    assert_nowhere(log, secrets_of(*every_key), "the recorder's log")
    # the tape holds what rtpengine sent, encrypted: the clear payload is in no packet, and the sealed key
    # decrypts every packet back to the caller's frames
    packets = [p for ps in tape_payloads(folder).values() for p in ps]
    frames = [sent.payload[i : i + 160] for i in range(0, len(sent.payload), 160)]
    assert len(packets) == sent.packets == len(frames)
    assert not any(frame in packet for frame, packet in zip(frames, packets, strict=True))
    decryptor = SrtpDecryptor(chosen)
    assert [(decryptor.unprotect(p) or b"")[12:] for p in packets] == frames
    # callrec mix of the tape, given the data folder whose secret sealed it: the audio rtpengine relayed
    out = tmp_path / "out.wav"
    callrec("mix", str(folder), "-o", str(out), "--data", str(data))
    left = decode(out)[:, 0]
    _, peak = xcorr(left, sent.pcm, max_lag=4000)
    assert peak >= 0.99, f"xcorr {peak:.4f} against what the caller sent"
    # a damaged sealed key: no noise, a clear reason
    damaged = tmp_path / "damaged" / folder.name
    shutil.copytree(folder, damaged)
    call["srtp"][0]["sealed"] = call["srtp"][0]["sealed"][:-8] + "AAAAAAAA"
    (damaged / tape.META_FILE).write_text(json.dumps(call))
    proc = callrec("mix", str(damaged), "-o", str(tmp_path / "damaged.wav"), "--data", str(data), check=False)
    assert proc.returncode != 0
    assert "the SRTP keys of stream 0 cannot be opened with this service's secret" in proc.stderr
    assert not (tmp_path / "damaged.wav").exists()
