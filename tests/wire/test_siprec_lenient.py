"""Lenient rs-metadata: the slips SRCs make in the field are repaired (no guess), the rest falls back.

The documents are shaped like what the SRCs send: OpenSIPS' siprec module writes display names and URIs into
its metadata unescaped (``srs_body.c``: ``<name>`` and ``aor`` copied as they are, the dialog's Call-ID in
``<sipSessionID>``), Oracle/Acme puts vendor extension data under an ``apkt`` prefix, AudioCodes uses prefixes
it never declares.
"""

from __future__ import annotations

import pytest

from callrec.errors import ParseError
from callrec.wire.siprec import RecordingMetadata


def opensips(name_a: str = "AT&T Sales", name_b: str = "Bob Callee", aor_a: str = "sip:+15551230001@pbx.example.com",
             call_id: str = "6f1c0a2e-51f3@10.0.0.5") -> str:  # fmt: skip
    """A document as OpenSIPS 3.x writes it (CRLF and tabs, single-quoted namespace, values copied raw)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\r\n'
        "<recording xmlns='urn:ietf:params:xml:ns:recording:1'>\r\n\t<datamode>complete</datamode>\r\n"
        '\t<session session_id="0mTk6WGaR+CqY5s1kZtq3g==">\r\n'
        f"\t\t<sipSessionID>{call_id}</sipSessionID>\r\n\t</session>\r\n"
        '\t<participant participant_id="c1V4YWx0ZXJuYXRlMQ==">\r\n'
        f'\t\t<nameID aor="{aor_a}">\r\n\t\t\t<name>{name_a}</name>\r\n\t\t</nameID>\r\n\t</participant>\r\n'
        '\t<participant participant_id="c1V4YWx0ZXJuYXRlMg==">\r\n'
        f'\t\t<nameID aor="sip:+15559870002@carrier.example.net">\r\n\t\t\t<name>{name_b}</name>\r\n'
        "\t\t</nameID>\r\n\t</participant>\r\n"
        '\t<stream stream_id="c3RyZWFtMQ==" session_id="0mTk6WGaR+CqY5s1kZtq3g==">\r\n'
        "\t\t<label>1</label>\r\n\t</stream>\r\n"
        '\t<stream stream_id="c3RyZWFtMg==" session_id="0mTk6WGaR+CqY5s1kZtq3g==">\r\n'
        "\t\t<label>2</label>\r\n\t</stream>\r\n"
        '\t<participantstreamassoc participant_id="c1V4YWx0ZXJuYXRlMQ==">'
        "<send>c3RyZWFtMQ==</send></participantstreamassoc>\r\n"
        '\t<participantstreamassoc participant_id="c1V4YWx0ZXJuYXRlMg==">'
        "<send>c3RyZWFtMg==</send></participantstreamassoc>\r\n"
        "</recording>"
    )


def parties(meta: RecordingMetadata) -> list[tuple[str, str]]:
    return [(p.aor, p.name) for p in meta.ordered_participants()]


def test_a_well_formed_document_needs_no_repair() -> None:
    meta = RecordingMetadata.parse(opensips(name_a="AT&amp;T Sales"))
    assert meta.repairs == []
    assert parties(meta)[0] == ("sip:+15551230001@pbx.example.com", "AT&T Sales")


def test_bare_ampersand_in_a_name_keeps_both_parties() -> None:
    meta = RecordingMetadata.parse(opensips().encode())
    assert parties(meta) == [
        ("sip:+15551230001@pbx.example.com", "AT&T Sales"),
        ("sip:+15559870002@carrier.example.net", "Bob Callee"),
    ]
    assert meta.repairs == ["a bare '&'"]
    assert meta.sender_of("1") is meta.participants[0]
    assert meta.sender_of("2") is meta.participants[1]
    assert meta.call_ids == ["6f1c0a2e-51f3@10.0.0.5"]


def test_bare_ampersand_in_an_attribute_value() -> None:
    meta = RecordingMetadata.parse(opensips(name_a="Ann", aor_a="sip:+15551230001@pbx.example.com;user=phone&x=1"))
    assert parties(meta)[0] == ("sip:+15551230001@pbx.example.com;user=phone&x=1", "Ann")
    assert meta.repairs == ["a bare '&'"]


def test_ampersands_that_are_references_stay_references() -> None:
    meta = RecordingMetadata.parse(opensips(name_a="Q&amp;A &#38; &#x26; R&D &lt;1&gt;"))
    assert parties(meta)[0][1] == "Q&A & & R&D <1>"
    assert meta.repairs == ["a bare '&'"]


def test_bare_less_than_in_a_name() -> None:
    meta = RecordingMetadata.parse(opensips(name_a="Sales <24h> & Support", name_b="x < y <z"))
    assert [name for _, name in parties(meta)] == ["Sales <24h> & Support", "x < y <z"]
    assert sorted(meta.repairs) == ["a bare '&'", "a bare '<'"]


def test_html_entity_becomes_its_character() -> None:
    meta = RecordingMetadata.parse(opensips(name_a="M&uuml;ller&nbsp;GmbH"))
    assert parties(meta)[0][1] == "Müller\u00a0GmbH"
    assert meta.repairs == ["an HTML entity"]


def test_latin1_bytes_without_declared_encoding() -> None:
    data = opensips(name_a="Jos\u00e9 M\u00fcller").replace('<?xml version="1.0" encoding="UTF-8"?>\r\n', "")
    meta = RecordingMetadata.parse(data.encode("latin-1"))
    assert parties(meta)[0][1] == "José Müller"
    assert meta.repairs == ["bytes that are not UTF-8 read as ISO-8859-1"]


def test_latin1_bytes_in_a_document_declaring_utf8_with_a_bare_ampersand() -> None:
    meta = RecordingMetadata.parse(opensips(name_a="Fran\u00e7ois & Fils").encode("latin-1"))
    assert parties(meta)[0][1] == "François & Fils"
    assert meta.repairs == ["bytes that are not UTF-8 read as ISO-8859-1", "a bare '&'"]


def test_declared_latin1_is_read_as_declared() -> None:
    data = opensips(name_a="Jos\u00e9").replace('encoding="UTF-8"', 'encoding="ISO-8859-1"')
    meta = RecordingMetadata.parse(data.encode("latin-1"))
    assert parties(meta)[0][1] == "José"
    assert meta.repairs == []


@pytest.mark.parametrize("lead", ["\r\n", "  \r\n\t", "\ufeff\r\n"])
def test_whitespace_or_bom_before_the_xml_declaration(lead: str) -> None:
    meta = RecordingMetadata.parse((lead + opensips(name_a="Ann")).encode())
    assert parties(meta)[0][1] == "Ann"
    assert meta.repairs == ["whitespace before the XML declaration"]


def test_a_bom_alone_and_no_declaration_need_no_repair() -> None:
    plain = opensips(name_a="Ann").split("\r\n", 1)[1]
    assert RecordingMetadata.parse(("\ufeff" + plain).encode()).repairs == []
    assert RecordingMetadata.parse(plain.encode()).repairs == []


def test_undeclared_prefix_and_a_bare_ampersand() -> None:
    # AudioCodes writes <ac:...> without declaring ac; plus a bare '&' in a value it copied from the call
    data = opensips().replace(
        "</recording>", "\t<extensiondata><ac:AvayaUCID>00001002871593090183</ac:AvayaUCID>"
        "<ac:Account>Smith & Sons</ac:Account></extensiondata>\r\n</recording>"
    )  # fmt: skip
    meta = RecordingMetadata.parse(data)
    assert meta.extensions["AvayaUCID"] == "00001002871593090183"
    assert meta.extensions["Account"] == "Smith & Sons"
    assert len(meta.participants) == 2


def test_comments_and_cdata_are_left_as_they_are() -> None:
    data = opensips().replace("<name>AT&T Sales</name>", "<name><![CDATA[AT&T <Sales>]]><!-- a & b < c --></name>")
    meta = RecordingMetadata.parse(data.replace("Bob Callee", "B&B"))
    assert [name for _, name in parties(meta)] == ["AT&T <Sales>", "B&B"]


def test_call_ids_from_extension_elements_and_session_ids() -> None:
    data = opensips(call_id="a84b4c76e66710@pc33.example.com").replace(
        "</recording>",
        '\t<extensiondata xmlns:apkt="http://acmepacket.com/siprec/extensiondata">'
        "<apkt:callid>8bd2c1-e7@198.51.100.7</apkt:callid></extensiondata>\r\n"
        "\t<session session_id='other'><sipSessionID>ab30317f1a784dc48ff824d0d3715d86;"
        "remote=00000000000000000000000000000000</sipSessionID></session>\r\n"
        "\t<session session_id='third'><sipSessionID>00000000000000000000000000000000</sipSessionID></session>\r\n"
        "</recording>",
    )
    meta = RecordingMetadata.parse(data)
    assert meta.call_ids == [
        "a84b4c76e66710@pc33.example.com", "8bd2c1-e7@198.51.100.7", "ab30317f1a784dc48ff824d0d3715d86",
    ]  # fmt: skip
    meta.update(RecordingMetadata.parse(opensips(call_id="second-leg@10.0.0.6")))
    assert meta.call_ids[-1] == "second-leg@10.0.0.6" and len(meta.call_ids) == 4


@pytest.mark.parametrize(
    "broken",
    [
        opensips().replace("</nameID>", "", 1),  # a tag left open: which element ends where is a guess
        opensips(name_a="&lol; Sales"),  # an entity no one defines
        opensips(name_a="A<B>"),  # '<' that starts a tag: an element left open, or text?
        opensips().replace("</recording>", ""),  # the document is cut short
        opensips(name_a="x").replace("x</name>", "x</name", 1),
    ],
)
def test_what_cannot_be_repaired_without_a_guess_is_an_error(broken: str) -> None:
    with pytest.raises(ParseError, match="^SIPREC metadata is not well-formed XML$"):
        RecordingMetadata.parse(broken)


def test_a_dtd_is_refused_even_beside_a_bare_ampersand() -> None:
    data = opensips().replace("<recording ", '<!DOCTYPE recording [<!ENTITY x "y">]>\r\n<recording ', 1)
    with pytest.raises(ParseError, match="^SIPREC metadata contains a DTD$"):
        RecordingMetadata.parse(data)


def test_the_size_limit_holds_after_repair() -> None:
    # each bare '&' grows by four characters: a document that fits only unrepaired is refused, not read
    data = opensips(name_a="&" * 60_000)
    with pytest.raises(ParseError, match="^SIPREC metadata is not well-formed XML$"):
        RecordingMetadata.parse(data)


def test_pathological_markup_is_read_in_linear_time() -> None:
    # each '<' tries markup at most up to the next '<' (or a closer found once): no quadratic blow-up
    for body in (b"<!--" * 60_000, b'<a b="' * 40_000, b"<?" * 60_000):
        data = b"<recording>" + body
        with pytest.raises(ParseError, match="^SIPREC metadata is not well-formed XML$"):
            RecordingMetadata.parse(data)

