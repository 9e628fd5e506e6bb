"""SDP (RFC 4566) as far as recording needs it: where each stream is received and in which codecs."""

from __future__ import annotations

from dataclasses import dataclass, field

from callrec.errors import ParseError
from callrec.models import RtpMap, static_rtpmap

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


@dataclass(slots=True)
class SdpMedia:
    """One ``m=`` section."""

    media: str
    port: int
    proto: str
    formats: list[int]
    address: str | None = None
    rtpmap: dict[int, RtpMap] = field(default_factory=dict)
    direction: str = "sendrecv"
    label: str | None = None
    rtcp_port: int | None = None

    def codec(self, payload_type: int) -> RtpMap | None:
        """The rtpmap of a payload type, falling back to the static RFC 3551 assignment."""
        found = self.rtpmap.get(payload_type)
        return found if found is not None else static_rtpmap(payload_type)


@dataclass(slots=True)
class Sdp:
    """A session description: its origin and its media sections."""

    origin: str = ""
    address: str | None = None
    media: list[SdpMedia] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | bytes) -> Sdp:
        """Parse an SDP body; raise ``ParseError`` with an exact sentence when it is not SDP."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        sdp = cls()
        current: SdpMedia | None = None
        fmtp_lines: list[tuple[SdpMedia, int, str]] = []
        saw_version = False
        session_direction = "sendrecv"
        for raw in text.splitlines():
            line = raw.strip()
            if len(line) < 2 or line[1] != "=":
                continue
            kind, value = line[0], line[2:].strip()
            if kind == "v":
                saw_version = True
            elif kind == "o":
                sdp.origin = value
            elif kind == "c":
                address = _connection_address(value)
                if current is None:
                    sdp.address = address
                else:
                    current.address = address
            elif kind == "m":
                current = _media_line(value)
                current.direction = session_direction
                sdp.media.append(current)
            elif kind == "a":
                name, _, arg = value.partition(":")
                if name in DIRECTIONS:
                    if current is None:
                        session_direction = name
                    else:
                        current.direction = name
                elif current is None:
                    continue
                elif name == "rtpmap":
                    pt, rtpmap = _rtpmap(arg)
                    current.rtpmap[pt] = rtpmap
                elif name == "fmtp":
                    pt_text, _, params = arg.partition(" ")
                    if pt_text.isascii() and pt_text.isdigit():
                        fmtp_lines.append((current, int(pt_text), params))
                elif name == "label":
                    current.label = arg.strip()
                elif name == "rtcp":
                    port_text = arg.split()[0] if arg.split() else ""
                    if port_text.isascii() and port_text.isdigit():
                        current.rtcp_port = int(port_text)
        if not saw_version:
            raise ParseError("SDP body has no v= line")
        # fmtp may precede its rtpmap; attach once everything is read
        for media, pt, params in fmtp_lines:
            codec = media.codec(pt)
            if codec is None:
                continue
            codec.fmtp.update(_fmtp_params(params))
            media.rtpmap[pt] = codec
        for media in sdp.media:
            if media.address is None:
                media.address = sdp.address
        return sdp


def _connection_address(value: str) -> str:
    parts = value.split()
    if len(parts) < 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise ParseError("SDP connection line is not 'IN IP4|IP6 address'")
    return parts[2].split("/")[0]


def _media_line(value: str) -> SdpMedia:
    parts = value.split()
    if len(parts) < 3:
        raise ParseError("SDP media line has fewer than three fields")
    port_text = parts[1].split("/")[0]
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ParseError("SDP media line has an invalid port")
    formats = [int(f) for f in parts[3:] if (f.isascii() and f.isdigit()) and int(f) < 128]
    return SdpMedia(media=parts[0], port=int(port_text), proto=parts[2], formats=formats)


def _rtpmap(arg: str) -> tuple[int, RtpMap]:
    pt_text, _, spec = arg.strip().partition(" ")
    fields = spec.strip().split("/")
    if (
        not (pt_text.isascii() and pt_text.isdigit())
        or len(fields) < 2
        or not (fields[1].isascii() and fields[1].isdigit())
    ):
        raise ParseError("SDP rtpmap attribute is not 'PT encoding/rate[/channels]'")
    channels = int(fields[2]) if len(fields) > 2 and (fields[2].isascii() and fields[2].isdigit()) else 1
    return int(pt_text), RtpMap(fields[0], int(fields[1]), channels)


def _fmtp_params(params: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in params.split(";"):
        key, sep, val = item.strip().partition("=")
        if key:
            out[key.strip().lower()] = val.strip() if sep else ""
    return out
