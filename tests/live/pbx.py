"""Two phones on a switch, for the live capture tests: network namespaces joined by a bridge, sipp as the UAs.

The bridge (``lb<tag>``) lies in the test's own namespace with no address: like a switch's SPAN port, reading
it (promiscuous, as ``callrec capture`` does) shows every frame the phones exchange. Each phone is a namespace
(``lb<tag>a``, ``lb<tag>b``) with a veth into the bridge and 198.19.N.1 / .2. ``Phones.call`` runs a call
with sipp: the callee's scenario answers, both sides then send a µ-law file as RTP (``rtp_send.py``), the
caller hangs up (optionally after a re-INVITE). Needs root (``conftest.require_root``); everything made is
removed on exit, and only the processes started here are ever stopped.
"""

from __future__ import annotations

import random
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.live.conftest import require_root, run
from tests.support.audio import need

SENDER = Path(__file__).parents[1] / "support" / "rtp_send.py"
SIPP_TIMEOUT_S = 60
MEDIA_PORT = 16000

_SDP = """v=0
o=- [pid] [cseq] IN IP4 [local_ip]
s=-
c=IN IP4 [local_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""

UAC = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="capture caller">
  <Global variables="sender,peer"/>
  <send retrans="500"><![CDATA[
INVITE sip:2002@acme.example SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Alice Caller" <sip:1001@acme.example>;tag=[call_number]-alice
To: "Bob Callee" <sip:2002@acme.example>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:1001@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

{sdp}]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true">
    <action>
      <ereg regexp="m=audio ([0-9]+)" search_in="body" check_it="true" assign_to="junk,port"/>
    </action>
  </recv>
  <send><![CDATA[
ACK sip:2002@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Alice Caller" <sip:1001@acme.example>;tag=[call_number]-alice
To: "Bob Callee" <sip:2002@acme.example>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <nop>
    <action>
      <exec command="[$sender] [$peer] [$port]"/>
    </action>
  </nop>
{reinvite}
  <pause milliseconds="{talk_ms}"/>
  <send retrans="500"><![CDATA[
BYE sip:2002@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Alice Caller" <sip:1001@acme.example>;tag=[call_number]-alice
To: "Bob Callee" <sip:2002@acme.example>[peer_tag_param]
Call-ID: [call_id]
CSeq: 3 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200" crlf="true"/>
  <Reference variables="junk"/>
</scenario>
"""

REINVITE = """  <pause milliseconds="1500"/>
  <send retrans="500"><![CDATA[
INVITE sip:2002@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Alice Caller" <sip:1001@acme.example>;tag=[call_number]-alice
To: "Bob Callee" <sip:2002@acme.example>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 INVITE
Contact: <sip:1001@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

{sdp}]]></send>
  <recv response="200"/>
  <send><![CDATA[
ACK sip:2002@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Alice Caller" <sip:1001@acme.example>;tag=[call_number]-alice
To: "Bob Callee" <sip:2002@acme.example>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
"""

UAS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="capture callee">
  <Global variables="sender,peer"/>
  <recv request="INVITE">
    <action>
      <ereg regexp="m=audio ([0-9]+)" search_in="body" check_it="true" assign_to="junk,port"/>
    </action>
  </recv>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[call_number]-bob
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:2002@[local_ip]:[local_port];transport=[transport]>
Content-Type: application/sdp
Content-Length: [len]

{sdp}]]></send>
  <recv request="ACK"/>
  <nop>
    <action>
      <exec command="[$sender] [$peer] [$port]"/>
    </action>
  </nop>
{reinvite}
  <recv request="BYE"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
  <Reference variables="junk"/>
</scenario>
"""

UAS_REINVITE = """  <recv request="INVITE"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:2002@[local_ip]:[local_port];transport=[transport]>
Content-Type: application/sdp
Content-Length: [len]

{sdp}]]></send>
  <recv request="ACK"/>
"""


# a stateless SIP relay (UDP): what a sends goes to b and the other way round, unchanged; ends when idle
RELAY = """
import socket, sys
a, b, me = sys.argv[1:4]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((me, 5060))
sock.settimeout(90)
while True:
    data, src = sock.recvfrom(65535)
    sock.sendto(data, ((b if src[0] == a else a), 5060))
