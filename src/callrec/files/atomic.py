"""Replace a small JSON file atomically: a reader (or a crash) never sees half of it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json(path: Path, value: Any, *, indent: int | None = None, durable: bool = False) -> None:
    """Write ``value`` to a private temporary file beside ``path`` and rename it over ``path``; ``durable``
    flushes it to disk first (a tape's call.json must survive a power cut, a figures file need not)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    try:
        os.fchmod(fd, 0o600)  # private like the rest of the data folder
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=indent, sort_keys=True)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
