"""Decoders tested on payloads made by independent encoders, checked against a reference decoding.

Encoders: sox (G.711 A-law and µ-law), the ffmpeg CLI (G.722, G.726 both bit orders, libgsm,
libopus, libspeex), PyAV's libopencore_amrnb (AMR-NB; the Debian ffmpeg CLI has no AMR encoder) and
libbcg729 through ctypes (G.729 Annex A/B). References: the original signal for G.711, the ffmpeg CLI
for the rest, and the independent libopencore decoder for AMR.

iLBC has no encoder that can be installed here: Debian's ffmpeg is built without libilbc, PyAV's
wheel carries only the iLBC decoder, and Debian ships no libilbc/WebRTC iLBC package. So iLBC is
tested on byte-valid frames of random content (every 38/50-byte pattern is a decodable frame),
compared sample by sample with the ffmpeg CLI's decoding of the same frames in an iLBC storage
file; that checks mode selection and multi-frame packets, not speech quality.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest

from callrec.errors import ParseError, UnsupportedCodec
from callrec.media.codecs import Decoder, decoder_for, is_audio
from callrec.media.codecs.amr import storage_frames
from callrec.media.codecs.g711 import ALAW_TABLE, ULAW_TABLE
from callrec.media.codecs.pyav import frames_to_mono
from callrec.models import STATIC_PAYLOAD_TYPES

Pcm = npt.NDArray[np.int16]
TONE_HZ = 440.0


# --- tools -------------------------------------------------------------------------------------------


def unavailable(reason: str) -> None:
    """Skip on a developer machine, but fail under CI, where every tool must be installed."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI)")
    pytest.skip(reason)


@functools.cache
def ffmpeg_codecs() -> str:
    if shutil.which("ffmpeg") is None:
        return ""
    return subprocess.run(
        ["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
    ).stdout


def ffmpeg(args: list[str], data: bytes, *, encoder: str | None = None) -> bytes:
    """Run the ffmpeg CLI with ``data`` on stdin and return stdout."""
    if not ffmpeg_codecs():
        unavailable("ffmpeg CLI is not installed")
    if encoder is not None and f" {encoder} " not in ffmpeg_codecs():
        unavailable(f"ffmpeg CLI has no {encoder} encoder")
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostats", *args]
    return subprocess.run(cmd, input=data, capture_output=True, check=True).stdout


def encode_cli(signal: Pcm, rate: int, args: list[str], encoder: str) -> bytes:
    return ffmpeg(
        ["-f", "s16le", "-ar", str(rate), "-ac", "1", "-i", "pipe:0", *args, "pipe:1"],
        signal.tobytes(),
        encoder=encoder,
    )


def decode_cli(data: bytes, in_args: list[str], rate: int) -> Pcm:
    out = ffmpeg([*in_args, "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar", str(rate), "pipe:1"], data)
    return np.frombuffer(out, np.int16)


def demux(data: bytes) -> list[bytes]:
    """Codec packets of the first audio stream of a container (Ogg here)."""
    with av.open(io.BytesIO(data), "r") as container:
        return [bytes(packet) for packet in container.demux(audio=0) if packet.size]


def tone(rate: int, seconds: float = 1.0, amplitude: float = 0.3) -> Pcm:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amplitude * 32767 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)


def dominant_hz(samples: Pcm, rate: int) -> float:
    body = samples[rate // 10 :].astype(np.float64)  # skip the codec's start-up
    spectrum = np.abs(np.fft.rfft(body * np.hanning(len(body))))
    return float(np.argmax(spectrum)) * rate / len(body)


def similarity(a: Pcm, b: Pcm, max_lag: int = 0) -> float:
    """The best normalised correlation of ``a`` and ``b`` over shifts of up to ``max_lag`` samples."""
    best = 0.0
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[lag:], b) if lag >= 0 else (a, b[-lag:])
        n = min(len(x), len(y))
        x64, y64 = x[:n].astype(np.float64), y[:n].astype(np.float64)
        denom = float(np.sqrt(np.dot(x64, x64) * np.dot(y64, y64)))
        if denom:
            best = max(best, float(np.dot(x64, y64)) / denom)
    return best


