"""The writers: MP3 through the system libmp3lame (plain L/R stereo) or the lameenc wheel, WAV via libsndfile.

Both MP3 encoders must give files that decode to exactly what was written: same start (the Info/LAME
tag makes decoders trim the encoder delay) and same length (and the end padding).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from callrec.errors import OutputError
from callrec.media import lame
from callrec.media.encode import Mp3Writer, WavWriter, open_writer
from tests.support.audio import FFMPEG, decode, need, probe

pytestmark = pytest.mark.slow  # ffmpeg decodes every encoding (seconds each)

WRITE = """
import sys, numpy as np
from callrec.media.encode import Mp3Writer
from callrec.media import lame
rate, channels, kbps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
x = np.zeros((rate * 3 + 123, channels), np.int16)
x[rate : rate + 400, 0] = (np.sin(np.arange(400) * 0.3) * 20000).astype(np.int16)
w = Mp3Writer(sys.argv[1], rate=rate, channels=channels, bitrate_kbps=kbps)
for i in range(0, len(x), 1000):
    w.write(x[i : i + 1000])
w.close()
print(type(w._encoder).__name__)
"""


def test_system_lame_is_used_when_installed() -> None:
    if lame._LIB is None:
        if os.environ.get("CI") == "true":
            pytest.fail("libmp3lame (Debian libmp3lame0) is required under CI")
        pytest.skip("no system libmp3lame: the lameenc wheel is used")
    writer = lame.mp3_encoder(in_rate=8000, out_rate=8000, channels=2, bitrate_kbps=16, quality=7)
    assert isinstance(writer, lame.SystemLame)
    assert writer.delay == 576
    writer.flush()


@pytest.mark.parametrize("encoder", ["system", "lameenc"])
@pytest.mark.parametrize(("rate", "channels", "kbps"), [(8000, 2, 16), (8000, 1, 8), (8000, 2, 32), (16000, 2, 24)])
def test_mp3_decodes_to_exactly_what_was_written(
    tmp_path: Path, encoder: str, rate: int, channels: int, kbps: int
) -> None:
    need(FFMPEG, "ffmpeg")
    if encoder == "system" and lame._LIB is None:
        pytest.skip("no system libmp3lame")
    out = tmp_path / "x.mp3"
    env = {**os.environ, "CALLREC_MP3_ENCODER": encoder}
    used = subprocess.run([sys.executable, "-c", WRITE, str(out), str(rate), str(channels), str(kbps)],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert used == ("SystemLame" if encoder == "system" else "WheelLame")
    audio = decode(out, rate=rate, channels=channels)
    assert len(audio) == rate * 3 + 123
    onset = int(np.argmax(np.abs(audio[:, 0].astype(np.int32)) > 2000))
    assert abs(onset - (rate + 1)) <= 2
    info = probe(out)
    assert int(info["streams"][0]["bit_rate"]) == kbps * 1000
    assert info["streams"][0]["channels"] == channels


def test_writers_replace_the_file_only_when_closed(tmp_path: Path) -> None:
    out = tmp_path / "x.wav"
    writer = WavWriter(out, rate=8000, channels=2)
    writer.write(np.zeros((800, 2), np.int16))
    assert not out.exists() and (tmp_path / "x.wav.part").exists()
    writer.close()
    assert out.exists() and not (tmp_path / "x.wav.part").exists()


def test_bad_writer_settings() -> None:
    with pytest.raises(OutputError, match="MP3 bitrate must be one of 8, 16, 24, 32 kbit/s"):
        Mp3Writer("/tmp/never.mp3", rate=8000, channels=2, bitrate_kbps=17)
    with pytest.raises(OutputError, match="WAV GSM 6.10 is mono only"):
        WavWriter("/tmp/never.wav", rate=8000, channels=2, codec="gsm")
    with pytest.raises(OutputError, match="output format must be mp3 or wav"):
        open_writer("/tmp/never.ogg", fmt="ogg", rate=8000, channels=2)


class _FullDisk:
    def write(self, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    def seek(self, pos: int) -> int:
        return pos

    def close(self) -> None:
        pass


def test_full_disk_is_an_output_error(tmp_path: Path) -> None:
    writer = Mp3Writer(tmp_path / "x.mp3", rate=8000, channels=2, bitrate_kbps=16)
    writer._file = _FullDisk()  # type: ignore[assignment]
    with pytest.raises(OutputError, match=r"^cannot write .*x\.mp3: No space left on device$"):
        for _ in range(10):
            writer.write(np.ones((8000, 2), np.int16))
        writer.close()
