"""Settings: option and environment parsing, with one exact sentence per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from callrec.config import (
    ConfigError,
    RecorderConfig,
    parse_hostport,
    parse_networks,
    parse_port_range,
    recorder_config_from_env,
)


def test_hostport_forms() -> None:
    assert parse_hostport("127.0.0.1:5080", 5060, "--listen") == ("127.0.0.1", 5080)
    assert parse_hostport("10.0.0.1", 5060, "--listen") == ("10.0.0.1", 5060)
    assert parse_hostport(":5070", 5060, "--listen") == ("0.0.0.0", 5070)
    assert parse_hostport("[::1]:5070", 5060, "--listen") == ("::1", 5070)
    assert parse_hostport("127.0.0.1:0", 5060, "--listen") == ("127.0.0.1", 0)


def test_hostport_rejects_a_bad_port() -> None:
    with pytest.raises(ConfigError, match=r"--listen: '1.2.3.4:70000' is not HOST:PORT"):
        parse_hostport("1.2.3.4:70000", 5060, "--listen")


def test_port_range_starts_even_and_needs_a_pair() -> None:
    assert parse_port_range("30001-30010") == (30002, 30010)
    with pytest.raises(ConfigError, match="is not FIRST-LAST"):
        parse_port_range("30000")
    with pytest.raises(ConfigError, match="1024 <= FIRST < LAST <= 65535"):
        parse_port_range("80-90")
    with pytest.raises(ConfigError, match="no even/odd RTP/RTCP port pair"):
        parse_port_range("30001-30002")


def test_allow_list_matches_addresses_and_v4_mapped_ones() -> None:
    cfg = RecorderConfig(allow=parse_networks(["10.0.0.0/8,192.168.1.5", "::1"]))
    assert cfg.allowed("10.1.2.3") and cfg.allowed("192.168.1.5") and cfg.allowed("::1")
    assert cfg.allowed("::ffff:10.9.9.9")
    assert not cfg.allowed("192.168.1.6") and not cfg.allowed("not-an-ip")
    assert not RecorderConfig().allowed("203.0.113.9"), "with nothing configured only loopback may record"
    assert RecorderConfig().allowed("127.0.0.1") and RecorderConfig().allowed("::1")
    with pytest.raises(ConfigError, match="'10.0.0.0/33' is not an address or CIDR network"):
        parse_networks(["10.0.0.0/33"])


def test_environment_overrides_defaults() -> None:
    cfg = recorder_config_from_env(
        {
            "CALLREC_DATA": "/srv/rec",
            "CALLREC_SIP_LISTEN": "127.0.0.1:5070",
            "CALLREC_RTP_PORTS": "40000-40100",
            "CALLREC_ALLOW": "127.0.0.1",
            "CALLREC_MAX_SESSIONS": "12",
            "CALLREC_MIN_FREE_MB": "5",
            "CALLREC_IDLE_TIMEOUT_S": "2.5",
            "CALLREC_SIPREC_CALLER": "last",
            "CALLREC_INTERACTION_KEYS": "ucid, callId",
        }
    )
    assert cfg.data_dir == Path("/srv/rec") and cfg.tapes_dir == Path("/srv/rec/tapes")
    assert (cfg.listen_host, cfg.listen_port, cfg.rtp_first, cfg.rtp_last) == ("127.0.0.1", 5070, 40000, 40100)
    assert cfg.allowed("127.0.0.1") and not cfg.allowed("127.0.0.2")
    assert (cfg.max_sessions, cfg.min_free_bytes, cfg.idle_timeout_s) == (12, 5 * 1024 * 1024, 2.5)
    assert cfg.caller == "last" and cfg.interaction_keys == ("ucid", "callId")


def test_environment_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="CALLREC_MAX_SESSIONS must be a whole number, not 'many'"):
        recorder_config_from_env({"CALLREC_MAX_SESSIONS": "many"})
    with pytest.raises(ConfigError, match="CALLREC_IDLE_TIMEOUT_S must be a number, not 'soon'"):
        recorder_config_from_env({"CALLREC_IDLE_TIMEOUT_S": "soon"})
    with pytest.raises(ConfigError, match="CALLREC_SIPREC_CALLER must be 'first' or 'last'"):
        recorder_config_from_env({"CALLREC_SIPREC_CALLER": "middle"})
