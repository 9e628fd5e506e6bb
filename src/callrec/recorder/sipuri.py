"""SIP addressing for the SRS's own requests: URIs of header values, route sets, next hops, tags.

Pure functions over header text (RFC 3261 sections 12.1.1, 16.12, 19.1.1, 20.10; RFC 3263 without DNS),
used to answer within a dialog and to send a BYE of our own.
"""

from __future__ import annotations

import ipaddress
import secrets


def new_tag() -> str:
    return secrets.token_hex(6)


def target_uri(value: str) -> str:
    """The URI of a name-addr (``"Name" <sip:a@b;lr>;p=1``) or addr-spec (``sip:a@b;p=1``) header value."""
    if "<" in value and ">" in value:
        return value.split("<", 1)[1].split(">", 1)[0]
    return value.split(";")[0].strip() or "sip:src"


def route_set(values: list[str]) -> list[str]:
    """The entries of a request's Record-Route header values, in the order received (a header may list
    several)."""
    entries: list[str] = []
    for value in values:
        entries += [entry.strip() for entry in split_commas(value) if entry.strip()]
    return entries


def split_commas(value: str) -> list[str]:
    """A header value split at the commas that separate its entries (not those inside ``<>`` or quotes)."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, char in enumerate(value):
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "<>":
            depth += 1 if char == "<" else -1
        elif char == "," and not quoted and depth <= 0:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts


def uri_params(uri: str) -> list[str]:
    return [p.strip().lower() for p in uri.split("?", 1)[0].split(";")[1:]]


def loose(route: str) -> bool:
    return any(p == "lr" or p.startswith("lr=") for p in uri_params(target_uri(route)))


def strict_uri(route: str) -> str:
    """A strict router's URI as a Request-URI: without the parameters a Request-URI may not carry (RFC 3261
    section 19.1.1: method, maddr, ttl, headers)."""
    uri = target_uri(route).split("?", 1)[0]
    head, *params = uri.split(";")
    kept = [p for p in params if p.split("=")[0].strip().lower() not in ("method", "maddr", "ttl")]
    return ";".join([head, *kept])


def with_tag(value: str, tag: str) -> str:
    """A From/To value with our tag: as the To of our 2xx had it (after an addr-spec without angle brackets, a
    parameter belongs to the header too: RFC 3261 section 20.10)."""
    return f"{value};tag={tag}"


def hop_address(uri_or_route: str) -> tuple[str, int] | None:
    """Where a SIP URI is sent (RFC 3263 without DNS: a literal address, its port or 5060/5061); None for a
    host name."""
    uri = target_uri(uri_or_route) if "<" in uri_or_route else uri_or_route
    scheme, _, rest = uri.partition(":")
    hostport = rest.split(";", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
    maddr = next((p.split("=", 1)[1] for p in uri_params(uri) if p.startswith("maddr=")), "")
    if hostport.startswith("["):
        host, _, port_text = hostport[1:].partition("]")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = hostport.partition(":")
    host = maddr or host
    default = 5061 if scheme.lower() == "sips" else 5060
    try:
        ipaddress.ip_address(host)
        port = int(port_text) if port_text else default
    except ValueError:
        return None
    return (host, port) if 0 < port < 65536 else None
