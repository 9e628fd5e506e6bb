"""The command line as a Unix tool: light start-up, --version, -h, clear one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

HEAVY = ("numpy", "av", "soxr", "soundfile", "sqlalchemy", "fastapi", "uvicorn", "rich.progress")


def test_importing_the_cli_loads_no_heavy_module() -> None:
    # `callrec mix` must not pay for the media stack, the database or the web server before it reads its
    # input: they load inside the commands that use them
    code = f"import sys, json, callrec.cli; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(proc.stdout) == []


def test_a_bad_mix_argument_is_refused_before_the_media_stack_loads(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from callrec.cli import app\n"
        "try:\n"
        f"    app(['mix', {str(tmp_path / 'nope.pcap')!r}], standalone_mode=False)\n"
        "except BaseException:\n"
        "    pass\n"
        "print('numpy' in sys.modules, 'callrec.offline' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False", "False"], proc.stderr
    assert "no such file" in proc.stderr


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "callrec", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_version() -> None:
    proc = _run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"callrec {version('callrec')}"


COMMANDS = [(), ("mix",), ("record",), ("serve",), ("worker",), ("version",), ("keys",), ("keys", "create")]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "callrec")
def test_dash_h_is_help_and_help_shows_no_typed_metavars(command: tuple[str, ...]) -> None:
    short, long = _run(*command, "-h"), _run(*command, "--help")
    assert short.returncode == long.returncode == 0, short.stderr
    assert short.stdout == long.stdout
    assert "Usage:" in short.stdout
    assert not re.search(r"<(bool|str|int|float|path|list\[[^]]*\])>", short.stdout), short.stdout


def test_proper_metavars() -> None:
    text = _run("serve", "-h").stdout
    for shown in ("DIR", "CIDR", "DOMAIN=CIDR", "HOST:PORT", "FIRST-LAST", "LEVEL"):
        assert shown in text
