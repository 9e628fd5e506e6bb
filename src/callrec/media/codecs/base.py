"""The decoder interface every codec implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

PcmArray = npt.NDArray[np.int16]


class Decoder(Protocol):
    """Decodes RTP payloads of one codec to mono 16-bit PCM.

    ``name`` is the rtpmap form, e.g. ``"PCMA/8000"``; ``sample_rate`` is the rate of the decoded audio,
    which may differ from the RTP clock rate (G.722: clock 8000, audio 16000; Opus: clock 48000).
    """

    name: str
    sample_rate: int

    def decode(self, payload: bytes) -> PcmArray:
        """Decode one RTP payload (all the frames it carries) to mono int16 samples.

        A damaged payload raises ``callrec.errors.ParseError``; the decoder stays usable.
        """
        ...

    def decode_many(self, payloads: list[bytes]) -> PcmArray:
        """Decode consecutive payloads as one run (the same as concatenating ``decode`` results)."""
        ...

    def conceal(self, samples: int) -> PcmArray:
        """Audio to stand in for ``samples`` lost samples (at ``sample_rate``); silence is acceptable."""
        ...
