"""Output choices the command line checks before it loads the media stack (no heavy imports here)."""

from __future__ import annotations

MP3_BITRATES_KBPS = (8, 16, 24, 32)
SAMPLE_RATES = (8000, 16000)
OUTPUT_SUFFIXES = (".mp3", ".wav")
