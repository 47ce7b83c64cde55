"""`probewatch repair-state` and the refusals that point to it: damaged or missing state keeps the
sidecar unready until the operator drops exactly what is reported; sequence numbers never go back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time

import pytest

from probewatch.cli.main import main as probewatch
from probewatch.serve import ServerConfig
from probewatch.serve.repair import REPAIR_FILE, plan_repair
from probewatch.serve.service import ObservationService
from tests.support import TOKEN, SidecarProcess, httpx

pytestmark = pytest.mark.timeout(600)


def _config(tmp_path, **settings) -> ServerConfig:
    return ServerConfig(data_dir=str(tmp_path), api_token=TOKEN, engine={"device": "cpu"}, **settings)


def _run(config, steps=None, crash: bool = False):
    """Start a service on ``config``'s data directory, run ``steps(service)``, then stop it
    (``crash``: without the shutdown snapshot, as after a SIGKILL)."""
    service = ObservationService(config)

    async def scenario():
        await service.start()
        service.started_ready = service.ready  # stop() clears ready
        result = await steps(service) if steps is not None and service.ready else None
        if crash:
            service.ready = False
        await service.stop()
        return result

    return service, asyncio.run(scenario())


def _observer(account: str, n: int, first: int = 0, settle_s: float = 0.0):
    async def observe(service):
        seqs = []
        for i in range(first, first + n):
            item = service.prepare_item(account, f"question number {i} about tides?", None, 1.7e9 + i, None)
            (outcome,) = await service.observe([item])
            assert outcome.fallback is None, outcome
            seqs.append(service.journal.last_seq)
            await asyncio.sleep(settle_s)  # let a threshold snapshot run between items
        return seqs

    return observe


def _repair(data, *flags, capsys) -> tuple[int, str]:
    code = probewatch(["repair-state", "--data-dir", str(data), *flags])
    return code, capsys.readouterr().out


def _files(data) -> dict[str, bytes]:
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}


def test_a_damaged_middle_line_is_reported_then_dropped_and_seqs_keep_rising(tmp_path, capsys):
    config = _config(tmp_path)
    _, seqs = _run(config, _observer("acct", 6), crash=True)
    assert seqs == [1, 2, 3, 4, 5, 6]
    (segment,) = [p for p in (tmp_path / "journal").iterdir() if p.stat().st_size]
    lines = segment.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"question", b"qvestion")  # record 3: the checksum no longer matches
    segment.write_bytes(b"\n".join(lines) + b"torn")  # and a torn tail after the last newline

    service, _ = _run(config)
    assert not service.started_ready
    assert "line 3 is damaged" in service.load_error and "probewatch repair-state" in service.load_error

    before = _files(tmp_path)
    code, out = _repair(tmp_path, capsys=capsys)
    assert code == 1 and "dry run" in out
    assert _files(tmp_path) == before, "a dry run changes nothing"
    assert "damaged_line" in out and "line 3 (claims seq 3 but its checksum does not match, after seq 2" in out
    assert "missing_records" in out and "seqs 3-3 are missing before line 4" in out
    assert "after_gap" in out and "3 records, seqs 4-6" in out
    assert "torn_tail" in out and "4 bytes after the last newline" in out
    assert "journal records through seq 2" in out

    code, out = _repair(tmp_path, "--yes", capsys=capsys)
    assert code == 0 and "dropped" in out
    record = json.loads((tmp_path / REPAIR_FILE).read_text())
    assert record["high_water_seq"] >= 6 and record["dropped_ranges"] == [[3, record["high_water_seq"]]]
    assert _repair(tmp_path, capsys=capsys)[0] == 0, "after the repair there is nothing left to drop"

    service, seqs = _run(config, _observer("acct", 1, first=100))
    assert service.started_ready, service.load_error
    assert seqs[0] > 6, "the next seq is above every seq ever written, dropped ones included"
    assert service.engine.report("acct").n_queries == 3  # records 1-2 and the new one
    service, seqs = _run(config, _observer("acct", 1, first=200), crash=True)
    assert service.started_ready, f"the dropped range is not a gap at the next start: {service.load_error}"
    assert service.engine.report("acct").n_queries == 4 and seqs[0] > record["high_water_seq"] + 1
    service, _ = _run(config)  # and replay after the crash keeps all four
    assert service.started_ready and service.engine.report("acct").n_queries == 4


def test_a_seq_written_twice_is_named_as_such_and_repair_keeps_the_first_copy(tmp_path, capsys):
    """What two writers on one data_dir left (seq 2 twice): the start said "records 3-1 are
    missing", and repair dropped the intact seqs 3-4 while saying it kept "through seq 2"."""
    config = _config(tmp_path)
    _run(config, _observer("acct", 4), crash=True)
    (segment,) = [p for p in (tmp_path / "journal").iterdir() if p.stat().st_size]
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"".join([*lines[:2], lines[1], *lines[2:]]))  # seq 2 again, right after itself

    service, _ = _run(config)
    assert not service.started_ready
    assert "seq 2 appears twice" in service.load_error and "probewatch repair-state" in service.load_error
    code, out = _repair(tmp_path, capsys=capsys)
    assert code == 1 and "duplicate_seq" in out and "line 3: a second record with seq 2" in out
    assert "missing" not in out and "after_gap" not in out and "journal records through seq 4" in out
    assert _repair(tmp_path, "--yes", capsys=capsys)[0] == 0
    service, _ = _run(config)
    assert service.started_ready, service.load_error
    assert service.engine.report("acct").n_queries == 4


