"""The egress policy (issue 12, H2 and M1), written as the attack: every spelling of a refused destination
is refused (hypothesis), a real listener on this host receives nothing from a webhook or an S3 client
aimed at it in any of those spellings, and receives the request once the operator allow-lists it."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from callrec.config import ConfigError, service_config_from_env
from callrec.db.schema import Recording, WebhookDelivery
from callrec.errors import EgressRefused, Permanent, StorageError
from callrec.jobs import steps
from callrec.jobs import webhooks as sender
from callrec.jobs.sweep import requeue
from callrec.jobs.worker import build
from callrec.service import egress, webhooks
from callrec.service.egress import Policy, category
from callrec.service.pipeline import Service
from callrec.service.schedule import FakeClock
from callrec.storage.s3 import S3Storage
from tests.service.backends import Backend, service_config
from tests.service.conftest import drain, set_settings
from tests.support.s3server import MotoServer, s3_config
from tests.support.tapes import make_tape

SECRET = "whsec_" + "egr" * 8
ANSWER = b"SECRET-ANSWER-OF-THE-TARGET"
DEFAULT = Policy()
LOOPBACK = Policy.parse(["127.0.0.1", "::1"])

# --- the listener: a real socket server on this host, on IPv4 and IPv6 loopback ------------------------


class Listener:
    """Counts every connection it accepts (on 127.0.0.1 and ::1, one port) and answers each request
    with a 500 whose body is ``ANSWER`` (what an attacker would like to read back)."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self._socks: list[socket.socket] = []
        v4 = socket.create_server(("127.0.0.1", 0))
        self.port = int(v4.getsockname()[1])
        self._socks.append(v4)
        # no IPv6 loopback here: the v6 spellings are refused before any connection anyway
        with contextlib.suppress(OSError):
            self._socks.append(socket.create_server(("::1", self.port), family=socket.AF_INET6))
        self._stop = threading.Event()
        for sock in self._socks:
            sock.settimeout(0.2)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            with conn:
                conn.settimeout(2)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    self.requests.append(data)
                    conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n"
                                 b"Connection: close\r\n\r\n%s" % (len(ANSWER), ANSWER))  # fmt: skip
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        for sock in self._socks:
            sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    made = Listener()
    yield made
    made.close()


def loopback_spellings(port: int) -> list[str]:
    """URLs that all reach this host's loopback (or 0.0.0.0, which Linux connects to loopback)."""
    hosts = [
        "127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f000001", "0X7F000001", "0x7f.0.0.1", "0x7f.1",
        "127.000.000.001", "127.0.0.1.", "LOCALHOST", "localhost", "localhost.", "[::1]", "[0:0:0:0:0:0:0:1]",
        "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::FFFF:127.0.0.1]", "0.0.0.0", "0", "[::]", "127.254.3.9",
    ]  # fmt: skip
    urls = [f"http://{h}:{port}/hook" for h in hosts]
    urls += [f"http://evil.example@127.0.0.1:{port}/", f"http://user:pw@localhost:{port}/x",
             f"HTTP://127.0.0.1:{port}/", f"https://127.0.0.1:{port}/"]  # fmt: skip
    return urls


# --- the policy itself ---------------------------------------------------------------------------------

REFUSED_V4 = [
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10",
    "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4", "198.18.0.0/15", "192.0.2.0/24", "255.255.255.255/32",
]  # fmt: skip
REFUSED_V6 = ["::1/128", "::/128", "fc00::/7", "fe80::/10", "ff00::/8", "2001:db8::/32", "fec0::/10"]
METADATA = ["169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200", "fd20:ce::254"]


