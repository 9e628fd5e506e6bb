"""SDES a=crypto (RFC 4568): parse/build round trips, every suite's key lengths, lifetimes and MKIs, the exact
reasons for malformed lines, and that no repr, str or error shows the key."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callrec.errors import ParseError
from callrec.wire.sdes import (
    SUITES,
    CryptoAttribute,
    KeyParam,
    NoUsableCrypto,
    answer_for,
    choose_answer,
    crypto_by_media,
    is_srtp_profile,
)

# RFC 4568 §5.1's example line
RFC_LINE = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4"
RFC_KEY_B64 = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"
LENGTHS = {
    "AES_CM_128_HMAC_SHA1_80": 30,
    "AES_CM_128_HMAC_SHA1_32": 30,
    "AEAD_AES_128_GCM": 28,
    "AEAD_AES_256_GCM": 44,
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_of(length: int) -> bytes:
    return bytes(range(1, length + 1))


def test_parses_the_rfc_example() -> None:
    crypto = CryptoAttribute.parse(RFC_LINE)
    assert crypto.tag == 1
    assert crypto.suite == "AES_CM_128_HMAC_SHA1_80"
    assert crypto.key.key_salt == base64.b64decode(RFC_KEY_B64)
    assert crypto.key.lifetime == 1 << 20
    assert (crypto.key.mki, crypto.key.mki_length) == (1, 4)
    assert crypto.key.mki_bytes == b"\x00\x00\x00\x01"
    assert crypto.session_params == ()
    assert crypto.unsupported_reason is None
    assert crypto.line() == RFC_LINE


def test_accepts_the_value_with_or_without_the_attribute_name() -> None:
    value = RFC_LINE.removeprefix("a=crypto:")
    assert CryptoAttribute.parse(value) == CryptoAttribute.parse(RFC_LINE)
    assert CryptoAttribute.parse("crypto:" + value) == CryptoAttribute.parse(RFC_LINE)
    assert CryptoAttribute.parse("  " + RFC_LINE + "\r\n").value() == value


@pytest.mark.parametrize("suite", sorted(LENGTHS))
def test_every_suite_round_trips_with_its_exact_length(suite: str) -> None:
    length = LENGTHS[suite]
    assert SUITES[suite].key_salt_length == length
    crypto = CryptoAttribute(7, suite, (KeyParam(key_of(length)),))
    parsed = CryptoAttribute.parse(crypto.line())
    assert parsed == crypto
    assert parsed.unsupported_reason is None
    assert parsed.line() == f"a=crypto:7 {suite} inline:{b64(key_of(length))}"


@pytest.mark.parametrize("suite", sorted(LENGTHS))
@pytest.mark.parametrize("delta", [-1, 1])
def test_every_suite_refuses_a_key_one_byte_off(suite: str, delta: int) -> None:
    length = LENGTHS[suite]
    text = f"a=crypto:3 {suite} inline:{b64(key_of(length + delta))}"
    with pytest.raises(ParseError) as caught:
        CryptoAttribute.parse(text)
    assert str(caught.value) == (
        f"the key of a=crypto tag 3 is {length + delta} bytes long where {suite} needs {length} (master key and salt)"
    )


def test_a_key_without_base64_padding_is_accepted_and_rebuilt_with_it() -> None:
    key = key_of(28)
    padded = b64(key)
    assert padded.endswith("=")
    crypto = CryptoAttribute.parse(f"a=crypto:1 AEAD_AES_128_GCM inline:{padded.rstrip('=')}")
    assert crypto.key.key_salt == key
    assert crypto.line().endswith(padded)


@pytest.mark.parametrize(
    ("lifetime_text", "lifetime", "rebuilt"),
    [("2^31", 1 << 31, "2^31"), ("1048576", 1 << 20, "2^20"), ("1000", 1000, "1000"), ("2^0", 1, "2^0")],
)
def test_lifetimes(lifetime_text: str, lifetime: int, rebuilt: str) -> None:
    key = b64(key_of(30))
    crypto = CryptoAttribute.parse(f"a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{key}|{lifetime_text}")
    assert crypto.key.lifetime == lifetime
    assert crypto.key.mki is None
    assert crypto.line() == f"a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{key}|{rebuilt}"


def test_an_mki_without_a_lifetime_and_several_keys_with_mkis() -> None:
    one, two = b64(key_of(30)), b64(bytes(30))
    text = f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{one}|1:2;inline:{two}|2^20|258:2 UNENCRYPTED_SRTCP WSH=256"
    crypto = CryptoAttribute.parse(text)
    assert [k.key_salt for k in crypto.keys] == [key_of(30), bytes(30)]
    assert [(k.lifetime, k.mki, k.mki_length) for k in crypto.keys] == [(None, 1, 2), (1 << 20, 258, 2)]
    assert crypto.keys[1].mki_bytes == b"\x01\x02"
    assert crypto.session_params == ("UNENCRYPTED_SRTCP", "WSH=256")
    assert crypto.window_size_hint == 256
    assert crypto.unsupported_reason is None
    assert CryptoAttribute.parse(crypto.line()) == crypto
    assert crypto.line() == text


def test_session_parameters_are_kept_and_judged() -> None:
    key = b64(key_of(30))
    base = f"a=crypto:4 AES_CM_128_HMAC_SHA1_80 inline:{key}"
    assert CryptoAttribute.parse(base + " KDR=0 FEC_ORDER=FEC_SRTP -X_VENDOR").unsupported_reason is None
    reasons = {
        "KDR=10": "session parameter KDR of a=crypto tag 4 is not supported",
        "UNENCRYPTED_SRTP": "session parameter UNENCRYPTED_SRTP of a=crypto tag 4 is not supported",
        "UNAUTHENTICATED_SRTP": "session parameter UNAUTHENTICATED_SRTP of a=crypto tag 4 is not supported",
        f"FEC_KEY=inline:{key}": "session parameter FEC_KEY of a=crypto tag 4 is not supported",
        "NEW_THING": "session parameter NEW_THING of a=crypto tag 4 is not supported",
    }
    for param, reason in reasons.items():
        crypto = CryptoAttribute.parse(f"{base} {param}")
        assert crypto.session_params == (param,)
        assert crypto.unsupported_reason == reason
        assert key not in reason


def test_other_suites_are_recognised_as_unsupported_with_a_reason() -> None:
    supported = "AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM, AEAD_AES_256_GCM"
    for suite, length in (("AES_256_CM_HMAC_SHA1_80", 46), ("F8_128_HMAC_SHA1_80", 30), ("SOME_FUTURE_SUITE", 17)):
        crypto = CryptoAttribute.parse(f"a=crypto:1 {suite} inline:{b64(key_of(length))}")
        assert crypto.unsupported_reason == f"crypto suite {suite} is not supported (callrec decrypts {supported})"
    # a registered suite's length is still checked
    with pytest.raises(ParseError, match="^the key of a=crypto tag 1 is 30 bytes long where AES_256_CM_HMAC_SHA1_80"):
        CryptoAttribute.parse(f"a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{b64(key_of(30))}")


def test_suite_names_are_read_case_blind() -> None:
    crypto = CryptoAttribute.parse(f"a=crypto:1 aes_cm_128_hmac_sha1_80 INLINE:{b64(key_of(30))}")
    assert crypto.suite == "AES_CM_128_HMAC_SHA1_80"
    assert crypto.unsupported_reason is None


KEY = b64(key_of(30))
MALFORMED = [
    ("a=crypto:", "an a=crypto line needs a tag, a crypto suite and key parameters"),
    (f"a=crypto:1 inline:{KEY}", "an a=crypto line needs a tag, a crypto suite and key parameters"),
    (f"a=crypto:x AES_CM_128_HMAC_SHA1_80 inline:{KEY}", "the a=crypto tag is not a number of 1 to 9 digits"),
    (f"a=crypto:1234567890 AES_CM_128_HMAC_SHA1_80 inline:{KEY}", "the a=crypto tag is not a number of 1 to 9 digits"),
    (f"a=crypto:1 inline:{KEY} UNENCRYPTED_SRTP", "the crypto suite of a=crypto tag 1 is not a name"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 uri:{KEY}", "a key of a=crypto tag 1 does not start with inline:"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY}", "a key of a=crypto tag 1 does not start with inline:"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY[:-1]}!", "the key of a=crypto tag 1 is not base64"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}A", "the key of a=crypto tag 1 is not base64"),
    ("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:", "the key of a=crypto tag 1 is not base64"),
    (
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20|1:4|3",
        "a key of a=crypto tag 1 has more than a lifetime and an MKI after it",
    ),
    (
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|1:4|2^20",
        "a key of a=crypto tag 1 has a lifetime after its MKI",
    ),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20|2^21", "a key of a=crypto tag 1 has two lifetimes"),
    (
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^x",
        "the key lifetime of a=crypto tag 1 is not a number or a power of 2",
    ),
    (
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|forever",
        "the key lifetime of a=crypto tag 1 is not a number or a power of 2",
    ),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^65", "the key lifetime of a=crypto tag 1 is more than 2^64"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|0", "the key lifetime of a=crypto tag 1 is 0"),
    (
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|a:4",
        "the MKI of a=crypto tag 1 is not <value>:<length in bytes>",
    ),
    (
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|1:0",
        "the MKI length of a=crypto tag 1 is not from 1 to 128 bytes",
    ),
    (
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|1:129",
        "the MKI length of a=crypto tag 1 is not from 1 to 128 bytes",
    ),
    (
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|256:1",
        "the MKI value of a=crypto tag 1 does not fit in its 1 bytes",
    ),
    (
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY};inline:{KEY}|2:1",
        "a=crypto tag 1 has several keys but not each with an MKI",
    ),
    (
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|1:1;inline:{KEY}|2:2",
        "the MKIs of a=crypto tag 1 differ in length",
    ),
    (
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|1:1;inline:{KEY}|1:1",
        "a=crypto tag 1 repeats an MKI value",
    ),
    (
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY} KDR=25",
        "the KDR of a=crypto tag 1 is not a number from 0 to 24",
    ),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY} KDR", "the KDR of a=crypto tag 1 is not a number from 0 to 24"),
    (
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY} WSH=63",
        "the WSH of a=crypto tag 1 is not a window size of at least 64",
    ),
    (
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY} FEC_ORDER=X",
        "the FEC_ORDER of a=crypto tag 1 is neither FEC_SRTP nor SRTP_FEC",
    ),
    (
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY} UNENCRYPTED_SRTP=1",
        "the UNENCRYPTED_SRTP of a=crypto tag 1 takes no value",
    ),
]


@pytest.mark.parametrize(("text", "reason"), MALFORMED)
def test_malformed_lines_give_their_exact_reason_without_the_key(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as caught:
        CryptoAttribute.parse(text)
    assert str(caught.value) == reason
    assert caught.value.__cause__ is None
    assert KEY[:16] not in str(caught.value)


def test_no_repr_or_str_shows_the_key() -> None:
    crypto = CryptoAttribute.parse(RFC_LINE)
    answer = choose_answer([RFC_LINE])
    answer_key = b64(answer.answer.key.key_salt)
    shown = [repr(crypto), str(crypto), repr(crypto.key), str(crypto.key), repr(crypto.keys), repr(answer), str(answer)]
    shown += [repr(answer.answer), repr(crypto_by_media(f"v=0\r\nm=audio 1 RTP/SAVP 0\r\n{RFC_LINE}\r\n"))]
    for text in shown:
        assert RFC_KEY_B64[:12] not in text
        assert answer_key[:12] not in text
        assert "inline" not in text
    assert repr(crypto) == "CryptoAttribute(tag=1, suite=AES_CM_128_HMAC_SHA1_80)"
    assert str(crypto) == repr(crypto)
    assert repr(crypto.key) == "KeyParam(<key hidden>, lifetime=1048576, mki=1:4)"


def test_the_answer_takes_the_first_supported_offer_with_its_tag_and_a_fresh_key() -> None:
    offers = [
        f"a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{b64(key_of(46))}",
        f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{KEY} UNENCRYPTED_SRTP",
        "a=crypto:3 AEAD_AES_256_GCM inline:short",
        f"a=crypto:4 AEAD_AES_256_GCM inline:{b64(key_of(44))} UNENCRYPTED_SRTCP KDR=0 WSH=128",
        f"a=crypto:5 AES_CM_128_HMAC_SHA1_32 inline:{KEY}",
    ]
    chosen = choose_answer(offers)
    assert chosen.offer == CryptoAttribute.parse(offers[3])
    assert chosen.answer.tag == 4
    assert chosen.answer.suite == "AEAD_AES_256_GCM"
    assert chosen.answer.session_params == ("UNENCRYPTED_SRTCP",)
    assert len(chosen.answer.key.key_salt) == 44
    assert chosen.answer.key.key_salt != key_of(44)
    assert (chosen.answer.key.lifetime, chosen.answer.key.mki) == (None, None)
    # our line parses back to itself and each answer has its own key
    assert CryptoAttribute.parse(chosen.answer.line()) == chosen.answer
    again = choose_answer(offers)
    assert again.answer.key.key_salt != chosen.answer.key.key_salt
    assert chosen.answer.line().startswith("a=crypto:4 AEAD_AES_256_GCM inline:")


def test_the_answer_accepts_parsed_offers_and_every_supported_suite() -> None:
    for suite, length in LENGTHS.items():
        offer = CryptoAttribute(9, suite, (KeyParam(key_of(length), 1 << 31, 5, 1),))
        answer = answer_for(offer)
        assert choose_answer([offer]).offer is offer
        assert (answer.tag, answer.suite, len(answer.key.key_salt)) == (9, suite, length)


def test_no_usable_offer_says_why_for_each_line() -> None:
    offers = [
        f"a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{b64(key_of(46))}",
        "a=crypto:2 AEAD_AES_128_GCM inline:c2hvcnQ=",
        "a=crypto:3 AEAD_AES_128_GCM inline:short",
        f"a=crypto:4 AES_CM_128_HMAC_SHA1_80 inline:{KEY} UNAUTHENTICATED_SRTP",
    ]
    with pytest.raises(NoUsableCrypto) as caught:
        choose_answer(offers)
    assert str(caught.value) == (
        "no offered a=crypto line can be recorded: crypto suite AES_256_CM_HMAC_SHA1_80 is not supported"
        " (callrec decrypts AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM, AEAD_AES_256_GCM);"
        " the key of a=crypto tag 2 is 5 bytes long where AEAD_AES_128_GCM needs 28 (master key and salt);"
        " the key of a=crypto tag 3 is not base64;"
        " session parameter UNAUTHENTICATED_SRTP of a=crypto tag 4 is not supported"
    )
    assert KEY[:12] not in str(caught.value)
    with pytest.raises(NoUsableCrypto, match="^the offer has no a=crypto line$"):
        choose_answer([])


def test_srtp_profiles() -> None:
    assert is_srtp_profile("RTP/SAVP")
    assert is_srtp_profile("RTP/SAVPF")
    assert is_srtp_profile("rtp/savp ")
    assert not is_srtp_profile("RTP/AVP")
    assert not is_srtp_profile("RTP/AVPF")
    assert not is_srtp_profile("UDP/TLS/RTP/SAVPF")  # DTLS-SRTP: keys are not in the SDP


def test_crypto_by_media_reads_each_section() -> None:
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        f"a=crypto:9 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\n"  # session level: not an m= section's
        "m=audio 4000 RTP/SAVP 0 8\r\n"
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20\r\n"
        "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:bad!\r\n"
        "m=audio 4002 RTP/AVP 0\r\n"
        "m=audio 4004 RTP/SAVPF 0\r\n"
        f"a=crypto:1 AEAD_AES_128_GCM inline:{b64(key_of(28))}\r\n"
    )
    sections = crypto_by_media(sdp.encode())
    assert [(s.proto, s.is_srtp) for s in sections] == [("RTP/SAVP", True), ("RTP/AVP", False), ("RTP/SAVPF", True)]
    assert [c.tag for c in sections[0].offers] == [1]
    assert sections[0].errors == ("the key of a=crypto tag 2 is not base64",)
    assert sections[1].offers == () and sections[1].errors == ()
    assert sections[2].offers[0].suite == "AEAD_AES_128_GCM"
    assert choose_answer(sections[0].offers).answer.tag == 1


def test_a_key_in_the_place_of_a_name_is_never_shown() -> None:
    # a base64 key has no underscore; without + or / it looks like a name, yet is never echoed
    bare = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk"
    crypto = CryptoAttribute.parse(f"a=crypto:1 {bare} inline:{KEY}")
    assert crypto.unsupported_reason is not None
    assert crypto.unsupported_reason.startswith("an unknown crypto suite is not supported (callrec decrypts ")
    crypto = CryptoAttribute.parse(f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY} {bare}")
    assert crypto.unsupported_reason == "an unknown session parameter of a=crypto tag 1 is not supported"
    for text in (repr(crypto), str(crypto)):
        assert bare[:12] not in text and bare.upper()[:12] not in text


def test_huge_numbers_are_refused_with_a_sentence() -> None:
    with pytest.raises(ParseError, match="^the MKI value of a=crypto tag 1 does not fit in its 128 bytes$"):
        CryptoAttribute.parse(f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|{'9' * 5000}:128")
    with pytest.raises(ParseError, match="^the KDR of a=crypto tag 1 is not a number from 0 to 24$"):
        CryptoAttribute.parse(f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY} KDR={'1' * 5000}")
    with pytest.raises(ParseError, match="^the key lifetime of a=crypto tag 1 is not a number or a power of 2$"):
        CryptoAttribute.parse(f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^{'1' * 5000}")
    top = CryptoAttribute.parse(f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|{2**1024 - 1}:128")
    assert top.key.mki_bytes == b"\xff" * 128


keys_st = st.sampled_from(sorted(LENGTHS)).flatmap(
    lambda suite: st.tuples(st.just(suite), st.binary(min_size=LENGTHS[suite], max_size=LENGTHS[suite]))
)


@given(
    keys_st,
    st.integers(min_value=0, max_value=999_999_999),
    st.one_of(st.none(), st.integers(min_value=1, max_value=1 << 64)),
    st.one_of(st.none(), st.integers(min_value=1, max_value=8)),
    st.data(),
)
def test_any_attribute_round_trips(
    suite_key: tuple[str, bytes], tag: int, lifetime: int | None, mki_length: int | None, data: st.DataObject
) -> None:
    suite, key = suite_key
    mki = None if mki_length is None else data.draw(st.integers(min_value=0, max_value=(1 << 8 * mki_length) - 1))
    crypto = CryptoAttribute(tag, suite, (KeyParam(key, lifetime, mki, mki_length),), ("UNENCRYPTED_SRTCP",))
    assert CryptoAttribute.parse(crypto.line()) == crypto
    assert b64(key)[:12] not in repr(crypto)


pieces = st.sampled_from(
    ["a=crypto:", "1", " ", "AES_CM_128_HMAC_SHA1_80", "inline:", "|", ":", ";", "2^", "20", "=", "KDR", "x", "\t"]
)


@given(st.lists(pieces, max_size=14), st.integers(min_value=0, max_value=14), st.binary(min_size=12, max_size=60))
def test_any_text_parses_or_gives_a_parse_error_without_the_key(pieces_: list[str], at: int, key: bytes) -> None:
    secret = b64(key)
    text = "".join(pieces_[:at]) + secret + "".join(pieces_[at:])
    try:
        crypto = CryptoAttribute.parse(text)
    except ParseError as exc:
        assert secret not in str(exc)
        assert "\n" not in str(exc)
        return
    for shown in (repr(crypto), str(crypto), crypto.unsupported_reason or ""):
        assert secret not in shown and secret.upper() not in shown
