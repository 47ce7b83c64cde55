"""The alert outbox failing to write (tests/faultfs.py under the data directory, in-process): the
sidecar acknowledges the batch it already journaled and applied, then answers 503 and takes no
snapshot; a restart on the intact disk recreates the lost events from the journal and delivers them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import pytest

import probewatch.engine
from probewatch.serve import ServerConfig, create_app
from probewatch.serve.service import snapshot_seq
from tests.faultfs import Fault, FaultyDisk
from tests.serve.test_alerts import SECRET, Receiver, transitions_in
from tests.support import AUTH, TOKEN, random_word_prompts

pytestmark = pytest.mark.timeout(300)
GUARDRAIL = "/beta/litellm_basic_guardrail_api"


@pytest.fixture(autouse=True)
def shared_model(monkeypatch, embedder):
    """Every in-process start uses the session's copy of the real model."""
    monkeypatch.setattr(probewatch.engine, "Embedder", lambda *args, **kwargs: embedder)


def make_config(data_dir, url: str) -> ServerConfig:
    sink = {"name": "ops", "url": url, "secret_env": "TEST_ALERT_SECRET", "retry_initial_s": 0.2, "retry_max_s": 1.0}
    return ServerConfig(
        data_dir=str(data_dir),
        api_token=TOKEN,
        engine={"device": "cpu", "target_fpr": 0.02, "watch_fpr": 0.1},
        request_deadline_ms=60000,
        snapshot_every_observations=1,  # a snapshot is due after every request
        alert_sinks=[sink],
    )


def one_item(prompt: str) -> dict:
    return {"items": [{"account": "extractor", "prompt": prompt}]}


