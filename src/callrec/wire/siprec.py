"""SIPREC recording metadata (RFC 7865, ``application/rs-metadata+xml``): who takes part and who sends which stream.

The recorder takes party A (the caller: the participant listed first) and B from it, and maps each SDP ``a=label``
to the participant sending that stream. Lenient about what SRCs send: the RFC 7865 format and the older draft one
(Oracle/Acme Packet, AudioCodes SmartTAP: ``id``/``session`` attributes, ``<aor>``, ``<send>``/``<recv>`` inside
``<participant>``, ``<extensiondata parent=...>``); namespaces are ignored (elements and attributes are matched by
local name, so a missing namespace or any prefix, even an undeclared one like AudioCodes' ``<ac:AvayaUCID>``,
parses); unknown elements are extensions whose texts land in ``extensions``. Strict about safety, as the XML comes
from the network: a DTD is refused before its internal subset is read (no entity expansion, no external entity),
and a document is at most 256 KiB and 64 levels deep.

A document that is not well-formed because of the slips SRCs make (OpenSIPS copies display names and URIs into
it unescaped) is repaired when the repair needs no guess, and ``repairs`` says what was done: a bare ``&`` (in
text or an attribute value) or ``<`` (in text) is taken as that character, an HTML entity (``&nbsp;``) as its
character, whitespace or a BOM before the XML declaration is dropped, and bytes that are not UTF-8 in a document
declaring UTF-8 or nothing are read as Windows-1252/ISO-8859-1. Anything else (a tag left open, an entity no one
defines) stays an error. The original Call-ID(s) of the recorded call are collected in ``call_ids``
(``<sipSessionID>`` and extension elements such as ``<apkt:callid>``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

from callrec.errors import ParseError
from callrec.wire.siprec_xml import read_lenient

CONTENT_TYPE = "application/rs-metadata+xml"
NAMESPACE = "urn:ietf:params:xml:ns:recording:1"

# RFC 7865 and draft vocabulary; any other element is an extension whose texts are kept
_KNOWN = frozenset(
    {
        "recording", "datamode", "dataMode", "group", "session", "participant", "stream", "nameID", "name", "aor",
        "send", "recv", "label", "mode", "content-type", "associate-time", "disassociate-time", "start-time",
        "stop-time", "sipSessionID", "group-ref", "sessionrecordingassoc", "participantsessionassoc",
        "participantstreamassoc",
    }
)  # fmt: skip
# known elements whose text is still worth handing on beside the extensions
_KEPT = frozenset({"sipSessionID"})
_LEFT = ("disassociate-time", "stop-time")
# extension elements naming the recorded call's own SIP Call-ID (compared lowercased, without '-' and '_')
_CALL_ID_NAMES = frozenset({"callid", "sipcallid", "originalcallid", "origcallid"})


@dataclass(slots=True)
class MetaParticipant:
    """One participant: its address of record, display name and the stream ids it sends and receives."""

    id: str
    aor: str = ""
    name: str = ""
    send: list[str] = field(default_factory=list)
    recv: list[str] = field(default_factory=list)
    # texts of extension elements inside this participant (or an <extensiondata parent=...> naming it),
    # e.g. Oracle's {"callingParty": "true"}
    extensions: dict[str, str] = field(default_factory=dict)
    # the SRC ended its association with the session (disassociate-time); it is kept, see update()
    disassociated: bool = False
    # this document carried a send/recv association for it, so an update replaces the earlier one
    streams_given: bool = field(default=False, repr=False, compare=False)


@dataclass(slots=True)
class MetaStream:
    """One stream: ``label`` is the ``a=label`` of its SDP ``m=`` line."""

    id: str
    label: str = ""
    session: str = ""


@dataclass(slots=True)
class RecordingMetadata:
    """A metadata document, or the state built from a first snapshot and its updates."""

    session_id: str = ""
    group_id: str = ""
    data_mode: str = ""
    participants: list[MetaParticipant] = field(default_factory=list)
    streams: list[MetaStream] = field(default_factory=list)
    # texts of extension elements by local name (the first of a name wins), plus <sipSessionID>
    extensions: dict[str, str] = field(default_factory=dict)
    # the recorded call's own identifiers: every <sipSessionID> (its value before any ';' parameter: an RFC 7989
    # Session-ID, or the Call-ID where OpenSIPS puts it) and every Call-ID an extension element names
    call_ids: list[str] = field(default_factory=list)
    # what was repaired to read a document that was not well-formed (empty when it was)
    repairs: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes | str) -> RecordingMetadata:
        """Parse an rs-metadata body; raise ``ParseError`` with an exact sentence when it is not one."""
        root, repairs = read_lenient(data)
        if root.tag != "recording":
            raise ParseError("SIPREC metadata root element is not <recording>")
        meta = cls(repairs=repairs)
        _add(meta.call_ids, _call_ids(root))
        declared: dict[str, MetaParticipant] = {}
        streams: dict[str, MetaStream] = {}
        # declarations first: SRCs (Cisco CUBE) interleave them with the associations that refer to them
        for child in root:
            if child.tag in ("datamode", "dataMode"):
                meta.data_mode = (child.text or "").strip()
            elif child.tag == "group":
                meta.group_id = meta.group_id or _attr(child, "group_id", "id")
            elif child.tag == "session":
                meta.session_id = meta.session_id or _attr(child, "session_id", "id")
            elif child.tag == "participant":
                participant = _participant(child)
                if participant.id and participant.id not in declared:
                    declared[participant.id] = participant
                    meta.participants.append(participant)
            elif child.tag == "stream":
                stream_id = _attr(child, "stream_id", "id")
                if stream_id and stream_id not in streams:
                    label = next((_text(e) for e in child if e.tag == "label"), "")
                    streams[stream_id] = MetaStream(stream_id, label, _attr(child, "session_id", "session"))
        meta.streams = list(streams.values())
        undeclared: dict[str, MetaParticipant] = {}

        def named(pid: str) -> MetaParticipant:
            # a partial update refers to participants an earlier snapshot declared
            if pid not in declared and pid not in undeclared:
                undeclared[pid] = MetaParticipant(pid)
                meta.participants.append(undeclared[pid])
            return declared.get(pid) or undeclared[pid]

        for child in root:
            pid = _attr(child, "participant_id", "id") if child.tag.startswith("participant") else ""
            if child.tag == "participantstreamassoc" and pid:
                target = named(pid)
                target.streams_given = True
                _add(target.send, (_text(e) for e in child if e.tag == "send"))
                _add(target.recv, (_text(e) for e in child if e.tag == "recv"))
            elif child.tag == "participantsessionassoc" and pid and any(e.tag in _LEFT for e in child):
                named(pid).disassociated = True
            sinks = [meta.extensions]
            owner = pid if child.tag == "participant" else child.get("parent", "")
            if owner in declared:
                sinks.append(declared[owner].extensions)
            _collect(child, sinks, foreign=False)
        _adopt_misnamed(meta, list(declared.values()), list(undeclared.values()))
        return meta

    def update(self, other: RecordingMetadata) -> None:
        """Apply a later document (RFC 7866 section 9: a complete snapshot or a partial update).

        Participants and streams are merged by id: new ones are appended, known ones take the update's
        non-empty fields, and a participant the update gives a stream association gets that one instead of
        its old one. Nothing is removed, not by a complete snapshot that leaves a participant out nor by a
        ``disassociate-time`` (that only sets ``disassociated``): the parties of audio already recorded keep
        their names. Extension values of the update replace older ones.
        """
        self.session_id = other.session_id or self.session_id
        self.group_id = other.group_id or self.group_id
        self.data_mode = other.data_mode or self.data_mode
        self.extensions.update(other.extensions)
        _add(self.call_ids, other.call_ids)
        known = {p.id: p for p in self.participants}
        for new in other.participants:
            old = known.get(new.id)
            if old is None:
                copy = MetaParticipant(new.id, new.aor, new.name, list(new.send), list(new.recv))
                copy.extensions = dict(new.extensions)
                copy.disassociated, copy.streams_given = new.disassociated, new.streams_given
                self.participants.append(copy)
                known[copy.id] = copy
                continue
            old.aor = new.aor or old.aor
            old.name = new.name or old.name
            old.extensions.update(new.extensions)
            old.disassociated |= new.disassociated
            if new.streams_given:
                old.send, old.recv, old.streams_given = list(new.send), list(new.recv), True
        streams = {s.id: s for s in self.streams}
        for stream in other.streams:
            if stream.id in streams:
                streams[stream.id].label = stream.label or streams[stream.id].label
                streams[stream.id].session = stream.session or streams[stream.id].session
            else:
                streams[stream.id] = MetaStream(stream.id, stream.label, stream.session)
                self.streams.append(streams[stream.id])

    def sender_of(self, label: str) -> MetaParticipant | None:
        """The participant sending the stream with this SDP ``a=label``, or ``None`` when the metadata won't say.

        A label reused by a later stream (SRCs make new stream ids after a transfer) means the later stream;
        of several senders (a mixed stream) an associated participant comes first, then document order.
        """
        label = label.strip()
        for stream in reversed(self.streams):
            if stream.label != label:
                continue
            senders = [p for p in self.participants if stream.id in p.send]
            if senders:
                return next((p for p in senders if not p.disassociated), senders[0])
        return None

    def ordered_participants(self) -> list[MetaParticipant]:
        """Participants in document order (first appearance over all updates): the first is the caller."""
        return list(self.participants)


def _call_ids(root: Element) -> list[str]:
    """The recorded call's identifiers named anywhere in the document (see ``RecordingMetadata.call_ids``)."""
    found: list[str] = []
    for elem in root.iter():
        key = elem.tag.lower().replace("-", "").replace("_", "")
        text = _text(elem)
        if text and len(elem) == 0 and (key == "sipsessionid" or key in _CALL_ID_NAMES):
            value = text.split(";", 1)[0].strip() if key == "sipsessionid" else text
            if value and value.strip("0"):  # an all-zero Session-ID is RFC 7989's "not known yet"
                found.append(value)
    return found


