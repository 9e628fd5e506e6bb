"""One SIPREC recording session: its offered streams, who sends each, the SDP answer, and its tape."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from callrec.config import RecorderConfig
from callrec.files.tape import TapeWriter
from callrec.models import CallInfo, Party, Stream
from callrec.recorder.listener import Origin
from callrec.recorder.sipuri import new_tag, route_set, target_uri
from callrec.wire.sdes import SdesAnswer, is_srtp_profile
from callrec.wire.sdp import SdpMedia
from callrec.wire.sip import SipMessage, display_name, uri_user
from callrec.wire.siprec import MetaParticipant, RecordingMetadata

RECORDABLE_PROFILES = ("RTP/AVP", "RTP/AVPF")


@dataclass(slots=True)
class MediaLine:
    """One ``m=`` line of the offer and what we answered for it (``port`` 0: rejected).

    An SRTP line (RTP/SAVP, RTP/SAVPF) holds the ``a=crypto`` we accepted and answered (``sdes``); when its
    latest offer has none we can decrypt, ``refused`` says why and it is answered with port 0."""

    offer: SdpMedia
    port: int = 0
    stream: Stream | None = None
    sdes: SdesAnswer | None = None
    refused: str = ""

    @property
    def label(self) -> str:
        return self.offer.label or ""


@dataclass(slots=True)
class RecordingSession:
    """State of one recording dialog (its Call-ID, tags, streams) and the tape it writes."""

    call_id: str
    remote_tag: str
    local_tag: str
    info: CallInfo
    folder: Path
    remote_target: str = ""
    lines: list[MediaLine] = field(default_factory=list)
    metadata: RecordingMetadata | None = None
    tape: TapeWriter | None = None
    sdp_version: int = 0
    answer: bytes = b""
    confirmed: bool = False
    closed: bool = False
    cancelled: bool = False
    last_activity: float = field(default_factory=time.monotonic)
    packets_at_check: int = 0
    last_invite_cseq: int = 0
    # how to reach the SRC (for a BYE of our own) and the address our answer gave it
    origin: Origin | None = None
    advertised: str = ""
    # the SRC's address (one per host), for the per-source session limit
    source: str = ""
    # the dialog as RFC 3261 section 12.1.1 has the UAS keep it, for requests of our own (the BYE): our URI
    # (the INVITE's To, to which our tag is added), the SRC's (its From, with its tag), the route set (the
    # INVITE's Record-Route entries in the order received) and our own CSeq, counted from 0 when unused
    local_uri: str = ""
    remote_uri: str = ""
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 0

    def ports(self) -> list[int]:
        return [line.port for line in self.lines if line.port]

    def touch(self) -> None:
        self.last_activity = time.monotonic()


def session_for(
    invite: SipMessage, info: CallInfo, folder: Path, metadata: RecordingMetadata | None
) -> RecordingSession:
    """The session an accepted INVITE opens, with the dialog state RFC 3261 section 12.1.1 has the UAS keep."""
    return RecordingSession(
        call_id=invite.call_id,
        remote_tag=invite.from_tag or "",
        local_tag=new_tag(),
        info=info,
        folder=folder,
        metadata=metadata,
        remote_target=target_uri(invite.header("contact") or invite.header("from") or ""),
        last_invite_cseq=invite.cseq[0],
        local_uri=invite.header("to") or "",
        remote_uri=invite.header("from") or "",
        route_set=route_set(invite.header_all("record-route")),
    )


def is_siprec(invite: SipMessage) -> bool:
    """Whether an INVITE asks for a SIPREC session (RFC 7866 section 6.1)."""
    options = ",".join(invite.header_all("require") + invite.header_all("supported")).lower()
    contact = (invite.header("contact") or "").lower()
    return "siprec" in options or "+sip.src" in contact


def parties_from(invite: SipMessage, metadata: RecordingMetadata | None, cfg: RecorderConfig) -> list[Party]:
    """The call's parties: the metadata's participants in order (caller first, unless configured "last").

    Without metadata, a plain (non-SIPREC) INVITE's From and To name A and B; a SIPREC one's do not
    (they are the SRC and us), so its parties stay unnamed.
    """
    if metadata is not None and metadata.participants:
        people = ordered_people(metadata, cfg)
        conference = len(people) > 2
        parties: list[Party] = []
        for i, p in enumerate(people):
            if conference:
                pid, role = f"P{i + 1}", "participant"
            else:
                pid, role = ("A", "caller") if i == 0 else ("B", "callee")
            number = uri_user(f"<{p.aor}>") if p.aor else ""
            parties.append(Party(id=pid, role=role, number=number, name=p.name, uri=p.aor))
        return parties
    if is_siprec(invite):
        return [Party(id="A", role="caller"), Party(id="B", role="callee")]
    sender, receiver = invite.header("from"), invite.header("to")
    return [
        Party(id="A", role="caller", number=uri_user(sender), name=display_name(sender)),
        Party(id="B", role="callee", number=uri_user(receiver), name=display_name(receiver)),
    ]


def refresh_parties(session: RecordingSession, cfg: RecorderConfig) -> None:
    """Apply a metadata update to the call's parties: names and numbers change, new participants join.

    Party ids stay as they are (streams already recorded name them); a participant beyond the known parties
    is added as a ``participant``.
    """
    if session.metadata is None:
        return
    parties = session.info.parties
    for i, p in enumerate(ordered_people(session.metadata, cfg)):
        number = uri_user(f"<{p.aor}>") if p.aor else ""
        if i < len(parties):
            party = parties[i]
            party.number, party.name, party.uri = number or party.number, p.name or party.name, p.aor or party.uri
        else:
            used = {q.id for q in parties}
            pid = next(f"P{n}" for n in range(i + 1, i + 2 + len(used)) if f"P{n}" not in used)
            parties.append(Party(id=pid, role="participant", number=number, name=p.name, uri=p.aor))


def ordered_people(metadata: RecordingMetadata, cfg: RecorderConfig) -> list[MetaParticipant]:
    people = metadata.ordered_participants()
    return list(reversed(people)) if cfg.caller == "last" else people


def party_of(index: int, label: str, session: RecordingSession, cfg: RecorderConfig) -> str:
    """Which party sends the stream of the ``index``-th ``m=`` line: by metadata, else by offer order."""
    parties = session.info.parties
    metadata = session.metadata
    if metadata is not None and label:
        sender = metadata.sender_of(label)
        ids = [p.id for p in ordered_people(metadata, cfg)]
        if sender is not None and sender.id in ids and ids.index(sender.id) < len(parties):
            return parties[ids.index(sender.id)].id
    if index < len(parties):
        return parties[index].id
    return f"P{index + 1}"


def build_answer(session: RecordingSession, address: str) -> bytes:
    """Our SDP answer: every recordable stream ``recvonly`` on its port, the rest rejected (port 0)."""
    session.sdp_version += 1
    family = "IP6" if ":" in address else "IP4"
    lines = [
        "v=0",
        f"o=callrec {abs(hash(session.local_tag)) % 10**9} {session.sdp_version} IN {family} {address}",
        "s=callrec",
        f"c=IN {family} {address}",
        "t=0 0",
    ]
    for line in session.lines:
        offer = line.offer
        formats = " ".join(str(f) for f in offer.formats) or "0"
        if not line.port or line.refused or not recordable(offer):
            # a stream rejected, or removed by the SRC (port 0), is answered with port 0 (RFC 3264 section 8.2)
            lines.append(f"m={offer.media} 0 {offer.proto} {formats}")
            continue
        lines.append(f"m={offer.media} {line.port} {offer.proto} {formats}")
        for pt in offer.formats:
            codec = offer.rtpmap.get(pt)
            if codec is None:
                continue
            suffix = f"/{codec.channels}" if codec.channels != 1 else ""
            lines.append(f"a=rtpmap:{pt} {codec.encoding}/{codec.clock_rate}{suffix}")
            if codec.fmtp:
                params = ";".join(f"{k}={v}" if v else k for k, v in codec.fmtp.items())
                lines.append(f"a=fmtp:{pt} {params}")
        if offer.label:
            lines.append(f"a=label:{offer.label}")
        if line.sdes is not None:
            lines.append(line.sdes.answer.line())
        # an SRC that stops sending (hold) is answered inactive; otherwise we only ever receive
        lines.append("a=recvonly" if offer.direction in ("sendonly", "sendrecv") else "a=inactive")
    return ("\r\n".join(lines) + "\r\n").encode()


def asked_domain(msg: SipMessage, metadata: RecordingMetadata | None, cfg: RecorderConfig) -> str:
    """The domain an INVITE names: the configured SIP header, else the metadata's extension data."""
    ext = metadata.extensions if metadata else {}
    domain = msg.header(cfg.domain_header) or next((ext[k] for k in cfg.domain_keys if ext.get(k)), "")
    return domain.strip()


def label_call(session: RecordingSession, msg: SipMessage, domain: str, cfg: RecorderConfig) -> None:
    """Domain (as the trust policy allowed it) and interaction id: from the configured SIP header, else
    the metadata's extension data."""
    info, ext = session.info, session.metadata.extensions if session.metadata else {}
    interaction = msg.header(cfg.interaction_header) or next((ext[k] for k in cfg.interaction_keys if ext.get(k)), "")
    if not interaction and session.metadata is not None:
        interaction = session.metadata.group_id
    info.domain = domain
    info.interaction_id = interaction.strip()
    if session.metadata is not None:
        info.original_call_ids = list(session.metadata.call_ids)


def recordable(media: SdpMedia) -> bool:
    """An audio stream we can record: plain RTP, or SRTP keyed by SDES (when its ``a=crypto`` suits us)."""
    proto = media.proto.upper()
    return media.media == "audio" and media.port != 0 and (proto in RECORDABLE_PROFILES or is_srtp_profile(proto))
