"""SIPREC recording metadata (RFC 7865): SRC-shaped documents, updates, sender by label, exact error sentences."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callrec.errors import ParseError
from callrec.wire.siprec import MetaParticipant, RecordingMetadata
from callrec.wire.siprec_xml import MAX_METADATA_BYTES

FIXTURES = Path(__file__).parent / "fixtures" / "siprec"
NS = "urn:ietf:params:xml:ns:recording:1"


def load(name: str) -> RecordingMetadata:
    return RecordingMetadata.parse((FIXTURES / name).read_bytes())


def aor_of(participant: MetaParticipant | None) -> str | None:
    return None if participant is None else participant.aor


def doc(body: str, root: str = f"<recording xmlns='{NS}'>", end: str = "</recording>") -> str:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{root}\n{body}\n{end}'


TWO_PARTY = doc(
    """
  <datamode>complete</datamode>
  <session session_id="S1"/>
  <participant participant_id="PA"><nameID aor="sip:alice@example.com"><name>Alice</name></nameID></participant>
  <participant participant_id="PB"><nameID aor="sip:bob@example.com"><name>Bob</name></nameID></participant>
  <stream stream_id="SA" session_id="S1"><label>1</label></stream>
  <stream stream_id="SB" session_id="S1"><label>2</label></stream>
  <participantstreamassoc participant_id="PA"><send>SA</send><recv>SB</recv></participantstreamassoc>
  <participantstreamassoc participant_id="PB"><send>SB</send><recv>SA</recv></participantstreamassoc>
