"""``callrec mix``, the mixer everyone runs (the command, the recorder's ``--mix``, the worker, stitching).

:func:`mix` reads a capture once, in order (:mod:`~callrec.mix.demux`: datagram → call → stream, with the
vectorised lane of :mod:`~callrec.mix.lane`), and streams each call's recording to disk as it goes; the
output options are :class:`~callrec.media_limits.OutputOptions`.
"""

from callrec.mix.report import CallOutput, MixReport
from callrec.mix.run import mix

__all__ = ["CallOutput", "MixReport", "mix"]
