"""Fault injection under the sidecar's state: every acknowledged observation is present after a
restart, or the service refuses to become ready and says why; it never starts ready with less.

1. Storage faults (tests/faultfs.py): short writes, ENOSPC, EIO on fsync, under the journal, the
   snapshots, or both. Each run restarts on what a process exit leaves and on what a power cut
   would leave, then keeps acknowledging and restarts once more.
2. Damaged files: truncation and bit flips at the header, middle and tail of journal segments
   and snapshots; a missing middle segment; no snapshots left beside a journal.
3. SIGKILL of a real sidecar at random points while it writes, snapshots and prunes.

Acknowledged means answered with a verdict (no fallback, no error). The module prints its
counts at the end (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import probewatch.engine
from probewatch.serve import ServerConfig
from probewatch.serve.service import ObservationService
from tests.faultfs import Fault, FaultyDisk
from tests.support import TOKEN, SidecarProcess, httpx

pytestmark = pytest.mark.timeout(300)

ACCOUNTS = [f"acct-{name}" for name in ("ash", "birch", "cedar", "dogwood", "elm", "fir")]
TOPICS = ("tides near estuaries", "repotting a cactus", "sourdough starters", "bridge cables", "moth wings")
TALLY: Counter = Counter()


@pytest.fixture(scope="module", autouse=True)
def print_tally():
    yield
    print("\nfault-injection counts:")
    for key in sorted(TALLY):
        print(f"  {key}: {TALLY[key]}")


@pytest.fixture(autouse=True)
def shared_model(monkeypatch, embedder):
    """In-process services use the session's copy of the real model: loading it again for
    every start is not what these tests are about."""
    monkeypatch.setattr(probewatch.engine, "Embedder", lambda *args, **kwargs: embedder)


@dataclass
class Ledger:
    """What the client sent (attempted) and what it was answered with a verdict (acked)."""

    acked: Counter = field(default_factory=Counter)
    attempted: Counter = field(default_factory=Counter)
    acked_after_refusal: int = 0  # items acknowledged after the service answered journal_failed
    refused: bool = False

    def copy(self) -> Ledger:
        return Ledger(Counter(self.acked), Counter(self.attempted), self.acked_after_refusal, self.refused)


@dataclass
class Start:
    ready: bool
    load_error: str | None
    counts: dict[str, int]  # account -> n_queries in the restored engine
    journal_seq: int = 0


def traffic(seed: int, n_batches: int, sizes=(1, 3)) -> list[list[tuple[str, str]]]:
    rng = random.Random(seed)
    batches = []
    for b in range(n_batches):
        size = rng.randint(*sizes)
        batches.append(
            [
                (rng.choice(ACCOUNTS), f"batch {seed}.{b} item {i}: how do {rng.choice(TOPICS)} work?")
                for i in range(size)
            ]
        )
    return batches


def make_config(data_dir: Path, **settings) -> ServerConfig:
    base = {"journal_fsync": "batch", "snapshot_every_observations": 3, "request_deadline_ms": 60000}
    return ServerConfig(data_dir=str(data_dir), api_token=TOKEN, engine={"device": "cpu"}, **{**base, **settings})


async def send(service: ObservationService, batch: list[tuple[str, str]], ledger: Ledger, ts: float = 1.7e9) -> None:
    items = [service.prepare_item(account, prompt, None, ts, None) for account, prompt in batch]
    outcomes = await service.observe(items)
    for (account, _), outcome in zip(batch, outcomes, strict=True):
        ledger.attempted[account] += 1
        if outcome.fallback is None and outcome.error is None:
            ledger.acked[account] += 1
            ledger.acked_after_refusal += ledger.refused
        elif outcome.fallback == "journal_failed":
            ledger.refused = True


async def settle(service: ObservationService) -> None:
    """Wait until the state thread has run everything queued (a batch's snapshot included), so
    the order of writes and fsyncs, and so where a fault lands, is the same on every run."""
    await asyncio.get_running_loop().run_in_executor(service._state_executor, lambda: None)


async def crash(service: ObservationService) -> None:
    """Stop as a killed process would leave the directory: no shutdown snapshot."""
    service.ready = False
    await service.stop()


def start_on(data_dir: Path, more: list[list[tuple[str, str]]] = (), ledger: Ledger | None = None, **settings) -> Start:
    """Start a fresh service on ``data_dir``, read every account's count, send the batches of
    ``more`` (recorded in ``ledger``), and stop it as a crash would."""

    async def go() -> Start:
        service = ObservationService(make_config(data_dir, **settings))
        await service.start()
        if not service.ready:
            await service.stop()
            return Start(False, service.load_error, {})
        counts = {a: service.engine.report(a).n_queries for a in service.engine.accounts()}
        seq = service.journal.last_seq
        for batch in more:
            await send(service, batch, ledger)
            await settle(service)
        await crash(service)
        return Start(True, None, counts, seq)

    return asyncio.run(go())


def check(start: Start, ledger: Ledger, what: str, *, may_refuse: bool) -> None:
    """Every acknowledged observation present and none beyond what was sent, or a refusal that
    says why; counted in TALLY."""
    TALLY["restarts checked"] += 1
    if not start.ready:
        TALLY["restarts that refused to become ready (with a reason)"] += 1
        assert may_refuse, f"{what}: refused to start though the acknowledged state is intact: {start.load_error}"
        message = (start.load_error or "").lower()
        assert "journal" in message or "snapshot" in message, f"{what}: the refusal does not say why: {message!r}"
        return
    lost = {a: n - start.counts.get(a, 0) for a, n in ledger.acked.items() if start.counts.get(a, 0) < n}
    foreign = {a: n for a, n in start.counts.items() if n > ledger.attempted[a]}
    TALLY["acknowledged observations checked"] += sum(ledger.acked.values())
    TALLY["acknowledged observations lost"] += sum(lost.values())
    TALLY["observations misattributed (more than sent)"] += sum(foreign.values())
    TALLY["starts ready with less than acknowledged"] += bool(lost)
    TALLY["observations sent but not acknowledged, present after the restart"] += sum(
        max(0, start.counts.get(a, 0) - ledger.acked[a]) for a in ledger.attempted
    )
    assert not lost, f"{what}: ready but lost acknowledged observations {lost} (acked {dict(ledger.acked)})"
    assert not foreign, f"{what}: accounts hold more than was sent: {foreign} (sent {dict(ledger.attempted)})"


def test_the_fault_layer_keeps_only_what_was_made_durable(tmp_path, monkeypatch):
    """The power-cut model the storage tests rely on, checked on plain files."""
    root = tmp_path / "data"
    (root / "journal").mkdir(parents=True)
    disk = FaultyDisk(root).install(monkeypatch)
    folder = os.open(root / "journal", os.O_RDONLY)
    try:
        with open(root / "journal" / "a", "ab", buffering=0) as fh:
            os.fsync(folder)  # the name "a" is durable from here
            fh.write(b"synced\n")
            os.fsync(fh.fileno())
            fh.write(b"not synced\n")
        with open(root / "journal" / "b", "ab", buffering=0) as fh:  # its folder never fsynced after
            fh.write(b"orphan\n")
            os.fsync(fh.fileno())
        disk.arm(Fault("eio", "journal"))
        with open(root / "journal" / "a", "ab", buffering=0) as fh:
            with pytest.raises(OSError, match="Input/output error"):
                os.fsync(fh.fileno())  # "not synced" is dropped for good
            disk.disarm()
            fh.write(b"later\n")
            os.fsync(fh.fileno())
        disk.arm(Fault("enospc", "journal", room=4))
        with open(root / "journal" / "a", "ab", buffering=0) as fh:
            assert fh.write(b"123456") == 4  # a short write, then a full disk
            with pytest.raises(OSError, match="No space left"):
                fh.write(b"56")
    finally:
        os.close(folder)
    image = disk.power_cut_image(tmp_path / "image")
    assert sorted(p.name for p in (image / "journal").iterdir()) == ["a"]
    assert (image / "journal" / "a").read_bytes() == b"synced\n" + bytes(len(b"not synced\n")) + b"later\n"
    assert disk.writes_after_failed_fsync == ["a"]  # "later" went to the file whose fsync failed
    assert (root / "journal" / "a").read_bytes().endswith(b"later\n1234")  # the live file has it all


# -- 1. storage faults under the journal and the snapshots ------------------------------------------------

STOPS = "journal stops"  # the journal failed: unready, nothing acknowledged from then on
GOES_ON = "journal goes on"  # the journal is intact: every observation acknowledged, still ready
STORAGE_FAULTS = [
    pytest.param(Fault("short", "journal"), "batch", GOES_ON, id="short-writes-journal"),
    pytest.param(Fault("enospc", "journal", room=57), "batch", STOPS, id="enospc-journal-mid-record"),
    pytest.param(Fault("eio", "journal", site="sync_appended"), "batch", STOPS, id="eio-journal-batch-fsync"),
    pytest.param(Fault("eio", "journal", nth=2, site="append"), "always", STOPS, id="eio-journal-fsync-always"),
    pytest.param(Fault("eio", "journal", site="rotate"), "batch", STOPS, id="eio-journal-fsync-at-rotation"),
    pytest.param(
        Fault("eio", "journal", dirs=True, site="rotate", persistent=True),
        "batch",
        STOPS,
        id="eio-journal-folder-new-segment",
    ),
    pytest.param(
        Fault("eio", "journal", dirs=True, site="drop_through"), "batch", GOES_ON, id="eio-journal-folder-prune"
    ),
    pytest.param(Fault("short", "snapshots"), "batch", GOES_ON, id="short-writes-snapshots"),
    pytest.param(Fault("enospc", "snapshots", room=300_000), "batch", GOES_ON, id="enospc-snapshots"),
    pytest.param(Fault("eio", "snapshots", persistent=True), "batch", GOES_ON, id="eio-snapshot-fsync-always"),
    pytest.param(
        Fault("eio", "snapshots", dirs=True, site="_atomic_write"), "batch", GOES_ON, id="eio-snapshot-folder-rename"
    ),
    pytest.param(Fault("enospc", "", room=0), "batch", STOPS, id="enospc-whole-disk"),
]


@pytest.mark.parametrize(("fault", "policy", "journal"), STORAGE_FAULTS)
def test_storage_faults_lose_no_acknowledged_observation(tmp_path, monkeypatch, fault, policy, journal):
    root = tmp_path / "data"
    disk = FaultyDisk(root, seed=11).install(monkeypatch)
    before, during = traffic(1, 1, sizes=(2, 2)), traffic(2, 6, sizes=(1, 2))
    ledger = Ledger()

    async def run() -> ObservationService:
        service = ObservationService(make_config(root, journal_fsync=policy))
        await service.start()
        assert service.ready, service.load_error
        for batch in before:
            await send(service, batch, ledger)
            await settle(service)
        disk.arm(fault)
        for batch in during:
            await send(service, batch, ledger)
            await settle(service)
            # unready as soon as the journal fails, also in a snapshot's rotation between batches
            assert not (service.journal.failed and service.ready), service.journal.failed
        shutil.copytree(root, tmp_path / "process-exit")
        disk.power_cut_image(tmp_path / "power-cut")
        disk.disarm()
        await crash(service)
        return service

    service = asyncio.run(run())
    assert disk.total_injected > 0, f"{fault.label}: the fault never fired"
    for site, n in disk.injected.items():
        TALLY[f"faults injected: {site}"] += n
    TALLY["fault runs"] += 1
    assert disk.writes_after_failed_fsync == [], "written to after its fsync failed: " + ", ".join(
        sorted(set(disk.writes_after_failed_fsync))
    )
    assert ledger.acked_after_refusal == 0, "acknowledged observations after the journal had failed"
    if journal == GOES_ON:
        assert ledger.acked == ledger.attempted and service.load_error is None, service.load_error
    else:
        assert service.journal.failed and "storage failed" in (service.load_error or ""), service.load_error

    what = f"{fault.label} ({policy})"
    if same_files(tmp_path / "process-exit", tmp_path / "power-cut"):
        TALLY["fault runs whose process-exit and power-cut images are the same"] += 1
    else:
        check(start_on(tmp_path / "process-exit"), ledger, what + ", restart after the process exits", may_refuse=False)
    # a power cut leaves only what was fsynced; the state then keeps growing from what is left
    after = ledger.copy()
    first = start_on(tmp_path / "power-cut", more=traffic(3, 1), ledger=after)
    check(first, ledger, what + ", restart after a power cut", may_refuse=False)
    check(start_on(tmp_path / "power-cut"), after, what + ", and once more after one more batch", may_refuse=False)


def same_files(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    if files != sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()):
        return False
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


# -- 2. damaged and missing files ----------------------------------------------------------------------------

BASE_BATCHES = 18  # 2 items each, a snapshot every 8: snapshots at seq 16, 24 and 32 kept; 33-36 only journaled


@dataclass
class BaseState:
    root: Path
    ledger: Ledger
    snapshots: list[Path]  # oldest first
    segments: list[Path]  # oldest first; the last one is the live segment
    records: dict[str, list[dict]]  # segment name -> its records, in order


@pytest.fixture(scope="module")
def base_state(tmp_path_factory, embedder) -> BaseState:
    root = tmp_path_factory.mktemp("base") / "data"
    ledger = Ledger()
    batches = traffic(4, BASE_BATCHES, sizes=(2, 2))

    async def run() -> None:
        service = ObservationService(make_config(root, snapshot_every_observations=8, snapshot_keep=3))
        await service.start()
        for batch in batches:
            await send(service, batch, ledger)
            await settle(service)
        await crash(service)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(probewatch.engine, "Embedder", lambda *args, **kwargs: embedder)
        asyncio.run(run())
    assert ledger.acked == ledger.attempted
    snapshots = sorted((root / "snapshots").glob("snapshot-*.pwsnap"))
    segments = sorted((root / "journal").glob("journal-*.jsonl"))
    assert [p.name[9:24] for p in snapshots] == ["000000000000016", "000000000000024", "000000000000032"]
    assert [p.name[8:23] for p in segments] == ["000000000000017", "000000000000025", "000000000000033"]
    records = {p.name: [json.loads(line.partition(b"\t")[0]) for line in p.read_bytes().splitlines()] for p in segments}
    assert [len(r) for r in records.values()] == [8, 8, 4]
    return BaseState(root, ledger, snapshots, segments, records)


def damage(path: Path, how: str, where: str, rng: random.Random) -> None:
    """Truncate or flip one bit at the header, middle or tail of ``path``; in a journal
    segment, inside its first, middle or last line."""
    data = bytearray(path.read_bytes())
    if path.suffix == ".jsonl":
        starts = [0, *(i + 1 for i, b in enumerate(data[:-1]) if b == 0x0A)]
        line = {"header": 0, "middle": len(starts) // 2, "tail": len(starts) - 1}[where]
        end = data.index(b"\n", starts[line])
        at = rng.randrange(starts[line] + 1, end)  # inside the line, never its newline
    else:
        at = {"header": 40, "middle": len(data) // 2, "tail": len(data) - 10}[where]
    if how == "truncate":
        del data[at:]
    else:
        data[at] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def copy_of(base: BaseState, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(base.root, root)
    return root


def cut_records(records: list[dict], original: bytes, kept_bytes: int) -> Counter:
    """Per account, the records whose line (newline included) does not survive cutting
    ``original`` to ``kept_bytes``."""
    lost: Counter = Counter()
    offset = 0
    for line, record in zip(original.splitlines(keepends=True), records, strict=True):
        offset += len(line)
        if offset > kept_bytes:
            lost[record["account"]] += 1
    return lost


POSITIONS = ("header", "middle", "tail")


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("where", POSITIONS)
@pytest.mark.parametrize("which", ["middle", "live"])
def test_damaged_journal_segment(base_state, tmp_path, caplog, which, where, how):
    root = copy_of(base_state, tmp_path)
    index = {"middle": 1, "live": 2}[which]
    segment = root / "journal" / base_state.segments[index].name
    original = segment.read_bytes()
    damage(segment, how, where, random.Random(f"{which}-{where}-{how}"))
    TALLY[f"damage injected: journal segment {how}"] += 1
    expected = base_state.ledger
    if which == "live" and how == "truncate":
        # A cut in the newest segment looks exactly like a crash during a write (never
        # acknowledged): it is cut back and reported. What it removed is gone, nothing else.
        lost = cut_records(base_state.records[segment.name], original, segment.stat().st_size)
        assert lost, "the cut should remove at least the record it lands in"
        expected = base_state.ledger.copy()
        expected.acked -= lost
        TALLY["records cut with the newest segment's torn tail (reported, by design)"] += sum(lost.values())
    with caplog.at_level(logging.WARNING, logger="probewatch"):
        start = start_on(root)
    what = f"journal {which} segment, {how} at the {where}"
    check(start, expected, what, may_refuse=True)
    if which == "live":  # its records are needed: a damaged one refuses, a cut one is reported
        if how == "flip":
            assert not start.ready, f"{what}: started ready over a damaged acknowledged record"
        else:
            assert start.ready and segment.name in caplog.text and "torn" in caplog.text, caplog.text


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("where", POSITIONS)
def test_damaged_newest_snapshot(base_state, tmp_path, where, how):
    root = copy_of(base_state, tmp_path)
    damage(root / "snapshots" / base_state.snapshots[-1].name, how, where, random.Random(f"{where}-{how}"))
    TALLY[f"damage injected: snapshot {how}"] += 1
    # the snapshot before it, and the journal kept since that one, give everything back
    check(start_on(root), base_state.ledger, f"newest snapshot, {how} at the {where}", may_refuse=False)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_every_snapshot_damaged(base_state, tmp_path, how):
    """One start per kind of damage: the three snapshots are hit at the header, middle and tail."""
    root = copy_of(base_state, tmp_path)
    for i, (snapshot, where) in enumerate(zip(base_state.snapshots, POSITIONS, strict=True)):
        damage(root / "snapshots" / snapshot.name, how, where, random.Random(f"all-{how}-{i}"))
        TALLY[f"damage injected: snapshot {how}"] += 1
    start = start_on(root)
    check(start, base_state.ledger, f"every snapshot, {how}", may_refuse=True)
    if how == "truncate":  # no readable snapshot is left
        assert not start.ready and "snapshot" in start.load_error, start.load_error


def test_the_last_byte_of_the_journal_flipped(base_state, tmp_path):
    """The newline ending the newest record: the record itself is whole and checksummed."""
    root = copy_of(base_state, tmp_path)
    segment = root / "journal" / base_state.segments[-1].name
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0x40  # "\n" -> "J"
    segment.write_bytes(bytes(data))
    TALLY["damage injected: journal segment flip"] += 1
    check(start_on(root), base_state.ledger, "the journal's last newline flipped", may_refuse=True)


def test_a_missing_middle_segment(base_state, tmp_path):
    root = copy_of(base_state, tmp_path)
    (root / "journal" / base_state.segments[1].name).unlink()
    TALLY["damage injected: missing journal segment"] += 1
    # Not needed while the newest snapshot (seq 32) reads: every acknowledged record is back.
    check(start_on(root), base_state.ledger, "middle segment missing", may_refuse=False)
    # Needed once the newest snapshot is unreadable too: records 25-32 are gone, so it refuses.
    root = tmp_path / "second"
    shutil.copytree(base_state.root, root)
    (root / "journal" / base_state.segments[1].name).unlink()
    damage(root / "snapshots" / base_state.snapshots[-1].name, "truncate", "middle", random.Random(0))
    TALLY["damage injected: missing journal segment"] += 1
    start = start_on(root)
    check(start, base_state.ledger, "middle segment and newest snapshot missing", may_refuse=True)
    assert not start.ready and "25-32" in start.load_error, start.load_error


def test_no_snapshots_left_beside_a_journal(base_state, tmp_path):
    root = copy_of(base_state, tmp_path)
    for snapshot in (root / "snapshots").iterdir():
        snapshot.unlink()
    TALLY["damage injected: all snapshots missing"] += 1
    for attempt in ("first", "second"):  # the refusal holds: the first attempt heals nothing
        start = start_on(root)
        check(start, base_state.ledger, f"no snapshots, journal from seq 17 ({attempt} start)", may_refuse=True)
        assert not start.ready and "1-16" in start.load_error, start.load_error


# -- 3. SIGKILL at random points -----------------------------------------------------------------------------

# Where each cycle's kill lands: after a random delay; while a snapshot is being written (its
# temporary file exists); or as the journal rotates and prunes (its segment list changes).
KILL_POINTS = ("any moment", "mid-snapshot", "mid-prune", "mid-snapshot")


def wait_until(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.001)
    return False


class Clients:
    """Threads posting small batches to a sidecar until stopped or it dies, recording what was
    sent and what was acknowledged."""

    def __init__(self, server: SidecarProcess, tag: str, n: int = 2):
        self.server, self.tag = server, tag
        self.acked: Counter = Counter()
        self.attempted: Counter = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w,)) for w in range(n)]
        for t in self._threads:
            t.start()

    def _run(self, worker: int) -> None:
        with self.server.client() as http:
            n = 0
            while not self._stop.is_set():
                batch = [
                    {
                        "account": ACCOUNTS[(worker * 7 + n + j) % len(ACCOUNTS)],
                        "prompt": f"{self.tag} w{worker} q{n}.{j}",
                    }
                    for j in range(1 + (n + worker) % 3)
                ]
                n += 1
                with self._lock:
                    self.attempted.update(item["account"] for item in batch)
                try:
                    results = http.post("/v1/observe", json={"items": batch}).json()["results"]
                except (httpx.TransportError, ValueError, KeyError):
                    return  # killed under us: not acknowledged
                with self._lock:
                    self.acked.update(r["account"] for r in results if "fallback" not in r and "error" not in r)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def kill_at(point: str, server: SidecarProcess, data: Path, rng: random.Random) -> bool:
    """SIGKILL the sidecar at ``point``; whether that moment was seen before the kill."""
    snapshots, journal = data / "snapshots", data / "journal"
    temporaries = {p.name for p in snapshots.iterdir() if p.name.endswith(".tmp")}  # left by earlier kills
    segments = {p.name for p in journal.iterdir()}
    if point == "any moment":
        time.sleep(rng.uniform(0.0, 0.5))
        seen = True
    elif point == "mid-snapshot":
        seen = wait_until(
            lambda: any(p.name.endswith(".tmp") and p.name not in temporaries for p in snapshots.iterdir())
        )
        time.sleep(rng.uniform(0.0, 0.003))
    else:
        seen = wait_until(lambda: {p.name for p in journal.iterdir()} != segments)
        time.sleep(rng.uniform(0.0, 0.005))
    server.kill()
    return seen


def test_sigkill_at_random_points_during_writes_snapshots_and_prunes(tmp_path):
    """A snapshot after every few observations, so the state thread is always writing a journal
    batch, writing a snapshot or pruning; each cycle kills the sidecar at one of KILL_POINTS."""
    rng = random.Random(20261201)
    data = tmp_path / "data"
    settings = {
        "journal_fsync": "batch",
        "snapshot_every_observations": 3,
        "snapshot_keep": 2,
        "request_deadline_ms": 60000,
        "max_wait_ms": 2,
    }
    ledger = Ledger()
    server = SidecarProcess(data, tmp_path / "cycle-0.log", **settings)
    journal_seq = 0
    try:
        server.wait_ready()
        for cycle, point in enumerate(KILL_POINTS, 1):
            left_before = {p.name for p in (data / "snapshots").iterdir() if p.name.endswith(".tmp")}
            clients = Clients(server, f"c{cycle}")
            assert wait_until(lambda c=clients: sum(c.acked.values()) >= 4), server.log_tail()
            seen = kill_at(point, server, data, rng)
            clients.stop()
            ledger.acked.update(clients.acked)
            ledger.attempted.update(clients.attempted)
            left = {p.name for p in (data / "snapshots").iterdir() if p.name.endswith(".tmp")} - left_before
            TALLY[f"SIGKILLs {point}"] += 1
            TALLY[f"SIGKILLs {point}, moment seen before the kill"] += seen
            TALLY["SIGKILLs that left a snapshot temporary (killed while writing it)"] += bool(left)

            server = SidecarProcess(data, tmp_path / f"cycle-{cycle}.log", **settings)
            server.wait_ready()  # a plain crash never keeps it unready
            TALLY["SIGKILL restarts that cut a torn journal line"] += "torn line" in server.log_tail(20000)
            with server.client() as http:
                counts = {}
                for account in ledger.attempted:
                    r = http.get(f"/v1/accounts/{account}")
                    counts[account] = r.json()["n_queries"] if r.status_code == 200 else 0
                ready = httpx.get(server.url + "/readyz").json()
            check(Start(True, None, counts, ready["journal_seq"]), ledger, f"SIGKILL {point}", may_refuse=False)
            # sequence numbers never go backwards and count at least what was acknowledged
            assert ready["journal_seq"] >= journal_seq + sum(clients.acked.values()), (ready, journal_seq)
            journal_seq = ready["journal_seq"]
    finally:
        if server.proc.poll() is None:
            server.terminate()
