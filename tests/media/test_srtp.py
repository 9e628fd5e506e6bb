"""SRTP/SRTCP decryption against libsrtp's own protect (a pylibsrtp Session as the sending party), and SRTP
keys sealed for call.json with the secret box."""

from __future__ import annotations

import base64
import json
import secrets
import struct

import pytest
from pylibsrtp import Policy, Session

from callrec.media.srtp import SrtpDecryptor, UnsupportedSrtp, is_rtcp
from callrec.media.srtp_keys import SealedKeysError, open_keys, seal_keys
from callrec.secretbox import SecretBox, new_key
from callrec.wire.sdes import SUITES, CryptoAttribute, KeyParam, choose_answer

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}
ALL_SUITES = sorted(PROFILES)
PAYLOAD_BYTES = 160  # 20 ms of G.711


def rtp(seq: int, ssrc: int = 0x11223344, payload: bytes | None = None) -> bytes:
    body = payload if payload is not None else bytes((seq + i) & 0xFF for i in range(PAYLOAD_BYTES))
    return struct.pack("!BBHII", 0x80, 8, seq & 0xFFFF, seq * PAYLOAD_BYTES & 0xFFFFFFFF, ssrc) + body


def rtcp_sr(ssrc: int = 0x11223344, count: int = 1) -> bytes:
    # a sender report without report blocks: header, SSRC, NTP time, RTP time, packet and octet counts
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 0xE000_0000, count, 160 * count, count, 160 * count)


def sender(suite: str, key: bytes) -> Session:
    return Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=PROFILES[suite]))


def crypto(suite: str, key: bytes, *params: str) -> CryptoAttribute:
    return CryptoAttribute(1, suite, (KeyParam(key),), params)


def new_key_for(suite: str) -> bytes:
    return secrets.token_bytes(SUITES[suite].key_salt_length)


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_decrypts_what_libsrtp_protects_for_every_suite(suite: str) -> None:
    key = new_key_for(suite)
    tx = sender(suite, key)
    rx = SrtpDecryptor(crypto(suite, key))
    # SSRCs appear as the call goes on (a re-INVITE, a transfer): each is accepted
    for ssrc in (0x11223344, 0x55667788):
        for seq in range(65530, 65546):  # across the sequence number wrap
            plain = rtp(seq, ssrc)
            protected = tx.protect(plain)
            assert protected != plain
            assert protected[12:172] != plain[12:172]
            assert rx.unprotect(protected) == plain
    for count in range(1, 4):
        report = rtcp_sr(count=count)
        protected = tx.protect_rtcp(report)
        assert is_rtcp(protected)
        assert rx.unprotect_rtcp(protected) == report
    assert (rx.auth_failures, rx.replay, rx.other, rx.dropped) == (0, 0, 0, 0)


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_a_wrong_key_gives_none_and_counts_authentication_failures(suite: str) -> None:
    tx = sender(suite, new_key_for(suite))
    rx = SrtpDecryptor(crypto(suite, new_key_for(suite)))
    for seq in range(5):
        assert rx.unprotect(tx.protect(rtp(seq))) is None
    assert rx.unprotect_rtcp(tx.protect_rtcp(rtcp_sr())) is None
    assert (rx.auth_failures, rx.replay, rx.other) == (6, 0, 0)


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_a_tampered_packet_is_an_authentication_failure_and_the_stream_goes_on(suite: str) -> None:
    key = new_key_for(suite)
    tx = sender(suite, key)
    rx = SrtpDecryptor(crypto(suite, key))
    assert rx.unprotect(tx.protect(rtp(1))) == rtp(1)
    tampered = bytearray(tx.protect(rtp(2)))
    tampered[40] ^= 0x01
    assert rx.unprotect(bytes(tampered)) is None
    assert rx.unprotect(tx.protect(rtp(3))) == rtp(3)
    assert (rx.auth_failures, rx.replay, rx.other) == (1, 0, 0)


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_replayed_packets_are_counted(suite: str) -> None:
    key = new_key_for(suite)
    tx = sender(suite, key)
    rx = SrtpDecryptor(crypto(suite, key))
    first = tx.protect(rtp(100))
    assert rx.unprotect(first) == rtp(100)
    assert rx.unprotect(first) is None
    report = tx.protect_rtcp(rtcp_sr())
    assert rx.unprotect_rtcp(report) == rtcp_sr()
    assert rx.unprotect_rtcp(report) is None
    assert (rx.auth_failures, rx.replay, rx.other) == (0, 2, 0)


def test_late_packets_within_the_recording_window_are_kept() -> None:
    suite = "AES_CM_128_HMAC_SHA1_80"
    key = new_key_for(suite)
    tx = sender(suite, key)
    rx = SrtpDecryptor(crypto(suite, key))
    protected = [tx.protect(rtp(seq)) for seq in range(0, 1200)]
    assert rx.unprotect(protected[1100]) == rtp(1100)
    # 600 behind: beyond libsrtp's default window of 128, within ours
    assert rx.unprotect(protected[500]) == rtp(500)
    # 1100 behind: beyond ours, refused as too old
    assert rx.unprotect(protected[0]) is None
    assert (rx.auth_failures, rx.replay, rx.other) == (0, 1, 0)


