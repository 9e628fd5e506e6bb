"""Object key templates: where a recording or a raw tape goes inside the storage.

A template is a ``str.format`` string over a fixed set of fields. Field values are sanitised so that any
call id a PBX sends still renders a valid key that stays inside the storage root or bucket prefix.

Every key a domain's objects get starts with ``d/<domain id>/`` (``domain_key``), put in front of what the
template renders and outside it: whatever a domain's templates say, its keys never meet another domain's.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime

from callrec.config import ConfigError
from callrec.errors import StorageError
from callrec.files import tape
from callrec.names import safe_name
from callrec.storage.base import check_key

DEFAULT_RECORDING_TEMPLATE = "recordings/{domain}/{yyyy}/{mm}/{dd}/{call_id}-{recording_id}.{ext}"
# a folder prefix: the tape's files (TAPE_FILES) go under it
DEFAULT_TAPE_TEMPLATE = "tapes/{domain}/{yyyy}/{mm}/{dd}/{tape}"
TAPE_FILES = tape.FILES
FIELDS = ("domain", "call_id", "recording_id", "interaction", "direction", "yyyy", "mm", "dd", "hh", "ext", "tape")
TIME_FIELDS = ("yyyy", "mm", "dd", "hh")
KINDS = ("recording", "tape")
# a field that identifies one object, per kind of template
UNIQUE_FIELDS = {"recording": ("recording_id", "call_id"), "tape": ("tape",)}
# longer values are cut and given a hash suffix, so they stay unique and fit one path segment
MAX_VALUE_CHARS = 128
# the first segment of every domain's keys (keys stored before it existed keep their old form)
DOMAIN_PREFIX = "d/"
_SAMPLE = {name: "x" for name in FIELDS} | {"yyyy": "2024", "mm": "01", "dd": "02", "hh": "03"}


def validate_template(template: str, kind: str = "recording") -> None:
    """Raise ``ConfigError`` unless ``template`` renders valid, unique keys for ``kind`` ("recording"/"tape")."""
    if kind not in KINDS:
        raise ConfigError(f"key template kind {kind!r} is not one of recording, tape")
    _check_path(template, kind)
    fields = _fields(template, kind)
    needed = UNIQUE_FIELDS[kind]
    if not any(name in fields for name in needed):
        either = " or ".join("{" + name + "}" for name in needed)
        raise ConfigError(f"{kind} key template {template!r} must contain {either} so that keys are unique")


def domain_prefix(domain_id: int) -> str:
    """The prefix of every key a domain's objects get (``d/<domain id>/``); no template can choose it."""
    if isinstance(domain_id, bool) or not isinstance(domain_id, int) or domain_id < 0:
        raise TypeError(f"a domain id is a whole number ≥ 0, not {domain_id!r}")
    return f"{DOMAIN_PREFIX}{domain_id}/"


def domain_key(domain_id: int, template: str, *, when: datetime, **fields: str) -> str:
    """``render_key`` under the domain's own prefix: the key a new object of the domain gets."""
    return check_key(domain_prefix(domain_id) + render_key(template, when=when, **fields))


def render_key(template: str, *, when: datetime, **fields: str) -> str:
    """The key ``template`` gives for ``fields``, with yyyy/mm/dd/hh taken from ``when`` in UTC.

    A naive ``when`` is taken as UTC. A field the template names but the caller does not pass renders
    as "_", like an empty value. Unknown field names are a programming error (``TypeError``).
    """
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise TypeError(f"render_key() got unknown key fields: {', '.join(unknown)}")
    clock = sorted(set(fields) & set(TIME_FIELDS))
    if clock:
        raise TypeError(f"render_key() takes {', '.join(clock)} from when, not as fields")
    _fields(template, "object")
    utc = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    values = {name: sanitise(fields.get(name)) for name in FIELDS}
    values |= {"yyyy": f"{utc.year:04d}", "mm": f"{utc.month:02d}", "dd": f"{utc.day:02d}", "hh": f"{utc.hour:02d}"}
    return _checked(template, template.format_map(values), "object")


def sanitise(value: object) -> str:
    """``value`` as one safe path segment: only ``[A-Za-z0-9._@+=-]``, never empty, never starting with ".".

    None counts as empty; anything else is taken as ``str(value)``.
    """
    # "." and ".." would be path steps; a leading "." is refused in keys
    text = "" if value is None else str(value)
    return safe_name(text, extra="@+=", limit=MAX_VALUE_CHARS, digest=True, dots="escape")


def _check_path(template: str, kind: str) -> None:
    """``ConfigError`` for a template that is not a plain relative path: absolute, with "." or ".." steps,
    empty segments, backslashes or control characters (said in words, before anything is rendered)."""
    what = f"{kind} key template {template!r}"
    if not isinstance(template, str) or not template.strip():
        raise ConfigError(f"{kind} key template is empty")
    if template.startswith("/"):
        raise ConfigError(f"{what} must be relative (it starts with '/')")
    if "\\" in template:
        raise ConfigError(f"{what} must not contain a backslash")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in template):
        raise ConfigError(f"{what} must not contain control characters")
    segments = template.split("/")
    if any(s in (".", "..") for s in segments):
        raise ConfigError(f"{what} must not contain '.' or '..' path steps")
    if any(not s for s in segments):
        raise ConfigError(f"{what} must not have an empty path segment ('//' or a '/' at the end)")


def _fields(template: str, kind: str) -> set[str]:
    """The field names of a well-formed template; ``ConfigError`` naming the problem otherwise."""
    what = f"{kind} key template {template!r}"
    if not isinstance(template, str) or not template.strip():
        raise ConfigError(f"{kind} key template is empty")
    if template.startswith("/"):
        raise ConfigError(f"{what} must be relative (it starts with '/')")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"{what} has unbalanced braces: {exc}") from exc
    names: set[str] = set()
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in FIELDS:
            shown = "{" + name + "}" if name else "{}"
            raise ConfigError(f"{what} names an unknown field {shown}; known fields: {', '.join(FIELDS)}")
        if spec or conversion:
            raise ConfigError(f"{what} formats a field ({{{name}!...}} or {{{name}:...}}); only plain {{{name}}} works")
        names.add(name)
    _checked(template, template.format_map(_SAMPLE), kind)
    return names


def _checked(template: str, key: str, kind: str) -> str:
    try:
        return check_key(key)
    except StorageError as exc:
        raise ConfigError(f"{kind} key template {template!r} does not make a valid object key: {exc}") from exc