"""
)


# RFC 7865 format
def test_rfc7865_example_parties_in_document_order() -> None:
    meta = load("rfc7865.xml")
    assert meta.session_id == "Wq8nH3rTQd6o1F0b2c3d4A=="
    assert meta.group_id == "3kYv0MQ1Qm2uHq2n7Y9xBg=="
    assert meta.data_mode == "complete"
    assert [(p.aor, p.name) for p in meta.ordered_participants()] == [
        ("sip:alice@atlanta.example.com", "Alice"),
        ("sip:bob@biloxi.example.com", "Bob"),
    ]


def test_rfc7865_example_streams_and_associations() -> None:
    meta = load("rfc7865.xml")
    assert [(s.label, s.session) for s in meta.streams] == [
        (str(n), "Wq8nH3rTQd6o1F0b2c3d4A==") for n in (96, 97, 98, 99)
    ]
    alice = meta.participants[0]
    assert alice.send == ["sA1+audio/alice00000==", "sA2+video/alice00000=="]
    assert alice.recv == ["sB1+audio/bob0000000==", "sB2+video/bob0000000=="]


def test_sender_of_each_label() -> None:
    meta = load("rfc7865.xml")
    senders = {label: aor_of(meta.sender_of(label)) for label in ("96", "97", "98", "99")}
    assert senders == {
        "96": "sip:alice@atlanta.example.com",
        "97": "sip:alice@atlanta.example.com",
        "98": "sip:bob@biloxi.example.com",
        "99": "sip:bob@biloxi.example.com",
    }


def test_sender_of_unknown_label_is_none() -> None:
    assert load("rfc7865.xml").sender_of("3") is None


def test_several_name_ids_the_first_aor_and_name_win() -> None:
    alice = load("rfc7865.xml").participants[0]
    assert (alice.aor, alice.name) == ("sip:alice@atlanta.example.com", "Alice")


def test_extension_elements_of_group_and_session_and_the_sip_session_id() -> None:
    extensions = load("rfc7865.xml").extensions
    assert extensions == {
        "supervisor": "sip:carol@atlanta.example.com",
        "structure": "FOO!",
        "whatever": "bar",
        "sipSessionID": "ab30317f1a784dc48ff824d0d3715d86;remote=47755a9de7794ba387653f2099600ef2",
    }


# vendors
def test_audiocodes_vendor_elements_become_extensions() -> None:
    meta = load("audiocodes.xml")
    assert meta.extensions["AvayaUCID"] == "FA080019001038F725B3"
    assert meta.extensions["GenesysUUID"] == "4BOKLLA3VH66JF112M1CC9VHKS14F0KP"
    assert aor_of(meta.sender_of("1")) == "sip:+4930123456@pbx.example.de"
    assert aor_of(meta.sender_of("2")) == "sip:2001@sbc.example.de"


def test_an_undeclared_prefix_still_parses() -> None:
    meta = RecordingMetadata.parse(doc('<session session_id="S"><ac:AvayaUCID>FA08</ac:AvayaUCID></session>'))
    assert meta.extensions == {"AvayaUCID": "FA08"}


def test_smarttap_draft_format_with_id_attributes_and_inline_send() -> None:
    meta = load("smarttap.xml")
    assert meta.session_id == "1a2b3c4d-5e6f-4708-9a1b-2c3d4e5f6a7b"
    assert meta.group_id == "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
    assert [p.aor for p in meta.participants] == ["+14155550100@carrier.example.com", "7002@pbx.example.com"]
    assert meta.streams[1].session == "1a2b3c4d-5e6f-4708-9a1b-2c3d4e5f6a7b"
    assert aor_of(meta.sender_of("2")) == "7002@pbx.example.com"


def test_cisco_declarations_interleaved_with_associations() -> None:
    meta = load("cisco_cube.xml")
    assert [p.aor for p in meta.ordered_participants()] == ["sip:442079460000@10.10.1.1", "sip:4100@172.20.5.9"]
    assert aor_of(meta.sender_of("1")) == "sip:442079460000@10.10.1.1"
    assert aor_of(meta.sender_of("2")) == "sip:4100@172.20.5.9"


def test_cisco_association_named_after_a_stream_goes_to_the_participant_without_one() -> None:
    meta = load("cisco_cube_misnamed.xml")
    assert [p.id for p in meta.participants] == ["Kq3xYhKXEeaANvFyJSj9YQ==", "Kq3xYhKXEeaAN/FyJSj9YQ=="]
    assert aor_of(meta.sender_of("2")) == "sip:4100@172.20.5.9"


def test_oracle_draft_format_with_aor_element_and_stripped_names() -> None:
    meta = load("oracle.xml")
    assert meta.session_id == "BYiC7uSZQGN3VQdzWI1HWw=="
    assert [(p.aor, p.name) for p in meta.participants] == [
        ("sip:sipp@192.0.2.10", "sipp"),
        ("sip:service@198.51.100.13", "sut"),
    ]
    assert aor_of(meta.sender_of("1")) == "sip:sipp@192.0.2.10"
    assert aor_of(meta.sender_of("2")) == "sip:service@198.51.100.13"


def test_oracle_extension_data_per_participant_and_by_parent() -> None:
    meta = load("oracle.xml")
    caller, callee = meta.participants
    assert caller.extensions["callingParty"] == "true"
    assert caller.extensions["value"] == "sip:mike@acme.example.com"
    assert callee.extensions == {"callingParty": "false", "in-realm": "core", "agentId": "7731"}
    # document-wide, the first of a name wins
    assert meta.extensions["callingParty"] == "true"
    assert meta.extensions["ucid"] == "00FA080019001038F725B3"


def test_top_level_extension_data_with_its_own_prefix() -> None:
    meta = RecordingMetadata.parse(
        doc(
            '<extensiondata xmlns:jb="http://jambonz.org/siprec">'
            "<jb:callsid>c-1</jb:callsid><jb:direction>inbound</jb:direction></extensiondata>"
        )
    )
    assert meta.extensions == {"callsid": "c-1", "direction": "inbound"}


# namespaces and leniency
def test_without_namespace() -> None:
    meta = RecordingMetadata.parse(TWO_PARTY.replace(f" xmlns='{NS}'", ""))
    assert aor_of(meta.sender_of("2")) == "sip:bob@example.com"


def test_with_a_namespace_prefix() -> None:
    prefixed = re.sub(r"<(/?)(\w)", r"<\1rec:\2", TWO_PARTY).replace("xmlns=", "xmlns:rec=")
    assert "<rec:participantstreamassoc" in prefixed
    meta = RecordingMetadata.parse(prefixed)
    assert aor_of(meta.sender_of("1")) == "sip:alice@example.com"


def test_unknown_elements_and_attributes_are_ignored() -> None:
    noisy = TWO_PARTY.replace("<label>1</label>", "<label>1</label><codec x='y'><rate/></codec>")
    noisy = noisy.replace('<participant participant_id="PA">', '<participant participant_id="PA" role="x"><foo/>')
    meta = RecordingMetadata.parse(noisy)
    assert aor_of(meta.sender_of("1")) == "sip:alice@example.com"
    assert meta.extensions == {}


def test_text_and_bytes_parse_alike() -> None:
    assert RecordingMetadata.parse(TWO_PARTY) == RecordingMetadata.parse(TWO_PARTY.encode())


def test_declared_latin1_bytes() -> None:
    latin1 = TWO_PARTY.replace("UTF-8", "ISO-8859-1").replace("Bob<", "Bj\xf6rn<").encode("latin-1")
    assert RecordingMetadata.parse(latin1).participants[1].name == "Bj\xf6rn"


def test_several_associations_of_one_participant_accumulate() -> None:
    meta = RecordingMetadata.parse(
        TWO_PARTY.replace("</recording>", '<participantstreamassoc participant_id="PA"><send>SM</send>'
                          "</participantstreamassoc></recording>")
    )  # fmt: skip
    assert meta.participants[0].send == ["SA", "SM"]


def test_a_mixed_stream_is_credited_to_the_first_sender() -> None:
    mixed = TWO_PARTY.replace("<send>SB</send>", "<send>SB</send><send>SA</send>")
    assert aor_of(RecordingMetadata.parse(mixed).sender_of("1")) == "sip:alice@example.com"


def test_disassociated_participant_is_kept_and_flagged() -> None:
    left = TWO_PARTY.replace(
        "</recording>",
        '<participantsessionassoc participant_id="PB" session_id="S1">'
        "<disassociate-time>2024-01-01T00:00:09Z</disassociate-time></participantsessionassoc></recording>",
    )
    meta = RecordingMetadata.parse(left)
    assert [(p.id, p.disassociated) for p in meta.participants] == [("PA", False), ("PB", True)]
    assert aor_of(meta.sender_of("2")) == "sip:bob@example.com"


# updates
TRANSFER = doc(
    """
  <datamode>partial</datamode>
  <participant participant_id="PC"><nameID aor="sip:carol@example.com"><name>Carol</name></nameID></participant>
  <participantsessionassoc participant_id="PB" session_id="S1">
    <disassociate-time>2024-01-01T00:01:00Z</disassociate-time>
  </participantsessionassoc>
  <participantsessionassoc participant_id="PC" session_id="S1"/>
  <stream stream_id="SC" session_id="S1"><label>2</label></stream>
  <participantstreamassoc participant_id="PC"><send>SC</send><recv>SA</recv></participantstreamassoc>
  <participantstreamassoc participant_id="PB"/>
  <participantstreamassoc participant_id="PA"><send>SA</send><recv>SC</recv></participantstreamassoc>
"""
)


def test_update_adds_a_participant_and_a_stream() -> None:
    meta = RecordingMetadata.parse(TWO_PARTY)
    meta.update(RecordingMetadata.parse(TRANSFER))
    assert [p.id for p in meta.ordered_participants()] == ["PA", "PB", "PC"]
    assert [s.id for s in meta.streams] == ["SA", "SB", "SC"]
    assert meta.data_mode == "partial"


def test_update_replaces_the_associations_of_the_participants_it_names() -> None:
    meta = RecordingMetadata.parse(TWO_PARTY)
    meta.update(RecordingMetadata.parse(TRANSFER))
    alice, bob, carol = meta.participants
    assert (alice.send, alice.recv) == (["SA"], ["SC"])
    assert (bob.send, bob.recv, bob.disassociated) == ([], [], True)
    assert (carol.send, carol.recv) == (["SC"], ["SA"])


def test_update_keeps_associations_it_does_not_name() -> None:
    meta = RecordingMetadata.parse(TWO_PARTY)
    meta.update(RecordingMetadata.parse(doc('<stream stream_id="SB"><label>2</label></stream>')))
    assert meta.participants[1].send == ["SB"]


def test_update_a_reused_label_means_the_later_stream() -> None:
    meta = RecordingMetadata.parse(TWO_PARTY)
    meta.update(RecordingMetadata.parse(TRANSFER))
    assert aor_of(meta.sender_of("2")) == "sip:carol@example.com"
    assert aor_of(meta.sender_of("1")) == "sip:alice@example.com"


def test_update_keeps_fields_a_partial_document_leaves_out() -> None:
    meta = RecordingMetadata.parse(TWO_PARTY)
    meta.update(RecordingMetadata.parse(TRANSFER))
    assert (meta.session_id, meta.participants[1].aor, meta.participants[1].name) == (
        "S1",
        "sip:bob@example.com",
        "Bob",
    )


def test_update_with_a_complete_snapshot_leaving_a_participant_out_keeps_it() -> None:
    meta = RecordingMetadata.parse(TWO_PARTY)
    meta.update(RecordingMetadata.parse(TWO_PARTY.replace('participant_id="PB"', 'participant_id="PX"')))
    assert [p.id for p in meta.ordered_participants()] == ["PA", "PB", "PX"]
    assert meta.participants[0].aor == "sip:alice@example.com"


def test_update_does_not_share_lists_with_the_update() -> None:
    meta = RecordingMetadata.parse(TWO_PARTY)
    update = RecordingMetadata.parse(TRANSFER)
    meta.update(update)
    update.participants[0].send.append("SZ")
    assert meta.participants[2].send == ["SC"]


def test_update_extension_values_replace_older_ones() -> None:
    meta = RecordingMetadata.parse(doc("<extensiondata><state>ringing</state></extensiondata>"))
    meta.update(RecordingMetadata.parse(doc("<extensiondata><state>talking</state></extensiondata>")))
    assert meta.extensions == {"state": "talking"}


# errors
BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE recording [\n <!ENTITY lol "lol">\n'
    + b"".join(
        b' <!ENTITY lol%d "%s">\n' % (n, (b"&lol%d;" % (n - 1) if n > 1 else b"&lol;") * 10) for n in range(1, 10)
    )
    + b"]>\n<recording><x>&lol9;</x></recording>"
)


@pytest.mark.parametrize(
    ("data", "sentence"),
    [
        (b"", "SIPREC metadata is not well-formed XML"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n", "SIPREC metadata is not well-formed XML"),
        (b"<recording><participant></recording>", "SIPREC metadata is not well-formed XML"),
        (b"<recording>&lol;</recording>", "SIPREC metadata is not well-formed XML"),
        ("<recording>\ud800</recording>", "SIPREC metadata is not well-formed XML"),
        (b"<sdp/>", "SIPREC metadata root element is not <recording>"),
        (b"<?xml version='1.0'?><conference-info xmlns='urn:ietf:params:xml:ns:conference-info'/>",
         "SIPREC metadata root element is not <recording>"),
        (BILLION_LAUGHS, "SIPREC metadata contains a DTD"),
        (b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><recording>&x;</recording>',
         "SIPREC metadata contains a DTD"),
        (b'<!DOCTYPE recording SYSTEM "http://192.0.2.1/x.dtd"><recording/>', "SIPREC metadata contains a DTD"),
        (b"<recording>" + b" " * MAX_METADATA_BYTES + b"</recording>", "SIPREC metadata is larger than 256 KiB"),
        ("<recording>" + "\xe9" * (MAX_METADATA_BYTES // 2) + "</recording>", "SIPREC metadata is larger than 256 KiB"),
        (b"<recording>" + b"<a>" * 64 + b"</a>" * 64 + b"</recording>",
         "SIPREC metadata is nested more than 64 levels deep"),
        (b'<?xml version="1.0" encoding="utf-7"?><recording/>',
         "SIPREC metadata declares an unsupported character encoding"),
        (b'<?xml version="1.0" encoding="x-nonsense"?><recording/>',
         "SIPREC metadata declares an unsupported character encoding"),
    ],
)  # fmt: skip
def test_parse_errors(data: bytes | str, sentence: str) -> None:
    with pytest.raises(ParseError, match=f"^{re.escape(sentence)}$"):
        RecordingMetadata.parse(data)


def test_a_document_of_exactly_the_size_limit_parses() -> None:
    data = TWO_PARTY.encode()
    data = data.replace(b"</recording>", b" " * (MAX_METADATA_BYTES - len(data)) + b"</recording>")
    assert len(data) == MAX_METADATA_BYTES
    assert len(RecordingMetadata.parse(data).participants) == 2


@pytest.mark.slow
@given(st.binary(max_size=512))
@settings(max_examples=300)
def test_random_bytes_raise_only_parse_error(data: bytes) -> None:
    for candidate in (data, b"<recording>" + data + b"</recording>"):
        with contextlib.suppress(ParseError):
            RecordingMetadata.parse(candidate)


@given(st.text(max_size=256))
@settings(max_examples=300)
def test_random_text_raises_only_parse_error(text: str) -> None:
    with contextlib.suppress(ParseError):
        RecordingMetadata.parse(text)


NAMES = [
    *("recording", "participant", "stream", "nameID", "name", "aor", "send", "recv", "label", "extensiondata"),
    *("participantstreamassoc", "participantsessionassoc", "disassociate-time", "session", "group", "x:ext"),
]
ATTRS = ["participant_id", "stream_id", "session_id", "group_id", "id", "aor", "parent", "session"]


def render(name: str, attrs: list[tuple[str, str]], text: str, children: list[str]) -> str:
    return f"<{name}{''.join(f' {k}={v!r}' for k, v in attrs)}>{text}{''.join(children)}</{name}>"


def elements(depth: int) -> st.SearchStrategy[str]:
    """Random documents in the metadata vocabulary, with ids that refer to each other."""
    value = st.sampled_from(["P", "S", "1", ""])
    attrs = st.lists(st.tuples(st.sampled_from(ATTRS), value), max_size=3, unique_by=lambda a: a[0])
    text = st.sampled_from(["", "1", "2", "P", "S", " a ", "&amp;", "<![CDATA[x]]>"])
    children = st.lists(elements(depth - 1), max_size=4) if depth else st.just([])
    return st.builds(render, st.sampled_from(NAMES), attrs, text, children)


@pytest.mark.slow
@given(st.lists(elements(3), max_size=8), st.lists(elements(2), max_size=4))
@settings(max_examples=200)
def test_random_metadata_shapes_parse_update_and_answer(first: list[str], second: list[str]) -> None:
    meta = RecordingMetadata.parse(doc("".join(first), root="<recording xmlns:x='urn:x'>"))
    meta.update(RecordingMetadata.parse(doc("".join(second), root="<recording xmlns:x='urn:x'>")))
    for label in ("1", "2", "P"):
        sender = meta.sender_of(label)
        assert sender is None or sender in meta.ordered_participants()
