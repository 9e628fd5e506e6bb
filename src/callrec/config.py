"""Settings: every knob has a default that works on one machine, and a ``CALLREC_*`` variable to change it."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# ConfigError lives in the exception tree; it is named here too, where settings are read
from callrec.errors import ConfigError as ConfigError

DEFAULT_SIP_PORT = 5060
DEFAULT_RTP_PORTS = (30000, 39999)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# a domain's name as the service accepts it (callrec.api.schemas.DOMAIN_NAME)
_DOMAIN_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
# with no --allow / --allow-domain configured, only these may open sessions
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# a source holds at most this many sessions unless the per-source limit or the range says more
MIN_SESSIONS_PER_SOURCE = 16
# under the data folder: the tapes (recorder, rtpengine spool, uploads), laid out as files/tape.py says
TAPES_DIR = "tapes"


@dataclass(slots=True)
class RecorderConfig:
    """How ``callrec record`` listens, where it writes, and what it accepts."""

    listen_host: str = "0.0.0.0"
    listen_port: int = DEFAULT_SIP_PORT
    rtp_first: int = DEFAULT_RTP_PORTS[0]
    rtp_last: int = DEFAULT_RTP_PORTS[1]
    data_dir: Path = Path("data")
    # SRC addresses trusted for every domain (the domain header or metadata is honoured from them)
    allow: list[IPNetwork] = field(default_factory=list)
    # SRC addresses trusted for one domain each: their calls are filed into it, and only into it
    allow_domains: dict[str, list[IPNetwork]] = field(default_factory=dict)
    # sessions one SRC address may hold at once (it also holds at most twice as many RTP port pairs);
    # 0: an eighth of the range's port pairs, at least MIN_SESSIONS_PER_SOURCE
    max_sessions_per_source: int = 0
    # the address put in SDP answers; by default the one the SRC reached us on
    media_address: str = ""
    max_sessions: int = 5000
    min_free_bytes: int = 512 * 1024 * 1024
    idle_timeout_s: float = 300.0
    flush_interval_s: float = 1.0
    # the participant listed first in the metadata is the caller unless this says "last"
    caller: str = "first"
    domain_header: str = "X-Callrec-Domain"
    interaction_header: str = "X-Callrec-Interaction"
    domain_keys: tuple[str, ...] = ("domain", "tenant", "tenantId")
    interaction_keys: tuple[str, ...] = ("interactionId", "interaction_id", "ucid", "UCID", "xrefci")
    mix_on_close: bool = False
    user_agent: str = "callrec"
    # rtpengine spool folders (its --recording-dir, pcap method) whose finished recordings become calls
    rtpengine_spools: list[Path] = field(default_factory=list)
    # the ng protocol ``metadata`` keys (``key:value|key:value``) naming a recording's domain and interaction
    rtpengine_domain_key: str = "domain"
    rtpengine_interaction_key: str = "interaction"
    # live passive capture (``serve --capture``): interfaces read, their BPF filter ("" = the default) and
    # where a call's domain comes from (``callrec.live.domains``)
    captures: list[str] = field(default_factory=list)
    capture_filter: str = ""
    capture_domain_from: str = "fixed:default"

    @property
    def tapes_dir(self) -> Path:
        return self.data_dir / TAPES_DIR

    @property
    def recordings_dir(self) -> Path:
        return self.data_dir / "recordings"

    def allowed(self, address: str) -> bool:
        """Whether an SRC at ``address`` may open sessions at all (for some domain)."""
        ip = source_ip(address)
        if ip is None:
            return False
        if not self.allow and not self.allow_domains:
            return _within(ip, LOOPBACK)
        return _within(ip, self.allow) or any(_within(ip, nets) for nets in self.allow_domains.values())

    def domain_for(self, address: str, asked: str) -> str | None:
        """The domain a session from ``address`` is filed into when it names ``asked`` (header or metadata;
        "" when it names none), or None when that source may not record into it (403).

        A source in ``allow`` (or, with nothing configured, a loopback one) may name any domain, "default"
        when it names none. A source listed only under ``allow_domains`` may name only its own domains;
        naming none files the call into its domain when it has exactly one.
        """
        ip = source_ip(address)
        if ip is None:
            return None
        if _within(ip, self.allow) or (not self.allow and not self.allow_domains and _within(ip, LOOPBACK)):
            return asked or "default"
        mine = [name for name, nets in self.allow_domains.items() if _within(ip, nets)]
        if asked:
            return asked if asked in mine else None
        return mine[0] if len(mine) == 1 else None

    def per_source_limit(self) -> int:
        """Sessions one SRC address may hold at once."""
        if self.max_sessions_per_source > 0:
            return self.max_sessions_per_source
        pairs = max(0, (self.rtp_last - (self.rtp_first + (self.rtp_first & 1)) + 1) // 2)
        return max(MIN_SESSIONS_PER_SOURCE, pairs // 8)

    def opened_to_all(self) -> bool:
        """Whether a configured network admits every address (``--allow 0.0.0.0/0``)."""
        nets = [*self.allow, *(n for nets in self.allow_domains.values() for n in nets)]
        return any(net.prefixlen == 0 for net in nets)


def source_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An SRC's address as one value per host: IPv4-mapped IPv6 as IPv4, no zone; None if not an address."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _within(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: Iterable[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in nets)


def parse_hostport(text: str, default_port: int, what: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``HOST`` or ``:PORT``."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    host = host or "0.0.0.0"
    if not port_text:
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) < 65536:
        raise ConfigError(f"{what}: {text!r} is not HOST:PORT with a port from 0 (any free one) to 65535")
    return host, int(port_text)


def parse_port_range(text: str, what: str = "--rtp-ports") -> tuple[int, int]:
    """``FIRST-LAST``: an even first port and room for at least one RTP/RTCP pair."""
    first_text, sep, last_text = text.strip().partition("-")
    if (
        not sep
        or not (first_text.isascii() and first_text.isdigit())
        or not (last_text.isascii() and last_text.isdigit())
    ):
        raise ConfigError(f"{what}: {text!r} is not FIRST-LAST")
    first, last = int(first_text), int(last_text)
    if not 1024 <= first < last <= 65535:
        raise ConfigError(f"{what}: ports must satisfy 1024 <= FIRST < LAST <= 65535")
    first += first & 1  # RTP takes even ports, RTCP the odd one above
    if last - first < 1:
        raise ConfigError(f"{what}: the range holds no even/odd RTP/RTCP port pair")
    return first, last


def parse_networks(items: list[str], what: str = "--allow") -> list[IPNetwork]:
    out: list[IPNetwork] = []
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            try:
                out.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError as exc:
                raise ConfigError(f"{what}: {part.strip()!r} is not an address or CIDR network") from exc
    return out


def parse_domain_networks(items: list[str], what: str = "--allow-domain") -> dict[str, list[IPNetwork]]:
    """``DOMAIN=CIDR[,CIDR...]`` items, several per item when separated by ``;``; a domain named twice
    gets the networks of both."""
    out: dict[str, list[IPNetwork]] = {}
    for item in items:
        for part in item.split(";"):
            if not part.strip():
                continue
            name, sep, networks = part.partition("=")
            name = name.strip()
            if not sep or not _DOMAIN_NAME.fullmatch(name):
                raise ConfigError(
                    f"{what}: {part.strip()!r} is not DOMAIN=CIDR[,CIDR...] with a domain name of lowercase"
                    " letters, digits, '.', '_' and '-'"
                )
            nets = parse_networks([networks], what)
            if not nets:
                raise ConfigError(f"{what}: {part.strip()!r} names no address or network")
            out.setdefault(name, []).extend(nets)
    return out


def recorder_config_from_env(env: Mapping[str, str] | None = None) -> RecorderConfig:
    """A ``RecorderConfig`` with the ``CALLREC_*`` variables of ``env`` (default: the process's) applied."""
    env = os.environ if env is None else env
    cfg = RecorderConfig()
    if "CALLREC_DATA" in env:
        cfg.data_dir = Path(env["CALLREC_DATA"])
    if "CALLREC_SIP_LISTEN" in env:
        listen = parse_hostport(env["CALLREC_SIP_LISTEN"], DEFAULT_SIP_PORT, "CALLREC_SIP_LISTEN")
        cfg.listen_host, cfg.listen_port = listen
    if "CALLREC_RTP_PORTS" in env:
        cfg.rtp_first, cfg.rtp_last = parse_port_range(env["CALLREC_RTP_PORTS"], "CALLREC_RTP_PORTS")
    if "CALLREC_ALLOW" in env:
        cfg.allow = parse_networks([env["CALLREC_ALLOW"]], "CALLREC_ALLOW")
    if "CALLREC_ALLOW_DOMAINS" in env:
        cfg.allow_domains = parse_domain_networks([env["CALLREC_ALLOW_DOMAINS"]], "CALLREC_ALLOW_DOMAINS")
    cfg.media_address = env.get("CALLREC_MEDIA_ADDRESS", cfg.media_address)
    cfg.max_sessions = _int(env, "CALLREC_MAX_SESSIONS", cfg.max_sessions)
    cfg.max_sessions_per_source = _int(env, "CALLREC_MAX_SESSIONS_PER_SOURCE", cfg.max_sessions_per_source)
    if cfg.max_sessions_per_source < 0:
        raise ConfigError("CALLREC_MAX_SESSIONS_PER_SOURCE must not be negative (0: the default)")
    cfg.min_free_bytes = _int(env, "CALLREC_MIN_FREE_MB", cfg.min_free_bytes // (1024 * 1024)) * 1024 * 1024
    cfg.idle_timeout_s = _float(env, "CALLREC_IDLE_TIMEOUT_S", cfg.idle_timeout_s)
    caller = env.get("CALLREC_SIPREC_CALLER", cfg.caller)
    if caller not in ("first", "last"):
        raise ConfigError("CALLREC_SIPREC_CALLER must be 'first' or 'last'")
    cfg.caller = caller
    cfg.domain_header = env.get("CALLREC_DOMAIN_HEADER", cfg.domain_header)
    cfg.interaction_header = env.get("CALLREC_INTERACTION_HEADER", cfg.interaction_header)
    if "CALLREC_DOMAIN_KEYS" in env:
        cfg.domain_keys = tuple(k.strip() for k in env["CALLREC_DOMAIN_KEYS"].split(",") if k.strip())
    if "CALLREC_INTERACTION_KEYS" in env:
        cfg.interaction_keys = tuple(k.strip() for k in env["CALLREC_INTERACTION_KEYS"].split(",") if k.strip())
    if "CALLREC_RTPENGINE_SPOOL" in env:
        cfg.rtpengine_spools = parse_spools(env["CALLREC_RTPENGINE_SPOOL"])
    if "CALLREC_CAPTURE" in env:
        cfg.captures = parse_interfaces(env["CALLREC_CAPTURE"])
    cfg.capture_filter = env.get("CALLREC_CAPTURE_FILTER", cfg.capture_filter)
    cfg.capture_domain_from = env.get("CALLREC_CAPTURE_DOMAIN_FROM", cfg.capture_domain_from)
    for name, attr in (("CALLREC_RTPENGINE_DOMAIN_KEY", "rtpengine_domain_key"),
                       ("CALLREC_RTPENGINE_INTERACTION_KEY", "rtpengine_interaction_key")):  # fmt: skip
        if name in env:
            if not env[name].strip():
                raise ConfigError(f"{name} must name a metadata key")
            setattr(cfg, attr, env[name].strip())
    return cfg


def parse_spools(text: str) -> list[Path]:
    """rtpengine spool folders separated by ``os.pathsep`` (``:``), as in ``PATH``: unlike the other lists
    (comma-separated keys and networks) these are folder names, which may hold a comma. Empty parts are
    skipped, a folder named twice counts once; whether they exist is checked when the recorder starts."""
    out: list[Path] = []
    for part in text.split(os.pathsep):
        path = Path(part.strip())
        if part.strip() and path not in out:
            out.append(path)
    return out


def parse_interfaces(text: str) -> list[str]:
    """Network interfaces separated by ``:`` or ``,`` (``CALLREC_CAPTURE=eth1,eth2``), each once."""
    out: list[str] = []
    for part in text.replace(",", ":").split(":"):
        if part.strip() and part.strip() not in out:
            out.append(part.strip())
    return out


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return int(_number(env, name, default, "a whole number"))


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, "a number")


def _number(env: Mapping[str, str], name: str, default: float, kind: str) -> float:
    if name not in env:
        return default
    try:
        return int(env[name]) if kind == "a whole number" else float(env[name])
    except ValueError as exc:
        raise ConfigError(f"{name} must be {kind}, not {env[name]!r}") from exc


DEFAULT_HTTP = ("127.0.0.1", 8080)


@dataclass(slots=True)
class ServiceConfig:
    """How the service's parts (API, workers, the recorder's hand-off) find the database, queue and storage."""

    data_dir: Path = Path("data")
    # SQLite under data_dir unless set; PostgreSQL: postgresql://user@host/db
    database_url: str = ""
    # SqliteHuey under data_dir unless set; redis://host:6379/0 for RedisHuey; memory:// in tests
    queue_url: str = ""
    queue_name: str = "callrec"
    admin_key: str = ""
    # the key that encrypts storage secrets at rest; read from data_dir/secret.key (made once) unless set
    secret_key: str = ""
    http_host: str = DEFAULT_HTTP[0]
    http_port: int = DEFAULT_HTTP[1]
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    # a mixing job whose worker has not renewed its lease for this long is taken over
    lease_s: float = 60.0
    sweep_interval_s: float = 10.0
    # a queued job whose queue message may be lost is queued again after this long
    requeue_after_s: float = 60.0
    retention_interval_s: float = 300.0
    max_attempts: int = 5
    backoff_base_s: float = 2.0
    backoff_max_s: float = 600.0
    public_url: str = ""
    # this host's cache of converted audio and picture analyses (data_dir/cache) is kept under this size
    cache_max_bytes: int = 1024 * 1024 * 1024
    # destinations a tenant's webhooks and S3 endpoint may reach although the egress policy refuses them by
    # default (loopback, private, link-local, metadata, ...): CIDRs and host names (callrec.service.egress)
    egress_allow: tuple[str, ...] = ()
    # the most calls one upload may register (per domain and upload; more is refused with 413)
    max_calls_per_upload: int = 200

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'callrec.db').resolve()}"

    @property
    def work_dir(self) -> Path:
        return self.data_dir / "work"

    @property
    def tapes_dir(self) -> Path:
        return self.data_dir / TAPES_DIR

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"


