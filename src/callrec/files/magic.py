"""What a capture file starts with: the one list of the first bytes callrec reads as pcap or pcapng.

Light on purpose (no numpy): ``callrec mix`` and the upload API check a file with it before the reader loads.
"""

from __future__ import annotations

# magic -> byte order, timestamp fraction units per second, record header length
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e6, 16),
    b"\xa1\xb2\xc3\xd4": (">", 1e6, 16),
    b"\x4d\x3c\xb2\xa1": ("<", 1e9, 16),
    b"\xa1\xb2\x3c\x4d": (">", 1e9, 16),
    # Alexey Kuznetzov's patched libpcap (old Red Hat tcpdump) adds 8 bytes to each record header
    b"\x34\xcd\xb2\xa1": ("<", 1e6, 24),
    b"\xa1\xb2\xcd\x34": (">", 1e6, 24),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"


def looks_like_capture(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a pcap or pcapng capture (by its first four bytes)."""
    return head[:4] in PCAP_MAGICS or head[:4] == PCAPNG_SHB
