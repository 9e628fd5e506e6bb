"""check_shared_setup: a host that shares a database refuses to keep a queue or a secret key of its own."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from callrec.config import ConfigError, ServiceConfig
from callrec.service.sanity import cannot_listen, check_shared_setup

PG = "postgresql://callrec@db.example/callrec"
KEY = "x" * 44


def test_embedded_defaults_pass() -> None:
    check_shared_setup(ServiceConfig(data_dir=Path("data")))


def test_a_sqlite_database_url_shares_nothing_and_passes() -> None:
    check_shared_setup(ServiceConfig(database_url="sqlite:////var/lib/callrec/callrec.db"))


def test_a_shared_database_with_a_shared_queue_and_key_passes() -> None:
    check_shared_setup(ServiceConfig(database_url=PG, queue_url="redis://cache:6379/0", secret_key=KEY))


def test_a_shared_database_without_a_queue_url_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        check_shared_setup(ServiceConfig(database_url=PG, secret_key=KEY))
    message = str(caught.value)
    assert "CALLREC_QUEUE_URL is not set" in message and "\n" not in message


def test_a_shared_database_without_a_secret_key_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        check_shared_setup(ServiceConfig(database_url=PG, queue_url="redis://cache:6379/0"))
    message = str(caught.value)
    assert "CALLREC_SECRET_KEY is not set" in message and "\n" not in message


def test_cannot_listen_names_the_address_and_protocol() -> None:
    taken = OSError(errno.EADDRINUSE, "Address already in use")
    assert str(cannot_listen("0.0.0.0", 5060, "udp", taken)) == (
        "cannot listen on 0.0.0.0:5060 (udp): address already in use"
    )
    denied = OSError(errno.EACCES, "Permission denied")
    assert str(cannot_listen("::1", 80, "http", denied)) == "cannot listen on [::1]:80 (http): permission denied"
