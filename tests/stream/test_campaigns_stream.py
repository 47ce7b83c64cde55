"""Campaigns across partitions: workers publish campaign records, one aggregator runs the campaign layer.

A hydra campaign (many light accounts, one wrapper template, one payment method) spread over
four partitions: no worker sees enough of it, the aggregator sees it whole.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import probewatch as pw
from probewatch.io.persistence import read_calibration
from probewatch.stream import Publisher, WorkerConfig
from probewatch.stream.admin import create_topics
from probewatch.stream.campaigns import parse_campaign_record
from tests.stream.conftest import WorkerProcess, read_topic, unique, wait_for, worker_settings
from tests.support import saved_campaign_calibration
from tests.unit.test_campaigns import DIM, SALT, hydra_traffic

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
T0 = 1_767_225_600.0


@pytest.fixture(scope="module")
def campaign_calibration(tmp_path_factory):
    return saved_campaign_calibration(tmp_path_factory.mktemp("campaign-cal"), DIM)


def test_the_aggregator_finds_a_campaign_no_single_partition_sees_whole(broker, campaign_calibration, tmp_path):
    cal_path, topics = campaign_calibration
    tag = unique("camp")
    settings = worker_settings(
        broker,
        tmp_path / "state",
        tag,
        calibration_path=cal_path,
        summaries_topic=f"summaries-{tag}",
        campaign_verdicts_topic=f"campaigns-{tag}",
        engine_campaign_salt=SALT,
    )
    config = WorkerConfig(**{k: v for k, v in settings.items() if not k.startswith("engine_")})
    create_topics(config, 4)
    accounts, vectors, prompts, metas = hydra_traffic(topics, seed=3, members=20, crowd=10)
    with Publisher(broker.bootstrap, settings["observations_topic"], dim=DIM) as pub:
        for i, account in enumerate(accounts):
            pub.publish(account, T0 + i, embedding=vectors[i], prompt=prompts[i], meta=metas[i])
    worker = WorkerProcess(tmp_path / "worker.log", settings)
    aggregator = WorkerProcess(tmp_path / "aggregator.log", settings, ("--campaign-aggregator",))
    n = len(accounts)
    try:
        records = wait_for(
            lambda: (r := read_topic(broker, settings["summaries_topic"], expect=n, timeout=3)) and len(r) >= n and r,
            120,
            "a campaign record per observation",
            worker,
            aggregator,
        )
        hydra = {a for a in accounts if a.startswith("hydra-")}

        def members_in_campaigns():
            latest: dict[str, dict] = {}
            for _, _, key, value in read_topic(broker, settings["campaign_verdicts_topic"], timeout=2):
                latest[key.decode()] = json.loads(value)
            return {a for a, body in latest.items() if body["level"] in ("watch", "flag") and a in hydra}, latest

        def one_campaign(got):
            members, latest = got
            return len(members) == len(hydra) and len({latest[a]["campaign"]["id"] for a in members}) == 1

        # the topic settles: a member written before the campaign's groups linked is written again
        members, latest = wait_for(
            lambda: (got := members_in_campaigns()) and one_campaign(got) and got,
            90,
            "every hydra member in one campaign at watch or flag",
            worker,
            aggregator,
        )
    finally:
        assert aggregator.terminate() == 0, aggregator.log_text()[-3000:]
        assert worker.terminate() == 0, worker.log_text()[-3000:]

    # the campaign's members live on several partitions: only the aggregator could join them
    partition_of = {json.loads(v)["account"]: json.loads(v)["partition"] for _, _, _, v in records}
    assert len({partition_of[a] for a in members}) >= 2
    ids = {latest[a]["campaign"]["id"] for a in members}
    assert len(ids) == 1, f"one campaign, got {ids}"
    assert not any(body["level"] != "ok" for a, body in latest.items() if a.startswith("rag")), "the crowd is benign"

    # the aggregator's verdicts equal one in-process campaign layer fed the same records in order
    engine = pw.Engine(
        WorkerConfig().engine.replace(device="cpu", campaign_salt=SALT), benign=read_calibration(cal_path)
    )
    parsed = [parse_campaign_record(v, DIM, 1 << 20) for _, _, _, v in sorted(records, key=lambda r: r[1])]
    layer = engine.pipeline.campaigns
    layer.observe(
        [r.account for r in parsed],
        np.stack([r.vector for r in parsed]),
        [r.prompt for r in parsed],
        [r.meta for r in parsed],
        [r.ts for r in parsed],
        np.asarray([r.evidence for r in parsed]),
    )
    for account in members:
        assert layer.summary_for(account).id == latest[account]["campaign"]["id"]
    # and it is the campaign one engine over the whole stream finds, at the same level
    whole = pw.Engine(
        WorkerConfig().engine.replace(device="cpu", campaign_salt=SALT), benign=read_calibration(cal_path)
    )
    whole.observe_embeddings(accounts, vectors, metas=metas, prompts=prompts)
    top = whole.campaigns()[0]
    assert set(top.members) == members == hydra
    assert {latest[a]["campaign"]["level"] for a in members} == {top.level.value}
