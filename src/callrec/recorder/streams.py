"""The media side of the recording sessions: RTP/RTCP port pairs taken for the offered streams, bound,
filtered to the SRC's sources, and given back when a session ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from callrec.config import RecorderConfig
from callrec.models import Party, Stream
from callrec.recorder.media_io import MediaReceiver
from callrec.recorder.ports import PortAllocator, PortsExhausted
from callrec.recorder.session import MediaLine, RecordingSession, build_answer, party_of, recordable
from callrec.recorder.srtp import SrtpKeys
from callrec.wire.sdes import MediaCrypto, SdesAnswer, is_srtp_profile
from callrec.wire.sdp import Sdp

log = logging.getLogger("callrec.recorder")


class SessionMedia:
    """Port pairs from ``ports`` and the ``receiver`` (set once the recorder runs) reading them onto tapes.

    ``share_check`` is asked before a session takes another pair (it raises ``PortsExhausted`` to refuse);
    ``keys`` answers SRTP offers and seals the SRC's keys for the tape (see ``recorder/srtp.py``).
    """

    def __init__(
        self,
        cfg: RecorderConfig,
        ports: PortAllocator,
        share_check: Callable[[RecordingSession], None],
        keys: SrtpKeys | None = None,
    ) -> None:
        self.cfg = cfg
        self.ports = ports
        self.receiver: MediaReceiver | None = None
        self.keys = keys if keys is not None else SrtpKeys(cfg.data_dir)
        self._share_check = share_check

    def apply_offer(
        self, session: RecordingSession, sdp: Sdp, advertised: str, crypto: Sequence[MediaCrypto] = ()
    ) -> None:
        """Match the offer's ``m=`` lines to the session's (by position), taking ports for new streams;
        ``crypto``: the offer's ``a=crypto`` lines, one entry per ``m=`` line (``sdes.crypto_by_media``)."""
        assert self.receiver is not None
        for index, offer in enumerate(sdp.media):
            if index < len(session.lines):
                line = session.lines[index]
                line.offer = offer
            else:
                line = MediaLine(offer)
                session.lines.append(line)
            line.refused = ""
            if not recordable(offer):
                continue  # a stream removed (port 0) keeps its port until the session ends
            sdes = self._sdes(session, index, line, crypto[index] if index < len(crypto) else None)
            if line.refused:
                line.sdes = None
                continue  # answered with port 0; a port it had stays until the session ends
            if not line.port:
                self._share_check(session)
                line.port = self._bind_port()
            if line.stream is None:
                party = party_of(index, line.label, session, self.cfg)
                if session.info.party(party) is None:
                    session.info.parties.append(Party(id=party, role="participant"))
                line.stream = Stream(party=party, local_addr=advertised, local_port=line.port, label=line.label)
                session.info.streams.append(line.stream)
            if sdes is not None and sdes is not line.sdes:  # a new key: onto the tape, sealed
                session.info.srtp += self.keys.seal(session.info.streams.index(line.stream), sdes.offer)
            line.sdes = sdes
            line.stream.remote_addr = offer.address or ""
            line.stream.remote_port = offer.port
            for pt in offer.formats:
                codec = offer.codec(pt)
                if codec is not None:
                    line.stream.rtpmap[pt] = codec
        session.answer = build_answer(session, advertised)

    def _sdes(
        self, session: RecordingSession, index: int, line: MediaLine, offered: MediaCrypto | None
    ) -> SdesAnswer | None:
        """Our answer to an SRTP line's ``a=crypto`` (``line.sdes`` itself when its key is offered again), or
        None: refused (``line.refused`` says why, logged) or a plain RTP line."""
        if not is_srtp_profile(line.offer.proto):
            return None
        sdes, line.refused = self.keys.answer(line.sdes, offered)
        if line.refused:
            log.warning(
                "session %s: m= line %d (%s) answered with port 0: %s",
                session.call_id, index + 1, line.offer.proto, line.refused,
            )  # fmt: skip
        return sdes

    def _bind_port(self) -> int:
        assert self.receiver is not None
        for _ in range(self.ports.capacity):
            port = self.ports.take()
            try:
                self.receiver.bind(port)
                return port
            except OSError:
                self.ports.set_aside(port)  # another program holds it
        raise PortsExhausted("every RTP port pair of the range is taken")

    def start(self, session: RecordingSession, advertised: str) -> None:
        """Receive on the session's ports, each pair only from the sources the SRC's offer advertised for it
        (a later offer that moves a source moves the filter)."""
        assert self.receiver is not None and session.tape is not None
        for line in session.lines:
            if not line.port:
                continue
            self.receiver.start(line.port, advertised, session.tape.write_packed)
            offer = line.offer
            if recordable(offer):  # a removed stream (port 0) keeps the filter it had
                host = offer.address or ""
                rtcp = offer.rtcp_port if offer.rtcp_port else offer.port + 1
                self.receiver.expect(line.port, (host, offer.port), (host, rtcp))
        self.figures(session)

    def figures(self, session: RecordingSession) -> int:
        """Copy each stream's foreign packet count and latched source into the call's info; the total."""
        assert self.receiver is not None
        total = 0
        for line in session.lines:
            if line.port and line.stream is not None:
                foreign, latched = self.receiver.pair_filter(line.port)
                line.stream.foreign_packets = foreign
                line.stream.latched_addr, line.stream.latched_port = latched or ("", 0)
                total += foreign
        return total

    def held(self, session: RecordingSession) -> int:
        """Packets held back on the session's ports (a latch being decided): activity, like packets on tape."""
        receiver = self.receiver
        return sum(receiver.held(port) for port in session.ports()) if receiver is not None else 0

    def drain(self, session: RecordingSession) -> None:
        """Read what is still queued in the session's sockets onto its tape."""
        assert self.receiver is not None
        for port in session.ports():
            self.receiver.drain(port)

    def release(self, session: RecordingSession) -> None:
        assert self.receiver is not None
        if session.tape is not None and self.figures(session):
            # once per session, with the counts: another call's media (or a stale fork) was kept off this tape
            dropped = [
                f"port {line.port}: {line.stream.foreign_packets} from "
                + ", ".join(f"{h}:{p}" for h, p in self.receiver.foreign_sources(line.port))
                for line in session.lines
                if line.port and line.stream is not None and line.stream.foreign_packets
            ]
            log.warning(
                "session %s: dropped %d packets from sources other than the SRC's (%s)",
                session.call_id, sum(line.stream.foreign_packets for line in session.lines if line.stream),
                "; ".join(dropped),
            )  # fmt: skip
        for port in session.ports():
            self.receiver.close(port)
            self.ports.give_back(port)
