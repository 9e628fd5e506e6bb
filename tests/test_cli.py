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

from tests.support import synth
from tests.support.audio import need

HEAVY = ("numpy", "av", "soxr", "soundfile", "sqlalchemy", "fastapi", "uvicorn", "rich.progress")


@pytest.mark.slow
def test_importing_the_cli_loads_no_heavy_module() -> None:
    # `callrec mix` must not pay for the media stack, the database or the web server before it reads its
    # input: they load inside the commands that use them
    code = f"import sys, json, callrec.cli; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(proc.stdout) == []


@pytest.mark.slow
def test_a_bad_mix_argument_is_refused_before_the_media_stack_loads(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from callrec.cli import app\n"
        "try:\n"
        f"    app(['mix', {str(tmp_path / 'nope.pcap')!r}], standalone_mode=False)\n"
        "except BaseException:\n"
        "    pass\n"
        "print('numpy' in sys.modules, 'callrec.mix' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False", "False"], proc.stderr
    assert "no such file" in proc.stderr


# a whole `callrec mix` of a G.711 call to MP3 at 8 kHz, in a child with an audit hook: which modules were
# loaded when the input was first opened, and which at the end
_PROBE = """
import json, os, sys
target = os.path.abspath(sys.argv[1])
seen = {}
def hook(event, args):
    if event == "open" and not seen and isinstance(args[0], str) and os.path.abspath(args[0]) == target:
        seen["at_open"] = sorted(sys.modules)
sys.addaudithook(hook)
from callrec.cli import app
try:
    app(["mix", sys.argv[1], "-o", sys.argv[2]], standalone_mode=False)
finally:
    print(json.dumps({"at_open": seen.get("at_open"), "at_end": sorted(sys.modules)}))
"""


@pytest.mark.slow
def test_mix_reads_its_input_before_the_media_stack_and_never_loads_what_the_call_does_not_need(
    tmp_path: Path,
) -> None:
    need(synth.FFMPEG, "ffmpeg")
    built = synth.build(synth.Scenario(call_id="light@host", duration=2.0), base_time=1_700_000_000.0)
    pcap = synth.write_pcap(tmp_path / "call.pcap", built.datagrams)
    out = tmp_path / "call.mp3"
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(pcap), str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert out.stat().st_size > 0
    assert seen["at_open"] is not None, "the input was never opened by name"
    assert "numpy" not in seen["at_open"], "the input is read before the media stack loads"
    # typer parses without pydantic; a progress bar only for a terminal; G.711 needs no PyAV; 8 kHz no soxr
    loaded = {m.split(".")[0] for m in seen["at_end"]}
    assert loaded.isdisjoint({"pydantic", "pydantic_core", "rich", "av", "soxr", "soundfile"}), sorted(loaded)
    assert "numpy" in loaded


@pytest.mark.slow
def test_mixing_a_plain_rtp_capture_loads_no_srtp_or_secret_box_code(tmp_path: Path) -> None:
    # libsrtp, the SDES parser and cryptography's Fernet load only for a call with SRTP streams or a tape with
    # sealed keys: a plain-RTP capture mixed end to end pays for none of them
    need(synth.FFMPEG, "ffmpeg")
    built = synth.build(synth.Scenario(call_id="plain@host", duration=2.0), base_time=1_700_000_000.0)
    pcap = synth.write_pcap(tmp_path / "call.pcap", built.datagrams)
    out = tmp_path / "call.mp3"
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(pcap), str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0
    modules = set(json.loads(proc.stdout.splitlines()[-1])["at_end"])
    assert "callrec.mix.demux" in modules
    loaded = {m.split(".")[0] for m in modules}
    assert loaded.isdisjoint({"pylibsrtp", "cryptography"}), sorted(loaded & {"pylibsrtp", "cryptography"})
    unneeded = {"callrec.secretbox", "callrec.mix.srtp", "callrec.media.srtp", "callrec.wire.sdes"}
    assert modules.isdisjoint(unneeded), sorted(modules & unneeded)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--bitrate", "abc"), "Input should be a valid integer"),
        (("--format", "ogg"), "'ogg' is not one of 'mp3', 'wav'"),
        (("--codec", "opus", "--format", "wav"), "'opus' is not one of 'pcm', 'alaw', 'ulaw', 'gsm'"),
    ],
)
def test_values_of_the_wrong_type_are_refused_with_exit_2(args: tuple[str, ...], message: str) -> None:
    proc = _run("mix", str(SAMPLE), *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_a_file_that_is_no_capture_is_refused_before_the_media_stack_loads(tmp_path: Path) -> None:
    bad = tmp_path / "x.pcap"
    bad.write_bytes(b"\x00\x01garbage" * 10)
    code = (
        "import sys\n"
        "from callrec.cli import app\n"
        "try:\n"
        f"    app(['mix', {str(bad)!r}], standalone_mode=False)\n"
        "except BaseException:\n"
        "    pass\n"
        "print('numpy' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False"], proc.stderr
    assert f"{bad}: not a pcap or pcapng capture" in proc.stderr


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "callrec", *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.slow
def test_version() -> None:
    proc = _run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"callrec {version('callrec')}"


COMMANDS = [(), ("mix",), ("record",), ("serve",), ("worker",), ("version",), ("keys",), ("keys", "create")]


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "callrec")
def test_dash_h_is_help_and_help_shows_no_typed_metavars(command: tuple[str, ...]) -> None:
    short, long = _run(*command, "-h"), _run(*command, "--help")
    assert short.returncode == long.returncode == 0, short.stderr
    assert short.stdout == long.stdout
    assert "Usage:" in short.stdout
    assert not re.search(r"<(bool|str|int|float|path|list\[[^]]*\])>", short.stdout), short.stdout


