"""The data folder's lock and processes that die with their parent, on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callrec.service.ownership import (
    LOCK_FD_ENV,
    PARENT_ENV,
    DataLock,
    FolderInUse,
    clear_stale_scratch,
)

WAIT_S = 10.0
# processes a test started, and pids of their children
Started = list[int | subprocess.Popen[bytes]]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while not _gone(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"pid {pid} still alive after {WAIT_S} s")
        time.sleep(0.05)


@pytest.fixture
def started() -> Iterator[Started]:
    """What the test starts (processes, and pids of their children): SIGKILLed at the end if still alive."""
    procs: Started = []
    yield procs
    for proc in procs:
        if isinstance(proc, subprocess.Popen):
            proc.kill()
            proc.wait(timeout=WAIT_S)
        elif not _gone(proc):
            os.kill(proc, signal.SIGKILL)


# A parent that owns the folder, starts one child sharing the lock, prints both pids and sleeps. The
# child shares the lock; with DIE it also dies with the parent.
PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    from pathlib import Path
    from callrec.service.ownership import DataLock
    data, die = Path(sys.argv[1]), sys.argv[2] == "die"
    lock = DataLock.acquire(data, "test parent")
    child = subprocess.Popen([sys.executable, "-c", sys.argv[3], str(data), sys.argv[2]],
                             env={**os.environ, **lock.child_env()}, pass_fds=(lock.fd,))
    print(os.getpid(), child.pid, flush=True)
    time.sleep(120)
""")
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from callrec.service.ownership import DataLock, die_with_parent
    if sys.argv[2] == "die":
        die_with_parent()
    lock = DataLock.acquire(Path(sys.argv[1]), "test child")
    time.sleep(120)
""")


def _parent_and_child(data: Path, mode: str, started: Started) -> tuple[int, int]:
    proc = subprocess.Popen([sys.executable, "-c", PARENT, str(data), mode, CHILD], stdout=subprocess.PIPE)
    started.append(proc)
    assert proc.stdout is not None
    parent, child = map(int, proc.stdout.readline().split())
    proc.stdout.close()
    started.append(child)
    # the child has shared the lock once it has written its line into the lock file
    deadline = time.monotonic() + WAIT_S
    while f"{child} test child" not in (data / "callrec.lock").read_text():
        assert time.monotonic() < deadline, (data / "callrec.lock").read_text()
        time.sleep(0.05)
    return parent, child


def test_a_second_owner_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    first = DataLock.acquire(tmp_path / "data", "callrec serve")
    try:
        with pytest.raises(FolderInUse) as caught:
            DataLock.acquire(tmp_path / "data", "callrec worker")
        assert str(caught.value) == (
            f"the data folder {(tmp_path / 'data').resolve()} is in use by pid {os.getpid()} (callrec serve);"
            " stop it first"
        )
    finally:
        first.release()
    DataLock.acquire(tmp_path / "data", "callrec worker").release()


def test_a_handed_down_descriptor_that_is_not_the_lock_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = DataLock.acquire(tmp_path / "data", "callrec serve")
    try:
        with (tmp_path / "other").open("w") as other:
            monkeypatch.setenv(LOCK_FD_ENV, str(other.fileno()))
            with pytest.raises(FolderInUse):
                DataLock.acquire(tmp_path / "data", "callrec worker")
        # nor is the lock file opened anew: only the owner's open file holds the lock
        fd = os.open(tmp_path / "data" / "callrec.lock", os.O_RDONLY)
        try:
            monkeypatch.setenv(LOCK_FD_ENV, str(fd))
            with pytest.raises(FolderInUse):
                DataLock.acquire(tmp_path / "data", "callrec worker")
        finally:
            os.close(fd)
        assert LOCK_FD_ENV not in os.environ, "the variable is used once and not passed on"
    finally:
        owner.release()


@pytest.mark.slow
def test_a_child_left_running_keeps_the_folder_and_is_named(tmp_path: Path, started: Started) -> None:
    data = tmp_path / "data"
    parent, child = _parent_and_child(data, "stay", started)
    os.kill(parent, signal.SIGKILL)
    _wait_gone(parent)
    assert not _gone(child)
    with pytest.raises(FolderInUse) as caught:
        DataLock.acquire(data, "callrec serve")
    assert f"in use by pid {child} (test child, started by pid {parent})" in str(caught.value)
    os.kill(child, signal.SIGKILL)
    _wait_gone(child)
    DataLock.acquire(data, "callrec serve").release()


@pytest.mark.slow
@linux_only
def test_a_child_dies_with_its_parent_and_frees_the_folder(tmp_path: Path, started: Started) -> None:
    data = tmp_path / "data"
    parent, child = _parent_and_child(data, "die", started)
    os.kill(parent, signal.SIGKILL)
    _wait_gone(child)
    DataLock.acquire(data, "callrec serve").release()


@pytest.mark.slow
def test_a_child_whose_parent_is_already_gone_exits_at_once(tmp_path: Path) -> None:
    env = {**os.environ, PARENT_ENV: "1" if os.getpid() != 1 else "2"}
    code = "from callrec.service.ownership import die_with_parent; die_with_parent(); print('ran on')"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30)
    assert done.returncode == 1 and b"ran on" not in done.stdout


def test_stale_scratch_folders_go_and_mixed_files_stay(tmp_path: Path) -> None:
    work = tmp_path / "work"
    for folder in ("mix-rec1/tape", "stitch-7", ".callrec-x1y2"):
        (work / folder).mkdir(parents=True)
        (work / folder / "part").write_bytes(b"x")
    (work / "rec2.mp3").write_bytes(b"mixed, upload failed")
    removed = clear_stale_scratch(work)
    assert sorted(p.name for p in removed) == [".callrec-x1y2", "mix-rec1", "stitch-7"]
    assert sorted(p.name for p in work.iterdir()) == ["rec2.mp3"]
    assert clear_stale_scratch(tmp_path / "no such folder") == []
