"""The aggregator's compacted verdicts name the campaign the layer names, after groups link.

A member's verdict is written when a query raises it. When a second group of the same campaign
turns hot later and links with the first, the campaign's id can change; members that send
nothing more must be written again, or a reader of the compacted topic sees one campaign as two.
No broker here: the aggregator's producer is a recorder, and records arrive interleaved by
partition the way four workers publish them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import probewatch as pw
from probewatch.io.persistence import read_calibration
from probewatch.stream import WorkerConfig
from probewatch.stream.campaigns import CampaignAggregator, CampaignRecord, EvidenceTap
from probewatch.stream.worker import PartitionState, _Item
from tests.support import topical_calibration_engine
from tests.unit.test_campaigns import DIM, SALT, hydra_traffic


class RecordingProducer:
    def __init__(self):
        self.latest: dict[str, dict] = {}  # what compaction keeps
        self.ids_written: dict[str, list[str | None]] = {}

    def produce(self, topic, key, value, on_delivery):
        body = json.loads(value)
        self.latest[key.decode()] = body
        self.ids_written.setdefault(key.decode(), []).append(body["campaign"] and body["campaign"]["id"])


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    topics = np.random.default_rng(11).standard_normal((24, DIM))
    path = tmp_path_factory.mktemp("ids-cal") / "calibration.npz"
    topical_calibration_engine(topics, 12, n_accounts=160, q_range=(6, 40)).save_calibration(path)
    return path, topics


def as_four_workers_publish(n_accounts, accounts, rng):
    """An order of the records: each of four partitions' queue, in batches of 1-59 records, in turn."""
    part = {a: int(rng.integers(0, 4)) for a in sorted(set(accounts))}
    queues = [[j for j in range(n_accounts) if part[accounts[j]] == p] for p in range(4)]
    order: list[int] = []
    while any(queues):
        for q in queues:
            b = int(rng.integers(1, 60))
            order += q[:b]
            del q[:b]
    return order


@pytest.mark.parametrize("seed", [2, 9])  # orders in which the campaign's id moves after members were written
def test_members_written_again_when_their_campaign_id_moves(calibration, tmp_path, seed):
    path, topics = calibration
    config = WorkerConfig(
        summaries_topic="summaries",
        calibration_path=str(path),
        state_url=f"file://{tmp_path}/state",
        engine={"device": "cpu", "campaign_salt": SALT},
    )
    accounts, vectors, prompts, metas = hydra_traffic(topics, seed=seed, members=20, crowd=10)
    # each query's account evidence, as the workers would send it
    source = pw.Engine(config.engine, benign=read_calibration(path))
    tap = EvidenceTap(source)
    source.observe_embeddings(accounts, vectors, metas=metas, prompts=prompts)
    tap.close()
    order = as_four_workers_publish(len(accounts), accounts, np.random.default_rng(100 + seed))

    aggregator = CampaignAggregator(config)
    aggregator._producer = producer = RecordingProducer()
    state = PartitionState(aggregator._new_engine(), 0, 0)
    rng = np.random.default_rng(seed)
    records = [
        CampaignRecord(
            accounts[j], 1e9 + j, vectors[j] / np.linalg.norm(vectors[j]), tap.values[j], prompts[j], metas[j]
        )
        for j in order
    ]
    start = 0
    while start < len(records):
        size = int(rng.integers(1, 40))
        good = [_Item(start + k, None, None, r) for k, r in enumerate(records[start : start + size])]
        aggregator._observe_good(0, state, good)
        start += size

    layer = state.engine.pipeline.campaigns
    moved = [a for a, ids in producer.ids_written.items() if len({i for i in ids if i}) > 1]
    assert moved, "this order should move a campaign's id after members were written (the case under test)"
    for account, body in producer.latest.items():
        mine = layer.summary_for(account)
        assert (body["campaign"] and body["campaign"]["id"]) == (mine.id if mine else None), account
    hydra = {a for a in accounts if a.startswith("hydra-")}
    named = {a: b["campaign"]["id"] for a, b in producer.latest.items() if a in hydra and b["campaign"]}
    assert len(set(named.values())) == 1, named
    # a member written again keeps the level it was written with (only the campaign moved)
    assert all(producer.latest[a]["level"] in ("watch", "flag") for a in moved if a in hydra)
