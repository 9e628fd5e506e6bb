"""A veth pair between the test's own network namespace and a fresh one that sends, for reading a live ring.

The root end (``lv<tag>a``, 198.18.A.B+1/30 and fd00:c0:ffee:<tag>::1/64) is the interface read; the other
end (``lv<tag>b``, .2 and ::2) sits in the namespace ``lv<tag>`` where :meth:`Veth.send` runs a sender. Needs
root: without it the tests skip with the reason, and under ``CI=true`` they fail, since CI runs as root.
Everything made is removed on exit, whatever happened.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

SEND_TIMEOUT_S = 60.0


def run(*argv: str, timeout: float = 30.0) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {(done.stderr or done.stdout).strip()}")


def require_root() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("it needs root (network namespaces, AF_PACKET)")
    if shutil.which("ip") is None:
        problems.append("iproute2's ip is not installed")
    if problems:
        reason = "the live capture tests cannot run: " + "; ".join(problems)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}, and CI must run them (as root)")
        pytest.skip(reason)


@dataclass(frozen=True, slots=True)
class Veth:
    netns: str
    interface: str  # the end read, in the test's namespace
    peer: str  # the sending end, in ``netns``
    ip: str  # the read end's IPv4 address (the senders' destination)
    peer_ip: str
    ip6: str
    peer_ip6: str

    def send(self, code: str, timeout: float = SEND_TIMEOUT_S) -> None:
        """Run Python ``code`` in the sending namespace, pinned to one core (so the packets keep their order
        through the kernel's per-core queues), and wait for it."""
        pin = "import os\nos.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        run("ip", "netns", "exec", self.netns, sys.executable, "-c", pin + code, timeout=timeout)


@pytest.fixture
def veth() -> Iterator[Veth]:
    require_root()
    tag = secrets.token_hex(3)
    base = random.randrange(0, 1 << 16) & ~3  # a /30 in 198.18.0.0/16
    net = f"198.18.{base >> 8}.{base & 0xFF}"
    prefix = net.rsplit(".", 1)[0]
    v = Veth(
        netns=f"lv{tag}", interface=f"lv{tag}a", peer=f"lv{tag}b",
        ip=f"{prefix}.{(base & 0xFF) + 1}", peer_ip=f"{prefix}.{(base & 0xFF) + 2}",
        ip6=f"fd00:c0:ffee:{tag[:4]}::1", peer_ip6=f"fd00:c0:ffee:{tag[:4]}::2",
    )  # fmt: skip
    made_ns = made_link = False
    try:
        run("ip", "netns", "add", v.netns)
        made_ns = True
        run("ip", "link", "add", v.interface, "type", "veth", "peer", "name", v.peer, "netns", v.netns)
        made_link = True
        run("ip", "addr", "add", f"{v.ip}/30", "dev", v.interface)
        run("ip", "-6", "addr", "add", f"{v.ip6}/64", "dev", v.interface, "nodad")
        run("ip", "link", "set", v.interface, "up")
        run("ip", "-n", v.netns, "addr", "add", f"{v.peer_ip}/30", "dev", v.peer)
        run("ip", "-n", v.netns, "-6", "addr", "add", f"{v.peer_ip6}/64", "dev", v.peer, "nodad")
        run("ip", "-n", v.netns, "link", "set", v.peer, "up")
        run("ip", "-n", v.netns, "link", "set", "lo", "up")
        yield v
    finally:
        if made_link:
            subprocess.run(["ip", "link", "del", v.interface], capture_output=True, timeout=30)
        if made_ns:
            subprocess.run(["ip", "netns", "del", v.netns], capture_output=True, timeout=30)