"""


@dataclass(slots=True)
class Phones:
    bridge: str
    ns: dict[str, str]  # "a" (caller), "b" (callee), "p" (a proxy, used by ``call(proxy=True)``) -> namespace
    ip: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def popen(self, who: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns[who], *argv], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=out, cwd=log.parent)  # fmt: skip
        self.procs.append(proc)
        return proc

    def call(self, work: Path, caller_audio: Path, callee_audio: Path, *, transport: str = "u1",
             reinvite: bool = False, talk_ms: int = 6000, wait: bool = True, proxy: bool = False,
             ) -> subprocess.Popen[bytes]:  # fmt: skip
        """Run one call from a to b (``proxy``: its SIP relayed by p, so seen twice, on two legs; media goes
        straight between the phones); with ``wait`` until sipp on both sides exited 0, else return the caller's
        sipp (the callee's is in ``procs``)."""
        sipp = need(shutil.which("sipp"), "sipp")
        work.mkdir(parents=True, exist_ok=True)
        (work / "uac.xml").write_text(UAC.format(sdp=_SDP, talk_ms=talk_ms, reinvite=REINVITE.format(sdp=_SDP)
                                                 if reinvite else ""))  # fmt: skip
        (work / "uas.xml").write_text(UAS.format(sdp=_SDP, reinvite=UAS_REINVITE.format(sdp=_SDP) if reinvite else ""))
        common = ["-t", transport, "-m", "1", "-nostdin", "-trace_err", "-timeout", f"{SIPP_TIMEOUT_S}s",
                  "-mp", str(MEDIA_PORT), "-p", "5060"]  # fmt: skip
        sender = f"{sys.executable} {SENDER} --payload {{}} --ssrc {{}} --log {{}}"
        callee = self.popen("b", [sipp, "-sf", str(work / "uas.xml"), "-i", self.ip["b"], "-mi", self.ip["b"], *common,
                                  "-set", "sender", sender.format(callee_audio, "0xB0B", work / "sent-b.log"),
                                  "-set", "peer", self.ip["a"]],
                            work / "uas.log")  # fmt: skip
        listening(self.ns["b"], transport)
        target = self.ip["b"]
        if proxy:
            assert transport == "u1", "the relay is UDP only"
            self.popen("p", [sys.executable, "-c", RELAY, self.ip["a"], self.ip["b"], self.ip["p"]], work / "relay.log")
            listening(self.ns["p"], transport)
            target = self.ip["p"]
        caller = self.popen("a", [sipp, "-sf", str(work / "uac.xml"), "-i", self.ip["a"], "-mi", self.ip["a"], *common,
                                  "-set", "sender", sender.format(caller_audio, "0xA1CE", work / "sent-a.log"),
                                  "-set", "peer", self.ip["b"],
                                  f"{target}:5060"], work / "uac.log")  # fmt: skip
        if wait:
            for proc, name in ((caller, "uac"), (callee, "uas")):
                code = proc.wait(timeout=SIPP_TIMEOUT_S + 10)
                errors = "".join(p.read_text(errors="replace") for p in work.glob(f"{name}_*_errors.log"))
                assert code == 0, f"sipp {name} exited {code}: {errors[-2000:]} {(work / f'{name}.log').read_text()}"
        return caller


def listening(netns: str, transport: str, timeout: float = 10.0) -> None:
    """Wait until something listens on port 5060 in ``netns`` (sipp's UAS)."""
    flag = "-Hltn" if transport.startswith("t") else "-Hlun"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["ip", "netns", "exec", netns, "ss", flag, "sport", "=", ":5060"], capture_output=True,
                             text=True, timeout=10).stdout  # fmt: skip
        if out.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"sipp did not listen on 5060 in {netns} within {timeout} s")


@pytest.fixture(name="phones")
def phones_fixture() -> Iterator[Phones]:
    require_root()
    tag = secrets.token_hex(3)
    net = f"198.19.{random.randrange(1, 255)}"
    made: list[str] = []
    links: list[str] = []
    rig = Phones(bridge=f"lb{tag}", ns={who: f"lb{tag}{who}" for who in "abp"},
                 ip={"a": f"{net}.1", "b": f"{net}.2", "p": f"{net}.3"})  # fmt: skip
    try:
        run("ip", "link", "add", rig.bridge, "type", "bridge")
        links.append(rig.bridge)
        run("ip", "link", "set", rig.bridge, "up")
        for who, netns in rig.ns.items():
            run("ip", "netns", "add", netns)
            made.append(netns)
            port, inside = f"lb{tag}{who}p", f"lb{tag}{who}i"
            run("ip", "link", "add", port, "type", "veth", "peer", "name", inside, "netns", netns)
            links.append(port)
            run("ip", "link", "set", port, "master", rig.bridge)
            run("ip", "link", "set", port, "up")
            run("ip", "-n", netns, "addr", "add", f"{rig.ip[who]}/24", "dev", inside)
            run("ip", "-n", netns, "link", "set", inside, "up")
            run("ip", "-n", netns, "link", "set", "lo", "up")
        yield rig
    finally:
        for proc in rig.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for netns in made:  # whatever sipp started there (rtp_send) ends with its namespace's processes
            pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=10).stdout
            for pid in pids.split():
                subprocess.run(["kill", "-9", pid], capture_output=True, timeout=10)
        for link in links:
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)
        for netns in made:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)
