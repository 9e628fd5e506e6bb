"""The SRS's own BYE (RFC 3261 section 12.2.1.1): built from the recording dialog's state and sent along its
route set, over real sockets: the SRC's INVITE comes through a fake proxy that record-routes."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from callrec.wire.sip import SipMessage, StreamFramer
from tests.support.sipclient import HOST, Dialog, RecorderThread, SipClient, recorder_config, siprec_body, siprec_sdp

QUIET_S = 0.3  # after what was expected, how long to listen for anything more (a second BYE)


class Peer:
    """A bare UDP or TCP listening socket on a loopback address that collects what the recorder sends it."""

    def __init__(self, transport: str = "udp", host: str = HOST) -> None:
        self.tcp = transport == "tcp"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if self.tcp else socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        if self.tcp:
            self.sock.listen(4)
        self.port: int = self.sock.getsockname()[1]

    def requests(self, timeout: float = 3.0, want: int = 1) -> list[SipMessage]:
        """The requests received until ``want`` came (0: every one within ``timeout``; at most 10 datagrams or
        one connection's messages), then whatever follows within a short while."""
        self.sock.settimeout(timeout)
        got: list[SipMessage] = []
        try:
            if self.tcp:
                conn, _ = self.sock.accept()
                with conn:
                    conn.settimeout(timeout)
                    framer = StreamFramer()
                    for _ in range(10):
                        data = conn.recv(65535)
                        if not data:
                            break
                        got += [SipMessage.parse(m) for m in framer.feed(data)]
                        if want and len(got) >= want:
                            conn.settimeout(QUIET_S)
            else:
                for _ in range(10):
                    data, _ = self.sock.recvfrom(65535)
                    got.append(SipMessage.parse(data))
                    if want and len(got) >= want:
                        self.sock.settimeout(QUIET_S)
        except TimeoutError:
            pass
        return [m for m in got if m.is_request]

    def close(self) -> None:
        self.sock.close()


def drained(sip: SipClient) -> list[bytes]:
    """What else the recorder sent on a client's TCP connection before closing it."""
    got: list[bytes] = []
    with contextlib.suppress(ConnectionError):
        while (raw := sip.recv_raw(QUIET_S)) is not None:
            got.append(raw)
    return got


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    try:
        yield made
    finally:
        for peer in made:
            peer.close()


def invite_through(
    sip: SipClient, *, contact: str, record_route: list[str], cseq: int = 313
) -> tuple[Dialog, SipMessage, SipMessage]:
    """The SRC's INVITE as a proxy forwards it (sent from ``sip``'s socket), with the SRC's Contact and the
    proxies' Record-Route headers; its 200 OK is ACKed. Returns the dialog, the INVITE and the 200."""
    dialog = Dialog(sip, cseq=cseq - 1)
    invite = dialog.invite([40000, 40002], send=False)
    invite.headers = [(n, contact if n == "contact" else v) for n, v in invite.headers]
    invite.headers[1:1] = [("record-route", rr) for rr in record_route]
    invite.headers = [(n, '"Recorder" <sip:srs@example.net>' if n == "to" else v) for n, v in invite.headers]
    dialog.last_invite = invite
    sip.send(invite)
    ok = sip.response(match=invite)
    assert ok.status == 200, ok.reason
    dialog.ack(ok)
    return dialog, invite, ok


def check_dialog_fields(bye: SipMessage, invite: SipMessage, ok: SipMessage) -> None:
    """From is our side (the INVITE's To with the tag of our 200), To the SRC's side (its From, its tag)."""
    assert bye.method == "BYE"
    assert bye.header("from") == ok.header("to")
    assert bye.header("from") == f'"Recorder" <sip:srs@example.net>;tag={ok.to_tag}'
    assert bye.header("to") == invite.header("from")
    assert bye.to_tag == invite.from_tag and bye.from_tag == ok.to_tag
    assert bye.call_id == invite.call_id
    # our own CSeq space: not the SRC's (313), starting fresh
    assert bye.cseq == (1, "BYE")
    assert (bye.header("via") or "").startswith("SIP/2.0/")


def test_bye_on_shutdown_goes_to_the_loose_route_with_the_route_set(tmp_path: Path, peers: list[Peer]) -> None:
    proxy, src = Peer(), Peer()
    peers += [proxy, src]
    rec = RecorderThread(recorder_config(tmp_path / "data"))
    with rec, SipClient(rec.address) as sip:
        # the proxy nearest to us record-routed last, so it is on top; a second proxy beyond it
        routes = [f"<sip:{HOST}:{proxy.port};lr;transport=udp>", "<sip:10.255.0.9:5070;lr>"]
        dialog, invite, ok = invite_through(
            sip, contact=f"<sip:src@{HOST}:{src.port}>;+sip.src", record_route=[routes[0] + ", " + routes[1]]
        )
        # the route set goes back in the 200 OK, as received
        assert ok.header_all("record-route") == [routes[0] + ", " + routes[1]]
        rec.stop()  # SIGTERM: every session ends with a BYE
        to_proxy, to_src = proxy.requests(), src.requests(QUIET_S, want=0)
        assert sip.responses_within(0.2) == [] and sip.requests == []
    assert to_src == []  # a loose route: not straight to the remote target
    (bye,) = to_proxy
    assert bye.uri == f"sip:src@{HOST}:{src.port}"  # the remote target, the SRC's Contact
    assert bye.header_all("route") == routes  # the route set, in the order received (UAS)
    check_dialog_fields(bye, invite, ok)
    assert dialog.call_id == bye.call_id


@pytest.mark.slow
def test_bye_without_route_set_goes_to_the_remote_target(tmp_path: Path, peers: list[Peer]) -> None:
    src = Peer()
    peers.append(src)
    rec = RecorderThread(recorder_config(tmp_path / "data", idle_timeout_s=0.5))
    with rec, SipClient(rec.address) as sip:
        _, invite, ok = invite_through(sip, contact=f"<sip:src@{HOST}:{src.port};transport=udp>", record_route=[])
        # no media: the session goes idle, and is ended with a BYE to the SRC's Contact, not to where the
        # INVITE came from
        (bye,) = src.requests(5.0)
        assert sip.requests == [] and sip.responses_within(0.2) == []
    assert bye.uri == f"sip:src@{HOST}:{src.port};transport=udp"
    assert bye.header_all("route") == []
    check_dialog_fields(bye, invite, ok)


def test_bye_to_a_strict_router(tmp_path: Path, peers: list[Peer]) -> None:
    strict, src = Peer(), Peer()
    peers += [strict, src]
    rec = RecorderThread(recorder_config(tmp_path / "data"))
    with rec, SipClient(rec.address) as sip:
        route = f"<sip:{HOST}:{strict.port};maddr={HOST}>"
        _, invite, ok = invite_through(sip, contact=f"<sip:src@{HOST}:{src.port}>", record_route=[route])
        rec.stop()
        (bye,) = strict.requests()
    # RFC 3261 section 12.2.1.1: the strict router is the Request-URI (without maddr), the remote target goes
    # last among the Route headers
    assert bye.uri == f"sip:{HOST}:{strict.port}"
    assert bye.header_all("route") == [f"<sip:src@{HOST}:{src.port}>"]
    check_dialog_fields(bye, invite, ok)


def test_bye_over_tcp_goes_on_a_connection_to_the_proxy(tmp_path: Path, peers: list[Peer]) -> None:
    proxy = Peer("tcp", "127.0.0.2")
    peers.append(proxy)
    rec = RecorderThread(recorder_config(tmp_path / "data"))
    with rec, SipClient(rec.address, "tcp") as sip:
        # over TCP the INVITE comes from an ephemeral port; the Record-Route names where the proxy listens
        route = f"<sip:127.0.0.2:{proxy.port};lr;transport=tcp>"
        _, invite, ok = invite_through(sip, contact="<sip:src@192.0.2.7:5060;transport=tcp>", record_route=[route])
        rec.stop()
        (bye,) = proxy.requests()
        assert drained(sip) == []  # not on the connection the INVITE came on
    assert bye.uri == "sip:src@192.0.2.7:5060;transport=tcp"
    assert bye.header_all("route") == [route]
    check_dialog_fields(bye, invite, ok)


def test_bye_over_tcp_to_an_unreachable_hop_goes_on_the_srcs_connection(tmp_path: Path) -> None:
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind((HOST, 0))
    port = closed.getsockname()[1]  # bound, not listening: a connection to it is refused
    rec = RecorderThread(recorder_config(tmp_path / "data"))
    try:
        with rec, SipClient(rec.address, "tcp") as sip:
            _, invite, ok = invite_through(sip, contact=f"<sip:src@{HOST}:{port};transport=tcp>", record_route=[])
            rec.stop()
            bye = sip.wait_request("BYE")
    finally:
        closed.close()
    assert bye.uri == f"sip:src@{HOST}:{port};transport=tcp"
    check_dialog_fields(bye, invite, ok)


def test_a_reinvite_refreshes_the_remote_target(tmp_path: Path, peers: list[Peer]) -> None:
    first, moved = Peer(), Peer()
    peers += [first, moved]
    rec = RecorderThread(recorder_config(tmp_path / "data"))
    with rec, SipClient(rec.address) as sip:
        dialog, invite, ok = invite_through(sip, contact=f"<sip:src@{HOST}:{first.port}>", record_route=[])
        ctype, body = siprec_body(siprec_sdp([40000, 40002]), None)
        reinvite = dialog.request("INVITE", body=body, content_type=ctype)
        reinvite.headers = [(n, f"<sip:src@{HOST}:{moved.port}>" if n == "contact" else v) for n, v in reinvite.headers]
        dialog.last_invite = reinvite
        sip.send(reinvite)
        assert sip.response(match=reinvite).status == 200
        dialog.ack()
        rec.stop()
        (bye,) = moved.requests()
    assert first.requests(QUIET_S, want=0) == []
    assert bye.uri == f"sip:src@{HOST}:{moved.port}"
    check_dialog_fields(bye, invite, ok)
