"""Secrets at rest (S3 secret keys, webhook secrets) encrypted with Fernet under ``CALLREC_SECRET_KEY``.

A stored secret reads ``enc:v1:<token>``; the version lets a later scheme sit beside this one. Fernet
authenticates as well as encrypts, so a tampered value or the wrong key is refused, never decrypted
to garbage.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from callrec.config import ConfigError

PREFIX = "enc:v1:"
UNDECRYPTABLE = "a stored secret cannot be decrypted with the configured CALLREC_SECRET_KEY"
KEY_FILE_MODE = 0o600


def new_key() -> str:
    """A fresh random key (32 bytes, url-safe base64), as ``CALLREC_SECRET_KEY`` or a key file holds it."""
    return Fernet.generate_key().decode("ascii")


def is_encrypted(value: str) -> bool:
    """Whether ``value`` is a secret as ``SecretBox.encrypt`` stores it (as opposed to plain text)."""
    return value.startswith(PREFIX)


class SecretBox:
    """Encrypts and decrypts secrets with one key; the key never appears in ``repr`` or messages."""

    def __init__(self, key: str | bytes) -> None:
        raw = key.strip() if isinstance(key, str | bytes) else key
        try:
            self._fernet = Fernet(raw)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                "CALLREC_SECRET_KEY is not a valid key: it must be 32 bytes in url-safe base64 (44 characters)"
            ) from exc
        self._raw = raw.encode("ascii") if isinstance(raw, str) else raw

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for one ``purpose`` (e.g. signing web sessions), derived from this box's key by
        HMAC-SHA256, so each use has its own key and none of them reveals the box's."""
        return hmac.new(self._raw, b"callrec derive: " + purpose.encode("utf-8"), hashlib.sha256).digest()

    def encrypt(self, plain: str) -> str:
        return PREFIX + self._fernet.encrypt(plain.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """The plain text of ``token``; ``ConfigError`` if it was altered or made with another key."""
        if not is_encrypted(token):
            raise ConfigError(UNDECRYPTABLE)
        try:
            return self._fernet.decrypt(token[len(PREFIX) :].encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError, ValueError) as exc:
            raise ConfigError(UNDECRYPTABLE) from exc


def load_or_create_key(path: Path) -> str:
    """The key in ``path``; if there is no such file, a new key written there (mode 0600) and returned.

    Two processes starting together agree on one key: the file appears whole through a hard link, which
    fails for the loser, who then reads the winner's key.
    """
    try:
        text = path.read_text("ascii").strip()
    except FileNotFoundError:
        return _create_key(path)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"secret key file {path} cannot be read: {_reason(exc)}") from exc
    try:
        SecretBox(text)
    except ConfigError as exc:
        raise ConfigError(f"secret key file {path} does not hold a valid key (32 bytes in url-safe base64)") from exc
    return text


def _create_key(path: Path) -> str:
    key = new_key()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            os.fchmod(f.fileno(), KEY_FILE_MODE)  # whatever the umask
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load_or_create_key(path)
    except OSError as exc:
        raise ConfigError(f"secret key file {path} cannot be created: {_reason(exc)}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return key


def _reason(exc: Exception) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
