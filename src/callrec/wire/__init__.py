"""Wire formats: RTP/RTCP, SIP, SDP, SIPREC rs-metadata, IP/UDP/TCP parsing and reassembly, passive SIP dialogs."""
