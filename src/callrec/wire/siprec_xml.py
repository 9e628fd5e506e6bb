"""The XML layer of SIPREC rs-metadata: a safe reader and the repairs of what SRCs get wrong.

The XML comes from the network: ``read_tree`` refuses a DTD before its internal subset is read (no entity
expansion, no external entity), and a document larger than 256 KiB or nested deeper than 64 levels; elements
and attributes keep their local names only. ``read_lenient`` repairs a document that is not well-formed
when the repair needs no guess (see ``callrec.wire.siprec``) and says what it repaired.
"""

from __future__ import annotations

import html.entities
import re
from xml.etree.ElementTree import Element, TreeBuilder
from xml.parsers import expat

from callrec.errors import ParseError

MAX_METADATA_BYTES = 256 * 1024
MAX_DEPTH = 64


def read_lenient(data: bytes | str) -> tuple[Element, list[str]]:
    """The element tree of a document, repaired (see the module's docstring) when it is not well-formed."""
    try:
        return read_tree(data), []
    except ParseError as exc:
        if exc.args[0] != NOT_WELL_FORMED:
            raise
        original = exc
    text, repairs = _decoded(data)
    if text is not None:
        text, fixed = _repair(text)
        repairs += fixed
    if text is None or not repairs:
        raise original
    try:
        return read_tree(text), repairs
    except ParseError:
        raise original from None


NOT_WELL_FORMED = "SIPREC metadata is not well-formed XML"
_DECLARED = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_UTF8_BOM = "\ufeff"


def _decoded(data: bytes | str) -> tuple[str | None, list[str]]:
    """The document as text for repairs (None when its bytes cannot be read without a guess), and what the
    reading itself repaired."""
    repairs: list[str] = []
    if isinstance(data, bytes):
        declared = _DECLARED.match(data)
        encoding = declared.group(1).decode().lower().replace("_", "-") if declared else "utf-8"
        try:
            text = data.decode("utf-8-sig" if encoding in ("utf-8", "utf8") else encoding)
        except UnicodeDecodeError:
            if encoding not in ("utf-8", "utf8"):
                return None, []
            # an SRC that copies a phone's Latin-1 display name into its UTF-8 document; Windows-1252 is
            # ISO-8859-1 with printable characters in place of C1 controls (what browsers do too)
            try:
                text = data.decode("cp1252")
            except UnicodeDecodeError:
                text = data.decode("latin-1")
            repairs.append("bytes that are not UTF-8 read as ISO-8859-1")
        except LookupError:
            return None, []
    else:
        text = data
    stripped = text.lstrip(_UTF8_BOM + " \t\r\n")
    if stripped != text and stripped.startswith("<?xml"):
        repairs.append("whitespace before the XML declaration")
        text = stripped
    return text, repairs


# a well-formed tag (its attribute values quoted; their own bare '&' is repaired inside); no part of it may
# hold a '<', so that trying one at each '<' reads the document once, not once per '<'
_TAG = re.compile(r"""</?[^\W\d][\w.:-]*(?:\s+[^\W\d][\w.:-]*\s*=\s*(?:"[^"<]*"|'[^'<]*'))*\s*/?>""")
_DECLARATION = re.compile(r"<![A-Za-z][^<>]*>")
# markup whose content is left as it is: (opener, closer)
_OPAQUE = (("<!--", "-->"), ("<![CDATA[", "]]>"), ("<?", "?>"))
_ATTRIBUTE_VALUE = re.compile(r"""=(\s*)("[^"]*"|'[^']*')""")
_REFERENCE = re.compile(r"&(#[0-9]+;|#x[0-9A-Fa-f]+;|[^\W\d][\w.:-]*;)?")
_XML_ENTITIES = frozenset({"amp;", "lt;", "gt;", "quot;", "apos;"})


def _repair(text: str) -> tuple[str, list[str]]:
    """Escape what can only be a character: ``&`` that starts no reference (in text and attribute values), ``<``
    that starts no markup; an HTML entity becomes its character. Returns the text and what was repaired."""
    repairs: dict[str, None] = {}
    out: list[str] = []
    closers: dict[str, int] = {}  # where each closer was last found: searched again only once passed
    at = 0
    while at < len(text):
        lt = text.find("<", at)
        end = len(text) if lt < 0 else lt
        out.append(_repair_text(text[at:end], repairs))
        if lt < 0:
            break
        stop = -1
        for opener, closer in _OPAQUE:
            if text.startswith(opener, lt):
                found = closers.get(opener)
                if found is None or 0 <= found < lt + len(opener):
                    found = closers[opener] = text.find(closer, lt + len(opener))
                stop = found + len(closer) if found >= 0 else -1
                break
        else:
            markup = _TAG.match(text, lt) or _DECLARATION.match(text, lt)
            if markup is not None:
                stop = markup.end()
        if stop < 0:
            out.append("&lt;")
            repairs["a bare '<'"] = None
            at = lt + 1
            continue
        tag = text[lt:stop]
        if not tag.startswith(("<!", "<?")):
            tag = _ATTRIBUTE_VALUE.sub(lambda m: "=" + m.group(1) + _repair_text(m.group(2), repairs), tag)
        out.append(tag)
        at = stop
    return "".join(out), list(repairs)


def _repair_text(text: str, repairs: dict[str, None]) -> str:
    def reference(m: re.Match[str]) -> str:
        name = m.group(1)
        if name is None:
            repairs["a bare '&'"] = None
            return "&amp;"
        if name.startswith("#") or name in _XML_ENTITIES:
            return m.group(0)
        char = html.entities.html5.get(name)
        if char is None:
            return m.group(0)  # an entity no one defines: left for the parser to refuse
        repairs["an HTML entity"] = None
        return char.replace("&", "&amp;").replace("<", "&lt;")

    return _REFERENCE.sub(reference, text)


def read_tree(data: bytes | str) -> Element:
    """Build an element tree with local names only, refusing DTDs, oversized and too deeply nested input."""
    too_large = ParseError(f"SIPREC metadata is larger than {MAX_METADATA_BYTES // 1024} KiB")
    if len(data) > MAX_METADATA_BYTES:
        raise too_large
    # a str is already decoded: its own encoding declaration must not be applied a second time
    raw, encoding = (data.encode("utf-8", "surrogatepass"), "utf-8") if isinstance(data, str) else (data, None)
    if len(raw) > MAX_METADATA_BYTES:
        raise too_large
    parser = expat.ParserCreate(encoding)
    builder = TreeBuilder()
    depth = 0

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_DEPTH:
            raise ParseError(f"SIPREC metadata is nested more than {MAX_DEPTH} levels deep")
        builder.start(_local(name), {_local(k): v for k, v in attrs.items() if not k.startswith("xmlns")})

    def end(name: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(_local(name))

    def refuse_dtd(*_args: object) -> None:
        # entities can only be declared in a DTD: refusing it rules out billion laughs and external entities
        raise ParseError("SIPREC metadata contains a DTD")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    try:
        parser.Parse(raw, True)
    except ParseError:
        raise
    except expat.ExpatError as exc:
        raise ParseError(NOT_WELL_FORMED) from exc
    except (LookupError, ValueError) as exc:
        # expat hands a declared encoding it lacks to Python's codecs, which may know it, not know it or refuse
        raise ParseError("SIPREC metadata declares an unsupported character encoding") from exc
    return builder.close()


def _local(name: str) -> str:
    return name.rpartition(":")[2]