def _in(net: str) -> st.SearchStrategy[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    n = ipaddress.ip_network(net)
    return st.integers(0, n.num_addresses - 1).map(lambda i: n[i])


refused_v4 = st.one_of(*[_in(n) for n in REFUSED_V4])
refused_v6 = st.one_of(*[_in(n) for n in REFUSED_V6])


def _v4_spellings(ip: ipaddress.IPv4Address) -> list[str]:
    """Every way inet_aton (and so the resolver) reads this address."""
    n, o = int(ip), ip.packed
    return [
        str(ip), str(n), hex(n), hex(n).upper().replace("0X", "0x"), "0" + oct(n)[2:],
        ".".join(f"0{b:o}" for b in o),  # zero-padded: octal octets
        ".".join(f"0x{b:x}" for b in o), f"{o[0]}.{int.from_bytes(o[1:], 'big')}",
        f"{o[0]}.{o[1]}.{int.from_bytes(o[2:], 'big')}", f"{ip}.",
        f"[::ffff:{ip}]", f"[::ffff:{o[0] << 8 | o[1]:x}:{o[2] << 8 | o[3]:x}]", f"[::FFFF:{ip}]",
        f"[64:ff9b::{ip}]", f"[2002:{o[0] << 8 | o[1]:x}:{o[2] << 8 | o[3]:x}::1]",
    ]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ip=refused_v4, form=st.integers(0, 14), userinfo=st.sampled_from(["", "evil.example@", "a:b@"]),
       scheme=st.sampled_from(["http", "https", "HTTP"]), port=st.sampled_from(["", ":80", ":9000"]))  # fmt: skip
def test_every_spelling_of_a_refused_ipv4_address_is_refused(ip: Any, form: int, userinfo: str, scheme: str,
                                                              port: str) -> None:  # fmt: skip
    host = _v4_spellings(ip)[form]
    url = f"{scheme}://{userinfo}{host}{port}/hook"
    with pytest.raises(EgressRefused):
        DEFAULT.check_url(url)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(ip=refused_v6, upper=st.booleans(), expand=st.booleans())
def test_every_spelling_of_a_refused_ipv6_address_is_refused(ip: Any, upper: bool, expand: bool) -> None:
    text = ip.exploded if expand else ip.compressed
    url = f"http://[{text.upper() if upper else text}]:8080/"
    with pytest.raises(EgressRefused):
        DEFAULT.check_url(url)


@settings(max_examples=200, deadline=None)
@given(ip=st.integers(1, 2**32 - 2).map(ipaddress.IPv4Address))
def test_an_address_is_refused_exactly_when_it_is_not_a_public_unicast_one(ip: ipaddress.IPv4Address) -> None:
    public = ip.is_global and not ip.is_multicast and ip not in ipaddress.ip_network("100.64.0.0/10")
    assert (category(ip) is None) == public, ip
    # its IPv4-mapped, 6to4 and NAT64 forms are judged the same way
    for wrapped in (f"::ffff:{ip}", f"64:ff9b::{ip}", f"2002:{int(ip) >> 16:x}:{int(ip) & 0xFFFF:x}::"):
        assert (category(ipaddress.IPv6Address(wrapped)) is None) == public, wrapped


@pytest.mark.parametrize("address", METADATA)
def test_metadata_addresses_are_refused_even_inside_an_allow_listed_network(address: str) -> None:
    ip = ipaddress.ip_address(address)
    wide = Policy.parse(["169.254.0.0/16", "100.64.0.0/10", "fd00::/8"])
    assert "metadata" in (wide.why_refused(ip) or "")
    assert Policy.parse([address]).why_refused(ip) is None, "only the very address admits it"
    if ip.version == 4:
        mapped = ipaddress.ip_address(f"::ffff:{ip}")
        assert "metadata" in (wide.why_refused(mapped) or ""), "nor its IPv4-mapped form"
    assert "metadata" in (Policy.parse([".internal"]).why_refused(ip, "x.internal") or ""), "nor a name suffix"


