"""Storage faults under the journal: a failed write or fsync stops acknowledging, never glues a
later record to a partial line, and the service says so (503, /readyz) until it restarts."""

from __future__ import annotations

import asyncio
import errno
import os

import pytest

from probewatch.serve import ServerConfig
from probewatch.serve.journal import Journal, JournalFailure, UnwritableRecord, _format_line
from probewatch.serve.service import ObservationService
from tests.support import TOKEN


class FullDisk:
    """A raw file that takes ``room`` more bytes, then fails with ENOSPC (after a short write)."""

    def __init__(self, inner, room: int):
        self.inner, self.room = inner, room

    def write(self, data) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = self.inner.write(bytes(data[: self.room]))
        self.room -= n
        return n

    def __getattr__(self, name):
        return getattr(self.inner, name)


def records(n: int, start: int = 0) -> list[dict]:
    return [{"op": "observe", "account": f"a{i}", "prompt": f"prompt {i}", "ts": 1.0} for i in range(start, start + n)]


def test_a_full_disk_stops_the_journal_and_replay_keeps_every_acknowledged_record(tmp_path):
    journal = Journal(tmp_path, "batch")
    journal.open(1)
    assert journal.append(records(3)) == 3  # acknowledged
    journal._fh = FullDisk(journal._fh, room=40)  # the next batch is cut mid-line
    with pytest.raises(JournalFailure, match="No space left"):
        journal.append(records(3, start=3))
    assert journal.failed and journal.last_seq == 3
    journal._fh.room = 10**6  # space is freed: the journal still refuses (no record glued to the cut line)
    with pytest.raises(JournalFailure, match="restart after fixing the storage"):
        journal.append(records(1, start=6))
    journal.close()
    again = Journal(tmp_path, "batch")
    assert [r["seq"] for r in again.replay(0)] == [1, 2, 3]
    assert [r["account"] for r in again.replay(0)] == ["a0", "a1", "a2"]


@pytest.mark.parametrize("policy", ["batch", "always", "interval", "never"])
def test_whole_lines_of_a_failed_batch_do_not_come_back(tmp_path, policy):
    """The disk fills after two whole lines of a three-record batch: the batch is answered
    "not observed", so the start after the storage is fixed must not replay those two lines
    (clients that resent them were counted twice)."""
    journal = Journal(tmp_path, policy)
    journal.open(1)
    journal.append(records(2))
    acknowledged = sum(p.stat().st_size for _, p in journal.segments())
    line = len(_format_line({**records(1, start=2)[0], "seq": 3}))
    journal._fh = FullDisk(journal._fh, room=2 * line + 10)
    with pytest.raises(JournalFailure, match="No space left"):
        journal.append(records(3, start=2))
    assert journal.last_seq == 2
    assert sum(p.stat().st_size for _, p in journal.segments()) == acknowledged
    journal.close()
    assert [r["account"] for r in Journal(tmp_path, policy).replay(0)] == ["a0", "a1"]