def _text(elem: Element) -> str:
    return (elem.text or "").strip()


def _attr(elem: Element, *names: str) -> str:
    """The first of the attributes (the RFC name, then the draft one) that is present, stripped."""
    return next((elem.attrib[n].strip() for n in names if n in elem.attrib), "")


def _add(ids: list[str], new: Iterable[str]) -> None:
    ids[:] = dict.fromkeys([*ids, *(stream_id for stream_id in new if stream_id)])


def _participant(elem: Element) -> MetaParticipant:
    """A ``<participant>`` in either format: ``nameID``s (the first aor and name win) or the draft's ``aor``/
    ``name``, and the draft's ``send``/``recv`` children."""
    participant = MetaParticipant(_attr(elem, "participant_id", "id"))
    for child in elem:
        if child.tag == "nameID":
            participant.aor = participant.aor or _attr(child, "aor")
            participant.name = participant.name or next((_text(e) for e in child if e.tag == "name" and _text(e)), "")
        elif child.tag == "aor":
            participant.aor = participant.aor or _text(child)
        elif child.tag == "name":
            participant.name = participant.name or _text(child)
        elif child.tag in ("send", "recv"):
            participant.streams_given = True
        elif child.tag in _LEFT:
            participant.disassociated = True
    _add(participant.send, (_text(e) for e in elem if e.tag == "send"))
    _add(participant.recv, (_text(e) for e in elem if e.tag == "recv"))
    return participant


def _collect(elem: Element, sinks: list[dict[str, str]], foreign: bool) -> None:
    """Put the text of every leaf inside an extension (an unknown element or ``<extensiondata>``) into the sinks."""
    foreign = foreign or elem.tag == "extensiondata" or elem.tag not in _KNOWN
    if len(elem) == 0:
        text = _text(elem)
        if text and (foreign or elem.tag in _KEPT):
            for sink in sinks:
                sink.setdefault(elem.tag, text)
    for child in elem:
        _collect(child, sinks, foreign)


def _adopt_misnamed(
    meta: RecordingMetadata, declared: list[MetaParticipant], undeclared: list[MetaParticipant]
) -> None:
    """Cisco IOS 15.6 names the second participant's stream association after a stream id: give such an
    association to the one declared participant without any."""
    stream_ids = {s.id for s in meta.streams}
    misnamed = [p for p in undeclared if p.id in stream_ids]
    lacking = [p for p in declared if not p.streams_given]
    if len(misnamed) == 1 and len(lacking) == 1:
        lacking[0].send, lacking[0].recv, lacking[0].streams_given = misnamed[0].send, misnamed[0].recv, True
        meta.participants.remove(misnamed[0])
