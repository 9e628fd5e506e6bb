"""callrec: call recording for cloud telephony."""

__version__ = "0.1.0"