async def until(condition, timeout: float = 30.0) -> bool:
    """Wait without blocking the event loop (the service delivers from it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


def test_outbox_write_failure_stops_acknowledging_skips_snapshots_and_a_restart_recreates(
    tmp_path, monkeypatch, caplog
):
    os.environ["TEST_ALERT_SECRET"] = SECRET
    data = tmp_path / "data"
    receiver = Receiver().start()
    disk = FaultyDisk(data).install(monkeypatch)
    prompts = random_word_prompts(64, seed=7)
    acked: list[dict] = []

    async def first_run() -> tuple[int, int]:
        gatekeeper = create_app(make_config(data, receiver.url))
        service = gatekeeper.app.state.service
        await service.start()
        assert service.ready, service.load_error
        # every fsync while the outbox writes alert events fails: the journal, snapshots and delivery marks are spared
        disk.arm(Fault("eio", site="add", persistent=True))
        refused = None
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gatekeeper), base_url="http://127.0.0.1", headers=AUTH
        ) as http:
            for prompt in prompts:
                answer = await http.post("/v1/observe", json=one_item(prompt))
                if answer.status_code != 200:
                    refused = answer
                    break
                acked.append(answer.json()["results"][0])
            assert refused is not None, "the outbox failure must stop the acknowledgements"
            assert refused.status_code == 503, refused.text
            readyz = await http.get("/readyz")
            assert readyz.status_code == 503 and "the alert outbox failed" in readyz.text, readyz.text
            failed_seq = service.journal.last_seq
            # the snapshot the failed batch asked for has run when the state thread is idle
            await asyncio.get_running_loop().run_in_executor(service._state_executor, lambda: None)
            metrics_text = (await http.get("/metrics")).text
        assert 'probewatch_snapshots_total{outcome="skipped"}' in metrics_text
        await service.stop()  # not ready: no shutdown snapshot either
        newest_snapshot = max(snapshot_seq(p) or 0 for p in (data / "snapshots").iterdir())
        return failed_seq, newest_snapshot

    failed_seq, newest_snapshot = asyncio.run(first_run())
    disk.disarm()
    assert disk.total_injected >= 1, disk.injected
    assert acked and acked[-1]["level"] != "ok", "the batch whose alert was lost was still acknowledged"
    lost = transitions_in(acked)
    assert lost == [("ok", acked[-1]["level"])]
    assert newest_snapshot < failed_seq, "no snapshot may cover the transition whose alert was not kept"
    assert "skipping the threshold snapshot: the alert outbox failed" in caplog.text
    assert receiver.events() == []

    async def second_run() -> None:
        gatekeeper = create_app(make_config(data, receiver.url))
        service = gatekeeper.app.state.service
        await service.start()
        assert service.ready, service.load_error
        try:
            assert await until(lambda: len(receiver.events()) >= 1), "the replay recreates the lost alert"
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=gatekeeper), base_url="http://127.0.0.1", headers=AUTH
            ) as http:
                for prompt in prompts[len(acked) :]:
                    answer = await http.post("/v1/observe", json=one_item(prompt))
                    assert answer.status_code == 200, answer.text
                    acked.append(answer.json()["results"][0])
            expected = transitions_in(acked)
            assert await until(lambda: len(receiver.events()) >= len(expected))
            await asyncio.sleep(1.0)  # nothing more arrives
        finally:
            await service.stop()

    try:
        asyncio.run(second_run())
        events = receiver.events()
        expected = transitions_in(acked)
        assert expected[-1][1] == "flag", expected
        assert [(e["from_level"], e["to_level"]) for e in events] == expected
        assert events[0]["journal_seq"] == failed_seq  # recreated from the record the failure left unalerted
        assert all(d["valid"] for d in receiver.deliveries)
    finally:
        receiver.stop()


def test_a_journal_tail_lost_after_its_alerts_does_not_silence_later_alerts(tmp_path):
    """journal_fsync "never": a power loss takes the journal's unsynced tail, but the outbox
    (always fsynced) saw its seqs. The journal used to hand those seqs out again, and the
    outbox skipped every event at or below the seqs it had seen: an account that flagged after
    the restart was never alerted. Seqs now resume above what the outbox saw; the lost range is
    recorded as dropped, so later starts do not read it as a gap."""
    os.environ["TEST_ALERT_SECRET"] = SECRET
    data = tmp_path / "data"
    receiver = Receiver().start()
    prompts = random_word_prompts(96, seed=11)

    async def run(sent: list[dict], until_level: str | None, pad: int = 0) -> int:
        config = make_config(data, receiver.url).model_copy(
            update={"journal_fsync": "never", "snapshot_every_observations": 100_000}
        )
        gatekeeper = create_app(config)
        service = gatekeeper.app.state.service
        await service.start()
        assert service.ready, service.load_error
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=gatekeeper), base_url="http://127.0.0.1", headers=AUTH
            ) as http:
                for i in range(pad):  # other accounts' traffic: the extractor's seqs come later
                    item = {"account": f"reader-{i % 5}", "prompt": f"what is a good book about {i} rivers"}
                    assert (await http.post("/v1/observe", json={"items": [item]})).status_code == 200
                for prompt in prompts[len(sent) :]:
                    answer = await http.post("/v1/observe", json=one_item(prompt))
                    assert answer.status_code == 200, answer.text
                    sent.append(answer.json()["results"][0])
                    if until_level is not None and sent[-1]["level"] == until_level:
                        break
                assert await until(lambda: len(receiver.events()) >= len(transitions_in(sent)))
            return service.journal.last_seq
        finally:
            await service.stop()

    try:
        before: list[dict] = []
        asyncio.run(run(before, "watch", pad=40))
        alerted_through = receiver.events()[-1]["journal_seq"]
        # the power loss: no snapshot after the first, the journal back to its first 2 records
        for snapshot in (data / "snapshots").iterdir():
            if (snapshot_seq(snapshot) or 0) > 0:
                snapshot.unlink()
        segment, *later = sorted((data / "journal").iterdir())  # the next ones are empty, or hold later seqs
        segment.write_bytes(b"".join(segment.read_bytes().splitlines(keepends=True)[:2]))
        for path in later:
            path.unlink()
        delivered = len(receiver.events())
        after: list[dict] = []
        last = asyncio.run(run(after, "watch"))
        assert last > alerted_through
        new = receiver.events()[delivered:]
        assert len(after) + 2 < alerted_through  # the same seqs again, without the fix
        assert [(e["from_level"], e["to_level"]) for e in new] == transitions_in(after) == [("ok", "watch")]
        assert new[0]["journal_seq"] > alerted_through
        repair = json.loads((data / "repair.json").read_text())
        assert [3, alerted_through] in repair["dropped_ranges"]
        asyncio.run(run(after, None))  # a later start reads the dropped range as such, not as a gap
    finally:
        receiver.stop()


def test_a_flagged_account_stays_blocked_on_the_guardrail_route_when_the_sidecar_is_overloaded(tmp_path):
    """Red-team finding: with failure_policy open, a flood made the guardrail answer NONE to an
    account already at flag (its items fell back as overloaded). A fallback now answers by
    where the account stands; an account the sidecar does not hold still passes."""
    config = ServerConfig(
        data_dir=str(tmp_path / "data"),
        api_token=TOKEN,
        engine={"device": "cpu", "target_fpr": 0.02, "watch_fpr": 0.1},
        request_deadline_ms=60000,
    )
    prompts = random_word_prompts(96, seed=7)

    def guardrail_body(account: str, text: str) -> dict:
        return {"input_type": "request", "texts": [text], "request_data": {"user_api_key_hash": account}}

    async def run() -> None:
        gatekeeper = create_app(config)
        service = gatekeeper.app.state.service
        await service.start()
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=gatekeeper), base_url="http://127.0.0.1", headers=AUTH
            ) as http:
                for prompt in prompts:
                    answer = (await http.post("/v1/observe", json=one_item(prompt))).json()["results"][0]
                    if answer["level"] == "flag":
                        break
                assert answer["level"] == "flag", answer
                service.has_room = lambda n_items, reserved=False: False  # the queue is full
                held = (await http.post(GUARDRAIL, json=guardrail_body("extractor", "one more"))).json()
                assert held["action"] == "BLOCKED" and held["observed"] is False and held["reason"] == "overloaded"
                other = (await http.post(GUARDRAIL, json=guardrail_body("newcomer", "hello"))).json()
                assert other["action"] == "NONE" and other["reason"] == "overloaded"
        finally:
            await service.stop()

    asyncio.run(run())
