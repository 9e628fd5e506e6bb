"""Capture files and tapes: pcap/pcapng reading and writing, the tape folder, rtpengine spool files, call scans."""
