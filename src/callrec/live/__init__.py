"""Live passive capture: an interface read through the kernel's packet ring (issue 16, item 1).

``ring`` reads the interface (AF_PACKET TPACKET_V3 with a BPF filter compiled by ``bpf``); ``frames`` turns
each block of frames into the ``Datagram`` / ``UdpBlock`` items the capture file readers give. ``tracker``
follows the calls in them and writes one tape per call (``bulk``: its runs of RTP routed at once); ``capture``
is ``callrec capture``'s loop (rings, tracker, crash recovery, figures in ``capstats``); ``domains`` maps a call
to its domain (``--domain-from``).
"""
