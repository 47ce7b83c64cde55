"""Crash safety: SIGKILL the sidecar mid-load; every acknowledged observation is restored."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from tests.support import SidecarProcess, httpx

pytestmark = pytest.mark.timeout(300)

ACCOUNTS = [f"acct-{i}" for i in range(6)]


def test_sigkill_mid_load_loses_no_acknowledged_observation(tmp_path):
    data = tmp_path / "data"
    # Small snapshot threshold: snapshots, journal rotation and replay-after-snapshot all happen.
    settings = {"journal_fsync": "batch", "snapshot_every_observations": 30, "request_deadline_ms": 60000}
    server = SidecarProcess(data, tmp_path / "first.log", **settings)
    acked: Counter = Counter()
    attempted: Counter = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        with server.client() as http:
            n = 0
            while not stop.is_set():
                batch = [
                    {
                        "account": ACCOUNTS[(worker + n + j) % len(ACCOUNTS)],
                        "prompt": f"worker {worker} question {n}.{j}: how do tides work near estuaries?",
                    }
                    for j in range(1 + n % 3)
                ]
                n += 1
                with lock:
                    attempted.update(item["account"] for item in batch)
                try:
                    results = http.post("/v1/observe", json={"items": batch}).json()["results"]
                except (httpx.TransportError, ValueError):
                    return  # the server died under us: this batch was never acknowledged
                with lock:
                    acked.update(r["account"] for r in results if "fallback" not in r and "error" not in r)

    try:
        server.wait_ready()
        workers = [threading.Thread(target=client, args=(w,)) for w in range(4)]
        for t in workers:
            t.start()
        deadline = time.monotonic() + 40
        while sum(acked.values()) < 90 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.kill()  # mid-load: requests are in flight
    finally:
        stop.set()
        if server.proc.poll() is None:
            server.kill()
    for t in workers:
        t.join(30)
    assert sum(acked.values()) >= 90, server.log_tail()
    covered = [int(p.stem.split("-")[1]) for p in data.glob("snapshots/snapshot-*.pwsnap")]
    assert max(covered) > 0, "the load should have crossed a snapshot (beyond the new engine's, seq 0)"

    restarted = SidecarProcess(data, tmp_path / "second.log", **settings)
    try:
        restarted.wait_ready()
        with restarted.client() as http:
            for account in ACCOUNTS:
                if not attempted[account]:
                    continue
                r = http.get(f"/v1/accounts/{account}")
                n = r.json()["n_queries"] if r.status_code == 200 else 0
                assert acked[account] <= n <= attempted[account], (account, acked[account], n, attempted[account])
            ready = httpx.get(restarted.url + "/readyz").json()
        assert restarted.terminate() in (0, -15)
        snaps = sorted(data.glob("snapshots/snapshot-*.pwsnap"))
        assert int(snaps[-1].stem.split("-")[1]) == ready["journal_seq"], "the final snapshot covers the journal"
    finally:
        restarted.terminate()


def test_a_burst_of_forgets_costs_one_snapshot_and_unknown_ids_none(tmp_path):
    server = SidecarProcess(tmp_path / "data", tmp_path / "forget.log", snapshot_interval_s=3600)
    try:
        server.wait_ready()
        with server.client() as http:
            items = [{"account": f"gone-{i}", "prompt": f"secret question number {i}?"} for i in range(6)]
            assert http.post("/v1/observe", json={"items": items}).status_code == 200
            for i in range(6):
                assert http.delete(f"/v1/accounts/gone-{i}").json()["forgotten"] is True
            for i in range(6):  # unknown ids: nothing to drop from the journal, so no snapshot
                assert http.delete(f"/v1/accounts/never-{i}").json()["forgotten"] is False
            deadline = time.monotonic() + 30
            while "(forget," not in server.log_tail(20000) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.5)  # a second snapshot would have been scheduled by now
            assert server.log_tail(20000).count("(forget,") == 1, server.log_tail()
            assert http.get("/v1/accounts").json()["accounts"] == []
    finally:
        server.terminate()
    # once it read back, the forget's snapshot replaced every older snapshot and journal segment
    # that held the forgotten accounts
    journal = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "data" / "journal").glob("*"))
    assert "secret question" not in journal
    snapshots = list((tmp_path / "data" / "snapshots").glob("*"))
    assert snapshots and not any(b"gone-" in p.read_bytes() for p in snapshots)


def test_a_full_queue_answers_429_with_retry_after_and_the_guardrail_keeps_its_room(tmp_path):
    settings = {"queue_capacity": 16, "max_items_per_request": 16, "max_batch_size": 8, "request_deadline_ms": 60000}
    server = SidecarProcess(tmp_path / "data", tmp_path / "overload.log", **settings)
    accepted: Counter = Counter()
    statuses: Counter = Counter()
    guardrail_actions: Counter = Counter()
    lock = threading.Lock()

    def bulk(worker: int) -> None:
        with server.client() as http:
            for round_ in range(6):
                items = [{"account": f"bulk-{worker}", "prompt": f"bulk prompt {round_} {i}"} for i in range(16)]
                r = http.post("/v1/observe", json={"items": items})
                with lock:
                    statuses[r.status_code] += 1
                    if r.status_code == 200:
                        accepted[f"bulk-{worker}"] += 16
                    else:
                        assert r.status_code == 429, r.text
                        assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "Overloaded"

    def guardrail() -> None:
        with server.client() as http:
            for i in range(6):
                body = {
                    "input_type": "request",
                    "texts": [f"how do I bake bread, take {i}?"],
                    "request_data": {"user_api_key_hash": "gatekeeper"},
                }
                r = http.post("/beta/litellm_basic_guardrail_api", json=body)
                with lock:
                    guardrail_actions[r.status_code, r.json().get("action")] += 1

    try:
        server.wait_ready()
        threads = [threading.Thread(target=bulk, args=(w,)) for w in range(6)] + [threading.Thread(target=guardrail)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        assert statuses[429] > 0, statuses  # six bulk clients at once overfill a 16-item queue
        assert guardrail_actions == Counter({(200, "NONE"): 6}), guardrail_actions
        with server.client() as http:
            for account, n in accepted.items():  # exactly the accepted items were observed
                assert http.get(f"/v1/accounts/{account}").json()["n_queries"] == n
            assert http.get("/v1/accounts/gatekeeper").json()["n_queries"] == 6  # none fell back for lack of room
    finally:
        server.terminate()


def test_a_second_sidecar_on_the_same_data_dir_waits_unready_until_the_first_stops(tmp_path):
    """Two sidecars on one data_dir handed out the same journal seqs and snapshot names: the
    acknowledged records of one were lost at the next start. The second now waits, unready,
    naming the first; repair-state --yes refuses the directory while a sidecar holds it."""
    import subprocess
    import sys

    data = tmp_path / "data"
    first = SidecarProcess(data, tmp_path / "first.log")
    second = None
    try:
        first.wait_ready()
        with first.client() as http:
            for i in range(3):
                answer = http.post("/v1/observe", json={"account": "alice", "prompt": f"question {i} about tides"})
                assert answer.status_code == 200 and "fallback" not in answer.json()["results"][0]
        second = SidecarProcess(data, tmp_path / "second.log")

        def waiting() -> str | None:
            try:
                response = httpx.get(second.url + "/readyz", timeout=5)
            except httpx.TransportError:
                return None
            assert response.status_code == 503, response.text
            message = response.json()["error"]["message"]
            return message if "in use by another probewatch process" in message else None

        deadline = time.monotonic() + 60
        while (message := waiting()) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert message and f"pid {first.proc.pid}" in message, message
        repair = subprocess.run(
            [sys.executable, "-m", "probewatch", "repair-state", "--data-dir", str(data), "--yes"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert repair.returncode == 2 and "in use by another probewatch process" in repair.stderr, repair.stderr
        first.terminate()
        second.wait_ready(120)  # the lock is free: it starts, with everything the first acknowledged
        with second.client() as http:
            assert http.get("/v1/accounts/alice").json()["n_queries"] == 3
    finally:
        for server in (first, second):
            if server is not None and server.proc.poll() is None:
                server.terminate()
