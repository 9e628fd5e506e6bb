"""Safe file names: the one place that turns an id (a Call-ID, a tenant's value) into a folder's, a file's
or a storage key's name.

Every caller keeps the rules it has always had (a length cap, what happens to a leading dot, what an
empty id becomes), chosen by the parameters, so that no name on disk or in storage changes.
"""

from __future__ import annotations

import hashlib
import re
import string
from functools import lru_cache
from typing import Literal

# the characters a name keeps; every other one becomes "_"
SAFE_CHARS: frozenset[str] = frozenset(string.ascii_letters + string.digits + "._-")
# the length of the digest that ends a name cut with ``digest=True`` (after a "-")
DIGEST_CHARS = 16

Dots = Literal["keep", "strip", "escape"]


def safe_name(
    text: str,
    *,
    extra: str = "",
    limit: int | None = None,
    digest: bool = False,
    dots: Dots = "keep",
    empty: str = "_",
) -> str:
    """``text`` with every character outside ``[A-Za-z0-9._-]`` (plus ``extra``) made ``_``.

    ``limit``: at most that many characters; with ``digest`` a longer name keeps its first ``limit - 17``
    and ends in "-" and 16 hex digits of the SHA-256 of ``text``, so that two long ids never share a name.
    ``dots``: a leading run of "." is kept, stripped, or "escape"d (each made "_"), so that a name is never
    "." or "..". ``empty``: what an empty result becomes.
    """
    name = _unsafe(extra).sub("_", text)
    if limit is not None and len(name) > limit:
        if digest:
            tail = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_CHARS]
            name = f"{name[: limit - DIGEST_CHARS - 1]}-{tail}"
        else:
            name = name[:limit]
    if dots != "keep":
        rest = name.lstrip(".")
        name = rest if dots == "strip" else "_" * (len(name) - len(rest)) + rest
    return name or empty


@lru_cache(maxsize=8)
def _unsafe(extra: str) -> re.Pattern[str]:
    return re.compile(f"[^{re.escape(''.join(sorted(SAFE_CHARS | set(extra))))}]")
