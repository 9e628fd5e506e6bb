"""A PBX on a switch, for passive capture tests: two real phones calling through a real proxy, and a mirror.

Five network namespaces of the rig's own (``cr<tag>sw`` and so on)::

    phone A  (baresip)  eth0 10.66.0.11 ─┐
    phone B  (baresip)  eth0 10.66.0.12 ─┼─ ports pa, pb, px of bridge br0 in the switch namespace
    proxy    (Kamailio + rtpengine) eth0 10.66.0.2 ─┘       │ tc mirred: every frame entering the bridge
    recorder eth0 (no address) <──── veth mrec <──────────────┘ from any port is copied to mrec

The recorder's ``eth0`` sees each frame any host sends exactly once, as a switch's mirror (SPAN) port
does. Kamailio routes by static addresses (no registrar: user ``b`` is 10.66.0.12, ``a`` 10.66.0.11),
record-routes, and anchors the media in rtpengine (userspace, no kernel table) through its rtpengine module
speaking ng on 127.0.0.1 in the proxy namespace; so a call has two legs of media, phone <-> rtpengine.

Each phone is baresip with its ``aufile`` module playing a WAV file of its own (8000 Hz mono, for G.711)
as its microphone, PCMA only; B answers by itself. The caller is driven through baresip's ``ctrl_tcp``
module by a child run inside A's namespace (this file as a script): dial, talk, hang up.

``PbxRig`` is a context manager: every process (by its process group), and every namespace (with its
links) are removed on exit, whatever happened. Every wait is bounded. Needs root and the binaries:
:func:`require` skips with the reason, and fails under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SUBNET = "10.66.0"
PROXY_IP, A_IP, B_IP = f"{SUBNET}.2", f"{SUBNET}.11", f"{SUBNET}.12"
SIP_PORT = 5060
NG = ("127.0.0.1", 2223)
CTRL = ("127.0.0.1", 4444)
RTPENGINE_PORTS = (30000, 30999)
RATE = 8000
BINARIES = ("ip", "tc", "ss", "baresip", "kamailio", "rtpengine", "tcpdump", "ffmpeg")
# Debian's multiarch folder (x86_64-linux-gnu, aarch64-linux-gnu, ...)
KAMAILIO_MODULES = next(
    (str(p) for p in sorted(Path("/usr/lib").glob("*/kamailio/modules")) if (p / "rtpengine.so").exists()),
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
)
BARESIP_MODULES = "/usr/lib/baresip/modules"
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
POLL_S = 0.05

KAMAILIO_CFG = f"""#!KAMAILIO
debug=2
log_stderror=yes
children=2
listen=udp:{PROXY_IP}:{SIP_PORT}
auto_aliases=no
alias="{PROXY_IP}"
mpath="{KAMAILIO_MODULES}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "rtpengine.so"
modparam("rtpengine", "rtpengine_sock", "udp:{NG[0]}:{NG[1]}")

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{
            if (is_method("BYE") || has_body("application/sdp")) {{ rtpengine_manage(); }}
            t_on_reply("MEDIA");
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ rtpengine_manage(); t_relay(); }} exit; }}
    if (!is_method("INVITE")) {{ sl_send_reply("200", "OK"); exit; }}
    if ($rU == "b") {{ $rd = "{B_IP}"; $rp = {SIP_PORT}; }}
    else if ($rU == "a") {{ $rd = "{A_IP}"; $rp = {SIP_PORT}; }}
    else {{ sl_send_reply("404", "No such phone"); exit; }}
    record_route();
    rtpengine_manage();
    t_on_reply("MEDIA");
    if (!t_relay()) {{ sl_reply_error(); }}
}}