def test_a_metadata_name_is_admitted_only_by_its_very_own_entry() -> None:
    with pytest.raises(EgressRefused, match="metadata"):
        Policy.parse([".internal", ".google.internal"]).check_url("http://metadata.google.internal/")
    Policy.parse(["metadata.google.internal"]).check_name("metadata.google.internal")


@pytest.mark.parametrize("name", ["metadata.google.internal", "METADATA.GOOGLE.INTERNAL.", "metadata",
                                  "instance-data.ec2.internal"])  # fmt: skip
def test_metadata_names_are_refused_without_resolving_them(name: str) -> None:
    with pytest.raises(EgressRefused, match="metadata"):
        DEFAULT.check_url(f"http://{name}/computeMetadata/v1/")


def test_a_public_address_passes_in_any_spelling() -> None:
    for host in _v4_spellings(ipaddress.IPv4Address("93.184.216.34"))[:10]:
        try:
            DEFAULT.check_url(f"http://{host}/hook")
        except EgressRefused as exc:  # a spelling httpx cannot even send to is not a usable URL
            assert "not a usable URL" in str(exc), host


def test_a_name_that_resolves_to_a_public_address_once_and_to_loopback_later_is_refused_later(
    monkeypatch: pytest.MonkeyPatch, listener: Listener
) -> None:
    """DNS rebinding: the check is made on the address the connection uses, not on an earlier answer."""
    answers = {"rebind.example": "93.184.216.34"}

    def fake(name: str, port: int, timeout: float | None) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[name], port))]

    monkeypatch.setattr(egress, "_getaddrinfo", fake)
    DEFAULT.check_url(f"http://rebind.example:{listener.port}/hook")  # accepted when the settings are saved
    answers["rebind.example"] = "127.0.0.1"
    status, error, _, refused = _post(f"http://rebind.example:{listener.port}/hook", DEFAULT)
    assert refused and status is None and "loopback" in error
    assert listener.connections == 0


def test_a_name_with_one_public_and_one_private_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(name: str, port: int, timeout: float | None) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in ("93.184.216.34", "10.0.0.5")]

    monkeypatch.setattr(egress, "_getaddrinfo", fake)
    with pytest.raises(EgressRefused, match="private"):
        DEFAULT.resolve("mixed.example", 80)


def test_the_allow_list_is_parsed_from_the_environment() -> None:
    cfg = service_config_from_env({"CALLREC_EGRESS_ALLOW": " 10.20.0.0/16, s3.corp.example,.hooks.corp ,::1"})
    assert cfg.egress_allow == ("10.20.0.0/16", "s3.corp.example", ".hooks.corp", "::1")
    rules = egress.policy(cfg.egress_allow)
    assert rules.why_refused(ipaddress.ip_address("10.20.3.4")) is None
    assert rules.why_refused(ipaddress.ip_address("10.21.3.4")) == "private (RFC 1918)"
    assert rules.why_refused(ipaddress.ip_address("10.21.3.4"), "s3.corp.example") is None
    assert rules.why_refused(ipaddress.ip_address("10.21.3.4"), "a.hooks.corp.") is None
    assert rules.why_refused(ipaddress.ip_address("::ffff:10.20.0.1")) is None, "mapped forms match the network"
    assert service_config_from_env({}).egress_allow == ()
    with pytest.raises(ConfigError, match="CALLREC_EGRESS_ALLOW"):
        service_config_from_env({"CALLREC_EGRESS_ALLOW": "10.0.0.0/8,not a host!"})


# --- a real webhook delivery attempt against the listener -----------------------------------------------


def _post(url: str, rules: Policy) -> tuple[int | None, str, int, bool]:
    claim = sender._Claim(url=url, body='{"id":"x"}', event="recording.completed", secret=SECRET, problem="")
    return sender._post(claim, 1_700_000_000, "d" * 32, rules)


