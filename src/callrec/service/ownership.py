"""Who owns a data folder, and processes that end with the process that started them.

One live instance per data folder: ``serve``, ``record`` and ``worker`` take an exclusive ``flock`` on
``DATA/callrec.lock`` and write their pid into it. The kernel drops the lock when its last holder dies,
so a SIGKILLed owner never leaves a stale lock behind.

``serve``'s children share its folder legitimately. They get the very open file that holds the lock
(``pass_fds``, its number in ``CALLREC_DATA_LOCK_FD``): a ``flock`` belongs to the open file, so
every process that has it open holds the lock, and a child that outlived its parent would still hold it
(a new ``serve`` is refused, naming the child). A child proves the file is the lock by taking the lock
through it, which only the holder's open file can do; nothing is taken on trust from a pid.

Children die with their parent: ``PR_SET_PDEATHSIG`` (Linux) makes the kernel SIGKILL a process when its
parent *thread* ends, so whoever starts children must do it from a thread that outlives them (serve's
supervisor thread lives until it has reaped them; Huey forks from the worker's main thread).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from callrec.service.private import make_private
from callrec.service.sanity import StartRefused

LOCK_FILE = "callrec.lock"
# the lock's open file descriptor, handed to a child started by the owner
LOCK_FD_ENV = "CALLREC_DATA_LOCK_FD"
# the pid a child started by ``serve`` must have as its parent; it exits at once when it has another
PARENT_ENV = "CALLREC_PARENT_PID"
PR_SET_PDEATHSIG = 1
# what a killed worker leaves under DATA/work: scratch folders, and the mixer's hidden staging folders.
# ``<recording id>.<ext>`` files are kept: a failed upload is retried from them without mixing again.
SCRATCH_PATTERNS = ("mix-*", "stitch-*", ".callrec-*")


class FolderInUse(StartRefused):
    """Another live process owns the data folder."""


class DataLock:
    """The exclusive lock on a data folder, held for as long as the process (or its children) lives."""

    def __init__(self, path: Path, fd: int, *, inherited: bool) -> None:
        self.path = path
        self.fd = fd
        self.inherited = inherited

    @classmethod
    def acquire(cls, data_dir: Path, command: str) -> DataLock:
        """Own ``data_dir`` as ``command`` (e.g. ``callrec serve``), or share the lock handed down by the
        parent that owns it; raises ``FolderInUse`` naming the live owner."""
        make_private(data_dir)  # every process that writes there starts here: all it makes is 0600
        path = data_dir.resolve() / LOCK_FILE
        handed = _handed_down(path)
        if handed is not None:
            _note(path, f"{os.getpid()} {command}, started by pid {os.getppid()}\n")
            return cls(path, handed, inherited=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUse(
                f"the data folder {data_dir.resolve()} is in use by {_holder(path)}; stop it first"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # written over the old text, then cut: a reader never sees an empty file, only the first line counts
        text = f"{os.getpid()} {command}\n".encode()
        os.pwrite(fd, text, 0)
        os.ftruncate(fd, len(text))
        return cls(path, fd, inherited=False)

    def child_env(self) -> dict[str, str]:
        """What a child started by this process needs (with ``pass_fds=(lock.fd,)``) to share the folder
        and to die with this process."""
        return {LOCK_FD_ENV: str(self.fd), PARENT_ENV: str(os.getpid())}

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _handed_down(path: Path) -> int | None:
    """The lock's descriptor given by the parent, if ``CALLREC_DATA_LOCK_FD`` names it (and only it)."""
    text = os.environ.pop(LOCK_FD_ENV, "")
    if not text.isdigit():
        return None
    fd = int(text)
    try:
        mine, lock = os.fstat(fd), os.stat(path)
        if (mine.st_dev, mine.st_ino) != (lock.st_dev, lock.st_ino):
            return None
        # succeeds only through the open file that holds the lock (taking a lock it holds changes nothing)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return None
    os.set_inheritable(fd, False)
    return fd


def _note(path: Path, line: str) -> None:
    # a child adds itself below its parent's line, so that a child left running can be named
    try:
        with path.open("a") as f:
            f.write(line)
    except OSError:
        pass


def _holder(path: Path) -> str:
    """``pid 12345 (callrec serve)``: the first live process the lock file names."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    entries = [(int(pid), what) for pid, _, what in (line.partition(" ") for line in lines) if pid.isdigit()]
    for pid, what in entries:
        if _alive(pid):
            return f"pid {pid} ({what})"
    if entries:
        pid, what = entries[0]
        return f"a process started by pid {pid} ({what}), which has ended"
    return "another process"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (dead, not yet reaped) holds nothing
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def die_with_parent(expected_parent: int | None = None) -> None:
    """SIGKILL this process when its parent dies (Linux; elsewhere nothing), and exit now if it already has.

    Without ``expected_parent``, the pid comes from ``CALLREC_PARENT_PID`` (set by ``serve`` for its
    children, and removed here so that it does not reach this process's own children); without either,
    nothing is done. The parent may have died before the death signal was set: then the parent pid is no
    longer the expected one and this process ends at once.
    """
    if expected_parent is None:
        text = os.environ.pop(PARENT_ENV, "")
        if not text.isdigit():
            return
        expected_parent = int(text)
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != expected_parent:
        os._exit(1)


def forks_die_with_their_parent() -> None:
    """Make every process forked from now on (Huey's mixing processes and scheduler, and their own forks)
    die with the process that forked it: the death signal is set right after the fork, in the child."""
    prctl = _prctl()
    if prctl is None:
        return
    forker = [os.getpid()]

    def before() -> None:
        forker[0] = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != forker[0]:
            os._exit(1)

    os.register_at_fork(before=before, after_in_child=in_child)


def clear_stale_scratch(work_dir: Path) -> list[Path]:
    """Remove the scratch folders under ``work_dir`` that killed mixing or stitching runs left behind.

    Only the data folder's owner may do this, at its start: no run of its own has begun yet."""
    removed: list[Path] = []
    for pattern in SCRATCH_PATTERNS:
        for path in sorted(work_dir.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed
