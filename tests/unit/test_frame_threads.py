"""Frame threads (probewatch.detect.features, FRAME_THREADS): the queries an account sends under
a frame it took up after it started, judged for topic return as an account of their own.

When a thread starts and what joins it, which returns it counts, how few it keeps, that batch
boundaries and snapshots change nothing, the statistic against the account statistic it
mirrors, and the reason a verdict gives. All prompts are written here; vectors are random
(unrelated queries) unless a test makes one close to another.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

import probewatch as pw
from probewatch.detect.features import FEATURE_NAMES, AccountState
from probewatch.detect.grids import PART_MEMORY, prompt_parts
from probewatch.detect.prompt_memory import (
    FRAME_IDLE_PROMPTS,
    FRAME_MEMORY,
    FRAME_MIN_PROMPTS,
    FRAME_MIN_QUERIES,
    FRAME_THREADS,
)
from probewatch.detect.scoring import Detector
from probewatch.errors import SnapshotError
from tests.support import uniform_calibration

DIM = 384
WORDS = [
    "river",
    "orange",
    "bicycle",
    "lantern",
    "copper",
    "meadow",
    "violin",
    "harbor",
    "pepper",
    "glacier",
    "tunnel",
    "marble",
    "falcon",
    "canvas",
    "thunder",
    "pocket",
    "saddle",
    "quartz",
    "window",
    "basket",
    "engine",
    "velvet",
    "ladder",
    "comet",
]
FRAME = "Solve this and explain your reasoning in detail, as if teaching a student: {q}"
OTHER_FRAME = "Translate the following sentence into formal French please: {q}"
THIRD_FRAME = "Rewrite the following text so that a child could read it: {q}"
RATE = FEATURE_NAMES.index("framed_return_rate")
SHARE = FEATURE_NAMES.index("framed_share")


def _question(rng: random.Random) -> str:
    return " ".join(rng.sample(WORDS, 6)) + "?"


def _chat(rng: random.Random, n: int) -> list[str]:
    """Distinct conversational prompts that share no part with each other."""
    return [f"{_question(rng).capitalize()} {' '.join(rng.sample(WORDS, 5))} please." for _ in range(n)]


def _framed(rng: random.Random, n: int, frame: str = FRAME) -> list[str]:
    return [frame.format(q=_question(rng)) for _ in range(n)]


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _state() -> AccountState:
    return AccountState(128, 64)


def _note(state: AccountState, prompts: list[str], vectors: np.ndarray) -> None:
    for text, vector in zip(prompts, vectors, strict=True):
        state.note_prompt(text, vector=vector)


def test_a_frame_taken_up_mid_stream_starts_a_thread_at_its_fourth_prompt():
    rng, vrng = random.Random(1), np.random.default_rng(1)
    state = _state()
    _note(state, _chat(rng, 40), _unit(vrng, 40))
    framed = _framed(rng, 20)
    vectors = _unit(vrng, 20)
    _note(state, framed[: FRAME_MIN_PROMPTS - 1], vectors[: FRAME_MIN_PROMPTS - 1])
    assert not state.frame_parts.any() and state.frame_vectors is None
    _note(state, framed[FRAME_MIN_PROMPTS - 1 :], vectors[FRAME_MIN_PROMPTS - 1 :])
    members = 20 - FRAME_MIN_PROMPTS + 1
    assert int(state.frame_counts[:, 0].max()) == members  # from the prompt that made it recurrent
    assert state.frame_vectors.shape == (FRAME_THREADS, FRAME_MEMORY, DIM)
    assert state.framed_stats() == (0.0, members)  # unrelated questions never return


def test_an_accounts_bytes_count_its_prompt_memory_and_its_thread_vectors():
    """The memory budget charges ``AccountState.nbytes``: the prompt memory's arrays (a base
    class's slots) count, and so do a thread's vectors once the first thread allocates them."""
    rng, vrng = random.Random(11), np.random.default_rng(11)
    state = _state()
    numeric = state.ring_nn.nbytes + state.cell_counts.nbytes + state.nn_hist.nbytes
    text = state.prompt_sketches.nbytes + state.part_ring.nbytes + state.part_noted.nbytes + state.appended.nbytes
    empty = state.nbytes()
    assert empty >= numeric + text
    _note(state, _chat(rng, 40), _unit(vrng, 40))
    _note(state, _framed(rng, FRAME_MIN_PROMPTS), _unit(vrng, FRAME_MIN_PROMPTS))
    assert state.frame_vectors is not None
    # int8 codes, one byte each; and the sent memory's digests, 16 bytes a slot as it grows
    assert state.nbytes() == empty + FRAME_THREADS * FRAME_MEMORY * DIM + state.sent_digests.nbytes
    assert state.sent_digests.nbytes == 16 * 64  # 44 prompts noted: grown 16, 32, 64 rows of 128 bits


def test_a_thread_is_reported_from_its_tenth_query_on():
    rng, vrng = random.Random(2), np.random.default_rng(2)
    state = _state()
    _note(state, _chat(rng, 30), _unit(vrng, 30))
    _note(state, _framed(rng, FRAME_MIN_PROMPTS - 1 + FRAME_MIN_QUERIES - 1), _unit(vrng, 12))
    assert state.framed_stats()[1] == 0 and math.isnan(state.framed_stats()[0])
    _note(state, _framed(rng, 1), _unit(vrng, 1))
    assert state.framed_stats() == (0.0, FRAME_MIN_QUERIES)


def test_an_app_template_in_every_prompt_starts_no_thread():
    rng, vrng = random.Random(3), np.random.default_rng(3)
    state = _state()
    _note(state, _framed(rng, 600), _unit(vrng, 600))  # long past the part ring's reach
    assert int(state.parts_written[0]) > 4 * PART_MEMORY
    assert not state.frame_parts.any() and state.frame_vectors is None
    # nor one that was in more than half of the prompts whenever it recurred
    state = _state()
    _note(state, _chat(rng, 2), _unit(vrng, 2))
    _note(state, _framed(rng, 30), _unit(vrng, 30))
    assert not state.frame_parts.any()


def test_prompts_without_parts_count_among_the_prompts_a_frame_must_be_half_of_at_most():
    rng, vrng = random.Random(10), np.random.default_rng(10)
    short = [f"{' '.join(rng.sample(WORDS, 4))}?" for _ in range(40)]  # one segment: no parts
    assert not any(prompt_parts(text) for text in short)
    state = _state()
    _note(state, short, _unit(vrng, 40))
    _note(state, _framed(rng, FRAME_MIN_PROMPTS), _unit(vrng, FRAME_MIN_PROMPTS))
    assert int(state.frame_counts[:, 0].max()) == 1  # 4 of 44 prompts: a frame taken up


def test_a_prompt_retried_does_not_start_a_thread():
    rng, vrng = random.Random(4), np.random.default_rng(4)
    state = _state()
    _note(state, _chat(rng, 40), _unit(vrng, 40))
    retried = _framed(rng, 1) * 8
    _note(state, retried, _unit(vrng, 8))
    assert not state.frame_parts.any()


def test_returns_are_queries_close_to_one_of_the_threads_latest_vectors():
    rng, vrng = random.Random(5), np.random.default_rng(5)
    state = _state()
    _note(state, _chat(rng, 40), _unit(vrng, 40))
    framed = _framed(rng, FRAME_MIN_PROMPTS + 2 * FRAME_MEMORY + 1)
    vectors = _unit(vrng, len(framed))
    first = FRAME_MIN_PROMPTS - 1  # the thread's first query
    # one query comes back to the thread's first subject while it is among the latest kept ...
    vectors[first + 5] = vectors[first] + 0.3 * _unit(vrng, 1)[0]
    # ... one to a subject the thread no longer keeps (more than FRAME_MEMORY queries back)
    vectors[-1] = vectors[first + 1] + 0.3 * _unit(vrng, 1)[0]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    _note(state, framed, vectors)
    members, returns, _ = state.frame_counts[state.frame_parts != 0][0].tolist()
    assert members == len(framed) - first and returns == 1
    assert state.framed_stats() == (1 / (members - 1), members)


def test_two_threads_at_most_and_an_idle_one_is_replaced():
    rng, vrng = random.Random(6), np.random.default_rng(6)
    state = _state()
    _note(state, _chat(rng, 60), _unit(vrng, 60))
    for frame in (FRAME, OTHER_FRAME, THIRD_FRAME):
        _note(state, _framed(rng, 12, frame), _unit(vrng, 12))
    started = set(state.frame_parts.tolist())
    assert FRAME_THREADS == 2 and len(started) == 2 and 0 not in started
    members_before = sorted(state.frame_counts[:, 0].tolist())
    assert members_before == [12 - FRAME_MIN_PROMPTS + 1] * 2
    # the third frame waits; after FRAME_IDLE_PROMPTS without the first two it takes the idler slot
    _note(state, _chat(rng, FRAME_IDLE_PROMPTS), _unit(vrng, FRAME_IDLE_PROMPTS))
    _note(state, _framed(rng, 12, FRAME), _unit(vrng, 12))  # the first frame is busy again
    _note(state, _framed(rng, 12, THIRD_FRAME), _unit(vrng, 12))
    assert len(set(state.frame_parts.tolist()) - started) == 1  # the third took one slot
    # every one of its prompts joined (its part was already recurrent); the first frame kept growing
    assert sorted(state.frame_counts[:, 0].tolist()) == [12, 12 - FRAME_MIN_PROMPTS + 1 + 12]


def _engine() -> pw.Engine:
    return pw.Engine(device="cpu", campaigns=False)


def _blended(seed: int) -> tuple[list[str], np.ndarray]:
    rng, vrng = random.Random(seed), np.random.default_rng(seed)
    prompts = _chat(rng, 50) + _framed(rng, 40) + _chat(rng, 10) + _framed(rng, 20, OTHER_FRAME)
    return prompts, _unit(vrng, len(prompts))


def test_batches_and_single_items_give_the_same_frame_features():
    prompts, vectors = _blended(7)
    accounts = ["a"] * len(prompts)
    whole = _engine().pipeline.stream.step(accounts, vectors, [None] * len(prompts), prompts)
    stream = _engine().pipeline.stream
    single = [stream.step(accounts[i : i + 1], vectors[i : i + 1], [None], prompts[i : i + 1]) for i in range(120)]
    rows = np.concatenate([s.features for s in single])
    np.testing.assert_array_equal(whole.features[:, [RATE, SHARE]], rows[:, [RATE, SHARE]])
    assert np.isfinite(rows[-1, [RATE, SHARE]]).all() and (rows[:, SHARE] > 0).sum() >= 40
    # a query sent without its prompt reads the account's threads as they stand
    later = stream.step(["a"], _unit(np.random.default_rng(0), 1), [None], None)
    np.testing.assert_array_equal(later.features[0, [RATE]], rows[-1, [RATE]])


def test_the_memory_budget_counts_an_accounts_thread_vectors_from_its_first_thread():
    prompts, vectors = _blended(11)
    engine = _engine()
    stream = engine.pipeline.stream
    engine.observe_embeddings(["a"] * 50, vectors[:50], prompts=prompts[:50])  # conversation only
    before = stream.held_bytes()
    assert engine.pipeline.states["a"].frame_vectors is None
    engine.observe_embeddings(["a"] * 20, vectors[50:70], prompts=prompts[50:70])  # a framed burst
    assert engine.pipeline.states["a"].frame_vectors is not None
    grown = stream.held_bytes() - before
    thread_bytes = FRAME_THREADS * FRAME_MEMORY * DIM
    assert thread_bytes <= grown < thread_bytes + 20 * DIM * 4  # the threads plus 20 stored queries


def test_snapshots_keep_frame_threads_and_give_the_same_verdicts(tmp_path):
    prompts, vectors = _blended(8)
    split = 70  # inside the first burst
    straight, saved = _engine(), _engine()
    for engine in (straight, saved):
        engine.observe_embeddings(["a"] * split, vectors[:split], prompts=prompts[:split])
    saved.save(tmp_path / "snapshot.npz")
    restored = pw.Engine.load(tmp_path / "snapshot.npz")
    before, after = saved.pipeline.states["a"], restored.pipeline.states["a"]
    np.testing.assert_array_equal(before.frame_vectors, after.frame_vectors)
    assert before.frame_counts.tolist() == after.frame_counts.tolist() and before.frame_parts.any()
    rest = slice(split, None)
    expected = straight.observe_embeddings(["a"] * 50, vectors[rest], prompts=prompts[rest])
    got = restored.observe_embeddings(["a"] * 50, vectors[rest], prompts=prompts[rest])
    assert [v.score for v in got] == [v.score for v in expected]
    assert restored.report("a").features["framed_share"] == straight.report("a").features["framed_share"]
    # memory accounting counts the thread's vectors, and forgetting gives them back
    pipeline = restored.pipeline
    held = pipeline.stream.held_bytes()
    pipeline.forget("a")
    assert held - pipeline.stream.held_bytes() >= FRAME_THREADS * FRAME_MEMORY * DIM


def test_a_snapshot_with_bad_frame_vectors_is_refused(tmp_path):
    prompts, vectors = _blended(9)
    engine = _engine()
    engine.observe_embeddings(["a"] * 80, vectors[:80], prompts=prompts[:80])
    engine.save(tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz", allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    assert arrays["state_frame_accounts"].tolist() == [0]
    cases = {
        "elsewhere": {**arrays, "state_frame_accounts": np.array([3])},
        "shape": {**arrays, "state_frame_vectors": arrays["state_frame_vectors"][:, :, :5]},
        "missing": {
            k: v for k, v in arrays.items() if not k.startswith("state_frame_vectors") and k != "state_frame_accounts"
        },
    }
    for name, bad in cases.items():
        np.savez(tmp_path / f"{name}.npz", **bad)
        with pytest.raises(SnapshotError, match="frame"):
            pw.Engine.load(tmp_path / f"{name}.npz")


def _thread_rows(members, returns, ns) -> tuple[np.ndarray, np.ndarray]:
    x = np.full((len(ns), len(FEATURE_NAMES)), 0.5)
    x[:, SHARE] = np.asarray(members) / np.asarray(ns)
    x[:, RATE] = [k / (m - 1) for k, m in zip(returns, members, strict=True)]
    return x, np.asarray(ns)


def test_the_frame_statistic_is_the_topic_return_statistic_of_the_thread_alone():
    cal = uniform_calibration(topic_return=(0.12, 1.5))
    members, returns = [10, 40, 40, 120, 9], [0, 1, 8, 3, 0]
    framed = cal.framed_return_scores(*_thread_rows(members, returns, [600, 600, 90, 1500, 600]))
    topic_rate = FEATURE_NAMES.index("topic_return_rate")
    alone = np.full((5, len(FEATURE_NAMES)), 0.5)
    alone[:, topic_rate] = [k / (m - 1) for k, m in zip(returns, members, strict=True)]
    expected = cal.topic_return_scores(alone, np.asarray(members))
    np.testing.assert_allclose(framed[:4], expected[:4], rtol=1e-12)
    assert framed[4] == 0.0  # too short to score, as an account would be
    assert framed[0] > 0 and framed[2] < framed[1]
    # the account's topic-return score is the higher of the two
    rows, ns = _thread_rows(members, returns, [600] * 5)
    framed = cal.framed_return_scores(rows, ns)
    topic = cal.topic_return_scores(rows, ns)
    np.testing.assert_allclose(cal.own_statistic_scores(rows, ns)[0], np.maximum(topic, framed))
    # off where the calibration's threshold was fitted without it
    off = uniform_calibration(topic_return=(0.12, 1.5), framed_returns=False)
    assert not off.framed_return_scores(rows, ns).any()


def test_a_thread_that_never_returns_leads_the_reasons():
    cal = uniform_calibration(topic_return=(0.12, 1.5))
    detector = Detector(cal, 0.001, 0.01)
    rows, ns = _thread_rows([80], [0], [1500])
    rows[0, FEATURE_NAMES.index("topic_return_rate")] = 0.6  # the account as a whole returns often
    scores, _, reasons = detector.judge(rows, ns, [np.zeros(16)])
    assert scores[0] == pytest.approx(cal.framed_return_scores(rows, ns)[0])
    assert reasons[0][0].feature == "framed_return_rate" and reasons[0][0].direction == "below"
