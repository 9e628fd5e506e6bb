"""/metrics shows the counters of the recorder on this host's data folder (its ``recorder-stats.json``)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from callrec.recorder import recstats
from tests.api.conftest import Api


def _recorder_samples(api: Api) -> dict[str, float]:
    answer = api.client.get("/metrics")
    assert answer.status_code == 200
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
        if sample.name.startswith("callrec_recorder_")
    }


def test_the_recorders_figures_reach_metrics_as_counters(api: Api) -> None:
    data_dir = api.service.ctx.config.data_dir
    (data_dir / recstats.STATS_FILE).unlink(missing_ok=True)
    assert _recorder_samples(api) == {}, "no recorder on this data folder: no recorder figures"

    figures = {name: 0 for name in recstats.COUNTERS}
    figures |= {"callrec_recorder_packets_recorded": 1500, "callrec_recorder_packets_foreign": 7,
                "callrec_recorder_streams_latched": 1}  # fmt: skip
    recstats.write(data_dir, figures)
    samples = _recorder_samples(api)
    assert samples["callrec_recorder_packets_foreign_total"] == 7
    assert samples["callrec_recorder_packets_recorded_total"] == 1500
    assert samples["callrec_recorder_streams_latched_total"] == 1
    assert len([n for n in samples if n.endswith("_total")]) == len(recstats.COUNTERS)

    # a file that is not the recorder's figures (half-written by hand, another version) is left out
    (data_dir / recstats.STATS_FILE).write_text('{"callrec_recorder_packets_foreign": "many", "x": 1')
    assert _recorder_samples(api) == {}
    (data_dir / recstats.STATS_FILE).write_text('{"callrec_recorder_packets_foreign": "many", "other": 3}')
    assert _recorder_samples(api) == {}
    (data_dir / recstats.STATS_FILE).unlink()