def test_bad_packets_never_raise_and_count_as_other() -> None:
    suite = "AES_CM_128_HMAC_SHA1_80"
    key = new_key_for(suite)
    tx = sender(suite, key)
    rx = SrtpDecryptor(crypto(suite, key))
    for packet in (b"", b"\x80", b"\x80\x08\x00\x01", bytes(2000), b"\x80\xc8\x00\x01"):
        assert rx.unprotect(packet) is None
        assert rx.unprotect_rtcp(packet) is None
    assert (rx.auth_failures, rx.replay, rx.other) == (0, 0, 10)
    # a bytearray or memoryview is decrypted all the same
    assert rx.unprotect(bytearray(tx.protect(rtp(7)))) == rtp(7)  # type: ignore[arg-type]
    assert rx.unprotect(memoryview(tx.protect(rtp(8)))) == rtp(8)  # type: ignore[arg-type]


def test_unprotect_any_demultiplexes_rtp_and_rtcp_on_one_port() -> None:
    suite = "AEAD_AES_128_GCM"
    key = new_key_for(suite)
    tx = sender(suite, key)
    rx = SrtpDecryptor(crypto(suite, key))
    assert rx.unprotect_any(tx.protect(rtp(1))) == rtp(1)
    assert rx.unprotect_any(tx.protect_rtcp(rtcp_sr())) == rtcp_sr()
    assert not is_rtcp(tx.protect(rtp(2)))
    assert rx.dropped == 0


def with_mki(suite: str, protected: bytes, mki: bytes, rtcp: bool) -> bytes:
    # where RFC 3711 §3.1/§3.4 and RFC 7714 §8/§9 put the MKI: before an HMAC tag, after an AEAD packet
    if SUITES[suite].aead:
        return protected + mki
    tag = SUITES[suite].srtcp_tag_length if rtcp else SUITES[suite].srtp_tag_length
    return protected[:-tag] + mki + protected[-tag:]


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_keys_with_mkis_are_chosen_by_the_mki_of_each_packet(suite: str) -> None:
    one, two = new_key_for(suite), new_key_for(suite)
    attribute = CryptoAttribute(1, suite, (KeyParam(one, None, 1, 2), KeyParam(two, 1 << 20, 2, 2)))
    rx = SrtpDecryptor(CryptoAttribute.parse(attribute.line()))
    tx_one, tx_two = sender(suite, one), sender(suite, two)
    assert rx.unprotect(with_mki(suite, tx_one.protect(rtp(1)), b"\x00\x01", rtcp=False)) == rtp(1)
    assert rx.unprotect(with_mki(suite, tx_two.protect(rtp(2)), b"\x00\x02", rtcp=False)) == rtp(2)
    assert rx.unprotect_rtcp(with_mki(suite, tx_two.protect_rtcp(rtcp_sr()), b"\x00\x02", rtcp=True)) == rtcp_sr()
    # the wrong key's MKI: authentication fails; an MKI nobody offered: dropped as bad
    assert rx.unprotect(with_mki(suite, tx_one.protect(rtp(3)), b"\x00\x02", rtcp=False)) is None
    assert rx.unprotect(with_mki(suite, tx_one.protect(rtp(4)), b"\x00\x07", rtcp=False)) is None
    assert rx.unprotect(b"\x80\x08") is None
    assert (rx.auth_failures, rx.replay, rx.other) == (1, 0, 2)


def test_an_unsupported_attribute_is_refused_with_its_reason() -> None:
    with pytest.raises(UnsupportedSrtp, match="^crypto suite AES_256_CM_HMAC_SHA1_80 is not supported"):
        SrtpDecryptor(CryptoAttribute(1, "AES_256_CM_HMAC_SHA1_80", (KeyParam(bytes(46)),)))
    with pytest.raises(UnsupportedSrtp) as caught:
        SrtpDecryptor(crypto("AES_CM_128_HMAC_SHA1_80", bytes(30), "UNENCRYPTED_SRTP"))
    assert str(caught.value) == "session parameter UNENCRYPTED_SRTP of a=crypto tag 1 is not supported"


def test_the_decryptor_shows_no_key() -> None:
    key = new_key_for("AES_CM_128_HMAC_SHA1_80")
    rx = SrtpDecryptor(crypto("AES_CM_128_HMAC_SHA1_80", key))
    assert repr(rx) == "SrtpDecryptor(tag=1, suite=AES_CM_128_HMAC_SHA1_80, auth_failures=0, replay=0, other=0)"
    assert base64.b64encode(key).decode()[:12] not in repr(rx)


def test_the_offer_we_answer_decrypts_what_its_offerer_sends() -> None:
    key = new_key_for("AES_CM_128_HMAC_SHA1_32")
    offer = f"a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{base64.b64encode(key).decode()}|2^31"
    chosen = choose_answer(["a=crypto:7 NULL_CIPHER inline:AAAA", offer])
    rx = SrtpDecryptor(chosen.offer)
    tx = sender("AES_CM_128_HMAC_SHA1_32", key)
    assert rx.unprotect(tx.protect(rtp(9))) == rtp(9)
    assert chosen.answer.key.key_salt != key


def key_encodings(key: bytes) -> list[str]:
    return [
        base64.b64encode(key).decode(),
        base64.b64encode(key).decode().rstrip("="),
        base64.urlsafe_b64encode(key).decode().rstrip("="),
        key.hex(),
        key.hex().upper(),
        key.decode("latin-1"),
    ]


def sealed_streams() -> tuple[list[tuple[int, CryptoAttribute]], list[bytes]]:
    keys = [new_key_for(s) for s in ("AES_CM_128_HMAC_SHA1_80", "AEAD_AES_256_GCM", "AES_CM_128_HMAC_SHA1_80")]
    streams = [
        (0, CryptoAttribute(1, "AES_CM_128_HMAC_SHA1_80", (KeyParam(keys[0], 1 << 31),))),
        (2, CryptoAttribute(3, "AEAD_AES_256_GCM", (KeyParam(keys[1]),), ("WSH=256",))),
        (0, CryptoAttribute(2, "AES_CM_128_HMAC_SHA1_80", (KeyParam(keys[2], None, 1, 1),))),  # a re-key
    ]
    return streams, keys


def test_keys_are_sealed_for_call_json_and_opened_again() -> None:
    box = SecretBox(new_key())
    streams, keys = sealed_streams()
    sealed = seal_keys(box, streams)
    text = json.dumps({"srtp": sealed})
    assert [(e["stream"], e["suite"], e["tag"]) for e in sealed] == [
        (0, "AES_CM_128_HMAC_SHA1_80", 1),
        (2, "AEAD_AES_256_GCM", 3),
        (0, "AES_CM_128_HMAC_SHA1_80", 2),
    ]
    for key in keys:
        for encoded in key_encodings(key):
            assert encoded not in text
    assert "inline" not in text
    opened = open_keys(box, json.loads(text)["srtp"])
    assert opened == {0: [streams[0][1], streams[2][1]], 2: [streams[1][1]]}
    # what was opened decrypts
    tx = sender("AEAD_AES_256_GCM", keys[1])
    assert SrtpDecryptor(opened[2][0]).unprotect(tx.protect(rtp(5))) == rtp(5)
    # each seal is fresh: the same keys never give the same text twice
    assert seal_keys(box, streams)[0]["sealed"] != sealed[0]["sealed"]


def test_keys_sealed_by_another_service_cannot_be_opened() -> None:
    streams, _ = sealed_streams()
    sealed = seal_keys(SecretBox(new_key()), streams[1:2])
    with pytest.raises(SealedKeysError) as caught:
        open_keys(SecretBox(new_key()), sealed)
    assert str(caught.value) == "the SRTP keys of stream 2 cannot be opened with this service's secret"
    assert caught.value.__cause__ is None


def test_damaged_entries_give_their_reason() -> None:
    box = SecretBox(new_key())
    streams, keys = sealed_streams()
    good = seal_keys(box, streams[1:2])[0]
    other_value = box.encrypt("a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:" + base64.b64encode(bytes(29)).decode())
    cases: list[tuple[object, str]] = [
        ({"srtp": 1}, "the SRTP keys in call.json are not a list"),
        ([good, "x"], "entry 2 of the SRTP keys in call.json is not an object"),
        ([{**good, "stream": "2"}], "entry 1 of the SRTP keys in call.json names no stream"),
        ([{**good, "stream": True}], "entry 1 of the SRTP keys in call.json names no stream"),
        ([{**good, "stream": -1}], "entry 1 of the SRTP keys in call.json names no stream"),
        (
            [{k: v for k, v in good.items() if k != "sealed"}],
            "the SRTP keys of stream 2 in call.json have no sealed key",
        ),
        (
            [{**good, "sealed": good["sealed"][:-4]}],
            "the SRTP keys of stream 2 cannot be opened with this service's secret",
        ),
        ([{**good, "sealed": "plain text"}], "the SRTP keys of stream 2 cannot be opened with this service's secret"),
        (
            [{**good, "suite": "AEAD_AES_128_GCM"}],
            "the SRTP keys of stream 2 do not match the suite and tag beside them",
        ),
        ([{**good, "tag": 4}], "the SRTP keys of stream 2 do not match the suite and tag beside them"),
        (
            [{**good, "sealed": other_value}],
            "the SRTP keys of stream 2 are damaged: the key of a=crypto tag 3 is 29 bytes long where"
            " AES_CM_128_HMAC_SHA1_80 needs 30 (master key and salt)",
        ),
    ]
    for sealed, reason in cases:
        with pytest.raises(SealedKeysError) as caught:
            open_keys(box, sealed)
        assert str(caught.value) == reason
        for key in keys:
            assert base64.b64encode(key).decode()[:12] not in str(caught.value)