onreply_route[MEDIA] {{
    if (has_body("application/sdp")) {{ rtpengine_manage(); }}
}}
"""


def require() -> None:
    """Skip (with the reason) when the rig cannot run here; under ``CI=true`` fail instead."""
    reasons = [f"{name} is not installed (scripts/system-deps.sh)" for name in BINARIES if shutil.which(name) is None]
    if os.geteuid() != 0:
        reasons.append("network namespaces and tc need root")
    if reasons:
        reason = "the real-phone rig cannot run: " + "; ".join(reasons)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}, and CI must run it (as root)")
        pytest.skip(reason)


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.astype("<i2").tobytes())


def run(*argv: str, timeout: float = 30.0) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {(done.stderr or done.stdout).strip()}")
    return done.stdout


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 3000) -> str:
        try:
            return f"--- {self.name} ({self.log}) ---\n" + self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return f"--- {self.name}: no log ---"


class PbxRig:
    """The five namespaces and their processes; see the module docstring."""

    def __init__(self, work: Path) -> None:
        require()
        self.work = Path(work)
        self.tag = secrets.token_hex(3)
        self.ns = {role: f"cr{self.tag}{role}" for role in ("sw", "px", "pa", "pb", "rec")}
        self.procs: dict[str, Proc] = {}
        self._made: list[str] = []

    # --- set-up and tear-down ---------------------------------------------------------------------------

    def __enter__(self) -> PbxRig:
        try:
            self._network()
            self._proxy()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _network(self) -> None:
        for ns in self.ns.values():
            run("ip", "netns", "add", ns)
            self._made.append(ns)
            self.exec(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        sw = self.ns["sw"]
        run("ip", "-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0")
        run("ip", "-n", sw, "link", "set", "br0", "up")
        run("ip", "-n", sw, "link", "add", "mrec", "type", "veth", "peer", "name", "eth0", "netns", self.ns["rec"])
        run("ip", "-n", sw, "link", "set", "mrec", "up")
        run("ip", "-n", self.ns["rec"], "link", "set", "eth0", "up")
        for role, ip in (("px", PROXY_IP), ("pa", A_IP), ("pb", B_IP)):
            port = role
            run("ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", self.ns[role])
            run("ip", "-n", sw, "link", "set", port, "master", "br0")
            run("ip", "-n", sw, "link", "set", port, "up")
            run("ip", "-n", self.ns[role], "addr", "add", f"{ip}/24", "dev", "eth0")
            run("ip", "-n", self.ns[role], "link", "set", "eth0", "up")
            # the mirror: what the host sends enters the bridge here, and a copy leaves through mrec
            self.exec(sw, "tc", "qdisc", "add", "dev", port, "clsact")
            # (u32 matching every frame: kernels without cls_matchall have u32)
            self.exec(sw, "tc", "filter", "add", "dev", port, "ingress", "protocol", "all", "u32", "match", "u32",
                      "0", "0", "action", "mirred", "egress", "mirror", "dev", "mrec")  # fmt: skip

    def _proxy(self) -> None:
        px = self.ns["px"]
        rtpengine = shutil.which("rtpengine") or "rtpengine"
        self.start(
            "rtpengine", px,
            rtpengine, "--foreground", "--log-stderr", "--no-log-timestamps", "--log-level=6",
            f"--interface={PROXY_IP}", f"--listen-ng={NG[0]}:{NG[1]}",
            f"--port-min={RTPENGINE_PORTS[0]}", f"--port-max={RTPENGINE_PORTS[1]}",
            "--table=-1", "--delete-delay=0", "--num-threads=2",
        )  # fmt: skip
        self.wait_bound("rtpengine", px, "udp", NG[1])
        cfg = self.work / "kamailio.cfg"
        cfg.write_text(KAMAILIO_CFG)
        run_dir = self.work / "kamailio-run"
        run_dir.mkdir(exist_ok=True)
        kamailio = shutil.which("kamailio") or "kamailio"
        self.start("kamailio", px, kamailio, "-DD", "-E", "-f", str(cfg), "-Y", str(run_dir), "-m", "32", "-M", "4")
        self.wait_bound("kamailio", px, "udp", SIP_PORT)

    def phone(self, role: str, ip: str, wav: Path, *, answer: bool) -> None:
        """baresip in namespace ``role`` ('pa' or 'pb') playing ``wav``; ``answer``: it answers calls itself."""
        home = self.work / f"baresip-{role}"
        home.mkdir(exist_ok=True)
        (home / "config").write_text(
            "poll_method epoll\n"
            f"sip_listen {ip}:{SIP_PORT}\n"
            "call_max_calls 1\n"
            f"audio_source aufile,{wav}\n"
            "audio_player aubridge,nowhere\n"
            "audio_alert aubridge,nowhere\n"
            "ausrc_srate 8000\nauplay_srate 8000\nausrc_channels 1\nauplay_channels 1\n"
            "rtp_ports 20000-20999\nrtcp_mux no\njitter_buffer_delay 5-10\n"
            f"module_path {BARESIP_MODULES}\n"
            "module g711.so\nmodule aufile.so\nmodule aubridge.so\n"
            "module_app account.so\nmodule_app menu.so\nmodule_app ctrl_tcp.so\n"
            f"ctrl_tcp_listen {CTRL[0]}:{CTRL[1]}\n"
        )
        user = "a" if role == "pa" else "b"
        params = ";regint=0;audio_codecs=PCMA" + (";answermode=auto" if answer else "")
        (home / "accounts").write_text(f"<sip:{user}@{ip}>{params}\n")
        (home / "contacts").write_text("")
        self.start(f"baresip-{role}", self.ns[role], shutil.which("baresip") or "baresip", "-f", str(home), "-v")
        self.wait_bound(f"baresip-{role}", self.ns[role], "udp", SIP_PORT)
        self.wait_bound(f"baresip-{role}", self.ns[role], "tcp", CTRL[1])

    def close(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self._made.clear()

    # --- processes ---------------------------------------------------------------------------------------

    def exec(self, ns: str, *argv: str, timeout: float = 30.0) -> str:
        return run("ip", "netns", "exec", ns, *argv, timeout=timeout)

    def start(self, name: str, ns: str, *argv: str, env: dict[str, str] | None = None) -> Proc:
        log = self.work / f"{name}.log"
        with log.open("ab") as out:
            # a process group of its own: stopped as one, by its id, never by name
            popen = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.work, env=env,
            )  # fmt: skip
        proc = self.procs[name] = Proc(name, popen, log)
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM) -> int | None:
        """Signal the process group, wait, SIGKILL if it lingers; its exit code (None if killed)."""
        proc = self.procs.get(name)
        if proc is None:
            return None
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, sig)
            try:
                proc.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(timeout=STOP_TIMEOUT_S)
                return None
        return proc.popen.returncode

    def wait_bound(self, name: str, ns: str, proto: str, port: int) -> None:
        """Return once something in ``ns`` listens on ``proto`` ``port``; fail if ``name`` exits or hangs."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        flag = "-Huln" if proto == "udp" else "-Htln"
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.popen.returncode}\n{proc.tail()}")
            if self.exec(ns, "ss", flag, f"sport = :{port}").strip():
                return
            time.sleep(POLL_S * 4)
        raise TimeoutError(
            f"{name} did not listen on {proto} {port} within {READY_TIMEOUT_S} s\n{self.procs[name].tail()}"
        )

    def logs(self) -> str:
        return "\n".join(proc.tail() for proc in self.procs.values())

    def call(self, uri: str, talk_s: float) -> dict[str, Any]:
        """Phone A dials ``uri``, talks ``talk_s`` seconds once answered, hangs up; what its driver saw."""
        root = str(Path(__file__).resolve().parents[2])
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns["pa"], sys.executable, "-m", "tests.support.pbxrig"],
            input=json.dumps({"uri": uri, "talk_s": talk_s}).encode(), capture_output=True,
            timeout=talk_s + 60, cwd=root, env={**os.environ, "PYTHONPATH": root},
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"the caller's driver failed: {done.stderr.decode()[-2000:]}\n{self.logs()}")
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer


# --- the caller's driver, run inside phone A's namespace: baresip's ctrl_tcp (JSON in netstrings) ----------


class Ctrl:
    def __init__(self, timeout: float) -> None:
        self.sock = socket.create_connection(CTRL, timeout=timeout)
        self.buf = b""
        self.events: list[dict[str, Any]] = []

    def send(self, command: str, params: str = "") -> None:
        body = json.dumps({"command": command, "params": params, "token": secrets.token_hex(4)}).encode()
        self.sock.sendall(b"%d:%s," % (len(body), body))

    def wait(self, kind: str, deadline: float) -> dict[str, Any]:
        """The next event of type ``kind`` (others are kept in ``events``); TimeoutError at ``deadline``."""
        while time.monotonic() < deadline:
            while b":" in self.buf:
                size, _, rest = self.buf.partition(b":")
                if len(rest) < int(size) + 1:
                    break
                message = json.loads(rest[: int(size)])
                self.buf = rest[int(size) + 1 :]
                if message.get("event"):
                    message["at"] = time.time()
                    self.events.append(message)
                    if message.get("type") == kind:
                        return dict(message)
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                raise ConnectionError("baresip closed its control connection")
            self.buf += data
        seen = [e.get("type") for e in self.events]
        raise TimeoutError(f"no {kind} from baresip; events seen: {seen}")


def main() -> None:
    job = json.loads(sys.stdin.read())
    ctrl = Ctrl(timeout=10)
    try:
        ctrl.send("dial", job["uri"])
        established = ctrl.wait("CALL_ESTABLISHED", time.monotonic() + 20)
        time.sleep(float(job["talk_s"]))
        ctrl.send("hangup")
        closed = ctrl.wait("CALL_CLOSED", time.monotonic() + 15)
    finally:
        ctrl.sock.close()
    json.dump({"established_at": established["at"], "closed_at": closed["at"], "events": ctrl.events}, sys.stdout)


if __name__ == "__main__":
    main()