def test_an_empty_snapshot_directory_with_journal_history_keeps_the_service_unready(tmp_path, capsys):
    config = _config(tmp_path, snapshot_every_observations=2, snapshot_keep=1)
    _, seqs = _run(config, _observer("acct", 5, settle_s=0.3), crash=True)
    assert seqs[-1] == 5
    for snapshot in (tmp_path / "snapshots").iterdir():
        snapshot.unlink()
    oldest = min(p.name for p in (tmp_path / "journal").iterdir())
    assert oldest != "journal-000000000000001.jsonl", "snapshots should have let early segments go"

    service, _ = _run(config)
    assert not service.started_ready
    assert "holds no snapshot" in service.load_error and oldest in service.load_error
    assert "probewatch repair-state" in service.load_error
    assert not list((tmp_path / "snapshots").iterdir()), "no new seq-0 snapshot hides what went missing"

    code, out = _repair(tmp_path, capsys=capsys)
    assert code == 1 and "missing_records" in out and "a new engine (seq 0)" in out
    assert _repair(tmp_path, "--yes", capsys=capsys)[0] == 0
    service, seqs = _run(config, _observer("fresh", 1))
    assert service.started_ready, service.load_error
    assert seqs[0] > 5 and service.engine.stats().accounts == 1


def test_a_snapshot_older_than_the_journal_start_is_a_mismatch_naming_the_missing_records(tmp_path, capsys):
    config = _config(tmp_path, snapshot_every_observations=2, snapshot_keep=1)
    _run(config, _observer("acct", 5, settle_s=0.3), crash=True)
    (snapshot,) = (tmp_path / "snapshots").iterdir()
    assert snapshot.name == "snapshot-000000000000004.pwsnap"
    # the snapshot claims less than it holds: the journal resumes past its seq + 1
    snapshot.rename(snapshot.with_name("snapshot-000000000000002.pwsnap"))
    service, _ = _run(config)
    assert not service.started_ready
    assert "journal records 3-4 are missing" in service.load_error
    assert "covers seq 2, the journal resumes at seq 5" in service.load_error
    assert "probewatch repair-state" in service.load_error
    code, out = _repair(tmp_path, capsys=capsys)
    assert code == 1 and "seqs 3-4 are in no segment and no readable snapshot" in out


def test_unreadable_snapshots_are_reported_and_dropped(tmp_path, capsys):
    config = _config(tmp_path, snapshot_every_observations=2)
    _run(config, _observer("acct", 3, settle_s=0.3))  # clean stop: a shutdown snapshot at seq 3
    snapshots = sorted((tmp_path / "snapshots").iterdir())
    assert [p.name[-10:-7] for p in snapshots] == ["002", "003"]
    snapshots[-1].write_bytes(b"\0" * 64)
    plan = plan_repair(tmp_path)
    assert [d.kind for d in plan.drops] == ["unreadable_snapshot"]
    assert plan.snapshot == snapshots[0].name and plan.kept_through == 3  # the journal still holds seq 3
    code, out = _repair(tmp_path, "--yes", capsys=capsys)
    assert code == 0 and "unreadable_snapshot" in out and not snapshots[-1].exists()
    service, seqs = _run(config, _observer("acct", 1, first=10))
    assert service.started_ready and service.engine.report("acct").n_queries == 4 and seqs == [4]


def test_repair_state_says_what_it_expected_for_a_missing_directory(tmp_path, capsys):
    code = probewatch(["repair-state", "--data-dir", str(tmp_path / "nowhere")])
    assert code == 2 and "no data directory" in capsys.readouterr().err


def test_a_last_record_missing_only_its_newline_is_kept_as_the_service_keeps_it(tmp_path):
    _run(_config(tmp_path), _observer("acct", 3), crash=True)
    (segment,) = [p for p in (tmp_path / "journal").iterdir() if p.stat().st_size]
    segment.write_bytes(segment.read_bytes()[:-1])
    plan = plan_repair(tmp_path)
    assert plan.clean and plan.kept_through == 3, plan.describe()
    segment.write_bytes(segment.read_bytes()[:-3])  # now the checksum is cut too: a torn write
    plan = plan_repair(tmp_path)
    assert [d.kind for d in plan.drops] == ["torn_tail"] and plan.kept_through == 2


def test_over_http_the_refusal_names_the_command_and_the_command_lets_it_start(tmp_path):
    data = tmp_path / "data"
    server = SidecarProcess(data, tmp_path / "first.log")
    try:
        server.wait_ready()
        with server.client() as http:
            for i in range(4):
                item = {"account": "carol", "prompt": f"How do tides work, part {i}?"}
                assert http.post("/v1/observe", json={"items": [item]}).status_code == 200
        server.kill()  # no shutdown snapshot: the journal holds records 1-4
    finally:
        server.terminate()
    (segment,) = [p for p in (data / "journal").iterdir() if p.stat().st_size]
    lines = segment.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"tides", b"tidez")
    segment.write_bytes(b"\n".join(lines))

    refused = SidecarProcess(data, tmp_path / "second.log")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                answer = httpx.get(refused.url + "/readyz", timeout=2)
                if answer.json().get("status") == "failed":
                    break
            time.sleep(0.3)
        assert answer.status_code == 503 and "probewatch repair-state" in answer.json()["error"]["message"]
    finally:
        refused.terminate()

    command = [sys.executable, "-m", "probewatch.cli", "repair-state", "--data-dir", str(data)]
    dry = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 1 and "line 2" in dry.stdout and "seqs 3-4" in dry.stdout, dry.stdout + dry.stderr
    done = subprocess.run([*command, "--yes"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    restarted = SidecarProcess(data, tmp_path / "third.log")
    try:
        restarted.wait_ready()
        with restarted.client() as http:
            assert http.get("/v1/accounts/carol").json()["n_queries"] == 1
            assert httpx.get(restarted.url + "/readyz").json()["journal_seq"] > 4
    finally:
        restarted.terminate()
