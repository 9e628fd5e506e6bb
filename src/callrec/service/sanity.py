"""Checks a host makes before it starts, so that it refuses to run rather than run wrong.

``check_shared_setup`` refuses a configuration that would make one host quietly part ways with the
others (a queue or a secret key of its own beside a shared database). ``cannot_listen`` turns a failed
bind into the one line an operator needs: which address, which protocol, and why.
"""

from __future__ import annotations

import errno

from callrec.config import ConfigError, ServiceConfig
from callrec.errors import CallrecError


class StartRefused(CallrecError):
    """The process cannot do its job from the start (its data folder is taken, its port is in use).

    Retrying does not help, so a supervisor stops instead of starting it again: the command exits with
    ``EXIT_REFUSED`` after printing the message as its one line.
    """


class CannotListen(StartRefused):
    """An address to listen on cannot be bound."""


# the exit status of a refused start (and of every one-line CLI error): a supervisor does not retry it
EXIT_REFUSED = 2


def check_shared_setup(config: ServiceConfig) -> None:
    """Refuse a host that shares a database but would keep a queue or a secret key of its own.

    With ``CALLREC_DATABASE_URL`` on a database server, other hosts see this host's recordings: without
    ``CALLREC_QUEUE_URL`` it would queue their jobs in its own SQLite queue, which no other worker reads,
    and without ``CALLREC_SECRET_KEY`` it would make a key of its own and could not read the storage
    secrets the others wrote (nor they its). A SQLite database is a file on this host: nothing is shared.
    """
    url = config.database_url
    if not url or url.startswith("sqlite"):
        return
    if not config.queue_url:
        raise ConfigError(
            "CALLREC_DATABASE_URL is a shared database but CALLREC_QUEUE_URL is not set: this host would queue"
            " jobs where no other host looks; set CALLREC_QUEUE_URL (redis://...) to the shared queue"
        )
    if not config.secret_key:
        raise ConfigError(
            "CALLREC_DATABASE_URL is a shared database but CALLREC_SECRET_KEY is not set: this host would make"
            " a key of its own and could not read the others' storage secrets; set the same CALLREC_SECRET_KEY"
            " on every host"
        )


def cannot_listen(host: str, port: int, protocol: str, exc: OSError) -> CannotListen:
    """``cannot listen on 0.0.0.0:5060 (udp): address already in use``."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        reason = "address already in use"
    else:
        text = exc.strerror or str(exc)
        reason = text[:1].lower() + text[1:]
    return CannotListen(f"cannot listen on {where} ({protocol}): {reason}")