@pytest.mark.slow
def test_a_webhook_aimed_at_any_spelling_of_loopback_reaches_nothing_until_allow_listed(listener: Listener) -> None:
    for url in loopback_spellings(listener.port):
        status, error, _, refused = _post(url, DEFAULT)
        assert status is None and error, url
        assert refused or "Invalid" in error, (url, error)  # refused, or not even a URL httpx can send to
        assert ANSWER.decode() not in error
        assert listener.connections == 0, f"{url} reached the listener"
    status, error, _, refused = _post(f"http://127.0.0.1:{listener.port}/hook", LOOPBACK)
    assert (status, refused) == (500, False) and listener.connections == 1
    assert error == "the receiver answered 500", "an allow-listed inside receiver's answer is not for the tenant"
    assert listener.requests[0].startswith(b"POST /hook ")
    status, _, _, _ = _post(f"http://localhost:{listener.port}/hook", Policy.parse(["localhost"]))
    assert status == 500 and listener.connections == 2, "an allow-listed name admits what it resolves to"


def test_the_host_header_keeps_the_name_while_the_connection_goes_to_the_checked_address(
    listener: Listener,
) -> None:
    _post(f"http://localhost:{listener.port}/hook", LOOPBACK)
    assert b"\r\nHost: localhost:" in listener.requests[0]


@pytest.fixture
def refusing(backend: Backend, clock: FakeClock) -> Iterator[Service]:
    """The service with the default egress policy (the backends' fixtures allow-list loopback)."""
    built = build(replace(backend.config, egress_allow=()), clock=clock)
    set_settings(built, "default", {"storage": backend.storage_settings()})
    yield built
    built.close()


@pytest.mark.slow
def test_a_delivery_to_a_refused_target_fails_at_once_and_its_log_holds_no_answer(
    refusing: Service, backend: Backend, listener: Listener
) -> None:
    service = refusing
    urls = [f"http://localhost:{listener.port}/a", f"http://2130706433:{listener.port}/b",
            f"http://[::ffff:127.0.0.1]:{listener.port}/c"]  # fmt: skip
    # stored directly (as a row written before the policy existed): the API refuses these with a 422
    set_settings(service, "default", {"webhook_secret": service.ctx.box.encrypt(SECRET),
                                      "webhooks": [{"url": u} for u in urls]})  # fmt: skip
    if backend.distributed:  # the tape goes to the domain's S3 on 127.0.0.1: allow-list it for the upload
        service.ctx.config.egress_allow = ("127.0.0.1",)
        service.ctx._storages.clear()
    made = make_tape(backend.config.data_dir / "tapes", seconds=1.0)
    service.pipeline.tape_closed(made.folder)
    service.ctx.config.egress_allow = ()
    drain(service)
    with service.ctx.sessions() as s:
        rows = list(s.scalars(select(WebhookDelivery)))
    assert len(rows) == 3
    for row in rows:
        assert row.state == "failed" and row.attempts == 1, (row.url, row.state, row.log)
        assert "loopback" in row.last_error and "CALLREC_EGRESS_ALLOW" in row.last_error
        assert ANSWER.decode() not in repr(row.log) and row.last_status is None
    assert listener.connections == 0
    # once the operator allow-lists loopback, a redelivery reaches it
    service.ctx.config.egress_allow = ("127.0.0.0/8", "::1")
    for row in rows:
        webhooks.redeliver(service.ctx, service.queue, row.id)
    drain(service)
    assert listener.connections == 3


# --- S3 endpoints ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_s3_endpoint_on_loopback_is_refused_before_any_request(listener: Listener) -> None:
    for url in loopback_spellings(listener.port)[:12]:
        store = S3Storage(s3_config(url.rsplit("/", 1)[0], "bucket", egress=DEFAULT))
        with pytest.raises(EgressRefused, match="is not used"):
            store.put_bytes("a/b.mp3", b"recording")
        with pytest.raises(EgressRefused):
            store.stat("a/b.mp3")
    assert listener.connections == 0


