"""The one exception tree of callrec.

Foreign errors are translated at the boundary (``raise ParseError(msg) from exc``) so callers catch
``CallrecError`` and show its one-line message.
"""


class CallrecError(Exception):
    """Root of every error callrec raises on purpose."""


class ConfigError(CallrecError):
    """A setting has a value callrec cannot use; the message names the setting."""


class ParseError(CallrecError, ValueError):
    """A wire format or file could not be parsed; the message is one exact sentence."""


class UnsupportedCodec(CallrecError):
    """No decoder (or encoder) exists for the named codec."""


class CaptureError(CallrecError):
    """A capture file is unreadable as a whole (not a capture, or damaged before any packet)."""


class OutputError(CallrecError):
    """An output file could not be written."""


class StorageError(CallrecError):
    """Object storage refused, lost or corrupted an object, or cannot be reached; the job is retried."""


class ServiceError(CallrecError):
    """A request to the service cannot be carried out.

    The API layer raises it with the HTTP status it answers (``status``); the layers below it raise the kinds
    that follow, which know nothing of HTTP: the API maps each to its status in one place
    (``callrec.api.handlers.status_of``; a plain ``ServiceError`` without a status is 400).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(ServiceError):
    """What the request names does not exist, or is not the asker's to see."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class Conflict(ServiceError):
    """The request clashes with the thing's present state (it is busy or being made); it may work later."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class Gone(ServiceError):
    """What the request names existed but cannot be used any more (an expired link, deleted recordings)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class Refused(ServiceError):
    """The request is well formed but one of its values is refused (out of the allowed range, by policy)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class Transient(CallrecError):
    """A failure that goes away by itself (storage down, disk full, a tape not yet delivered): the job is
    retried without a limit and no attempt is counted."""


class Permanent(CallrecError):
    """A failure no retry can mend (the job cannot be carried out at all): failed at once."""


class EgressRefused(StorageError, Permanent):
    """An outbound request a tenant aimed (a webhook, an S3 endpoint) would reach a destination the egress
    policy refuses (loopback, private, link-local, metadata, ...): nothing was sent, and no retry is made."""
