"""One egress policy for every outbound request a tenant can aim (webhooks, S3 endpoints, whatever comes later).

By default a destination is refused when it is loopback, private (RFC 1918), link-local, unique-local
(fc00::/7), CGNAT (100.64.0.0/10), multicast, unspecified, reserved, benchmark or documentation space,
an IPv4-mapped, IPv4-compatible, 6to4 or NAT64 form of one of those, or a cloud metadata service
(169.254.169.254, fd00:ec2::254, metadata.google.internal, ...). The decision is made on the *resolved*
address at connect time, and the connection is made to the very address that was checked (a name that
resolves to a public address when the settings are saved and to 127.0.0.1 later is refused later), so
every spelling the resolver understands (``2130706433``, ``0x7f000001``, ``127.1``, ``[::ffff:127.0.0.1]``,
``localhost``, a hosts-file name) is judged by what it really reaches.

The operator admits internal receivers and on-premise S3 with ``CALLREC_EGRESS_ALLOW``: a comma-separated
list of CIDRs (``10.20.0.0/16``, ``127.0.0.1``) and host names (``s3.corp.example``; ``.corp.example``
admits every name under it). An allow-listed name admits whatever it resolves to; an allow-listed network
admits its addresses. A cloud metadata address is admitted only when the allow-list names that very
address (``169.254.169.254/32``) or name, never through a wider network.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

from callrec.errors import ConfigError, EgressRefused, Refused

if TYPE_CHECKING:
    from callrec.service.domain_settings import DomainSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
SETTINGS_RESOLVE_S = 2.0  # a name that does not resolve this fast is accepted and checked when used

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.169.253",  # AWS DNS
        "169.254.169.123",  # AWS time
        "169.254.170.2",  # ECS task metadata
        "169.254.170.23",  # EKS pod identity
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
        "fd00:ec2::254",  # AWS over IPv6
        "fd00:ec2::23",  # EKS pod identity over IPv6
        "fd20:ce::254",  # GCP over IPv6
    )
)
METADATA_NAMES = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal",
    "metadata.azure.internal", "metadata.tencentyun.com", "metadata.platformequinix.com",
})  # fmt: skip

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_BENCHMARK = ipaddress.ip_network("198.18.0.0/15")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_COMPATIBLE = ipaddress.ip_network("::/96")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")


def normal_host(host: str) -> str:
    """A host name as it is compared: lower case, without brackets and trailing dots."""
    return host.strip().strip("[]").rstrip(".").lower()


def _embedded(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64, Teredo), and the form."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    if ip.teredo is not None:
        return ip.teredo[1], "Teredo"
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
    if ip in _COMPATIBLE and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "IPv4-compatible"
    return None


def category(ip: IPAddress) -> str | None:
    """Why the default policy refuses ``ip`` ("loopback", "private", ...), or None when it is public."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "a scoped (link-local) address"
        inner = _embedded(ip)
        if inner is not None:
            why = category(inner[0])
            if why is not None:
                return f"{why} ({inner[1]} form of {inner[0]})"
            if inner[1] == "IPv4-compatible":
                return "a deprecated IPv4-compatible address"
            return None if inner[1] != "Teredo" else "a Teredo address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address):
        if ip in _THIS_NETWORK:
            return "'this network' (0.0.0.0/8)"
        if ip in _CGNAT:
            return "CGNAT shared address space (100.64.0.0/10)"
        if ip in _BENCHMARK:
            return "benchmark space (198.18.0.0/15)"
        if any(ip in ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")):
            return "private (RFC 1918)"
    else:
        if ip in _UNIQUE_LOCAL:
            return "unique-local (fc00::/7)"
        if ip.is_site_local:
            return "site-local (fec0::/10)"
    if ip.is_reserved or ip.is_private or not ip.is_global:
        return "reserved or not globally routable"
    return None


@dataclass(frozen=True, slots=True)
class Policy:
    """The default refusals, minus what the operator allow-lists (``networks`` and ``names``)."""

    networks: tuple[IPNetwork, ...] = ()
    names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, items: Iterable[str], what: str = "CALLREC_EGRESS_ALLOW") -> Policy:
        networks: list[IPNetwork] = []
        names: set[str] = set()
        for item in items:
            for part in item.split(","):
                text = part.strip()
                if not text:
                    continue
                try:
                    networks.append(ipaddress.ip_network(text.strip("[]"), strict=False))
                    continue
                except ValueError:
                    pass
                name = normal_host(text)
                labels = name.removeprefix(".").split(".")
                if not name or not all(lab and len(lab) < 64 and all(c.isalnum() or c in "-_" for c in lab)
                                       for lab in labels):  # fmt: skip
                    raise ConfigError(f"{what}: {text!r} is neither a CIDR network nor a host name")
                names.add(name)
        return cls(tuple(networks), frozenset(names))

    def name_allowed(self, host: str) -> bool:
        name = normal_host(host)
        return name in self.names or any(n.startswith(".") and name.endswith(n) for n in self.names)

    def why_refused(self, ip: IPAddress, host: str = "") -> str | None:
        """Why ``ip`` (reached as ``host``) may not be used, or None when it may."""
        why = category(ip)
        if why is None:
            return None
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded(ip)) is not None:
            candidates.append(inner[0])
        # a metadata address only by its very own entry: never through a suffix or a wider network
        metadata = any(cand in METADATA_ADDRESSES for cand in candidates)
        name = normal_host(host) if host else ""
        if name and (name in self.names if metadata else self.name_allowed(name)):
            return None
        for net in self.networks:
            for cand in candidates:
                if cand.version == net.version and cand in net and (not metadata or net.num_addresses == 1):
                    return None
        return why

    def check_name(self, host: str) -> None:
        """Refuse a metadata service's well-known name before it is even resolved."""
        name = normal_host(host)
        if name in METADATA_NAMES and name not in self.names:
            raise EgressRefused(f"{name} is a cloud metadata service; outbound requests there are refused")

    def resolve(self, host: str, port: int, timeout: float | None = None) -> list[str]:
        """Every address ``host`` resolves to, checked: ``EgressRefused`` when any of them is refused (so a
        name cannot mix a public and a private answer), ``OSError`` when it does not resolve."""
        self.check_name(host)
        name = normal_host(host)
        infos = _getaddrinfo(name, port, timeout)
        addresses: list[str] = []
        for info in infos:
            text = str(info[4][0])
            ip = ipaddress.ip_address(text)
            why = self.why_refused(ip, name)
            if why is not None:
                shown = name if name == text else f"{name} ({text})"
                raise EgressRefused(f"{shown} is {why}; outbound requests there are refused "
                                    f"unless the operator allow-lists it in CALLREC_EGRESS_ALLOW")  # fmt: skip
            if text not in addresses:
                addresses.append(text)
        if not addresses:
            raise OSError(f"{name} resolves to no address")
        return addresses

    def check_url(self, url: str, *, timeout: float = SETTINGS_RESOLVE_S) -> None:
        """Settings time: ``EgressRefused`` when ``url`` aims at a refused destination. A name that does not
        resolve (quickly) is accepted here: it is checked again on every connection."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise EgressRefused(f"{url[:100]!r} is not a usable URL: {exc}") from exc
        host = parsed.host
        if not host:
            raise EgressRefused(f"{url[:100]!r} names no host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            self.resolve(host, port, timeout)
        except OSError:
            return

    def connect(self, host: str, port: int, timeout: float | None,
                source_address: tuple[str, int] | None = None) -> socket.socket:  # fmt: skip
        """A TCP connection to one of ``host``'s checked addresses (never a second lookup)."""
        last: OSError | None = None
        for address in self.resolve(host, port, timeout):
            try:
                return socket.create_connection((address, port), timeout, source_address=source_address)
            except OSError as exc:
                last = exc
        assert last is not None
        raise last