@pytest.mark.slow
def test_proper_metavars() -> None:
    text = _run("serve", "-h").stdout
    for shown in ("DIR", "CIDR", "DOMAIN=CIDR", "HOST:PORT", "FIRST-LAST", "LEVEL"):
        assert shown in text


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], contains: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("callrec: error: ")
    assert contains in err, err


SAMPLE = Path(__file__).parent.parent / "samples" / "sample-call.pcap"


@pytest.mark.slow
def test_a_folder_that_is_not_a_tape(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "media.pcap").write_bytes(SAMPLE.read_bytes())  # half a tape: no call.json
    _assert_one_line_error(_run("mix", str(folder), "-o", str(tmp_path / "out")), "is a folder but not a tape")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_missing_input(tmp_path: Path) -> None:
    _assert_one_line_error(_run("mix", str(tmp_path / "nope.pcap")), "no such file or folder")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["call.ogg", "call.MP4", "x.flac"])
def test_an_output_extension_that_is_neither_mp3_nor_wav_is_refused(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    _assert_one_line_error(_run("mix", str(SAMPLE), "-o", str(out)), ".mp3 or .wav")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_an_existing_folder_with_a_dot_is_still_an_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "calls.2026"
    out.mkdir()
    proc = _run("mix", str(SAMPLE), "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    assert [p.suffix for p in out.iterdir()] == [".mp3"]


@pytest.mark.slow
def test_format_and_extension_must_agree(tmp_path: Path) -> None:
    _assert_one_line_error(_run("mix", str(SAMPLE), "-o", str(tmp_path / "c.wav"), "--format", "mp3"), "--format mp3")


@pytest.mark.slow
def test_an_output_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    _assert_one_line_error(_run("mix", str(SAMPLE), "-o", str(tmp_path / "file" / "c.mp3")), "not a folder")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("option", "value"), [("--bitrate", "0"), ("--bitrate", "320"), ("--rate", "0"), ("--rate", "48000")]
)
def test_out_of_range_numbers(option: str, value: str) -> None:
    _assert_one_line_error(_run("mix", str(SAMPLE), option, value), option)


@pytest.mark.slow
def test_calls_sharing_a_call_id_are_numbered(tmp_path: Path) -> None:
    need(synth.FFMPEG, "ffmpeg")
    built = [
        synth.build(
            synth.Scenario(call_id="same@host", duration=2.0, a_port=20000 + 100 * i, b_port=30000 + 100 * i, seed=i),
            base_time=1_700_000_000.0 + 10 * i,
        )
        for i in range(3)
    ]
    datagrams = sorted((d for b in built for d in b.datagrams), key=lambda d: d[0])
    pcap = synth.write_pcap(tmp_path / "three.pcap", datagrams)
    out = tmp_path / "out"
    proc = _run("mix", str(pcap), "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    reports = [json.loads(line) for line in proc.stdout.splitlines()]
    names = ["same_host.mp3", "same_host-2.mp3", "same_host-3.mp3"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    # --json names the file that is really there
    assert sorted(Path(r["output"]).name for r in reports) == sorted(names)
    assert all(Path(r["output"]).is_file() for r in reports)
