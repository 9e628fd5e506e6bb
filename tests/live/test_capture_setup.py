"""Setting the live capture up, without an interface: ``CALLREC_CAPTURE`` and ``serve --capture``'s child,
the figures ``/metrics`` shows, and the one-line refusals of ``callrec capture``. Needs no root."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from callrec.api.ops import CaptureCollector
from callrec.config import RecorderConfig, ServiceConfig, parse_interfaces, recorder_config_from_env
from callrec.live import capstats
from callrec.serve import _is_ready, children_for
from callrec.service.sanity import EXIT_REFUSED
from tests.support.audio import callrec


def test_capture_interfaces_from_the_environment() -> None:
    assert parse_interfaces("eth1:eth2,eth1, ") == ["eth1", "eth2"]
    cfg = recorder_config_from_env(
        {"CALLREC_CAPTURE": "eth1,eth2", "CALLREC_CAPTURE_FILTER": "udp", "CALLREC_CAPTURE_DOMAIN_FROM": "ruri"}
    )
    assert (cfg.captures, cfg.capture_filter, cfg.capture_domain_from) == (["eth1", "eth2"], "udp", "ruri")
    assert recorder_config_from_env({}).captures == []


def test_serve_runs_one_capture_child_for_every_interface(tmp_path: Path) -> None:
    rec = RecorderConfig(captures=["eth1", "span0"])
    children = children_for(rec, ServiceConfig(data_dir=tmp_path), record=False, work=False)
    [child] = children
    assert child.name == "capture"
    argv = child.argv[child.argv.index("capture") :]
    assert argv[:4] == ["capture", "--service", "--data", str(tmp_path)]
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--interface"] == ["eth1", "span0"]
    assert children_for(RecorderConfig(), ServiceConfig(data_dir=tmp_path), record=False, work=False) == []
    assert _is_ready("callrec capture: reading eth1, span0 (filter 'udp'), domain from ruri, tapes under d/tapes")


def test_the_capture_figures_reach_metrics(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    registry.register(CaptureCollector(tmp_path))
    assert b"callrec_capture" not in generate_latest(registry), "no capture on this data folder: no figures"
    capstats.write(
        tmp_path,
        {"span0": {"callrec_capture_packets": 1200, "callrec_capture_drops": 3, "callrec_capture_link_errors": 1}},
        {"callrec_capture_calls": 4, "callrec_capture_rtp_packets": 1000, "bogus": 7},
        {"callrec_capture_calls_open": 2},
    )
    text = generate_latest(registry).decode()
    for line in (
        'callrec_capture_packets_total{interface="span0"} 1200.0',
        'callrec_capture_drops_total{interface="span0"} 3.0',
        'callrec_capture_link_errors_total{interface="span0"} 1.0',
        "callrec_capture_calls_total 4.0",
        "callrec_capture_rtp_packets_total 1000.0",
        "callrec_capture_calls_open 2.0",
    ):
        assert line in text.splitlines(), text
    assert "bogus" not in text
    (tmp_path / capstats.STATS_FILE).write_text("{not json")
    assert b"callrec_capture" not in generate_latest(registry)


def test_capture_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    """Refused with the status a supervisor (serve) does not start again: it would fail the same way."""
    done = callrec("capture", "--interface", "lo", "--data", str(tmp_path), "--domain-from", "tenant", check=False)
    assert done.returncode == EXIT_REFUSED, done.stderr
    assert done.stderr.startswith("callrec capture: --domain-from 'tenant'"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = callrec("capture", "--interface", "nosuch0", "--data", str(tmp_path), check=False)
    assert done.returncode == EXIT_REFUSED and "nosuch0" in done.stderr and "Traceback" not in done.stderr, done.stderr
    done = callrec("capture", "--interface", "lo", "--data", str(tmp_path), "--filter", "udp and (", check=False)
    assert done.returncode == EXIT_REFUSED and "Traceback" not in done.stderr, done.stderr
    assert not list((tmp_path / "tapes").glob("[0-9]*")), "no tape without a capture"