@pytest.mark.slow
def test_an_s3_endpoint_that_rebinds_to_loopback_is_refused_on_connect(
    monkeypatch: pytest.MonkeyPatch, listener: Listener
) -> None:
    answers: dict[str, str] = {}

    def fake(name: str, port: int, timeout: float | None) -> Sequence[Any]:
        if name not in answers:
            raise OSError(f"{name} does not resolve")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[name], port))]

    monkeypatch.setattr(egress, "_getaddrinfo", fake)
    store = S3Storage(s3_config(f"http://s3.rebind.example:{listener.port}", "bucket", egress=DEFAULT))
    answers["s3.rebind.example"] = "127.0.0.1"
    with pytest.raises(EgressRefused, match="loopback") as caught:
        store.put_bytes("a/b.mp3", b"recording")
    assert isinstance(caught.value, Permanent) and isinstance(caught.value, StorageError)
    assert listener.connections == 0, "not one signed request left"


@pytest.mark.slow
def test_an_allow_listed_s3_endpoint_works(s3: MotoServer) -> None:
    bucket = s3.make_bucket()
    store = S3Storage(s3_config(s3.endpoint, bucket, egress=LOOPBACK))
    assert store.put_bytes("a/b.txt", b"hello").size == 5
    assert b"".join(store.read_range("a/b.txt")) == b"hello"


def _s3_domain(service: Service, endpoint: str, bucket: str) -> None:
    set_settings(service, "default", {"storage": {
        "kind": "s3", "endpoint_url": endpoint, "bucket": bucket, "access_key_id": "testing",
        "secret_access_key": "testing", "addressing_style": "path"}})  # fmt: skip


def _one_recording(service: Service) -> Recording:
    with service.ctx.sessions() as s:
        rec = s.scalars(select(Recording)).one()
        s.expunge(rec)
        return rec


@pytest.mark.slow
def test_a_recording_for_a_domain_whose_s3_endpoint_is_refused_fails_at_once_saying_why(
    tmp_path: Path, s3: MotoServer
) -> None:
    service = build(service_config(tmp_path / "data", egress_allow=()), clock=FakeClock(datetime.now(UTC)))
    try:
        _s3_domain(service, s3.endpoint, s3.make_bucket())
        service.pipeline.tape_closed(make_tape(tmp_path / "data" / "tapes", seconds=1.0).folder)
        drain(service)
        rec = _one_recording(service)
        assert rec.state == "failed" and rec.attempts == 1, (rec.state, rec.reason)
        assert "loopback" in rec.reason and "CALLREC_EGRESS_ALLOW" in rec.reason
    finally:
        service.close()


@pytest.mark.slow
def test_a_domain_s3_endpoint_that_keeps_failing_is_given_up_on_with_the_reason(tmp_path: Path) -> None:
    clock = FakeClock(datetime.now(UTC))
    with socket.socket() as free:  # a port nothing listens on: every connection is refused
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    service = build(service_config(tmp_path / "data"), clock=clock)
    try:
        _s3_domain(service, f"http://127.0.0.1:{port}", "gone")
        service.pipeline.tape_closed(make_tape(tmp_path / "data" / "tapes", seconds=1.0).folder)
        drain(service, limit=3)
        rec = _one_recording(service)
        assert rec.state == "queued" and "cannot be reached" in rec.reason, (rec.state, rec.reason)
        for _ in range(3):  # retried while the endpoint is down for a while
            clock.advance(600)
            requeue(service.pipeline)
            drain(service, limit=3)
        rec = _one_recording(service)
        assert rec.state == "queued" and rec.attempts == 0, "an outage costs no attempt of the recording's own"
        clock.advance(steps.TENANT_STORAGE_PATIENCE_S)
        requeue(service.pipeline)
        drain(service, limit=3)
        rec = _one_recording(service)
        assert rec.state == "failed" and "gave up" in rec.reason and "cannot be reached" in rec.reason, rec.reason
    finally:
        service.close()
