"""The MP3 encoder: LAME through the system's ``libmp3lame`` when present, else the ``lameenc`` wheel.

Why not only lameenc: it always encodes in joint stereo, and our two channels are two different people,
so joint stereo buys nothing and costs ~22 % of the encoder's time (bench/mix.py: lame alone on 1 h of
stereo 8 kHz → 16 kbit/s, 5.28 s joint vs 4.16 s plain L/R). The system library lets us choose.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Protocol

import numpy as np
import numpy.typing as npt

# lame's MPEG_mode values (lame.h)
_STEREO = 0
_MONO = 3


class Encoder(Protocol):
    """Interleaved int16 PCM in, MP3 frames out."""

    delay: int  # encoder delay in output samples

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes: ...

    def flush(self) -> bytes: ...


def _load() -> ctypes.CDLL | None:
    if os.environ.get("CALLREC_MP3_ENCODER") == "lameenc":
        return None
    try:
        lib = ctypes.CDLL("libmp3lame.so.0")  # by its soname first: find_library runs ldconfig (~0.02 CPU-s)
    except OSError:
        name = ctypes.util.find_library("mp3lame")
        if name is None:
            return None
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            return None
    lib.lame_init.restype = ctypes.c_void_p
    for fn in ("lame_set_num_channels", "lame_set_in_samplerate", "lame_set_out_samplerate", "lame_set_brate",
               "lame_set_mode", "lame_set_quality", "lame_set_VBR", "lame_set_bWriteVbrTag"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_int]
    for fn in ("lame_init_params", "lame_get_encoder_delay", "lame_close"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
    lib.lame_encode_buffer_interleaved.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    lib.lame_encode_buffer.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    lib.lame_encode_flush.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    return lib


_LIB = _load()


class SystemLame:
    """libmp3lame through ctypes: CBR, plain left/right stereo, no VBR tag (the writer adds an Info frame)."""

    def __init__(self, lib: ctypes.CDLL, *, in_rate: int, out_rate: int, channels: int, bitrate_kbps: int,
                 quality: int) -> None:
        self._lib = lib
        self._channels = channels
        handle = lib.lame_init()
        if not handle:
            raise MemoryError("lame_init failed")
        self._handle = ctypes.c_void_p(handle)
        lib.lame_set_num_channels(self._handle, channels)
        lib.lame_set_in_samplerate(self._handle, in_rate)
        lib.lame_set_out_samplerate(self._handle, out_rate)
        lib.lame_set_brate(self._handle, bitrate_kbps)
        lib.lame_set_VBR(self._handle, 0)
        lib.lame_set_mode(self._handle, _MONO if channels == 1 else _STEREO)
        lib.lame_set_quality(self._handle, quality)
        lib.lame_set_bWriteVbrTag(self._handle, 0)
        if lib.lame_init_params(self._handle) < 0:
            raise ValueError("lame rejected the MP3 settings")
        self.delay = int(lib.lame_get_encoder_delay(self._handle))
        self._out = ctypes.create_string_buffer(16384)

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        pcm = np.ascontiguousarray(pcm, np.int16)
        frames = len(pcm)
        need = frames * 5 // 4 + 7200
        if len(self._out) < need:
            self._out = ctypes.create_string_buffer(need)
        ptr = pcm.ctypes.data
        if self._channels == 1:
            n = self._lib.lame_encode_buffer(self._handle, ptr, ptr, frames, self._out, len(self._out))
        else:
            n = self._lib.lame_encode_buffer_interleaved(self._handle, ptr, frames, self._out, len(self._out))
        if n < 0:
            raise ValueError(f"lame failed to encode ({n})")
        return ctypes.string_at(self._out, n)  # not .raw[:n]: that copies the whole buffer first

    def flush(self) -> bytes:
        n = self._lib.lame_encode_flush(self._handle, self._out, len(self._out))
        data = self._out.raw[: max(n, 0)]
        self._lib.lame_close(self._handle)
        self._handle = ctypes.c_void_p(None)
        return data


class WheelLame:
    """The ``lameenc`` wheel (joint stereo only), used where no system libmp3lame exists."""

    delay = 576

    def __init__(self, *, in_rate: int, out_rate: int, channels: int, bitrate_kbps: int, quality: int) -> None:
        import lameenc

        encoder = lameenc.Encoder()
        encoder.set_bit_rate(bitrate_kbps)
        encoder.set_in_sample_rate(in_rate)
        encoder.set_out_sample_rate(out_rate)
        encoder.set_channels(channels)
        encoder.set_quality(quality)
        self._encoder = encoder

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        return bytes(self._encoder.encode(np.ascontiguousarray(pcm, np.int16).tobytes()))

    def flush(self) -> bytes:
        return bytes(self._encoder.flush())


def mp3_encoder(*, in_rate: int, out_rate: int, channels: int, bitrate_kbps: int, quality: int) -> Encoder:
    """The fastest encoder available here."""
    if _LIB is not None:
        return SystemLame(_LIB, in_rate=in_rate, out_rate=out_rate, channels=channels,
                          bitrate_kbps=bitrate_kbps, quality=quality)
    return WheelLame(in_rate=in_rate, out_rate=out_rate, channels=channels, bitrate_kbps=bitrate_kbps,
                     quality=quality)
