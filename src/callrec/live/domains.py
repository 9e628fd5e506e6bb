"""Which domain (tenant) a call seen on a mirror port is filed into: ``--domain-from``.

A passive recorder has no SRC to trust, so the operator says where the domain comes from, one rule per
capture process (so per interface: run one ``callrec capture`` per interface for a fixed domain each):

- ``ruri``: the host of the initial INVITE's Request-URI (``sip:100@acme.example.com`` -> ``acme.example.com``);
- ``to``: the host of its To URI;
- ``header:NAME``: the value of the header ``NAME`` of the initial INVITE (e.g. ``header:X-Tenant``);
- ``fixed:NAME``: always ``NAME``.

The value is lowercased; one that is not a valid domain name (``[a-z0-9][a-z0-9._-]{0,62}``), or missing,
gives ``default``. A domain the service does not know is filed under ``default`` by the service itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from callrec.config import ConfigError
from callrec.wire.sip import SipMessage

DEFAULT_DOMAIN = "default"
DOMAIN_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
KINDS = ("ruri", "to", "header", "fixed")


@dataclass(frozen=True, slots=True)
class DomainRule:
    """One ``--domain-from`` rule: ``kind`` (ruri, to, header, fixed) and its argument."""

    kind: str = "fixed"
    arg: str = DEFAULT_DOMAIN

    @classmethod
    def parse(cls, text: str) -> DomainRule:
        """``ruri``, ``to``, ``header:NAME`` or ``fixed:NAME``; ``ConfigError`` (one sentence) otherwise."""
        kind, _, arg = text.strip().partition(":")
        kind = kind.lower()
        if kind in ("ruri", "to") and not arg:
            return cls(kind, "")
        if kind == "header" and re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", arg):
            return cls(kind, arg)
        if kind == "fixed" and DOMAIN_NAME.fullmatch(arg):
            return cls(kind, arg)
        raise ConfigError(
            f"--domain-from {text!r}: expected ruri, to, header:NAME or fixed:DOMAIN"
            " (a domain is lowercase letters, digits, '.', '_' and '-')"
        )

    def __str__(self) -> str:
        return self.kind if self.kind in ("ruri", "to") else f"{self.kind}:{self.arg}"

    def domain_of(self, msg: SipMessage) -> str:
        """The domain of the call whose initial INVITE is ``msg``."""
        if self.kind == "fixed":
            value: str | None = self.arg
        elif self.kind == "ruri":
            value = uri_host(msg.uri or "")
        elif self.kind == "to":
            value = uri_host(_inner(msg.header("to") or ""))
        else:
            value = msg.header(self.arg)
        value = (value or "").strip().lower()
        return value if DOMAIN_NAME.fullmatch(value) else DEFAULT_DOMAIN


def _inner(value: str) -> str:
    if "<" in value and ">" in value:
        return value.split("<", 1)[1].split(">", 1)[0]
    return value.split(";", 1)[0].strip()


def uri_host(uri: str) -> str:
    """The host of a SIP URI: ``sip:alice@Example.com:5061;transport=tcp`` -> ``Example.com`` (IPv6 brackets
    kept off)."""
    rest = uri.strip().split(":", 1)[1] if uri.lower().startswith(("sip:", "sips:", "tel:")) else uri.strip()
    rest = rest.split(";", 1)[0].split("?", 1)[0]
    host = rest.rsplit("@", 1)[-1]
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.split(":", 1)[0]
