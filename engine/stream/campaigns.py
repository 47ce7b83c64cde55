"""Campaigns across partitions: per-query campaign records and the campaign aggregator.

The accounts of one campaign are keyed to different partitions, so no worker sees them all.
Each worker (``summaries_topic`` set) publishes, for every observation, what the campaign
layer (:class:`probewatch.campaigns.layer.CampaignLayer`) takes for one query: the unit
vector (float16, base64), the account detector's signed per-query evidence, the prompt (for
template anchors) and the request metadata. One aggregator (``probewatch worker
--campaign-aggregator``) consumes that single-partition topic in order, runs one campaign
layer over every account, and writes campaign verdicts keyed by account to the compacted
``campaign_verdicts_topic``: the account's campaign and its campaign level. It checkpoints
and commits exactly like a worker (it is one, with another input).

Records are per query, not per account, because the layer's groups are keyed per query
(shared templates, metadata, payload regions) and it times when each member joined. The
worker's own account levels do not take campaign raises back (that would make a partition's
state depend on other partitions and break its replay); a reader takes the higher of the
account verdict's level and the campaign verdict's level.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend.threads import limit_host_blas
from ..campaigns.metadata import check_meta
from ..detect.probes import word_hashes
from ..engine import Engine
from ..errors import ConfigError, InputError
from ..io.validation import check_account
from ..types import Level
from .schema import SCHEMA_VERSION, Observation, PoisonMessage
from .worker import PartitionState, Worker, WorkerError, _Item

RECORD_FIELDS = frozenset(
    {"schema_version", "account", "ts", "vector", "evidence", "prompt", "read", "meta", "partition", "offset"}
)


@dataclass(frozen=True)
class CampaignRecord:
    account: str
    ts: float
    vector: np.ndarray  # unit, float32
    evidence: float
    prompt: str | None
    meta: dict[str, str] | None
    read: str | None = None  # what the word rules read of the prompt, where not all of it


def campaign_record(
    obs: Observation, vector: np.ndarray, evidence: float, partition: int, offset: int, read: str | None = None
) -> bytes:
    x = np.asarray(vector, dtype=np.float64)
    unit = (x / np.linalg.norm(x)).astype("<f2")
    body: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "account": obs.account,
        "ts": obs.ts,
        "vector": base64.b64encode(unit.tobytes()).decode("ascii"),
        "evidence": round(float(evidence), 6),
        "partition": partition,
        "offset": offset,
    }
    if obs.prompt is not None:
        body["prompt"] = obs.prompt
        if read is not None and read != obs.prompt:  # read without its boilerplate (Engine.read_prompts)
            body["read"] = read
    if obs.meta:
        body["meta"] = obs.meta
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def parse_campaign_record(value: bytes | None, dim: int, max_bytes: int) -> CampaignRecord:
    if value is None or len(value) > max_bytes:
        raise PoisonMessage(
            "oversized" if value else "empty", f"a campaign record of at most {max_bytes:,} bytes was expected"
        )
    try:
        body = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoisonMessage("not_json", f"the campaign record is not UTF-8 JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("schema_version") != SCHEMA_VERSION:
        raise PoisonMessage("bad_version", f"expected a campaign record object with schema_version {SCHEMA_VERSION}")
    unknown = sorted(set(body) - RECORD_FIELDS)
    if unknown:
        raise PoisonMessage("bad_field", f"unknown campaign record fields {unknown}")
    try:
        account = check_account(body.get("account"))
        meta = check_meta(body.get("meta"))
        raw = base64.b64decode(body["vector"], validate=True)
        vector = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        evidence, ts = float(body["evidence"]), float(body["ts"])
    except (InputError, KeyError, TypeError, ValueError) as exc:
        raise PoisonMessage("bad_field", f"campaign record: {exc}") from None
    if vector.shape != (dim,) or not np.isfinite(vector).all():
        raise PoisonMessage("wrong_dim", f"campaign record vector has {vector.size} numbers; expected {dim}")
    prompt, read = body.get("prompt"), body.get("read")
    prompt = prompt if isinstance(prompt, str) else None
    return CampaignRecord(
        account, ts, vector, evidence, prompt, meta, read if isinstance(read, str) and prompt else None
    )


class EvidenceTap:
    """Collects the per-query evidence an engine hands its campaign layer during one observe call
    (the Engine API returns verdicts, not evidence), in the order of the observed items."""

    def __init__(self, engine: Engine):
        self.values: list[float] = []
        layer = self._layer = engine.pipeline.campaigns
        if layer is None:
            raise WorkerError("summaries_topic needs the engine's campaign layer (engine setting campaigns: true)")
        original = type(layer).observe

        def observe(accounts, vectors, texts, metas, ts, evidence, *rest):
            self.values.extend(np.asarray(evidence, dtype=np.float64).tolist())
            return original(layer, accounts, vectors, texts, metas, ts, evidence, *rest)

        layer.observe = observe  # an instance attribute: shadows the method for this call only

    def close(self) -> None:
        self._layer.__dict__.pop("observe", None)


def publish_campaign_records(
    worker: Worker, partition: int, items: list[_Item], verdicts, evidence: list[float]
) -> None:
    observed = [it for it, v in zip(items, verdicts, strict=True) if v is not None]
    if len(observed) != len(evidence):
        raise WorkerError(f"the campaign layer saw {len(evidence)} queries of {len(observed)} observed; not publishing")
    for it, e in zip(observed, evidence, strict=True):
        worker._produce(
            worker.config.summaries_topic,  # type: ignore[arg-type]
            it.obs.account.encode("utf-8"),  # type: ignore[union-attr]
            campaign_record(it.obs, it.vector, e, partition, it.offset, it.read),  # type: ignore[arg-type]
        )


class CampaignAggregator(Worker):
    """One campaign layer over every account: reads ``summaries_topic``, writes ``campaign_verdicts_topic``."""

    def __init__(self, config, **kwargs: Any):
        if not config.summaries_topic:
            raise ConfigError("the campaign aggregator reads summaries_topic: set it (the workers must set it too)")
        if not config.engine.campaigns:
            raise ConfigError("the campaign aggregator needs engine setting campaigns: true")
        super().__init__(config, **kwargs)
        self.group = f"{config.group_id}.campaigns"
        self.input_topic = config.summaries_topic
        self.output_topic = config.campaign_verdicts_topic
        # what the compacted verdict topic holds for each account (level, campaign id) as this
        # process wrote it, and each campaign's groups when last looked at: when groups link or
        # part, members' campaign ids move and their verdicts are written again (_moved_members)
        self._written: dict[str, tuple[Level, str | None]] = {}
        self._composition: dict[str, tuple[str, ...]] = {}
        self._relinks_seen = -1

    def topics_needed(self) -> list[str]:
        return [self.input_topic, self.output_topic, self.config.dead_letter_topic]

    def _new_engine(self) -> Engine:
        engine = super()._new_engine()
        if engine.pipeline.campaigns is None:
            raise WorkerError("the calibration has no group calibration, so there is no campaign layer to run")
        return engine

    def _parse(self, key: bytes | None, value: bytes | None) -> CampaignRecord:
        return parse_campaign_record(value, self.dim, self.config.max_message_bytes)

    def _embed(self, by_partition: dict[int, list[_Item]]) -> None:
        for items in by_partition.values():
            for it in items:
                if it.obs is not None:
                    it.vector = it.obs.vector

    def _observe_good(self, partition: int, state: PartitionState, good: list[_Item]) -> None:
        layer = state.engine.pipeline.campaigns
        records: list[CampaignRecord] = [it.obs for it in good]  # type: ignore[misc]
        # the layer alone, under the thread limit the engine's own batches run under
        with limit_host_blas(state.engine.config.detection_blas_threads):
            events = layer.observe(  # type: ignore[union-attr]
                [r.account for r in records],
                np.stack([r.vector for r in records]),
                [r.prompt for r in records],
                [r.meta for r in records],
                [r.ts for r in records],
                np.asarray([r.evidence for r in records]),
                # the word rules read what the worker's engine read of each prompt
                [None if r.prompt is None else word_hashes(r.read or r.prompt) for r in records],
            )
        for it, (summary, raised) in zip(good, events, strict=True):
            self._campaign_verdicts(state.engine, it, summary, raised, partition)
        self._moved_members(state.engine, good[-1], partition)

    def _moved_members(self, engine: Engine, item: _Item, partition: int) -> None:
        """Write the verdicts again of accounts whose campaign id moved since they were written.

        A verdict names the account's campaign as of the query that raised it. When groups link
        later (a second template of the same campaign turns hot) the campaign's id can change,
        and members that send nothing more would keep the old id in the compacted topic: a reader
        would see one campaign as two. Their level stays as written (levels are sticky; only the
        campaign moves). Accounts written before this process started are not tracked: their
        next verdict carries the id."""
        layer = engine.pipeline.campaigns
        if layer.relinks == self._relinks_seen:  # type: ignore[union-attr]
            return
        self._relinks_seen = layer.relinks  # type: ignore[union-attr]
        now = layer.campaign_composition()  # type: ignore[union-attr]
        changed = [cid for cid, keys in now.items() if self._composition.get(cid) != keys]
        gone = set(self._composition) - set(now)
        self._composition = now
        look: set[str] = set()
        for cid in changed:
            look |= layer.campaign_accounts(cid)  # type: ignore[union-attr]
        if gone:
            look |= {a for a, (_, cid) in self._written.items() if cid in gone}
        for account in sorted(look):
            written = self._written.get(account)
            if written is None:
                continue
            mine = layer.summary_for(account)  # type: ignore[union-attr]
            if (mine.id if mine is not None else None) != written[1]:
                self._write_verdict(account, written[0], mine, item, partition)

    def _campaign_verdicts(
        self, engine: Engine, item: _Item, summary, raised: dict[str, Level], partition: int
    ) -> None:
        layer = engine.pipeline.campaigns
        levels = dict(raised)
        if summary is not None:
            levels.setdefault(item.obs.account, summary.level)  # type: ignore[union-attr]
        for account, level in levels.items():
            self._write_verdict(account, level, layer.summary_for(account), item, partition)  # type: ignore[union-attr]

    def _write_verdict(self, account: str, level: Level, mine, item: _Item, partition: int) -> None:
        body = {
            "schema_version": SCHEMA_VERSION,
            "account": account,
            "level": Level(level).value,
            "campaign": mine.to_dict() if mine is not None else None,
            "partition": partition,
            "offset": item.offset,
        }
        self._produce(self.output_topic, account.encode("utf-8"), json.dumps(body, separators=(",", ":")).encode())
        self._written[account] = (Level(level), mine.id if mine is not None else None)
