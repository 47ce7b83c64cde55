"""The sidecar's core, independent of HTTP: micro-batching, journal, snapshots, failure policy.

Ordering and durability: one single-thread executor runs every state change (a micro-batch
is "journal write, embed while the fsync runs on the sync thread, then engine.observe_embedded"
in one job; a forget is "journal, then engine.forget") and every snapshot. So the engine state
a snapshot sees is exactly the journal up to ``journal.last_seq``; that seq goes into the
snapshot's file name. A client is answered only after its batch job finished, i.e. after its
records reached the journal durably, and the engine's state takes a batch only after that too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..campaigns.metadata import check_meta
from ..engine import Engine
from ..errors import BatchError, InputError, InvalidPromptError, ProbewatchError, SnapshotError
from ..io.persistence import fsync_dir, read_snapshot
from ..io.validation import check_account, check_prompt, check_timestamp, cut_middle
from ..types import CampaignStats, EngineStats
from .alerts import Alerts
from .config import ServerConfig
from .datadir_lock import DataDirLock, in_use_message
from .journal import Journal, JournalDamaged, JournalFailure, UnwritableRecord, sequence_of, sequenced_name, unwritable
from .metrics import ServerMetrics
from .repair import REPAIR_FILE, RepairRecord, read_repair_record, record_lost_tail

log = logging.getLogger("probewatch.serve")

SNAPSHOT_PREFIX = "snapshot-"
SNAPSHOT_SUFFIX = ".pwsnap"
REPLAY_CHUNK = 256


@dataclass
class Item:
    """One observation on its way through the micro-batcher."""

    account: str
    prompt: str
    ts: float
    truncated: bool = False
    meta: dict[str, str] | None = None  # checked request metadata (engine.observe's ``meta``)
    future: asyncio.Future | None = None
    enqueued_at: float = 0.0
    abandoned: bool = False  # the caller was already answered by the failure policy
    batched: bool = False  # taken into a micro-batch: it will be journaled and applied
    reserved: bool = False  # from the guardrail route: goes ahead of queued bulk items


@dataclass
class Outcome:
    """What a caller gets for one item: a verdict, an item error, or a policy fallback."""

    verdict: dict[str, Any] | None = None
    error: ProbewatchError | None = None
    fallback: str | None = None  # "deadline" | "overloaded" | "not_ready" | "engine_error" | "journal_failed"
    queued: bool = False
    truncated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def snapshot_name(seq: int) -> str:
    return sequenced_name(SNAPSHOT_PREFIX, seq, SNAPSHOT_SUFFIX)


def snapshot_seq(path: Path) -> int | None:
    return sequence_of(path, SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX)


class StorageFailedError(ProbewatchError):
    """A change was not recorded: the journal stopped taking writes (503 until a restart on
    storage that works; /readyz says why)."""


class StateDamagedError(ProbewatchError):
    """The data directory cannot give back the acknowledged state (unreadable snapshots, a gap
    in the journal): the service stays unready instead of serving part of it."""


def repair_hint(data_path: Path) -> str:
    """The way out every StateDamagedError names."""
    return (
        f"run `probewatch repair-state --data-dir {data_path}` to see exactly what would be dropped, and again "
        "with --yes to drop it so the service can start (or restore the data directory from a backup)"
    )


# A forget's snapshot waits this long, so a burst of DELETEs is served by one snapshot.
FORGET_SNAPSHOT_DELAY_S = 1.0
LOCK_RETRY_S = 1.0  # how often a sidecar waiting for its data_dir tries the lock again


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the snapshot after a forget failed: %s", task.exception())


class ObservationService:
    def __init__(self, config: ServerConfig, engine: Engine | None = None):
        self.config = config
        self.engine: Engine | None = engine
        self._given_engine = engine is not None
        self.metrics = ServerMetrics(
            self._stats_for_metrics,
            lambda: len(self._queue),
            read_campaigns=self._campaign_stats_for_metrics,
            read_ready=lambda: self.ready,
            queue_capacity=config.queue_capacity,
            read_alert_backlog=lambda: self.alerts.backlog() if self.alerts is not None else (),
            read_repeat_cache=lambda: self.engine.repeat_cache_stats() if self.engine is not None else None,
        )
        # level-transition alerts (probewatch.serve.alerts); None while no sink is configured
        self.alerts: Alerts | None = Alerts(config, self.metrics) if config.alert_sinks else None
        self.ready = False
        self.load_error: str | None = None
        self.covered_seq = 0  # journal seq the newest snapshot covers
        self._consistent = True  # False after an engine failure between journal and apply
        self._queue: deque[Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._snapshotter: asyncio.Task | None = None
        self._forget_snapshot: asyncio.Task | None = None  # one pending snapshot for a burst of forgets
        self._closing = False
        # One thread for every state change and snapshot: that is what orders them.
        self._state_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="probewatch-state")
        # The journal's batch fsync, overlapped with the embedding in the state thread.
        self._sync_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="probewatch-journal-sync")
        self.journal = Journal(
            config.data_path / "journal", config.journal_fsync, config.journal_fsync_interval_ms / 1000.0
        )
        self.snapshot_dir = config.data_path / "snapshots"
        self._since_snapshot = 0
        self._last_snapshot_at = time.monotonic()
        self._repaired = RepairRecord()
        self._data_lock = DataDirLock(config.data_path)

    @property
    def ready(self) -> bool:
        """Serving: started, and the journal and the alert outbox still take writes. A write
        that failed anywhere (a batch, a forget, a delivery mark) turns it False with the reason
        the moment anything asks (/readyz, the observe path, the metrics)."""
        if self._ready:
            problem = self._storage_problem()
            if problem is not None:
                self._ready, self.load_error = False, problem
        return self._ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self._ready = value

    def _storage_problem(self) -> str | None:
        if self.journal.failed is not None:
            return f"storage failed, no longer acknowledging observations: {self.journal.failed}"
        if self.alerts is not None and self.alerts.failed is not None:
            return f"the alert outbox failed, no longer acknowledging observations: {self.alerts.failed}"
        return None

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Restore state and load the model in the state thread; the service is ready after."""
        loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        if not await self._lock_data_dir():
            return
        try:
            await loop.run_in_executor(self._state_executor, self._restore_and_warm)
        except Exception as exc:  # reported by /readyz and the log; the process stays up
            self.load_error = f"loading failed: {type(exc).__name__}: {exc}"
            log.exception("probewatch could not restore its state or load the model")
            return
        self._worker = asyncio.create_task(self._batch_loop(), name="probewatch-batcher")
        self._snapshotter = asyncio.create_task(self._snapshot_loop(), name="probewatch-snapshots")
        if self.alerts is not None:
            await self.alerts.start()
        self.ready = True
        log.info("probewatch ready: %s", {k: v for k, v in self.engine.stats().to_dict().items() if k != "calibration"})

    def stopping(self) -> None:
        """The process is shutting down: a start still waiting for the data_dir's lock gives up."""
        self._closing = True

    async def _lock_data_dir(self) -> bool:
        """Hold the data_dir's lock before touching anything in it. While another process
        holds it (a rolling restart whose old sidecar still drains, or a mistake), wait,
        unready, saying which; False if the service stops meanwhile or the lock cannot be taken."""
        announced = False
        while not self._closing:
            try:
                holder = self._data_lock.acquire()
            except OSError as exc:
                self.load_error = f"cannot lock data_dir {self.config.data_path}: {exc}"
                log.error("probewatch cannot start: %s", self.load_error)
                return False
            if holder is None:
                self.load_error = None
                return True
            self.load_error = f"{in_use_message(self.config.data_path, holder)}; waiting for it"
            if not announced:
                log.error("%s", self.load_error)
                announced = True
            await asyncio.sleep(LOCK_RETRY_S)
        return False

    async def stop(self) -> None:
        """Drain queued items, write a final snapshot, close the journal."""
        self._closing = True
        loop = asyncio.get_running_loop()
        if self._worker is not None:
            deadline = loop.time() + self.config.shutdown_drain_s
            while self._queue and loop.time() < deadline:
                self._wakeup.set()
                await asyncio.sleep(0.01)
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for task in (self._snapshotter, self._forget_snapshot):  # the final snapshot covers both
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.ready:
            await loop.run_in_executor(self._state_executor, self._snapshot_job, "shutdown")
        if self.alerts is not None:  # an undelivered event stays in the outbox for the next start
            await self.alerts.stop()
            await loop.run_in_executor(self._state_executor, self.alerts.close)
        await loop.run_in_executor(self._state_executor, self.journal.close)
        self._state_executor.shutdown(wait=True)
        self._sync_executor.shutdown(wait=True)
        self.ready = False
        self._data_lock.release()

    def _restore_and_warm(self) -> None:
        cfg = self.config
        cfg.data_path.mkdir(parents=True, exist_ok=True)
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        self._repaired = read_repair_record(cfg.data_path)  # ranges repair-state dropped: not gaps
        for partial in self.snapshot_dir.glob(".*.tmp"):  # a snapshot write a kill interrupted
            log.warning("removing %s, a snapshot that was never completed", partial.name)
            partial.unlink(missing_ok=True)
        if not self._given_engine:
            self.engine = self._load_newest_snapshot() or self._new_engine()
        if self.alerts is not None:  # before the replay, which may find transitions the outbox lacks
            self.alerts.open(self.engine)
        replayed = self._replay_journal()
        # never below a seq handed out before: one a repair dropped, or one the outbox saw whose
        # record an unsynced journal tail lost (journal_fsync interval or never, then a power
        # loss); the outbox skips events at or below the seqs it has seen, so a reused seq's
        # transitions would never be alerted
        last = max(self.journal.last_seq, self.covered_seq, self._repaired.high_water)
        alerted = self.alerts.outbox.alerted_through if self.alerts is not None else 0
        if alerted > last:
            log.warning(
                "the alert outbox has seen journal seqs up to %d but the journal ends at %d: the journal's unsynced "
                "tail was lost (journal_fsync %s and a power loss?); those seqs are recorded as dropped in %s",
                alerted,
                last,
                cfg.journal_fsync,
                REPAIR_FILE,
            )
            record_lost_tail(cfg.data_path, self._repaired, last, alerted, self.covered_seq)
            self._repaired = read_repair_record(cfg.data_path)
            last = alerted
        self.journal.open(last + 1)
        # Pay for model loading and the first forward pass now, not on the first request.
        self.engine.embedder.encode(["probewatch warm-up"])
        log.info("restored snapshot seq %d and replayed %d journal records", self.covered_seq, replayed)

    def _new_engine(self) -> Engine:
        """A fresh engine, saved at once as the snapshot of journal seq 0.

        An engine draws its metadata salt when it is made, and campaign ids derive from
        salted keys: replaying the journal into another fresh engine after a crash would give
        the same campaigns other ids. Saved before the first observation, the salt is durable
        from then on (every later snapshot carries it too).
        """
        segments = self.journal.segments()
        resumes_at = self._repaired.skip(1)
        if segments and segments[0][0] > resumes_at:
            # Before the first snapshot is saved: a snapshot-0 would hide that one went missing.
            first, path = segments[0]
            raise StateDamagedError(
                f"the snapshot directory {self.snapshot_dir} holds no snapshot, but the journal's oldest segment "
                f"{path.name} starts at seq {first}: the snapshot covering seq {first - 1} (or journal records "
                f"{resumes_at}-{first - 1}) is missing; {repair_hint(self.config.data_path)}"
            )
        engine = Engine(config=self.config.engine, calibration_path=self.config.calibration_path)
        path = self.snapshot_dir / snapshot_name(0)
        engine.save(path)
        fsync_dir(self.snapshot_dir)
        self.metrics.snapshots.labels("written").inc()
        log.info("new engine saved as %s", path.name)
        return engine

    def _load_newest_snapshot(self) -> Engine | None:
        runtime = {
            "device": self.config.engine.device,
            "embed_batch_size": self.config.engine.embed_batch_size,
            "memory_budget_bytes": self.config.engine.memory_budget_bytes,
            "max_prompt_chars": self.config.engine.max_prompt_chars,
        }
        snapshots = sorted(self._snapshots(), reverse=True)
        for seq, path in snapshots:
            try:
                engine = Engine.load(path, **runtime)
            except (SnapshotError, OSError, ValueError) as exc:
                log.error("snapshot %s is unreadable (%s); trying an older one", path.name, exc)
                continue
            self.covered_seq = seq
            return engine
        if snapshots:
            # Starting empty would serve (and soon snapshot over) a fraction of the acknowledged state.
            raise StateDamagedError(
                f"none of the {len(snapshots)} snapshots in {self.snapshot_dir} can be read, so the acknowledged "
                f"state cannot be restored; {repair_hint(self.config.data_path)}"
            )
        return None

    def _snapshots(self) -> list[tuple[int, Path]]:
        found = [(snapshot_seq(p), p) for p in self.snapshot_dir.iterdir()]
        return [(s, p) for s, p in found if s is not None]

    def _replay_journal(self) -> int:
        pending: list[dict[str, Any]] = []
        count = 0

        def flush() -> None:
            if not pending:
                return
            try:
                verdicts = self.engine.observe_batch(
                    [r["account"] for r in pending],
                    [r["prompt"] for r in pending],
                    [r.get("ts") for r in pending],
                    _metas_or_none([r.get("meta") for r in pending]),  # lines written before meta have none
                )
            except BatchError as exc:
                log.warning("journal replay: %d records were rejected by the engine: %s", len(exc.errors), exc)
                verdicts = exc.verdicts
            if self.alerts is not None:  # transitions a kill kept out of the outbox (alerts module docstring)
                self.alerts.record(self.engine, verdicts, pending)
            pending.clear()

        marked = False  # journals written before 0.5.0 have no batch boundaries: chunks of REPLAY_CHUNK
        expected = self._repaired.skip(self.covered_seq + 1)
        try:
            records = list(self.journal.replay(self.covered_seq))
        except JournalDamaged as exc:
            raise StateDamagedError(f"{exc}; {repair_hint(self.config.data_path)}") from exc
        self.engine.auto_evict = False  # the journal's evict records say what memory pressure evicted, and when
        try:
            for record in records:
                if record["seq"] < expected:
                    # only two writers make this: the lock on data_dir keeps a second sidecar out
                    raise StateDamagedError(
                        f"journal record seq {record['seq']} appears twice (the journal had reached seq "
                        f"{expected - 1}): two processes wrote this data_dir; {repair_hint(self.config.data_path)} "
                        "(it keeps the first copy of each seq)"
                    )
                if record["seq"] != expected:
                    # a damaged or missing middle: what came between was acknowledged and is gone
                    raise StateDamagedError(
                        f"journal records {expected}-{record['seq'] - 1} are missing or unreadable (the newest "
                        f"readable snapshot covers seq {self.covered_seq}, the journal resumes at seq "
                        f"{record['seq']}); {repair_hint(self.config.data_path)}"
                    )
                expected = self._repaired.skip(expected + 1)
                count += 1
                op = record.get("op")
                if op == "forget":
                    flush()
                    self.engine.forget(record["account"])
                    if self.alerts is not None:
                        self.alerts.forget(record["account"])
                elif op == "evict":
                    flush()
                    self.engine.evict(record["accounts"])
                elif op == "benign":
                    flush()
                    self.engine.mark_benign(record["account"])
                else:
                    pending.append(record)
                    marked = marked or "batch_end" in record
                    if record.get("batch_end") or (not marked and len(pending) >= REPLAY_CHUNK):
                        flush()
            flush()
        finally:
            self.engine.auto_evict = True
        for first, path in self.journal.segments():
            if first > expected:  # a segment opens at the seq after the last one handed out
                raise StateDamagedError(
                    f"journal records {expected}-{first - 1} are missing: segment {path.name} starts at seq {first} "
                    f"but the snapshot (seq {self.covered_seq}) and the journal reach only seq {expected - 1}; "
                    f"{repair_hint(self.config.data_path)}"
                )
        self._since_snapshot = count
        return count

    # -- observing ------------------------------------------------------------------------
    def prepare_item(
        self, raw_account: Any, raw_prompt: Any, raw_ts: Any, received_at: float, raw_meta: Any = None
    ) -> Item:
        """Check one item; raises the error the caller should see for it (for ``raw_meta``,
        request metadata, an :class:`~probewatch.errors.InputError` naming the key).

        Prompt size rule: a prompt longer than ``max_prompt_chars`` is cut in its middle to
        its first and last ``max_prompt_chars / 2`` characters and marked ``truncated``
        (``prompt_overflow: truncate``), or rejected (``prompt_overflow: reject``). The
        embedding model reads 256 tokens of a prompt, from its opening and its end (~250 and
        ~750 characters), so truncation loses no signal.
        """
        account = check_account(raw_account)
        truncated = False
        if isinstance(raw_prompt, str) and len(raw_prompt) > self.config.max_prompt_chars:
            if self.config.prompt_overflow == "reject":
                raise InvalidPromptError(
                    f"a prompt must be at most {self.config.max_prompt_chars} characters (sidecar max_prompt_chars); "
                    f"got {len(raw_prompt)}; shorten it or set prompt_overflow: truncate"
                )
            raw_prompt = cut_middle(raw_prompt, self.config.max_prompt_chars)
            truncated = True
        prompt = check_prompt(raw_prompt, self.config.engine.max_prompt_chars)
        ts = check_timestamp(raw_ts)
        meta = check_meta(raw_meta)
        # A server receive time keeps time features meaningful and makes replay exact.
        return Item(account, prompt, received_at if ts is None else ts, truncated, meta)

    def has_room(self, n_items: int, reserved: bool = False) -> bool:
        """Whether ``n_items`` more fit in the queue; ``reserved`` callers (the guardrail route)
        may also use ``guardrail_reserved_capacity``, so bulk observation cannot starve them.

        Bulk callers are also refused while the oldest queued item has waited a quarter of the
        request deadline (an item queued behind it waits about as long again, plus its batch):
        a queue that drains slower than it fills would answer their items by the deadline
        fallback (often unobserved) instead of a 429 they can back off on, and would hold the
        guardrail's items behind them past their deadline."""
        capacity = self.config.queue_capacity + (self.config.guardrail_reserved_capacity if reserved else 0)
        if len(self._queue) + n_items > capacity:
            return False
        if reserved or not self._queue:
            return True
        waited = asyncio.get_running_loop().time() - self._queue[0].enqueued_at
        return waited < self.config.request_deadline_ms / 4000.0

    async def observe(self, items: list[Item], reserved: bool = False) -> list[Outcome]:
        """Verdicts for prepared items, answered within the request deadline whatever happens.

        ``reserved`` items (the guardrail route, a user waiting on each) go ahead of queued bulk
        items, behind earlier reserved ones: they make the next micro-batch."""
        loop = asyncio.get_running_loop()
        if not self.ready or self._closing:
            return [self._fallback(it, "not_ready") for it in items]
        if not self.has_room(len(items), reserved):
            return [self._fallback(it, "overloaded") for it in items]
        now = loop.time()
        ahead = 0
        if reserved:
            while ahead < len(self._queue) and self._queue[ahead].reserved:
                ahead += 1
        for it in items:
            it.future = loop.create_future()
            it.enqueued_at = now
            if reserved:
                it.reserved = True
                self._queue.insert(ahead, it)
                ahead += 1
            else:
                self._queue.append(it)
        self._wakeup.set()
        timeout = self.config.request_deadline_ms / 1000.0
        await asyncio.wait([it.future for it in items], timeout=timeout)
        outcomes = []
        for it in items:
            if it.future.done():
                outcomes.append(it.future.result())
            else:
                it.abandoned = True
                outcomes.append(self._fallback(it, "deadline"))
        return outcomes

    def _fallback(self, item: Item, cause: str) -> Outcome:
        closed = self.config.failure_policy == "closed"
        self.metrics.fallbacks.labels(cause).inc()
        verdict = unknown_verdict(item.account, flagged=closed)
        return Outcome(verdict=verdict, fallback=cause, queued=item.batched, truncated=item.truncated)

    async def _batch_loop(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._let_batch_fill()
            batch = self._take_batch()
            if batch:
                await self._run_batch(batch)

    async def _let_batch_fill(self) -> None:
        """Give concurrent requests max_wait_ms (from the first queued item) to join this batch,
        unless it is full already or the service is closing."""
        loop = asyncio.get_running_loop()
        max_wait = self.config.max_wait_ms / 1000.0
        if max_wait <= 0 or self._closing:
            return
        first = self._queue[0].enqueued_at
        while len(self._queue) < self.config.max_batch_size:
            left = first + max_wait - loop.time()
            if left <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except asyncio.TimeoutError:
                return

    def _take_batch(self) -> list[Item]:
        batch: list[Item] = []
        while self._queue and len(batch) < self.config.max_batch_size:
            it = self._queue.popleft()
            if it.abandoned:  # answered by the failure policy, never journaled: drop it
                continue
            it.batched = True
            batch.append(it)
        return batch

    async def _run_batch(self, batch: list[Item]) -> None:
        """Apply one micro-batch in the state thread and answer its callers."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        for it in batch:
            self.metrics.queue_wait.observe(started - it.enqueued_at)
        self.metrics.batch_size.observe(len(batch))
        try:
            outcomes = await loop.run_in_executor(self._state_executor, self._apply_batch, batch)
        except JournalFailure as exc:
            # Storage failed: nothing of this batch was journaled or applied, and nothing more
            # is acknowledged until a restart (the observe path answers 503, /readyz says why).
            self.ready = False
            self.load_error = f"storage failed, no longer acknowledging observations: {exc}"
            outcomes = [self._fallback(it, "journal_failed") for it in batch]
            for outcome in outcomes:
                outcome.queued = False
        except Exception as exc:  # answer every caller; the loop must survive
            log.exception("micro-batch of %d items failed in the engine", len(batch))
            outcomes = [self._fallback(it, "engine_error") for it in batch]
            for outcome in outcomes:
                outcome.extra["detail"] = f"{type(exc).__name__}: {exc}"
        if self.alerts is not None:
            self.alerts.notify()
        self.metrics.batch_latency.observe(loop.time() - started)
        for it, outcome in zip(batch, outcomes, strict=True):
            if not it.future.done():
                it.future.set_result(outcome)
        self._since_snapshot += len(batch)
        if self._since_snapshot >= self.config.snapshot_every_observations:
            self._request_snapshot()

    def _apply_batch(self, batch: list[Item]) -> list[Outcome]:
        """Runs in the state thread: journal first, then the engine. A record holds what the
        engine is given (prompt text, ts, meta when sent), so replay repeats it exactly.

        The journal's fsync (policy ``batch``) runs on the sync thread while this thread embeds
        the batch, which reads no account state; the engine's state takes the batch only once
        the fsync returned, so a failed fsync leaves it untouched (JournalFailure, as before)."""
        records = [_journal_record(it) for it in batch]
        # replay hands the engine the same batches: batched detection is exact only to float32
        # rounding, so other batch boundaries would give scores that differ in the last bits
        records[-1]["batch_end"] = True
        try:
            self.journal.append(records, sync=False)
        except UnwritableRecord:  # nothing was written: the items that can be go ahead without the others
            return self._apply_writable(batch, records)
        synced = self._sync_executor.submit(self.journal.sync_appended)
        try:
            embedded = self.engine.embed_batch(
                [it.account for it in batch],
                [it.prompt for it in batch],
                [it.ts for it in batch],
                _metas_or_none([it.meta for it in batch]),
            )
        except Exception:
            synced.result()  # a storage failure wins: the batch was never durable
            self._consistent = False  # journaled but not applied: keep the journal, skip snapshots
            raise
        synced.result()  # raises JournalFailure: nothing applied, nothing acknowledged
        try:
            verdicts = self.engine.observe_embedded(embedded)
            errors: dict[int, ProbewatchError] = {}
        except BatchError as exc:  # items were pre-checked, so this is rare (e.g. config drift)
            verdicts, errors = exc.verdicts, exc.errors
        except Exception:
            self._consistent = False  # journaled but not applied: keep the journal, skip snapshots
            raise
        if self.alerts is not None:  # durable before any caller of the batch is answered
            self.alerts.record(self.engine, verdicts, records)
        self._journal_evictions()
        outcomes = []
        for i, it in enumerate(batch):
            if i in errors:
                outcomes.append(Outcome(error=errors[i], queued=True, truncated=it.truncated))
            else:
                outcomes.append(Outcome(verdict=verdicts[i].to_dict(), queued=True, truncated=it.truncated))
        return outcomes

    def _apply_writable(self, batch: list[Item], records: list[dict[str, Any]]) -> list[Outcome]:
        """Apply the items whose records can be journaled; each other item gets its own error.
        Checked items should never get here (their text is valid Unicode): a last guard, so one
        bad item never fails the callers batched with it, nor leaves a gap in the journal."""
        problems = {i: unwritable(record) for i, record in enumerate(records)}
        keep = [i for i, problem in problems.items() if problem is None]
        outcomes: dict[int, Outcome] = {}
        if keep:
            for i, outcome in zip(keep, self._apply_batch([batch[i] for i in keep]), strict=True):
                outcomes[i] = outcome
        for i, problem in problems.items():
            if problem is not None:
                log.warning("item %d of a micro-batch cannot be journaled and was not observed: %s", i, problem)
                error = InputError(f"the item cannot be stored (it was not observed): {problem}")
                outcomes[i] = Outcome(error=error, queued=False, truncated=batch[i].truncated)
        return [outcomes[i] for i in range(len(batch))]

    def _journal_evictions(self) -> None:
        """After the batch whose records are journaled: the accounts its memory budget evicted,
        so replay evicts the same ones at the same point (and keeps the same records)."""
        evicted = self.engine.take_evicted()
        if not evicted:
            return
        try:
            self.journal.append([{"op": "evict", "accounts": evicted}])
        except JournalFailure:
            # The batch itself is durable and answered; replay would keep these accounts resident
            # (more state, never less). _run_batch sees journal.failed and stops acknowledging.
            log.error("journaling the eviction of %d accounts failed; the service stops acknowledging", len(evicted))

    # -- other state changes and reads ----------------------------------------------------------
    async def forget(self, account: str) -> bool:
        check_account(account)
        loop = asyncio.get_running_loop()
        try:
            existed = await loop.run_in_executor(self._state_executor, self._forget_job, account)
        except JournalFailure as exc:
            raise StorageFailedError(f"the account was not forgotten: {exc}") from exc
        if existed and self.config.snapshot_after_forget:
            # The journal still holds the account's prompts until the next snapshot drops it.
            # One snapshot serves every forget of a burst; an unknown id has nothing to drop.
            self._schedule_forget_snapshot()
        return existed

    def _schedule_forget_snapshot(self) -> None:
        if self._closing or self._forget_snapshot is not None:
            return

        async def after_a_moment() -> None:
            await asyncio.sleep(FORGET_SNAPSHOT_DELAY_S)
            self._forget_snapshot = None  # forgets from now on need the next one
            await asyncio.get_running_loop().run_in_executor(self._state_executor, self._snapshot_job, "forget")

        self._forget_snapshot = asyncio.create_task(after_a_moment(), name="probewatch-forget-snapshot")
        self._forget_snapshot.add_done_callback(_log_failure)

    def _forget_job(self, account: str) -> bool:
        self.journal.append([{"op": "forget", "account": account}])
        if self.alerts is not None:  # seen again, it starts at ok and alerts again when it rises
            self.alerts.forget(account)
        return self.engine.forget(account)

    async def mark_benign(self, account: str) -> bool:
        """An analyst vouches for ``account`` (journaled, then applied, like a forget); False
        when it is not held, and then nothing is journaled."""
        check_account(account)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._state_executor, self._mark_benign_job, account
            )
        except JournalFailure as exc:
            raise StorageFailedError(f"the account was not marked benign: {exc}") from exc

    def _mark_benign_job(self, account: str) -> bool:
        if account not in self.engine.pipeline.states:
            return False
        self.journal.append([{"op": "benign", "account": account}])
        return self.engine.mark_benign(account)

    async def report(self, account: str) -> dict[str, Any]:
        report = await asyncio.get_running_loop().run_in_executor(None, self.engine.report, account)
        return report.to_dict()

    async def standing_level(self, account: str) -> str | None:
        """The account's level now (``ok``, ``watch``, ``flag``); None for one the engine does not hold."""
        try:
            return (await self.report(account))["level"]
        except ProbewatchError:  # unknown, or an id the engine refuses
            return None

    async def accounts(self, level: str | None) -> list[str]:
        return await asyncio.get_running_loop().run_in_executor(None, self.engine.accounts, level)

    async def campaign(self, campaign_id: str) -> dict[str, Any]:
        """``CampaignReport.to_dict()``; :class:`~probewatch.errors.UnknownCampaignError` if none has the id."""
        report = await asyncio.get_running_loop().run_in_executor(None, self.engine.campaign, campaign_id)
        return report.to_dict()

    async def campaign_page(
        self, level: str | None, after: str | None, size: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Summaries of the campaigns at ``level`` (any when None) with ids after ``after``, in
        id order, at most ``size``; and the cursor of the next page (None on the last page)."""
        return await asyncio.get_running_loop().run_in_executor(None, self._campaign_page, level, after, size)

    def _campaign_page(
        self, level: str | None, after: str | None, size: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        reports, next_after = self.engine.campaign_page(level, after, size)
        return [campaign_summary(report.to_dict()) for report in reports], next_after

    def _stats_for_metrics(self) -> EngineStats | None:
        return self.engine.stats() if self.ready and self.engine is not None else None

    def _campaign_stats_for_metrics(self) -> CampaignStats | None:
        return self.engine.campaign_stats() if self.ready and self.engine is not None else None

    # -- snapshots ---------------------------------------------------------------------------------
    def _request_snapshot(self) -> None:
        if self._closing:
            return
        self._since_snapshot = 0
        asyncio.get_running_loop().run_in_executor(self._state_executor, self._snapshot_job, "threshold")

    async def _snapshot_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(self.config.snapshot_interval_s, 5.0))
            due = time.monotonic() - self._last_snapshot_at >= self.config.snapshot_interval_s
            if due and self.journal.last_seq > self.covered_seq:
                self._since_snapshot = 0
                await loop.run_in_executor(self._state_executor, self._snapshot_job, "interval")

    def _snapshot_job(self, reason: str) -> None:
        """Runs in the state thread, so no batch is half-applied while it runs."""
        seq = self.journal.last_seq
        self._last_snapshot_at = time.monotonic()
        if not self._consistent:
            log.error(
                "skipping the %s snapshot: an engine failure left journaled records unapplied; "
                "restart the service to replay them",
                reason,
            )
            self.metrics.snapshots.labels("skipped").inc()
            return
        if seq <= self.covered_seq and reason != "shutdown":
            return
        if self.alerts is not None and self.alerts.failed is not None:
            # a snapshot would cover transitions whose alerts were lost; the replay at restart recreates them
            log.error("skipping the %s snapshot: the alert outbox failed (%s)", reason, self.alerts.failed)
            self.metrics.snapshots.labels("skipped").inc()
            return
        if self.journal.failed is not None:
            log.error("skipping the %s snapshot: the storage failed (%s)", reason, self.journal.failed)
            self.metrics.snapshots.labels("skipped").inc()
            return
        started = time.perf_counter()
        path = self.snapshot_dir / snapshot_name(seq)
        try:
            if seq > self.covered_seq or not path.exists():
                self.engine.save(path)
        except Exception:  # the journal still holds everything; try again next time
            log.exception("writing snapshot %s failed; the journal is kept", path.name)
            self.metrics.snapshots.labels("failed").inc()
            return
        self.covered_seq = seq
        # After a forget, older snapshots and journal segments still hold the forgotten
        # prompts: once the new snapshot reads back whole, it alone is kept.
        keep = 1 if reason == "forget" and self._reads_back(path) else self.config.snapshot_keep
        try:
            dropped = self._prune_after_snapshot(keep)
        except JournalFailure as exc:  # the journal could not start its next segment: unready now
            self.ready = False
            self.load_error = f"storage failed, no longer acknowledging observations: {exc}"
            return
        self.metrics.snapshots.labels("written").inc()
        self.metrics.snapshot_latency.observe(time.perf_counter() - started)
        log.info(
            "snapshot %s written (%s, %.2fs, %d journal segments dropped)",
            path.name,
            reason,
            time.perf_counter() - started,
            dropped,
        )

    def _reads_back(self, path: Path) -> bool:
        try:
            read_snapshot(path)
        except SnapshotError as exc:
            log.error("snapshot %s does not read back (%s); older snapshots and the journal are kept", path.name, exc)
            return False
        return True

    def _prune_after_snapshot(self, keep: int) -> int:
        """Start a new journal segment, delete snapshots beyond the newest ``keep`` and the
        journal segments every kept snapshot covers; returns how many segments were dropped."""
        self.journal.rotate()
        kept = sorted(self._snapshots(), reverse=True)
        for _, old in kept[keep:]:
            old.unlink(missing_ok=True)
        fsync_dir(self.snapshot_dir)
        # Keep journal records newer than the oldest snapshot we still hold, in case the
        # newest one turns out unreadable at the next start.
        oldest_kept = min(s for s, _ in kept[:keep])
        return self.journal.drop_through(oldest_kept)


def verdict_action(verdict: dict[str, Any]) -> str:
    return "BLOCKED" if verdict.get("flagged") else "NONE"


# What GET /v1/campaigns lists of each campaign: the report without its member ids and
# per-indicator details (GET /v1/campaigns/{id} has them).
SUMMARY_KEYS = (
    "id", "level", "risk", "score", "size", "queries", "indicator_kinds", "reasons", "first_ts", "last_ts",
    "flagged_at_queries",
)  # fmt: skip


def campaign_summary(report: dict[str, Any]) -> dict[str, Any]:
    """A campaign's list entry from its ``CampaignReport.to_dict()``."""
    kinds = list(dict.fromkeys(indicator["kind"] for indicator in report["indicators"]))
    return {key: kinds if key == "indicator_kinds" else report[key] for key in SUMMARY_KEYS}


def unknown_verdict(account: str, flagged: bool = False) -> dict[str, Any]:
    """The verdict shape for an item nothing judged (a fallback, or an account not seen yet):
    level ``unknown``, ``flagged`` as the failure policy says."""
    return {
        "account": account,
        "level": "unknown",
        "flagged": flagged,
        "risk": None,
        "n_queries": None,
        "score": None,
        "peak_risk": None,
        "one_in": None,
        "peak_one_in": None,
        "reasons": [],
        "campaign": None,
        "repeat": False,
    }


def _journal_record(item: Item) -> dict[str, Any]:
    record: dict[str, Any] = {"op": "observe", "account": item.account, "prompt": item.prompt, "ts": item.ts}
    if item.meta is not None:  # absent, not null: lines without meta read as they always did
        record["meta"] = item.meta
    return record


def _metas_or_none(metas: list[dict[str, str] | None]) -> list[dict[str, str] | None] | None:
    """The batch's metas, or None when no item has any (the engine then skips them)."""
    return metas if any(meta is not None for meta in metas) else None
