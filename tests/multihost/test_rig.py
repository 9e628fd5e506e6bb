"""The rig itself: hosts share no disk, reach the shared servers only through the proxies, and run the
processes the tests signal."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.rig import HOSTS, Rig

pytestmark = pytest.mark.slow  # hosts in network namespaces (root)

CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("connected")
except OSError as exc:
    print(type(exc).__name__)
"""


def test_each_host_sees_its_own_disk_at_the_same_path_and_no_other(rig: Rig) -> None:
    for name, host in rig.hosts.items():
        marker = rig.data / f"marker-{name}"
        done = host.run("sh", "-c", f'hostname && echo {name} > "{marker}" && ls -A "{rig.disks}" && ls "{rig.data}"')
        try:
            assert done.returncode == 0, done.stderr
            lines = done.stdout.split()
            assert lines[0] == name  # its own host name: how workers sign their jobs
            assert f"marker-{name}" in lines and not any(f"marker-{o}" in lines for o in HOSTS if o != name)
            assert not any(o in lines[1:] for o in HOSTS), f"{name} sees other disks: {done.stdout}"
            assert (host.disk / f"marker-{name}").read_text().strip() == name
            assert not marker.exists(), "a host wrote through to the root namespace's folder"
        finally:
            (host.disk / f"marker-{name}").unlink(missing_ok=True)


def test_hosts_reach_the_servers_only_through_the_proxies(rig: Rig) -> None:
    assert rig.pg is not None
    host = rig.hosts["w1"]

    def connect(address: str, port: int) -> str:
        done = host.run(sys.executable, "-c", CONNECT, address, str(port))
        return done.stdout.strip() or done.stderr.strip()

    assert connect(rig.gateway, rig.pg.port) == "connected"
    assert connect("127.0.0.1", 5432) == "ConnectionRefusedError"  # the host's own loopback: nothing there
    rig.pg.mode = "refuse"
    try:
        assert connect(rig.gateway, rig.pg.port) == "ConnectionRefusedError"
    finally:
        rig.pg.mode = "pass"
    assert connect(rig.gateway, rig.pg.port) == "connected"


def test_the_process_of_a_host_is_callrec_itself_in_a_group_of_its_own(rig: Rig) -> None:
    import os

    for host in rig.hosts.values():
        assert host.proc is not None and host.running
        cmdline = Path(f"/proc/{host.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:3] == [b"-m", b"callrec"], cmdline  # ip netns exec, unshare and sh each exec'd
        assert os.getpgid(host.proc.pid) == host.proc.pid
        assert os.readlink(f"/proc/{host.proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert os.readlink(f"/proc/{host.proc.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
