"""Output writers: MP3 (LAME, CBR) and WAV (libsndfile: PCM 16-bit, A-law, µ-law, GSM 6.10; RF64 past 4 GB).

Each writer takes blocks of int16 samples shaped (frames, channels) and streams them to disk, so memory
does not depend on the length of the call. The file is written under a temporary name and renamed into
place on ``close``: a reader never sees half a recording under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from callrec.errors import OutputError
from callrec.media.lame import mp3_encoder
from callrec.media_limits import check_bitrate, check_codec, check_format

# libsndfile's subtype of each WAV codec (the choices and their checks: callrec.media_limits)
WAV_SUBTYPES = {"pcm": "PCM_16", "alaw": "ALAW", "ulaw": "ULAW", "gsm": "GSM610"}
# lame quality 7 is ~2x faster than 2 with no audible loss at telephone bitrates
MP3_QUALITY = 7
# libsndfile's SFC_RF64_AUTO_DOWNGRADE: write RF64 but keep plain WAV when the file stays under 4 GB
_SFC_RF64_AUTO_DOWNGRADE = 0x1210


def mp3_sample_rate(bitrate_kbps: int) -> int:
    """MPEG-2.5 at 8 kHz for the lowest bitrates, MPEG-2 at 16 kHz above (voice stays intelligible)."""
    return 8000 if bitrate_kbps <= 16 else 16000


MPEG2_SAMPLES_PER_FRAME = 576


def _info_frame(
    header: bytes, frame_bytes: int, frames: int, total_bytes: int, delay: int, padding: int
) -> bytes:
    """A Xing "Info" frame with a LAME tag, the first frame of a CBR file.

    Players read the encoder delay and end padding from it and trim them, so the decoded audio starts at
    the first sample we wrote (t = 0 stays the call's first media packet) and has its exact length.
    """
    mono = (header[3] >> 6) == 3
    side_info = 9 if mono else 17  # MPEG-2 and 2.5 layer III side information
    hdr = bytes([header[0], header[1] | 0x01, header[2] & 0xFD, header[3]])  # no CRC, no padding bit
    tag = b"Info" + (0x0001 | 0x0002 | 0x0008).to_bytes(4, "big")  # frames, bytes, quality
    tag += frames.to_bytes(4, "big") + total_bytes.to_bytes(4, "big") + (50).to_bytes(4, "big")
    tag += b"LAME3.100" + bytes([0x00, 0x00]) + bytes(4) + bytes(4) + bytes([0x00, 0x00])
    tag += ((min(delay, 4095) << 12) | min(padding, 4095)).to_bytes(3, "big")
    frame = hdr + bytes(side_info) + tag
    return frame + bytes(frame_bytes - len(frame))


class Mp3Writer:
    """Constant-bitrate MP3 with an Info/LAME tag frame (exact start and length when decoded)."""

    def __init__(self, path: str | os.PathLike[str], *, rate: int, channels: int, bitrate_kbps: int) -> None:
        check_bitrate(bitrate_kbps)
        self.path = Path(path)
        self._part = _part_path(self.path)
        self._encoder = mp3_encoder(in_rate=rate, out_rate=mp3_sample_rate(bitrate_kbps), channels=channels,
                                    bitrate_kbps=bitrate_kbps, quality=MP3_QUALITY)
        self._out_rate = mp3_sample_rate(bitrate_kbps)
        self._in_rate = rate
        # MPEG-2/2.5 layer III: 72 * bitrate / sample rate bytes a frame (whole numbers at our rates)
        self._frame_bytes = 72_000 * bitrate_kbps // self._out_rate
        self._file: BinaryIO = _open(self._part)
        self._file.write(bytes(self._frame_bytes))  # room for the Info frame, filled in on close
        self._header = b""
        self._samples = 0
        self.bytes = self._frame_bytes

    def write(self, block: npt.NDArray[np.int16]) -> None:
        self._samples += len(block)
        data = self._encoder.encode(block)
        if data:
            self._emit(data)

    def _emit(self, data: bytes) -> None:
        if not self._header:
            self._header = bytes(data[:4])
        try:
            self._file.write(data)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror}") from exc
        self.bytes += len(data)

    def close(self) -> None:
        data = self._encoder.flush()
        if data:
            self._emit(data)
        if self._header:
            frames = (self.bytes - self._frame_bytes) // self._frame_bytes
            out_samples = self._samples * self._out_rate // self._in_rate
            padding = max(0, frames * MPEG2_SAMPLES_PER_FRAME - self._encoder.delay - out_samples)
            info = _info_frame(
                self._header, self._frame_bytes, frames, self.bytes, self._encoder.delay, padding
            )
            try:
                self._file.seek(0)
                self._file.write(info)
            except OSError as exc:
                raise OutputError(f"cannot write {self.path}: {exc.strerror}") from exc
        self._file.close()
        os.replace(self._part, self.path)


class WavWriter:
    """WAV with 16-bit PCM, A-law, µ-law (any channel count) or GSM 6.10 (mono only)."""

    def __init__(self, path: str | os.PathLike[str], *, rate: int, channels: int, codec: str = "pcm") -> None:
        check_codec(codec)
        if codec == "gsm" and channels != 1:
            raise OutputError("WAV GSM 6.10 is mono only")
        self.path = Path(path)
        self._part = _part_path(self.path)
        import soundfile  # only WAV needs libsndfile; MP3 runs start faster without it

        # libsndfile has no RF64 GSM 6.10; at 1.6 kB/s a GSM file reaches 4 GB only after 700 hours
        container = "WAV" if codec == "gsm" else "RF64"
        try:
            self._file = soundfile.SoundFile(
                self._part,
                "w",
                samplerate=rate,
                channels=channels,
                subtype=WAV_SUBTYPES[codec],
                format=container,
            )
        except (OSError, RuntimeError, ValueError, soundfile.LibsndfileError) as exc:
            raise OutputError(f"cannot write {self.path}: {exc}") from exc
        if container == "RF64":
            soundfile._snd.sf_command(self._file._file, _SFC_RF64_AUTO_DOWNGRADE, soundfile._ffi.NULL, 1)
        self.bytes = 0

    def write(self, block: npt.NDArray[np.int16]) -> None:
        try:
            self._file.write(block)
        except (OSError, RuntimeError) as exc:  # libsndfile reports a full disk as a RuntimeError subclass
            raise OutputError(f"cannot write {self.path}: {exc}") from exc

    def close(self) -> None:
        self._file.close()
        os.replace(self._part, self.path)
        self.bytes = self.path.stat().st_size


def _part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "wb")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc


def open_writer(
    path: str | os.PathLike[str],
    *,
    fmt: str,
    rate: int,
    channels: int,
    bitrate_kbps: int = 16,
    codec: str = "pcm",
) -> Mp3Writer | WavWriter:
    """The writer for an output format (``mp3`` or ``wav``)."""
    check_format(fmt)
    if fmt == "mp3":
        return Mp3Writer(path, rate=rate, channels=channels, bitrate_kbps=bitrate_kbps)
    return WavWriter(path, rate=rate, channels=channels, codec=codec)
