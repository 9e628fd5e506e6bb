"""The data folder is private to the service's user: folders 0700, files 0600.

Every process that writes there (``serve``, ``worker``, ``record``, the API) calls ``make_private`` as it
starts: the umask becomes 0o077, so whatever it creates (the SQLite database and its journal, tapes,
recordings, the cache, uploads) is born private, and the folder itself is set to 0700. What an older
version left readable to others is tightened once, by walking the folder; a marker file records that
the walk was done, so a large folder is not walked at every start.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("callrec")
UMASK = 0o077
# present once the folder was walked and everything in it made private
MARKER = ".private-v1"


def make_private(data_dir: Path) -> None:
    """Set this process's umask to 0o077, make ``data_dir`` (0700) and tighten what is already in it."""
    os.umask(UMASK)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(data_dir)
    marker = data_dir / MARKER
    if marker.exists():
        return
    loosened = 0
    for root, dirs, files in os.walk(data_dir):
        for name in (*dirs, *files):
            loosened += _tighten(Path(root) / name)
    if loosened:
        log.warning("%d files or folders under %s were readable by others; now only by this user",
                    loosened, data_dir)  # fmt: skip
    try:
        marker.touch()
    except OSError as exc:  # a full disk: walked again at the next start
        log.warning("cannot note that %s is private: %s", data_dir, exc.strerror or exc)


def _tighten(path: Path) -> int:
    """Remove the group's and others' bits of ``path`` (never following a symlink); 1 if it had any."""
    try:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode) or not mode & 0o077:
            return 0
        path.chmod(stat.S_IMODE(mode) & 0o700)
    except OSError:  # gone meanwhile, or not ours
        return 0
    return 1