_resolver = ThreadPoolExecutor(max_workers=8, thread_name_prefix="egress-dns")
_resolver_lock = threading.Lock()


def _getaddrinfo(name: str, port: int, timeout: float | None) -> Sequence[Any]:
    """``getaddrinfo`` for TCP, given up after ``timeout`` seconds; ``OSError`` for whatever fails."""
    try:
        if timeout is None:
            return socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        with _resolver_lock:
            future = _resolver.submit(socket.getaddrinfo, name, port, type=socket.SOCK_STREAM)
        return future.result(timeout)
    except FutureTimeout as exc:
        raise OSError(f"{name} did not resolve within {timeout:g} s") from exc
    except (UnicodeError, ValueError, OverflowError) as exc:  # not a name or port the resolver can take
        raise OSError(f"{name[:100]!r} cannot be resolved: {exc}") from exc


def check_settings(rules: Policy, before: DomainSettings | None, after: DomainSettings) -> None:
    """Settings time: ``Refused`` naming the field and the reason when a webhook URL or the S3
    endpoint that ``after`` adds or changes aims at a refused destination (what was stored before is checked
    again when it is used)."""
    known = {w.url for w in before.webhooks} if before is not None else set()
    for number, hook in enumerate(after.webhooks):
        if hook.url not in known:
            _check_field(rules, f"webhooks[{number}].url", hook.url)
    endpoint = after.storage.endpoint_url if after.storage.kind == "s3" else None
    old = before.storage.endpoint_url if before is not None and before.storage.kind == "s3" else None
    if endpoint and endpoint != old:
        _check_field(rules, "storage.endpoint_url", endpoint)


def _check_field(rules: Policy, field: str, url: str) -> None:
    try:
        rules.check_url(url)
    except EgressRefused as exc:
        raise Refused(f"{field} is refused: {exc}") from exc


@lru_cache(maxsize=16)
def policy(allow: tuple[str, ...]) -> Policy:
    """The policy for an allow-list (``ServiceConfig.egress_allow``)."""
    return Policy.parse(allow)


class Guard(httpcore.SyncBackend):
    """httpcore's network backend with every TCP connection made through the policy; ``inside`` says
    whether one went to an address only the allow-list admits (its answers are not for tenants to read)."""

    def __init__(self, rules: Policy) -> None:
        self.rules = rules
        self.inside = False

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:  # fmt: skip
        from httpcore._backends.sync import SyncStream

        source = None if local_address is None else (local_address, 0)
        try:
            sock = self.rules.connect(host, port, timeout, source)
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = str(sock.getpeername()[0])
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        if category(ipaddress.ip_address(peer.split("%")[0])) is not None:
            self.inside = True
        return SyncStream(sock)


def transport(guard: Guard) -> httpx.HTTPTransport:
    """An httpx transport whose connections go only where ``guard`` allows (the Host header and TLS
    server name stay the URL's); environment proxies are not used."""
    made = httpx.HTTPTransport(trust_env=False, retries=0)
    ssl_context = made._pool._ssl_context  # noqa: SLF001
    made._pool = httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=guard)  # noqa: SLF001
    return made
