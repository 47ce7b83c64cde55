"""The sidecar's journal fsync (policy ``batch``) runs on its own thread while the state thread
embeds the batch; the engine's state takes the batch only after the fsync returned, and a
failed fsync is answered exactly as before (``journal_failed``, unready, nothing applied)."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time

import pytest

from probewatch.serve import ServerConfig
from probewatch.serve.journal import Journal, JournalFailure
from probewatch.serve.service import ObservationService
from tests.faultfs import Fault, FaultyDisk
from tests.support import TOKEN

pytestmark = pytest.mark.timeout(180)

SLOW_S = 0.3  # how long the slowed fsync and the slowed embedding each take


def records(n: int, start: int = 0) -> list[dict]:
    return [{"op": "observe", "account": f"a{i}", "prompt": f"prompt {i}", "ts": 1.0} for i in range(start, start + n)]


def make_service(tmp_path, text_engine_factory) -> ObservationService:
    config = ServerConfig(data_dir=str(tmp_path), api_token=TOKEN, engine={"device": "cpu"}, max_wait_ms=0)
    return ObservationService(config, engine=text_engine_factory(device="cpu"))


# -- the journal on its own ----------------------------------------------------------------------


def test_records_appended_without_sync_are_durable_after_sync_appended(tmp_path, monkeypatch):
    journal = Journal(tmp_path, "batch")
    journal.open(1)
    fsynced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd)))
    assert journal.append(records(2), sync=False) == 2
    assert fsynced == []  # written, not yet synced
    journal.sync_appended()
    assert len(fsynced) == 1
    journal.sync_appended()  # nothing waits: no second fsync
    assert len(fsynced) == 1
    journal.close()
    assert [r["seq"] for r in Journal(tmp_path, "batch").replay(0)] == [1, 2]


def test_a_failed_sync_appended_is_fatal_and_acknowledges_none_of_the_records(tmp_path, monkeypatch):
    journal = Journal(tmp_path, "batch")
    journal.open(1)
    journal.append(records(2))  # durable and acknowledged
    journal.append(records(3, start=2), sync=False)
    assert journal.last_seq == 5

    def eio(_fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(JournalFailure, match=r"syncing records 3-5 failed.*Input/output error"):
        journal.sync_appended()
    monkeypatch.undo()
    assert journal.failed and journal.last_seq == 2  # rolled back to before the unsynced records
    with pytest.raises(JournalFailure):  # never written to again, even though fsync works now
        journal.append(records(1, start=5))


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_other_policies_ignore_sync_false(tmp_path, monkeypatch, policy):
    journal = Journal(tmp_path, policy, fsync_interval_s=60)
    journal.open(1)
    fsynced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd)))
    journal.append(records(2), sync=False)
    assert len(fsynced) == (2 if policy == "always" else 0)  # always: one per record, as before
    journal.sync_appended()  # nothing waits for it
    assert len(fsynced) == (2 if policy == "always" else 0)
    monkeypatch.undo()
    journal.close()


# -- the sidecar ------------------------------------------------------------------------------------


def test_the_fsync_and_the_embedding_overlap(tmp_path, text_engine_factory, monkeypatch):
    service = make_service(tmp_path, text_engine_factory)
    spans: dict[str, list[tuple[float, float]]] = {"fsync": [], "embed": []}
    real_fsync = os.fsync
    slowed = threading.Event()  # only once warm: the start (snapshot-0, segment) stays fast

    def slow_fsync(fd):
        journal_file = service.journal._fh
        if slowed.is_set() and journal_file is not None and fd == journal_file.fileno():
            started = time.perf_counter()
            time.sleep(SLOW_S)
            real_fsync(fd)
            spans["fsync"].append((started, time.perf_counter()))
            return None
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    engine = service.engine
    real_encode = engine.embedder.encode_device

    def slow_encode(texts):
        started = time.perf_counter()
        if slowed.is_set():
            time.sleep(SLOW_S)
        vectors = real_encode(texts)
        spans["embed"].append((started, time.perf_counter()))
        return vectors

    monkeypatch.setattr(engine.embedder, "encode_device", slow_encode)

    async def scenario() -> list[float]:
        await service.start()
        assert service.ready, service.load_error
        warm = service.prepare_item("warm", "a first question", None, 1.7e9, None)
        assert (await service.observe([warm]))[0].fallback is None
        slowed.set()
        took = []
        for i in range(3):
            item = service.prepare_item("alice", f"How do I repot cactus number {i}?", None, 1.7e9 + i, None)
            started = time.perf_counter()
            (outcome,) = await service.observe([item])
            took.append(time.perf_counter() - started)
            assert outcome.fallback is None and outcome.verdict["n_queries"] == i + 1
        slowed.clear()
        await service.stop()
        return took

    took = asyncio.run(scenario())
    fsyncs, embeds = spans["fsync"], spans["embed"][-3:]
    assert len(fsyncs) >= 3
    for (sync_start, sync_end), (embed_start, embed_end) in zip(fsyncs[:3], embeds, strict=True):
        assert min(sync_end, embed_end) - max(sync_start, embed_start) > SLOW_S / 2  # they ran at the same time
    # serially a batch would take >= 2 * SLOW_S; overlapped it takes about SLOW_S
    assert min(took) < 1.6 * SLOW_S, took


def test_a_failed_fsync_during_the_embedding_applies_and_acknowledges_nothing(
    tmp_path, text_engine_factory, monkeypatch
):
    data_dir = tmp_path / "data"
    service = make_service(data_dir, text_engine_factory)
    disk = FaultyDisk(data_dir, seed=3).install(monkeypatch)
    embedded = []
    engine = service.engine
    real_encode = engine.embedder.encode_device
    monkeypatch.setattr(engine.embedder, "encode_device", lambda texts: (embedded.append(texts), real_encode(texts))[1])

    async def scenario() -> None:
        await service.start()
        assert service.ready, service.load_error
        first = service.prepare_item("alice", "How do I repot a cactus?", None, 1.7e9, None)
        (ok,) = await service.observe([first])
        assert ok.fallback is None and ok.verdict["n_queries"] == 1
        acknowledged_seq = service.journal.last_seq
        observations = engine.stats().observations

        disk.arm(Fault("eio", "journal", site="sync_appended"))
        embedded.clear()
        items = [
            service.prepare_item("alice", "And how often should I water it?", None, 1.7e9 + 1, None),
            service.prepare_item("bob", "What soil suits a cactus?", None, 1.7e9 + 2, None),
        ]
        failed = await service.observe(items)
        assert embedded, "the batch was embedded while its fsync ran"
        assert disk.total_injected == 1
        for outcome in failed:
            assert outcome.fallback == "journal_failed" and outcome.queued is False
            assert outcome.verdict["level"] == "unknown"  # no verdict of the engine reached the caller
        assert not service.ready and "storage failed" in service.load_error
        assert "syncing records" in service.load_error
        assert engine.report("alice").n_queries == 1  # the engine's state never took the batch
        assert "bob" not in engine.accounts() and engine.stats().observations == observations
        assert service.journal.last_seq == acknowledged_seq  # its records were not acknowledged
        (refused,) = await service.observe([service.prepare_item("carol", "Hello?", None, 1.7e9 + 3, None)])
        assert refused.fallback == "not_ready"
        disk.disarm()
        await service.stop()

    asyncio.run(scenario())
    assert disk.writes_after_failed_fsync == []
