"""A prompt sent again: retries, health checks and re-runs are not judged anew.

An account that sends a prompt it sent before (one of the last 4,096 it sent that were judged
as new), character for character, asks the model nothing new. Such a repeat is not stored or
folded into the account's statistics, so it can neither add evidence (a health check sending
"ping" all day) nor dilute or fake it (an extractor padding its stream with harmless prompts
sent again); its verdict is the account's as it stood, marked ``repeat``.
"""

from __future__ import annotations

import numpy as np
import pytest

import probewatch as pw
from probewatch.detect import prompt_memory, stream
from probewatch.io import persistence
from tests.support import topical_stream, unit_rows

# topics, calibration_path and make_engine: the engine contract's synthetic calibration
# (tests/unit/conftest.py)
from tests.unit.conftest import DIM

SEED = 31


def assert_same(got: list[pw.Verdict], expected: list[pw.Verdict], repeat_too: bool = True) -> None:
    """The same verdicts, scores to float rounding (a batch's products may sum in another order
    than a lone call's), as the batch-boundary contract compares them."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert (g.account, g.n_queries, g.level) == (e.account, e.n_queries, e.level)
        assert g.repeat == e.repeat or not repeat_too
        assert abs(g.score - e.score) <= 1e-4 * max(1.0, abs(e.score))
        assert abs(g.risk - e.risk) <= 1e-4 and abs(g.peak_risk - e.peak_risk) <= 1e-4


def extraction_stream(topics, seed: int = 3) -> tuple[list[str], np.ndarray, list[str]]:
    """Two ordinary accounts and one scattering its queries over the space, interleaved, each
    query with a prompt of its own."""
    rng = np.random.default_rng(seed)
    accounts, vectors = topical_stream(rng, 2, DIM, q_range=(40, 50), topics=topics, prefix="user")
    accounts = list(accounts) + ["scatter"] * 60
    vectors = np.concatenate([vectors, unit_rows(rng.standard_normal((60, DIM)))])
    order = rng.permutation(len(accounts))
    prompts = [f"prompt {i} of {accounts[i]}" for i in range(len(accounts))]
    return [accounts[i] for i in order], vectors[order], [prompts[i] for i in order]


def with_repeats(accounts, vectors, prompts, seed: int = 4, share: float = 0.4):
    """The same stream with exact repeats of earlier prompts inserted after some items (a retry,
    an edit taken back, or an extractor re-sending its own prompts to look like a person
    coming back to a subject); returns the stream and, per item, whether it is an inserted
    repeat."""
    rng = np.random.default_rng(seed)
    sent: dict[str, list[int]] = {}
    out_accounts, rows, out_prompts, inserted = [], [], [], []
    for i, (account, prompt) in enumerate(zip(accounts, prompts, strict=True)):
        out_accounts.append(account)
        rows.append(vectors[i])
        out_prompts.append(prompt)
        inserted.append(False)
        sent.setdefault(account, []).append(i)
        while rng.random() < share:
            j = int(rng.choice(sent[account]))  # any earlier prompt: one sent again long after counts too
            out_accounts.append(account)
            rows.append(vectors[j])
            out_prompts.append(prompts[j])
            inserted.append(True)
    return out_accounts, np.stack(rows), out_prompts, inserted


def observe_in_batches(engine, accounts, vectors, prompts, sizes=(1,)):
    out, start, k = [], 0, 0
    while start < len(accounts):
        size = sizes[k % len(sizes)]
        end = start + size
        out += engine.observe_embeddings(accounts[start:end], vectors[start:end], prompts=prompts[start:end])
        start, k = end, k + 1
    return out


def test_a_health_check_sent_all_day_stays_where_its_first_query_put_it():
    """On the shipped calibration one prompt sent 300 times was flagged after about 22 of them
    (every window statistic of one point is far from people's); now it is one query."""
    engine = pw.Engine(device="cpu", campaigns=False)
    vector = unit_rows(np.random.default_rng(0).standard_normal((1, engine.dim)))
    verdicts = engine.observe_embeddings(["monitor"] * 300, np.repeat(vector, 300, axis=0), prompts=["Say OK."] * 300)
    assert {v.level for v in verdicts} == {pw.Level.OK}
    assert [v.repeat for v in verdicts] == [False] + [True] * 299
    assert {v.n_queries for v in verdicts} == {1}
    assert engine.report("monitor").history_size == 1
    assert engine.stats().repeats == 299
    # one call at a time, as a monitor sends them
    lone = pw.Engine(device="cpu", campaigns=False)
    for _ in range(40):
        (v,) = lone.observe_embeddings(["monitor"], vector, prompts=["Say OK."])
    assert v.repeat and v.n_queries == 1 and v.level is pw.Level.OK


def test_repeats_neither_add_evidence_nor_hide_it(make_engine, topics):
    accounts, vectors, prompts = extraction_stream(topics)
    plain = observe_in_batches(make_engine(), accounts, vectors, prompts, sizes=(5,))
    padded_stream = with_repeats(accounts, vectors, prompts)
    padded = observe_in_batches(make_engine(), *padded_stream[:3], sizes=(5,))
    inserted = padded_stream[3]
    assert sum(inserted) > 40
    # the items that are not repeats get exactly the verdicts they get without the repeats
    assert_same([v for v, extra in zip(padded, inserted, strict=True) if not extra], plain)
    # and a repeat reads as its account stood right before it
    last: dict[str, pw.Verdict] = {}
    for v, extra in zip(padded, inserted, strict=True):
        if extra:
            assert v.repeat
            assert_same([v], [last[v.account]], repeat_too=False)
        else:
            assert not v.repeat
            last[v.account] = v
    assert any(v.level is pw.Level.FLAG for v in plain if v.account == "scatter")


@pytest.mark.parametrize("storage", ["float16", "int8"])
def test_batches_and_single_calls_agree_with_repeats(make_engine, topics, storage):
    accounts, vectors, prompts, inserted = with_repeats(*extraction_stream(topics, seed=8), seed=9)
    ones = observe_in_batches(make_engine(storage=storage), accounts, vectors, prompts)
    whole = make_engine(storage=storage).observe_embeddings(accounts, vectors, prompts=prompts)
    mixed = observe_in_batches(make_engine(storage=storage), accounts, vectors, prompts, sizes=(7, 1, 33, 2))
    assert_same(whole, ones)
    assert_same(mixed, ones)
    assert [v.repeat for v in whole] == inserted


def test_a_repeat_first_in_its_batch_reads_the_account_before_the_batch(make_engine):
    engine = make_engine()
    rng = np.random.default_rng(5)
    rows = unit_rows(rng.standard_normal((30, DIM)))
    prompts = [f"question {i}" for i in range(30)]
    before = engine.observe_embeddings(["a"] * 20, rows[:20], prompts=prompts[:20])[-1]
    # a repeat, then a new prompt, then a repeat of that new prompt, then one of an old one
    batch = engine.observe_embeddings(
        ["a", "b", "a", "a", "a"],
        np.stack([rows[19], rows[25], rows[20], rows[20], rows[5]]),
        prompts=["question 19", "other", "question 20", "question 20", "question 5"],
    )
    assert [v.repeat for v in batch] == [True, False, False, True, True]
    assert_same(batch[:1], [before], repeat_too=False)
    assert_same(batch[3:5], [batch[2]] * 2, repeat_too=False)
    assert batch[2].n_queries == 21


@pytest.fixture
def small_memory(monkeypatch):
    """A sent memory of 4 prompts, so its bounds are reached in a few queries."""
    for module in (prompt_memory, stream, persistence):
        monkeypatch.setattr(module, "SENT_MEMORY", 4)
    return 4


def test_the_sent_memory_holds_the_latest_prompts_judged_as_new(make_engine, small_memory):
    engine = make_engine()
    rows = unit_rows(np.random.default_rng(6).standard_normal((40, DIM)))

    def send(i: int, prompt: str) -> pw.Verdict:
        return engine.observe_embeddings(["a"], rows[i : i + 1], prompts=[prompt])[0]

    send(0, "the first question")
    for i in range(1, small_memory):
        send(i, f"question {i}")
    assert send(0, "the first question").repeat  # three others since: still held
    assert send(1, "question 1").repeat  # and a repeat does not push anything out
    send(small_memory, "one more")
    v = send(0, "the first question")  # four since: judged again, as a new query
    assert not v.repeat and v.n_queries == small_memory + 2
    assert not send(1, "question 1 ").repeat  # character for character, or not at all


def test_batches_single_calls_and_a_reload_agree_at_the_memory_bounds(make_engine, small_memory, tmp_path):
    """Prompts drawn from a few texts: the memory fills, pushes prompts out and takes them
    back, within batches and across them, and across a snapshot."""
    rng = np.random.default_rng(12)
    texts = [f"text {i}" for i in range(9)]
    rows = unit_rows(rng.standard_normal((len(texts), DIM)))
    picks = rng.integers(0, len(texts), 300)
    accounts = [("a", "b")[int(k)] for k in rng.integers(0, 2, 300)]
    prompts = [texts[k] for k in picks]
    vectors = rows[picks]
    ones = observe_in_batches(make_engine(), accounts, vectors, prompts)
    whole = make_engine().observe_embeddings(accounts, vectors, prompts=prompts)
    mixed = observe_in_batches(make_engine(), accounts, vectors, prompts, sizes=(7, 1, 33, 2))
    assert_same(whole, ones)
    assert_same(mixed, ones)
    assert 30 < sum(v.repeat for v in ones) < 270
    resumed = make_engine()
    first = observe_in_batches(resumed, accounts[:150], vectors[:150], prompts[:150], sizes=(5,))
    resumed.save(tmp_path / "s.npz")
    second = observe_in_batches(pw.Engine.load(tmp_path / "s.npz"), accounts[150:], vectors[150:], prompts[150:])
    assert_same(first + second, ones)


def test_queries_without_prompts_are_always_judged(make_engine):
    engine = make_engine()
    row = unit_rows(np.random.default_rng(7).standard_normal((1, DIM)))
    verdicts = engine.observe_embeddings(["a"] * 3, np.repeat(row, 3, axis=0))
    assert [v.n_queries for v in verdicts] == [1, 2, 3]
    assert not any(v.repeat for v in verdicts)
    assert engine.stats().repeats == 0


def test_a_snapshot_keeps_what_was_sent(make_engine, calibration_path, tmp_path):
    engine = make_engine()
    rows = unit_rows(np.random.default_rng(8).standard_normal((5, DIM)))
    prompts = [f"q{i}" for i in range(5)]
    engine.observe_embeddings(["a"] * 5, rows, prompts=prompts)
    engine.observe_embeddings(["a"], rows[:1], prompts=prompts[:1])
    engine.save(tmp_path / "s.npz")
    loaded = pw.Engine.load(tmp_path / "s.npz")
    assert loaded.stats().repeats == 1
    again = loaded.observe_embeddings(["a"], rows[3:4], prompts=prompts[3:4])[0]
    assert again.repeat and again.n_queries == 5
    assert again.to_dict()["repeat"] is True
    loaded.reset()
    assert loaded.stats().repeats == 0


def test_calibration_leaves_repeats_out(topics):
    """Benign accounts that retry their prompts teach the tables what they teach without the
    retries, as the live stream judges them."""
    rng = np.random.default_rng(SEED + 2)
    accounts, vectors = topical_stream(rng, 40, DIM, q_range=(10, 30), topics=topics, prefix="cal")
    prompts = [f"prompt {i}" for i in range(len(accounts))]
    retried = with_repeats(accounts, vectors, prompts, seed=10, share=0.3)
    assert sum(retried[3]) > 100
    plain = pw.Engine.from_benign_embeddings(accounts, vectors, prompts=prompts, device="cpu", seed=3)
    padded = pw.Engine.from_benign_embeddings(retried[0], retried[1], prompts=retried[2], device="cpu", seed=3)
    assert padded.detector.flag_threshold == plain.detector.flag_threshold
    np.testing.assert_array_equal(padded.calibration.account_max_scores, plain.calibration.account_max_scores)
    np.testing.assert_array_equal(padded.reference.bank, plain.reference.bank)


def _rewritten(path, out, **changes):
    """The snapshot at ``path`` with arrays replaced (None: removed), written to ``out``."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    for name, value in changes.items():
        if value is None:
            arrays.pop(name)
        else:
            arrays[name] = value
    np.savez(out, **arrays)
    return out


def test_a_snapshot_whose_sent_memory_is_damaged_is_refused(make_engine, tmp_path):
    """Red-team finding: a 0.18.0 snapshot without its digests loaded with every memory empty,
    and counts swapped between accounts gave one account's prompts to another."""
    engine = make_engine()
    rows = unit_rows(np.random.default_rng(9).standard_normal((30, DIM)))
    engine.observe_embeddings(["a"] * 20 + ["b"] * 10, rows, prompts=[f"p{i}" for i in range(30)])
    path = tmp_path / "s.npz"
    engine.save(path)
    with np.load(path, allow_pickle=False) as z:
        counts, digests = z["state_sent_count"], z["state_sent_digests"]
    assert counts.ravel().tolist() == [20, 10] and digests.shape == (30, 2)
    with pytest.raises(pw.SnapshotError, match="sent memory but the snapshot holds none"):
        pw.Engine.load(_rewritten(path, tmp_path / "lost.npz", state_sent_digests=None))
    with pytest.raises(pw.SnapshotError, match="counts 20 prompts for 10 queries"):
        pw.Engine.load(_rewritten(path, tmp_path / "swapped.npz", state_sent_count=counts[::-1].copy()))
    with pytest.raises(pw.SnapshotError, match=r"expected \(30, 2\) int64"):
        pw.Engine.load(_rewritten(path, tmp_path / "short.npz", state_sent_digests=digests[:29]))
    # a snapshot from before 0.18.0 has neither: its accounts start with empty memories
    old = pw.Engine.load(_rewritten(path, tmp_path / "old.npz", state_sent_digests=None, state_sent_count=None))
    assert not old.observe_embeddings(["a"], rows[:1], prompts=["p0"])[0].repeat


def test_long_prompts_are_always_judged(make_engine):
    """Prompts are cut to a size limit before they reach the engine (the sidecar's
    max_prompt_chars), so two long prompts that differ past the cut would read as one."""
    engine = make_engine()
    rows = unit_rows(np.random.default_rng(10).standard_normal((3, DIM)))
    long = "x" * 4097
    verdicts = engine.observe_embeddings(["a"] * 3, rows[[0, 0, 1]], prompts=[long, long, "x" * 4096])
    assert [v.repeat for v in verdicts] == [False, False, False]
    assert engine.observe_embeddings(["a"], rows[1:2], prompts=["x" * 4096])[0].repeat


def test_the_memory_budget_counts_each_digest(make_engine):
    engine = make_engine(history_cap=16, eviction_block=8, campaigns=False)  # its tables hold prompts too
    rows = unit_rows(np.random.default_rng(11).standard_normal((200, DIM)))
    before = engine.stats().bytes_held
    engine.observe_embeddings(["a"] * 100, rows[:100], prompts=[f"p{i}" for i in range(100)])
    engine.observe_embeddings(["b"] * 100, rows[100:])  # no prompts: nothing remembered
    stored = engine.stats().stored_queries
    grown = engine.stats().bytes_held - before
    fresh = make_engine(history_cap=16, eviction_block=8, campaigns=False)
    fresh.observe_embeddings(["a"] * 100, rows[:100])
    fresh.observe_embeddings(["b"] * 100, rows[100:])
    assert fresh.stats().stored_queries == stored  # the same vectors held
    assert grown - (fresh.stats().bytes_held - before) == 16 * 100  # and 100 digests of 16 bytes
    engine.forget("a")
    fresh.forget("a")
    assert engine.stats().bytes_held == fresh.stats().bytes_held