def service_config_from_env(env: Mapping[str, str] | None = None) -> ServiceConfig:
    """A ``ServiceConfig`` with the ``CALLREC_*`` variables of ``env`` (default: the process's) applied."""
    env = os.environ if env is None else env
    cfg = ServiceConfig()
    if "CALLREC_DATA" in env:
        cfg.data_dir = Path(env["CALLREC_DATA"])
    cfg.database_url = env.get("CALLREC_DATABASE_URL", "")
    cfg.queue_url = env.get("CALLREC_QUEUE_URL", "")
    if cfg.queue_url and not cfg.queue_url.startswith(("redis://", "rediss://", "sqlite://", "memory://")):
        raise ConfigError("CALLREC_QUEUE_URL must be a redis://, sqlite:// or memory:// URL")
    cfg.queue_name = env.get("CALLREC_QUEUE_NAME", cfg.queue_name)
    cfg.admin_key = env.get("CALLREC_ADMIN_KEY", "")
    cfg.secret_key = env.get("CALLREC_SECRET_KEY", "")
    if "CALLREC_HTTP" in env:
        cfg.http_host, cfg.http_port = parse_hostport(env["CALLREC_HTTP"], DEFAULT_HTTP[1], "CALLREC_HTTP")
    cfg.workers = _int(env, "CALLREC_WORKERS", cfg.workers)
    if cfg.workers < 1:
        raise ConfigError("CALLREC_WORKERS must be at least 1")
    cfg.lease_s = _float(env, "CALLREC_LEASE_S", cfg.lease_s)
    cfg.sweep_interval_s = _float(env, "CALLREC_SWEEP_INTERVAL_S", cfg.sweep_interval_s)
    cfg.requeue_after_s = _float(env, "CALLREC_REQUEUE_AFTER_S", cfg.requeue_after_s)
    cfg.retention_interval_s = _float(env, "CALLREC_RETENTION_INTERVAL_S", cfg.retention_interval_s)
    cfg.max_attempts = _int(env, "CALLREC_MAX_ATTEMPTS", cfg.max_attempts)
    cfg.backoff_base_s = _float(env, "CALLREC_BACKOFF_BASE_S", cfg.backoff_base_s)
    cfg.backoff_max_s = _float(env, "CALLREC_BACKOFF_MAX_S", cfg.backoff_max_s)
    cfg.public_url = env.get("CALLREC_PUBLIC_URL", "").rstrip("/")
    cfg.cache_max_bytes = _int(env, "CALLREC_CACHE_MAX_MB", cfg.cache_max_bytes // (1024 * 1024)) * 1024 * 1024
    if cfg.cache_max_bytes < 0:
        raise ConfigError("CALLREC_CACHE_MAX_MB must not be negative")
    if "CALLREC_EGRESS_ALLOW" in env:
        from callrec.service.egress import Policy

        cfg.egress_allow = tuple(p.strip() for p in env["CALLREC_EGRESS_ALLOW"].split(",") if p.strip())
        Policy.parse(cfg.egress_allow)  # a ConfigError naming the variable when an entry is unusable
    cfg.max_calls_per_upload = _int(env, "CALLREC_MAX_CALLS_PER_UPLOAD", cfg.max_calls_per_upload)
    if cfg.max_calls_per_upload < 1:
        raise ConfigError("CALLREC_MAX_CALLS_PER_UPLOAD must be at least 1")
    return cfg