def test_a_failed_fsync_is_fatal(tmp_path, monkeypatch):
    journal = Journal(tmp_path, "batch")
    journal.open(1)
    journal.append(records(2))
    size = sum(p.stat().st_size for _, p in journal.segments())

    def eio(_fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(JournalFailure, match="Input/output error"):
        journal.append(records(1, start=2))
    monkeypatch.undo()
    written = sum(p.stat().st_size for _, p in journal.segments())
    assert written == size  # the record whose fsync failed was cut back out: it was never acknowledged
    with pytest.raises(JournalFailure):  # never written to again, even though fsync works now
        journal.append(records(1, start=3))
    assert sum(p.stat().st_size for _, p in journal.segments()) == written
    assert [r["seq"] for r in Journal(tmp_path, "batch").replay(0)] == [1, 2]
    with pytest.raises(JournalFailure):
        journal.rotate()


def test_the_service_stops_acknowledging_and_reports_why(tmp_path, text_engine_factory):
    config = ServerConfig(data_dir=str(tmp_path), api_token=TOKEN, engine={"device": "cpu"})
    service = ObservationService(config, engine=text_engine_factory(device="cpu"))

    async def scenario():
        await service.start()
        assert service.ready
        first = service.prepare_item("alice", "How do I repot a cactus?", None, 1.7e9, None)
        (ok,) = await service.observe([first])
        assert ok.fallback is None and ok.verdict["n_queries"] == 1
        service.journal._fh = FullDisk(service.journal._fh, room=0)
        second = service.prepare_item("alice", "And how often should I water it?", None, 1.7e9, None)
        (failed,) = await service.observe([second])
        assert failed.fallback == "journal_failed" and failed.queued is False  # told: not observed
        assert not service.ready and "storage failed" in service.load_error
        third = service.prepare_item("bob", "Hello?", None, 1.7e9, None)
        (refused,) = await service.observe([third])
        assert refused.fallback == "not_ready"
        assert service.engine.report("alice").n_queries == 1  # the failed item was never applied
        await service.stop()

    asyncio.run(scenario())


def test_a_forget_the_journal_cannot_record_is_a_503_and_readiness_drops_at_once(tmp_path, text_engine_factory):
    """A forget or a known-benign mark whose journal write fails was a 500 while /readyz stayed
    200 (only an observe batch looked at the journal afterwards)."""
    from probewatch.serve.service import StorageFailedError

    config = ServerConfig(data_dir=str(tmp_path), api_token=TOKEN, engine={"device": "cpu"})
    service = ObservationService(config, engine=text_engine_factory(device="cpu"))

    async def scenario():
        await service.start()
        (ok,) = await service.observe([service.prepare_item("alice", "How do I repot a cactus?", None, 1.7e9, None)])
        assert ok.fallback is None and service.ready
        service.journal._fh = FullDisk(service.journal._fh, room=0)
        with pytest.raises(StorageFailedError, match="not forgotten"):
            await service.forget("alice")
        assert not service.ready and "storage failed" in service.load_error
        assert service.engine.report("alice").n_queries == 1  # the forget was not applied either
        with pytest.raises(StorageFailedError, match="not marked benign"):
            await service.mark_benign("alice")
        await service.stop()

    asyncio.run(scenario())


def test_a_record_that_cannot_be_encoded_takes_no_seq(tmp_path):
    """A seq taken by a record that was never written is a gap, and a gap stops the next start."""
    journal = Journal(tmp_path, "batch")
    journal.open(1)
    journal.append(records(2))
    bad = records(3, start=2)
    bad[1]["prompt"] = "half a pair \ud800"  # a lone surrogate: no UTF-8 for it
    with pytest.raises(UnwritableRecord, match="none was"):
        journal.append(bad)
    assert journal.failed is None and journal.last_seq == 2
    assert all("seq" not in record for record in bad)
    assert journal.append(records(1, start=5)) == 3
    journal.close()
    again = Journal(tmp_path, "batch")
    assert [(r["seq"], r["account"]) for r in again.replay(0)] == [(1, "a0"), (2, "a1"), (3, "a5")]


def test_an_item_that_cannot_be_journaled_fails_alone(tmp_path, text_engine_factory):
    """Checked items never hold such text; if one did, the callers batched with it are still observed
    and the journal keeps no gap."""
    config = ServerConfig(data_dir=str(tmp_path), api_token=TOKEN, engine={"device": "cpu"})
    service = ObservationService(config, engine=text_engine_factory(device="cpu"))

    async def scenario():
        await service.start()
        items = [service.prepare_item(a, f"How do I grow {a}?", None, 1.7e9, None) for a in ("basil", "mint", "sage")]
        items[1].prompt = "How do I grow mint? \udc80"  # past the checks, as a bug would leave it
        outcomes = await service.observe(items)
        assert [o.verdict["n_queries"] if o.verdict else None for o in outcomes] == [1, None, 1]
        assert outcomes[1].error is not None and "cannot be stored" in str(outcomes[1].error)
        assert outcomes[1].queued is False and outcomes[1].fallback is None
        assert service.ready and service.journal.last_seq == 2
        assert [(r["seq"], r["account"]) for r in service.journal.replay(0)] == [(1, "basil"), (2, "sage")]
        await service.stop()

    asyncio.run(scenario())


def _run(config, engine_factory, steps):
    service = ObservationService(config, engine=None)

    async def scenario():
        await service.start()
        result = await steps(service)
        await service.stop()
        return result

    return service, asyncio.run(scenario())


def test_damaged_state_keeps_the_service_unready_instead_of_serving_part_of_it(tmp_path, text_engine_factory):
    config = ServerConfig(
        data_dir=str(tmp_path), api_token=TOKEN, engine={"device": "cpu"}, snapshot_every_observations=2
    )

    async def observe_five(service):
        assert service.ready, service.load_error
        for i in range(5):  # snapshots every 2 observations: several segments and snapshots
            item = service.prepare_item(f"acct-{i % 2}", f"question number {i}?", None, 1.7e9 + i, None)
            (outcome,) = await service.observe([item])
            assert outcome.fallback is None
            await asyncio.sleep(0.3)  # let the threshold snapshot run between items

    async def nothing(service):
        return service.ready

    _run(config, text_engine_factory, observe_five)
    partial = tmp_path / "snapshots" / ".snapshot-000000000009.npz.x1y2.tmp"  # what a kill mid-snapshot leaves
    partial.write_bytes(b"half a snapshot")
    service, ready = _run(config, text_engine_factory, nothing)
    assert ready and service.engine.stats().observations == 5  # intact: restored whole
    assert not partial.exists()  # the unfinished write is cleared, not left to fill the disk

    snapshots = sorted((tmp_path / "snapshots").iterdir())
    saved = {p: p.read_bytes() for p in snapshots}
    for p in snapshots:  # every snapshot zero-filled
        p.write_bytes(b"\0" * len(saved[p]))
    service, ready = _run(config, text_engine_factory, nothing)
    assert not ready and "none of the" in service.load_error and "snapshots" in service.load_error
    for p, data in saved.items():
        p.write_bytes(data)


def test_a_damaged_middle_of_the_journal_keeps_the_service_unready(tmp_path, text_engine_factory):
    config = ServerConfig(data_dir=str(tmp_path), api_token=TOKEN, engine={"device": "cpu"})

    async def observe_then_crash(service):
        for i in range(5):
            item = service.prepare_item("acct", f"question number {i}?", None, 1.7e9 + i, None)
            assert (await service.observe([item]))[0].fallback is None
        service.ready = False  # as after a crash: no shutdown snapshot, the journal holds 1-5

    async def nothing(service):
        return service.ready

    _run(config, text_engine_factory, observe_then_crash)
    (segment,) = [p for p in (tmp_path / "journal").iterdir() if p.stat().st_size]
    lines = segment.read_bytes().split(b"\n")
    assert len([x for x in lines if x]) == 5
    damaged = list(lines)
    damaged[2] = b"x" * len(lines[2])  # one byte pattern over record 3
    segment.write_bytes(b"\n".join(damaged))
    service, ready = _run(config, text_engine_factory, nothing)
    assert not ready and "line 3 is damaged" in service.load_error
    # one flipped byte in an account name: the checksum catches what JSON would read happily
    flipped = list(lines)
    flipped[1] = lines[1].replace(b'"acct"', b'"acca"')
    assert flipped[1] != lines[1]
    segment.write_bytes(b"\n".join(flipped))
    service, ready = _run(config, text_engine_factory, nothing)
    assert not ready and "line 2 is damaged" in service.load_error
    # so is a damaged last complete line (it was acknowledged)
    segment.write_bytes(b"\n".join([*lines[:4], lines[4].replace(b"question", b"qvestion"), b""]))
    service, ready = _run(config, text_engine_factory, nothing)
    assert not ready and "line 5 is damaged" in service.load_error
    # a torn tail is different: never acknowledged, cut and reported, and the service starts
    segment.write_bytes(b"\n".join(lines[:4]) + b"\n" + lines[4][:10])
    service, ready = _run(config, text_engine_factory, nothing)
    assert ready and service.engine.report("acct").n_queries == 4