def packets(frames: list[bytes], per_packet: list[int]) -> list[bytes]:
    """Group codec frames into RTP payloads, cycling through the ``per_packet`` counts."""
    out, i, k = [], 0, 0
    while i < len(frames):
        n = per_packet[k % len(per_packet)]
        out.append(b"".join(frames[i : i + n]))
        i, k = i + n, k + 1
    return out


def chunk(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# --- G.729 via libbcg729 -------------------------------------------------------------------------------


def bcg729_encode(signal: Pcm, vad: bool = False) -> list[bytes]:
    """G.729A frames from bcg729: 10 bytes of speech, 2 bytes of SID or 0 bytes (not sent) per 10 ms."""
    path = ctypes.util.find_library("bcg729")
    if path is None:
        unavailable("libbcg729 is not installed (apt-get install libbcg729-0)")
    lib = ctypes.CDLL(path)
    lib.initBcg729EncoderChannel.restype = ctypes.c_void_p
    lib.initBcg729EncoderChannel.argtypes = [ctypes.c_uint8]
    lib.bcg729Encoder.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.closeBcg729EncoderChannel.argtypes = [ctypes.c_void_p]
    channel = lib.initBcg729EncoderChannel(int(vad))
    frames = []
    out, size = (ctypes.c_uint8 * 10)(), ctypes.c_uint8(0)
    for start in range(0, len(signal) - 79, 80):
        frame = np.ascontiguousarray(signal[start : start + 80])
        lib.bcg729Encoder(channel, frame.ctypes.data, out, ctypes.byref(size))
        frames.append(bytes(out)[: size.value])
    lib.closeBcg729EncoderChannel(channel)
    return frames


# --- AMR: RTP packing per RFC 4867, written independently of the decoder --------------------------------

AMR_BITS = {0: 95, 1: 103, 2: 118, 3: 134, 4: 148, 5: 159, 6: 204, 7: 244, 8: 39, 15: 0}


def amr_payload(frames: list[bytes], *, octet_align: bool, cmr: int = 15) -> bytes:
    """Pack storage-format AMR frames into one RTP payload."""
    toc = [((f[0] >> 3) & 0x0F, (f[0] >> 2) & 1) for f in frames]
    if octet_align:
        head = bytes([cmr << 4])
        head += bytes(((i < len(toc) - 1) << 7) | (ft << 3) | (q << 2) for i, (ft, q) in enumerate(toc))
        return head + b"".join(f[1:] for f in frames)
    bits = format(cmr, "04b")
    bits += "".join(f"{int(i < len(toc) - 1)}{ft:04b}{q}" for i, (ft, q) in enumerate(toc))
    for (ft, _), f in zip(toc, frames, strict=True):
        bits += "".join(f"{byte:08b}" for byte in f[1:])[: AMR_BITS[ft]]
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def amr_encode(signal: Pcm, bit_rate: int) -> list[bytes]:
    """Storage-format AMR-NB frames from PyAV's libopencore_amrnb encoder."""
    try:
        ctx = av.CodecContext.create("libopencore_amrnb", "w")
    except av.codec.codec.UnknownCodecError:
        unavailable("PyAV has no libopencore_amrnb encoder")
    ctx.sample_rate, ctx.layout, ctx.format, ctx.bit_rate = 8000, "mono", "s16", bit_rate
    frames: list[bytes] = []
    for start in range(0, len(signal) - 159, 160):
        frame = av.AudioFrame.from_ndarray(signal[None, start : start + 160], format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, start
        frames += [bytes(p) for p in ctx.encode(frame)]
    return frames + [bytes(p) for p in ctx.encode(None)]


def libopencore_decode(frames: list[bytes]) -> Pcm:
    ctx = av.CodecContext.create("libopencore_amrnb", "r")
    ctx.sample_rate, ctx.layout = 8000, "mono"
    return np.concatenate(
        [f.to_ndarray()[0] for frame in frames for f in ctx.decode(av.Packet(frame))]
    ).astype(np.int16)


# --- one sample per codec ---------------------------------------------------------------------------


@dataclass
class Sample:
    encoding: str
    clock_rate: int
    payloads: list[bytes]
    reference: Pcm  # the same bitstream decoded by a reference decoder (or the source for G.711)
    min_similarity: float = 0.999
    max_lag: int = 0
    channels: int = 1
    fmtp: dict[str, str] = field(default_factory=dict)
    is_tone: bool = True  # False for iLBC's random frames
    bit_exact: bool = False  # the reference is the same libavcodec decoder, so equal to the sample


def sox(args: list[str], signal: Pcm) -> bytes:
    if shutil.which("sox") is None:
        unavailable("sox is not installed")
    cmd = ["sox", "-t", "raw", "-r", "8000", "-e", "signed", "-b", "16", "-c", "1", "-", *args, "-"]
    return subprocess.run(cmd, input=signal.tobytes(), capture_output=True, check=True).stdout


def g711(law: str) -> Sample:
    signal = tone(8000)
    encoded = sox(["-t", "raw", "-e", law, "-b", "8"], signal)
    return Sample("PCMA" if law == "a-law" else "PCMU", 8000, chunk(encoded, 160), signal, 0.9995)


def g722() -> Sample:
    encoded = encode_cli(tone(16000), 16000, ["-c:a", "g722", "-f", "g722"], "g722")
    reference = decode_cli(encoded, ["-f", "g722"], 16000)
    return Sample("G722", 8000, chunk(encoded, 160), reference, bit_exact=True)


def g726(kbps: int, big_endian: bool = False) -> Sample:
    codec = "g726" if big_endian else "g726le"
    bits = kbps // 8
    encoded = encode_cli(tone(8000), 8000, ["-c:a", codec, "-b:a", f"{kbps}k", "-f", codec], codec)
    reference = decode_cli(encoded, ["-f", codec, "-code_size", str(bits)], 8000)
    name = f"AAL2-G726-{kbps}" if big_endian else f"G726-{kbps}"
    return Sample(name, 8000, chunk(encoded, 160 * bits // 8), reference, bit_exact=True)


def gsm() -> Sample:
    encoded = encode_cli(tone(8000), 8000, ["-c:a", "libgsm", "-f", "gsm"], "libgsm")
    payloads = packets(chunk(encoded, 33), [1, 2, 3])  # ptime 20, 40 and 60 ms
    return Sample("GSM", 8000, payloads, decode_cli(encoded, ["-f", "gsm"], 8000), bit_exact=True)


def g729() -> Sample:
    frames = bcg729_encode(tone(8000))
    reference = decode_cli(b"".join(frames), ["-f", "g729"], 8000)
    return Sample("G729", 8000, packets(frames, [2, 1, 3]), reference, bit_exact=True)


def opus() -> Sample:
    stereo = np.repeat(tone(48000)[:, None], 2, axis=1)
    args = ["-f", "s16le", "-ar", "48000", "-ac", "2", "-i", "pipe:0"]
    encoded = ffmpeg(
        [*args, "-c:a", "libopus", "-b:a", "32k", "-f", "ogg", "pipe:1"], stereo.tobytes(), encoder="libopus"
    )
    # the CLI drops the encoder's pre-skip (312 samples) that RTP receivers play, hence the lag
    reference = decode_cli(encoded, [], 48000)
    return Sample("opus", 48000, demux(encoded), reference, 0.99, max_lag=400, channels=2)


def speex(frames_per_packet: int, rate: int = 8000) -> Sample:
    args = ["-c:a", "libspeex", "-frames_per_packet", str(frames_per_packet), "-f", "ogg"]
    encoded = encode_cli(tone(rate), rate, args, "libspeex")
    reference = decode_cli(encoded, ["-c:a", "libspeex"], rate)  # libspeex itself as the reference
    return Sample("speex", rate, demux(encoded), reference, 0.99, max_lag=10)


def amr(bit_rate: int, octet_align: bool, per_packet: int) -> Sample:
    frames = amr_encode(tone(8000), bit_rate)
    payloads = [
        amr_payload(frames[i : i + per_packet], octet_align=octet_align)
        for i in range(0, len(frames), per_packet)
    ]
    fmtp = {"octet-align": "1"} if octet_align else {}
    return Sample("AMR", 8000, payloads, libopencore_decode(frames), 0.95, max_lag=5, fmtp=fmtp)


def ilbc(mode: int) -> Sample:
    size = 38 if mode == 20 else 50
    rng = np.random.default_rng(mode)
    # the last bit of a frame is the "empty frame" flag (RFC 3951 §3.8): clear it so every frame is decoded
    frames = [rng.bytes(size - 1) + bytes([rng.integers(256) & 0xFE]) for _ in range(30)]
    reference = decode_cli(f"#!iLBC{mode}\n".encode() + b"".join(frames), ["-f", "ilbc"], 8000)
    return Sample("iLBC", 8000, packets(frames, [1, 2]), reference, is_tone=False, bit_exact=True)


SAMPLES: dict[str, Callable[[], Sample]] = {
    "PCMA": lambda: g711("a-law"),
    "PCMU": lambda: g711("mu-law"),
    "G722": g722,
    "G726-16": lambda: g726(16),
    "G726-24": lambda: g726(24),
    "G726-32": lambda: g726(32),
    "G726-40": lambda: g726(40),
    "AAL2-G726-32": lambda: g726(32, big_endian=True),
    "GSM": gsm,
    "G729": g729,
    "opus": opus,
    "speex": lambda: speex(1),
    "speex-3-frames": lambda: speex(3),
    "speex-wideband": lambda: speex(1, 16000),
    "AMR-be-4.75": lambda: amr(4750, False, 1),
    "AMR-be-12.2x3": lambda: amr(12200, False, 3),
    "AMR-octet-7.95x2": lambda: amr(7950, True, 2),
    "iLBC-20": lambda: ilbc(20),
    "iLBC-30": lambda: ilbc(30),
}


# samples whose encoding or decoding takes seconds (`make test-fast` leaves them out)
SLOW_SAMPLES = {"opus", "G722", "speex-wideband"}


def _marked(names: Iterable[str]) -> list[Any]:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SAMPLES else n for n in names]


@functools.cache
def sample(name: str) -> Sample:
    return SAMPLES[name]()


def new_decoder(s: Sample) -> Decoder:
    return decoder_for(s.encoding, s.clock_rate, s.channels, s.fmtp)


# --- every codec on real payloads ----------------------------------------------------------------------


@pytest.mark.parametrize("name", _marked(SAMPLES))
def test_decodes_real_payloads_like_the_reference(name: str) -> None:
    s = sample(name)
    decoder = new_decoder(s)
    out = decoder.decode_many(s.payloads)
    assert out.dtype == np.int16 and out.ndim == 1
    # encoders pad the last frame and Opus has a pre-skip: allow up to 60 ms of difference
    assert abs(len(out) - len(s.reference)) <= s.max_lag + decoder.sample_rate * 60 // 1000
    assert similarity(out, s.reference, s.max_lag) >= s.min_similarity
    if s.is_tone:
        assert abs(dominant_hz(out, decoder.sample_rate) - TONE_HZ) < 3
    if s.bit_exact:
        np.testing.assert_array_equal(out[: len(s.reference)], s.reference[: len(out)])


@pytest.mark.parametrize("name", _marked(SAMPLES))
def test_decode_many_equals_concatenated_decode(name: str) -> None:
    s = sample(name)
    decoder = new_decoder(s)
    one_by_one = np.concatenate([decoder.decode(p) for p in s.payloads])
    np.testing.assert_array_equal(new_decoder(s).decode_many(s.payloads), one_by_one)


GARBAGE = {
    "PCMA": None,  # every byte is a sample
    "G722": b"",
    "G726-32": b"",
    "GSM": b"\xd0" * 32,
    "G729": b"\x00" * 7,
    "opus": b"\x03",  # code 3 (arbitrary frame count) with the count byte missing
    "speex": b"\xff" * 10,
    "AMR-be-12.2x3": b"\xf3\xc0\x00",  # a 12.2 kbit/s frame announced, 10 bits given
    "iLBC-30": b"\x00" * 49,
}


@pytest.mark.parametrize("name", _marked(n for n, g in GARBAGE.items() if g is not None))
def test_garbage_payload_is_a_parse_error_and_the_decoder_goes_on(name: str) -> None:
    s = sample(name)
    decoder = new_decoder(s)
    half = len(s.payloads) // 2
    first = decoder.decode_many(s.payloads[:half])
    with pytest.raises(ParseError, match=r"payload"):
        decoder.decode(GARBAGE[name] or b"")
    rest = decoder.decode_many(s.payloads[half:])
    assert len(rest) > 0
    assert similarity(np.concatenate([first, rest]), s.reference, s.max_lag) >= s.min_similarity - 0.05


def test_library_rejection_message_and_cause() -> None:
    decoder = decoder_for("opus", 48000, 2)
    with pytest.raises(ParseError, match=r"^opus payload could not be decoded$") as info:
        decoder.decode(b"\x03")
    assert isinstance(info.value.__cause__, av.FFmpegError)


def test_conceal_is_silence_of_the_asked_length() -> None:
    for encoding, rate in [("PCMA", 8000), ("G722", 8000), ("opus", 48000), ("AMR", 8000)]:
        hole = decoder_for(encoding, rate).conceal(321)
        assert hole.dtype == np.int16 and len(hole) == 321 and not hole.any()


def test_frames_to_mono_scales_and_downmixes_every_sample_format() -> None:
    left, right = np.array([0.5, -1.0, 0.25]), np.array([0.5, 0.0, -0.25])
    fltp = av.AudioFrame.from_ndarray(
        np.stack([left, right]).astype(np.float32), format="fltp", layout="stereo"
    )
    flt = av.AudioFrame.from_ndarray(left[None].astype(np.float32), format="flt", layout="mono")
    s16 = av.AudioFrame.from_ndarray(np.array([[100, 300, -5, -7]], np.int16), format="s16", layout="stereo")
    s32 = av.AudioFrame.from_ndarray(np.array([[1 << 30, -(1 << 31)]], np.int32), format="s32", layout="mono")
    out = frames_to_mono([fltp, flt, s16, s32])
    assert out.tolist() == [16384, -16384, 0, 16384, -32768, 8192, 200, -6, 16384, -32768]
    assert frames_to_mono([]).dtype == np.int16


# --- G.711 ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "table"), [("alaw", ALAW_TABLE), ("mulaw", ULAW_TABLE)])
def test_g711_tables_equal_ffmpeg_for_all_256_code_words(fmt: str, table: Pcm) -> None:
    reference = decode_cli(bytes(range(256)), ["-f", fmt, "-ar", "8000", "-ac", "1"], 8000)
    np.testing.assert_array_equal(table, reference)


def test_g711_decode_is_a_table_lookup() -> None:
    decoder = decoder_for("PCMU", 8000)
    assert decoder.decode(b"\xff\x7f\x00").tolist() == [0, 0, -32124]
    assert decoder.decode_many([]).size == 0


def test_l16_is_big_endian_and_downmixed() -> None:
    stereo = decoder_for("L16", 44100, 2)
    # (256 + 768) / 2 and (-2 + -4) / 2
    assert stereo.decode(b"\x01\x00\x03\x00\xff\xfe\xff\xfc").tolist() == [512, -3]
    with pytest.raises(ParseError, match=r"^L16 payload of 3 bytes is not a whole number of samples$"):
        stereo.decode(b"\x00\x01\x02")


# --- codec specifics ------------------------------------------------------------------------------------


def test_g722_has_an_8000_clock_but_16000_hz_audio() -> None:
    assert STATIC_PAYLOAD_TYPES[9] == ("G722", 8000, 1)
    decoder = decoder_for("G722", 8000)
    assert (decoder.name, decoder.sample_rate) == ("G722/8000", 16000)
    assert len(decoder.decode(sample("G722").payloads[0])) == 320  # 20 ms of 16 kHz audio


def test_g729_sid_frame_becomes_10_ms_of_silence() -> None:
    signal = np.concatenate([tone(8000, 0.5), np.zeros(8000, np.int16), tone(8000, 0.5)])
    frames = bcg729_encode(signal, vad=True)
    assert {len(f) for f in frames} == {0, 2, 10}  # speech, SID and untransmitted frames
    payloads, current = [], b""
    for frame in frames:  # RFC 3551 §4.5.6: a SID frame ends its packet
        current += frame
        if len(frame) == 2 or len(current) >= 20:
            payloads.append(current)
            current = b""
    decoder = decoder_for("g729", 8000)
    sid_packets = [p for p in payloads if len(p) % 10 == 2]
    assert sid_packets
    for payload in payloads:
        out = decoder.decode(payload)
        assert len(out) == 80 * (len(payload) // 10 + len(payload) % 10 // 2)
        if len(payload) == 2:
            assert not out.any()


def test_amr_no_data_and_sid_frames_are_silence() -> None:
    speech = amr_encode(tone(8000), 12200)[:2]
    no_data, sid = bytes([15 << 3 | 4]), bytes([8 << 3 | 4]) + bytes(5)
    for octet_align in (False, True):
        decoder = decoder_for("AMR", 8000, fmtp={"octet-align": "1"} if octet_align else None)
        out = decoder.decode(amr_payload([speech[0], no_data, sid, speech[1]], octet_align=octet_align))
        assert len(out) == 4 * 160
        assert not out[160:480].any()


def test_amr_payload_parsing() -> None:
    frame = amr_encode(tone(8000), 4750)[3]
    assert storage_frames(amr_payload([frame], octet_align=False)) == [frame]
    assert storage_frames(amr_payload([frame, frame], octet_align=True), octet_align=True) == [frame] * 2
    with pytest.raises(ParseError, match=r"^AMR payload uses reserved frame type 13$"):
        storage_frames(bytes([0xF0 | 0, 13 << 3 | 4]), octet_align=True)
    with pytest.raises(ParseError, match=r"^AMR payload is shorter than its table of contents says$"):
        storage_frames(amr_payload([frame], octet_align=False)[:-2])
    with pytest.raises(UnsupportedCodec, match=r"^no decoder for AMR/8000 "):
        decoder_for("AMR", 8000, fmtp={"interleaving": "4", "octet-align": "1"})


def test_ilbc_mode_comes_from_fmtp_or_payload_length() -> None:
    decoder = decoder_for("iLBC", 8000)
    assert len(decoder.decode(bytes(38))) == 160
    assert len(decoder.decode(bytes(100))) == 480
    pinned = decoder_for("ilbc", 8000, fmtp={"mode": "20"})
    assert len(pinned.decode(bytes(76))) == 320
    with pytest.raises(ParseError, match=r"^iLBC payload of 50 bytes is not a whole number of frames$"):
        pinned.decode(bytes(50))


# --- factory and payload-type tables ---------------------------------------------------------------------


def test_decoder_for_is_case_insensitive() -> None:
    assert decoder_for("pcma", 8000).name == "PCMA/8000"
    assert decoder_for("Opus", 48000, 2).name == "opus/48000/2"
    assert decoder_for("OPUS", 48000, 2).sample_rate == 48000
    assert decoder_for("g726-32", 8000).name == "G726-32/8000"
    assert decoder_for("Speex", 16000).sample_rate == 16000
    octet_aligned = decoder_for("amr", 8000, fmtp={"OCTET-ALIGN": "1"})
    frame = amr_encode(tone(8000, 0.1), 12200)[0]
    assert octet_aligned.decode(amr_payload([frame], octet_align=True)).size == 160


def test_unknown_codec_is_unsupported() -> None:
    with pytest.raises(UnsupportedCodec, match=r"^no decoder for FOO/8000$"):
        decoder_for("FOO", 8000)
    with pytest.raises(UnsupportedCodec, match=r"^no decoder for telephone-event/8000$"):
        decoder_for("telephone-event", 8000)
    with pytest.raises(UnsupportedCodec, match=r"^no decoder for speex/11025 "):
        decoder_for("speex", 11025)


def test_dtmf_and_comfort_noise_are_not_audio() -> None:
    assert not is_audio("telephone-event")
    assert not is_audio("CN")
    assert is_audio("PCMA") and is_audio("opus")


def test_static_payload_types_follow_rfc_3551() -> None:
    assert STATIC_PAYLOAD_TYPES[0] == ("PCMU", 8000, 1)
    assert STATIC_PAYLOAD_TYPES[8] == ("PCMA", 8000, 1)
    assert STATIC_PAYLOAD_TYPES[13] == ("CN", 8000, 1)
    assert STATIC_PAYLOAD_TYPES[18] == ("G729", 8000, 1)
    assert set(STATIC_PAYLOAD_TYPES) == {0, *range(3, 19)}
    for pt in (0, 3, 8, 9, 10, 11, 18):
        encoding, rate, channels = STATIC_PAYLOAD_TYPES[pt]
        assert decoder_for(encoding, rate, channels).name.split("/")[0] == encoding
