"""The walk-away statistic: an account that walks away from its seeds one small edit at a time.

``walk_steps`` against a plain loop written the way its definition reads, what it finds in
walks, template clusters, short editing sessions and independent queries, the binomial tail
by hand, how the detector combines the statistic with the look-alike score, how calibration
fits it and how it travels through calibration files and snapshots.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from probewatch.detect.features import (
    CONTINUES,
    FEATURE_NAMES,
    FRESH,
    UNKNOWN_TEXT,
    WALK_DEEP_CLOSE_PER_LINK,
    WALK_DEEP_DEPTH,
    WALK_DEEP_REVERSALS,
    WALK_DEPTH,
    WALK_LINK_SIMILARITY,
    WALK_MAX_CLOSE,
    WALK_ROOT_SIMILARITY,
    AccountState,
    QueryFacts,
    walk_steps,
)
from probewatch.detect.fitting import _fit_walk_away
from probewatch.detect.scoring import (
    MIN_SCORED_QUERIES,
    MIN_TOPIC_RETURN_ACCOUNTS,
    N_FEATURES,
    WALK_AWAY_MIN_QUERIES,
    WALK_AWAY_MIN_RATE,
    WALK_AWAY_QUANTILE,
    Calibration,
    Detector,
)
from probewatch.errors import CalibrationError
from tests.support import feature_rows, uniform_calibration

RATE = FEATURE_NAMES.index("walk_away_rate")
DIM = 64


def _falling(gram: np.ndarray, t: int, ancestors: list[int], depth: int, reversals: int = 0) -> bool:
    """Row t has ``depth`` ancestors and its similarity falls at each step back but at most
    ``reversals`` of them."""
    if len(ancestors) < depth:
        return False
    sims = [gram[t, a] for a in ancestors[:depth]]
    return sum(later >= earlier for earlier, later in itertools.pairwise(sims)) <= reversals


def reference_walk_steps(gram: np.ndarray, first: int, marks: np.ndarray | None = None) -> int:
    """One row at a time: parent = most similar earlier row if at least the link similarity;
    follow parents to the chain's first row. A step: WALK_DEPTH links back with similarity
    falling at each, far from the chain's first row and few close rows; or, for a row known
    not to continue an earlier prompt, WALK_DEEP_DEPTH links back with similarity falling at
    each but WALK_DEEP_REVERSALS, whatever the distance, with at most WALK_DEEP_CLOSE_PER_LINK
    close rows per link back to its chain's first row. A row that continues an earlier prompt:
    never."""
    marks = np.full(gram.shape[0], UNKNOWN_TEXT) if marks is None else marks
    m = gram.shape[0]
    parent = list(range(m))
    for t in range(1, m):
        j = max(range(t), key=lambda i: (gram[t, i], -i))  # argmax, first on ties
        if gram[t, j] >= WALK_LINK_SIMILARITY:
            parent[t] = j
    steps = 0
    for t in range(max(first, 0), m):
        chain = [t]
        while parent[chain[-1]] != chain[-1]:
            chain.append(parent[chain[-1]])
        ancestors = chain[1:]
        far = gram[t, chain[-1]] < WALK_ROOT_SIMILARITY
        close = sum(gram[t, i] >= WALK_LINK_SIMILARITY for i in range(t))
        sparse = close <= WALK_MAX_CLOSE
        if marks[t] == CONTINUES:
            continue
        shallow = _falling(gram, t, ancestors, WALK_DEPTH)
        deep = _falling(gram, t, ancestors, WALK_DEEP_DEPTH, WALK_DEEP_REVERSALS)
        deep = deep and close <= WALK_DEEP_CLOSE_PER_LINK * len(ancestors)
        steps += (shallow and far and sparse) or (marks[t] == FRESH and deep)
    return steps


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_walk(rng, steps: int, step_size: float = 0.4) -> np.ndarray:
    """Each vector a small random move from the previous one: similar neighbours, far ends."""
    out = [unit(rng.normal(size=DIM))]
    for _ in range(steps - 1):
        out.append(unit(out[-1] + step_size * unit(rng.normal(size=DIM))))
    return np.array(out)


def template_cluster(rng, n: int) -> np.ndarray:
    """One fixed template with a different short field each time: everything close together."""
    base = unit(rng.normal(size=DIM))
    return unit(base + 0.12 * unit(rng.normal(size=(n, DIM))))


def gram_of(x: np.ndarray) -> np.ndarray:
    return (x @ x.T).astype(np.float64)


@pytest.mark.parametrize("seed", range(8))
def test_walk_steps_match_the_plain_loop(seed):
    rng = np.random.default_rng(seed)
    parts = [random_walk(rng, int(rng.integers(3, 16)), float(rng.uniform(0.05, 0.2))) for _ in range(4)]
    parts += [template_cluster(rng, 12), unit(rng.normal(size=(10, DIM)))]
    x = np.concatenate(parts)
    x = x[rng.permutation(len(x))] if seed % 2 else x  # interleaved as well as in order
    gram = gram_of(x)
    marks = rng.choice([UNKNOWN_TEXT, FRESH, FRESH, CONTINUES], size=len(x)).astype(np.int8)
    for first in (0, 1, len(x) // 2, len(x) - 1, len(x)):
        assert walk_steps(gram, first) == reference_walk_steps(gram, first), first
        assert walk_steps(gram, first, marks) == reference_walk_steps(gram, first, marks), first


def test_a_walk_steps_where_templates_editing_sessions_and_independent_queries_do_not():
    rng = np.random.default_rng(3)
    walk = random_walk(rng, 40)
    walk_gram = gram_of(walk)
    assert walk_gram[0, -1] < WALK_ROOT_SIMILARITY < np.diagonal(walk_gram, 1).min()  # small steps, far ends
    assert walk_steps(walk_gram, 0) >= 20
    assert walk_steps(gram_of(template_cluster(rng, 60)), 0) == 0  # close together, no direction
    session = random_walk(rng, WALK_DEPTH)  # an edited prompt re-sent a few times
    sessions = np.concatenate([session] + [random_walk(rng, WALK_DEPTH) for _ in range(9)])
    assert walk_steps(gram_of(sessions), 0) == 0
    assert walk_steps(gram_of(unit(rng.normal(size=(60, DIM)))), 0) == 0


def test_a_deep_chain_of_tiny_edits_steps_though_it_stays_close_to_its_seed():
    """Character-level edits: every variant stays close to the seed and to the others (the
    distance and density tests fail), but the chain keeps going back, each edit a little
    further. Deep paths count where the prompts show no continuation; an editing session
    shorter than WALK_DEEP_DEPTH does not; without prompts only the distance rule judges."""
    rng = np.random.default_rng(11)
    chains = [random_walk(rng, 30, step_size=0.06) for _ in range(3)]
    tight = gram_of(np.concatenate(chains))
    fresh = np.full(len(tight), FRESH, dtype=np.int8)
    assert min(gram_of(c)[0, -1] for c in chains) >= WALK_ROOT_SIMILARITY  # never walks away
    steps = walk_steps(tight, 0, fresh)
    assert steps == reference_walk_steps(tight, 0, fresh) >= 3 * (30 - WALK_DEEP_DEPTH) // 2
    assert walk_steps(tight, 0) == walk_steps(tight, 0, np.full(len(tight), UNKNOWN_TEXT, np.int8)) == 0
    assert walk_steps(tight, 0, np.full(len(tight), CONTINUES, np.int8)) == 0  # a growing transcript
    short = np.concatenate([random_walk(rng, WALK_DEEP_DEPTH, step_size=0.06) for _ in range(8)])
    assert walk_steps(gram_of(short), 0, np.full(len(short), FRESH, np.int8)) == 0  # seven edits, eight times
    cluster = gram_of(template_cluster(rng, 120))
    assert walk_steps(cluster, 0, np.full(120, FRESH, np.int8)) == 0


def _chain_gram(n: int) -> np.ndarray:
    """n prompts, each a small edit of the one before, all close to the seed (0.9+): similarity
    falls by 0.01 per edit between any two."""
    i = np.arange(n)
    return 0.99 - 0.01 * np.abs(i[:, None] - i[None, :]).astype(np.float64) + 0.01 * np.eye(n)


def test_a_deep_path_may_reverse_once_but_not_twice():
    """A seed that dominates its prompt leaves successive variants almost equally close, so one
    link back may be no less similar than the one before (an undone mutation); a path that
    reverses twice in eight links is no walk. Each probed at the chain's last prompt alone."""
    fresh = np.full(WALK_DEEP_DEPTH + 2, FRESH, dtype=np.int8)
    last = WALK_DEEP_DEPTH + 1
    gram = _chain_gram(WALK_DEEP_DEPTH + 2)
    assert walk_steps(gram, last, fresh) == 1
    once = gram.copy()
    once[last, 5] = once[5, last] = once[last, 6] + 0.001  # six links back beats five
    assert walk_steps(once, last, fresh) == reference_walk_steps(once, last, fresh) == 1
    twice = once.copy()
    twice[last, 3] = twice[3, last] = twice[last, 4] + 0.001
    assert walk_steps(twice, last, fresh) == reference_walk_steps(twice, last, fresh) == 0
    assert walk_steps(once, last) == 0  # without prompts only the distance rule judges: close to its seed


def test_a_deep_path_through_a_crowd_is_no_walk():
    """Behind one app template that dominates its prompts, every query is close to nearly every
    other: a chain of nearest neighbours through that crowd can fall for eight links, but the
    query has far more close queries than links back. An edit walk's close queries are its own
    earlier variants."""
    chain_length = WALK_DEEP_DEPTH + 2

    def walk_after(crowd: int) -> tuple[np.ndarray, int]:
        n = crowd + chain_length
        gram = np.full((n, n), 0.5)
        gram[crowd:, crowd:] = _chain_gram(chain_length)
        gram[-1, :crowd] = gram[:crowd, -1] = WALK_LINK_SIMILARITY + 0.01  # close to the last query only
        np.fill_diagonal(gram, 1.0)
        return gram, n - 1

    links = chain_length - 1
    for crowd, expected in (
        (WALK_DEEP_CLOSE_PER_LINK * links - links, 1),
        (WALK_DEEP_CLOSE_PER_LINK * links - links + 1, 0),
    ):
        gram, last = walk_after(crowd)
        fresh = np.full(gram.shape[0], FRESH, dtype=np.int8)
        assert walk_steps(gram, last, fresh) == reference_walk_steps(gram, last, fresh) == expected, crowd


def test_a_continuation_repeats_a_recent_prompt_whole_and_adds_to_it():
    state = AccountState(32, 4)

    def send(text: str) -> int:
        mark, _ = state.note_prompt(text)
        state.update(QueryFacts(0.5, 0.5, 0.5, 0.5, 0, mark), None)
        return mark

    first = "User: What is the capital of Peru?"
    assert send(first) == FRESH
    assert send(first) == FRESH  # a retry repeats, adds nothing
    assert send(first + "!") == FRESH  # a one-character edit is an edit
    second = first + "\nAssistant: Lima.\nUser: And its population?"
    assert send(second) == CONTINUES
    assert send("Tell me about owls, please, in detail.") == FRESH
    assert send(second + "\nAssistant: About ten million.\nUser: Thanks!") == CONTINUES  # not the last prompt
    assert send("x" * 70 + first) == FRESH  # contains it, but not at the start
    long_head = "Context: " + "lorem ipsum " * 20
    assert send(long_head) == FRESH
    assert send(long_head[:-1] + "X" + " and more words after it") == FRESH  # same head, other prefix
    assert send(long_head + " and more words after it") == CONTINUES
    marks = [FRESH, FRESH, FRESH, CONTINUES, FRESH, CONTINUES, FRESH, FRESH, FRESH, CONTINUES]
    assert state.ring_continues[: state.n].tolist() == marks


def test_a_continuation_is_remembered_for_the_last_prompts_only():
    from probewatch.detect.prompt_memory import CONTINUATION_MEMORY

    state = AccountState(64, 4)
    opener = "Please keep this conversation going with me."
    for text in [opener] + [f"unrelated question number {i} about something" for i in range(CONTINUATION_MEMORY - 1)]:
        state.note_prompt(text)
        state.update(QueryFacts(0.5, 0.5, 0.5, 0.5, 0), None)
    assert state.note_prompt(opener + " And here is my next turn.")[0] == CONTINUES
    state.update(QueryFacts(0.5, 0.5, 0.5, 0.5, 0), None)
    assert state.note_prompt(opener + " Yet another turn, much later.")[0] == FRESH  # the opener is forgotten


def _sender(state: AccountState):
    def send(text: str) -> int:
        mark, _ = state.note_prompt(text)
        state.update(QueryFacts(0.5, 0.5, 0.5, 0.5, 0, mark), None)
        return mark

    return send


def test_a_prompt_extended_a_second_time_is_a_branch_not_a_turn():
    """A conversation extends each prompt once; a second extension of the same prompt (a
    constraint changed or taken back and another added) is an edit, judged as one."""
    send = _sender(AccountState(32, 4))
    task = "Summarise the history of the printing press for a school project."
    first = task + " Use exactly 3 bullet points."
    assert send(first) == FRESH
    assert send(first + " Your whole answer must be in French.") == CONTINUES
    assert send(first + " Wrap your entire answer in double quotation marks.") == FRESH  # first extended again
    grown = first + " Wrap your entire answer in double quotation marks. End with a question for the reader."
    assert send(grown) == CONTINUES  # the branch's own prompt is extended for the first time


def test_an_addition_the_account_appended_before_is_an_edit_not_a_turn():
    """The same text appended to another prompt (case, spacing and digits aside) is a probe's
    distractor or constraint, not a new turn; additions are remembered for APPENDED_MEMORY."""
    from probewatch.detect.prompt_memory import APPENDED_MEMORY

    send = _sender(AccountState(64, 4))
    seeds = [f"Tell me something surprising about {topic}." for topic in ("owls", "tides", "glass", "maps")]
    assert [send(seed) for seed in seeds] == [FRESH] * 4
    assert send(seeds[0] + " Answer in at most 30 words.") == CONTINUES
    assert send(seeds[1] + "  answer in AT MOST 50 words. ") == FRESH  # the same constraint, swept
    assert send(seeds[2] + " And the sky is blue.") == CONTINUES
    assert send(seeds[3] + " and the sky is blue.") == FRESH
    # forgotten once APPENDED_MEMORY other additions came after it
    send_more = _sender(AccountState(256, 4))
    opener = "Tell me something surprising about owls."
    send_more(opener)
    assert send_more(opener + " Remember to be concise.") == CONTINUES
    for i in range(APPENDED_MEMORY):
        base = f"question {i} about a subject of its own"
        send_more(base)
        assert send_more(base + f" and a turn of its own, {'x' * (i + 1)}") == CONTINUES
    other = "Tell me something surprising about tides."
    send_more(other)
    assert send_more(other + " Remember to be concise.") == CONTINUES


def test_each_query_is_judged_once_on_the_refresh_schedule():
    """Folding a stream in, every query after the first is judged by exactly one refresh, and
    the count equals judging each refresh's new rows against that refresh's window."""
    rng = np.random.default_rng(5)
    x = np.concatenate([random_walk(rng, 30), template_cluster(rng, 40), random_walk(rng, 50)]).astype(np.float32)
    window, refresh_every = 32, 4
    state = AccountState(window, 4)
    expected, judged_upto = 0, 0
    for n in range(1, len(x) + 1):
        state.update(QueryFacts(0.5, 0.5, 0.5, 0.5, 0), None)
        if state.needs_gram_refresh(refresh_every):
            recent = x[max(0, n - window) : n]
            gram = (recent @ recent.T).astype(np.float64)
            expected += reference_walk_steps(gram, len(recent) - min(n - judged_upto, len(recent)))
            judged_upto = n
            state.refresh_gram_stats(recent, 1.0, 1.0)
            assert state.walk[0] == n
    assert state.walk[1] == expected > 0


def _calibration(walk_away=(0.02, 1.0)) -> Calibration:
    return uniform_calibration(walk_away=walk_away)


def _rows(rates, ns) -> tuple[np.ndarray, np.ndarray]:
    return feature_rows(RATE, rates, ns)


def test_the_statistic_is_the_binomial_tail_by_hand():
    cal = _calibration((0.02, 1.3))
    ns = [10, 11, 40, 64, 200, 500, 500]
    steps = [1, 3, 0, 2, 30, 12, 100]
    rates = [k / (n - 1) for k, n in zip(steps, ns, strict=True)]
    got = cal.walk_away_scores(*_rows(rates, ns))
    expected = [
        1.3 * -math.log10(stats.binom.sf(k - 1, n - 1, 0.02)) if k else 0.0 for k, n in zip(steps, ns, strict=True)
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_no_evidence_while_off_too_young_without_steps_or_undefined():
    x, n = _rows([0.5, 0.0, np.nan, 0.3], [MIN_SCORED_QUERIES - 1, 300, 1, 300])
    assert _calibration(None).walk_away_scores(x, n).tolist() == [0.0, 0.0, 0.0, 0.0]
    scores = _calibration().walk_away_scores(x, n)
    assert scores[:3].tolist() == [0.0, 0.0, 0.0] and scores[3] > 30


def test_the_score_is_the_higher_one_and_the_reason_says_so():
    cal = _calibration()
    detector = Detector(cal, target_fpr=0.001, watch_fpr=0.01)
    x, n = _rows([0.3, 0.0], [300, 300])
    rings = [np.zeros(16) for _ in range(2)]
    scores, risks, reasons = detector.judge(x, n, rings)
    lookalike = np.array([ring[:16].mean() for ring in rings])
    walk = cal.walk_away_scores(x, n)
    np.testing.assert_allclose(scores, np.maximum(lookalike, walk))
    assert walk[0] > lookalike[0] and walk[1] == 0.0 and risks[0] > risks[1]
    first = reasons[0][0]
    assert first.feature == "walk_away_rate" and first.direction == "above" and first.value == 0.3
    assert first.deviation == pytest.approx(walk[0]) and "edit" in first.description
    assert all(r.feature != "walk_away_rate" for r in reasons[1])


def test_the_rate_is_no_look_alike_coordinate():
    cal = _calibration()
    x, n = _rows([0.6, 0.0], [128, 128])
    found = cal.neighbours(x, n)
    np.testing.assert_array_equal(found.distance[0], found.distance[1])


def test_calibration_fits_the_benign_rate_with_unit_weight():
    rng = np.random.default_rng(1)
    accounts = MIN_TOPIC_RETURN_ACCOUNTS + 10
    ns = np.concatenate([np.arange(1, WALK_AWAY_MIN_QUERIES + 40) for _ in range(accounts)])
    owner = np.repeat(np.arange(accounts), WALK_AWAY_MIN_QUERIES + 39)
    features = np.full((ns.size, N_FEATURES), np.nan)
    final_rates = rng.uniform(0.1, 0.3, accounts)
    features[:, RATE] = final_rates[owner]
    p, weight = _fit_walk_away(features, ns, owner)
    assert p == pytest.approx(np.quantile(final_rates, WALK_AWAY_QUANTILE)) and weight == 1.0
    # most benign accounts never step: the rate is floored at what a benign account may do
    features[:, RATE] = 0.0
    assert _fit_walk_away(features, ns, owner)[0] == pytest.approx(WALK_AWAY_MIN_RATE)
    short = ns < WALK_AWAY_MIN_QUERIES  # no long account: the statistic stays off
    assert _fit_walk_away(features[short], ns[short], owner[short]) is None


def test_a_calibration_file_keeps_it_and_refuses_nonsense():
    cal = _calibration((0.03, 1.0))
    loaded = Calibration.from_arrays(cal.to_arrays(), cal.meta())
    assert loaded.walk_away == (0.03, 1.0)
    x, n = _rows([0.1, 0.4], [100, 900])
    np.testing.assert_array_equal(loaded.walk_away_scores(x, n), cal.walk_away_scores(x, n))
    off = _calibration(None)
    assert "cal_walk_away" not in off.to_arrays()
    assert Calibration.from_arrays(off.to_arrays(), off.meta()).walk_away is None
    for bad in ([0.0, 1.0], [0.1, -1.0], [0.1, 1.0, 2.0], [np.nan, 1.0]):
        arrays = cal.to_arrays()
        arrays["cal_walk_away"] = np.array(bad)
        with pytest.raises(CalibrationError, match="walk-away"):
            Calibration.from_arrays(arrays, cal.meta())


def test_the_engine_marks_continuations_from_prompts_and_snapshots_keep_what_they_continue(tmp_path):
    """Prompts passed with the vectors mark each query (the first turn fresh, each growing
    transcript after it a continuation); a restored snapshot still knows the recent prompts;
    a query sent without its prompt stays unknown."""
    import probewatch as pw

    engine = pw.Engine(device="cpu", campaigns=False)
    turns = [
        "Hello, can you help me plan a trip to Portugal?",
        "I have ten days in May and like hiking.",
        "What about the Azores instead of the Algarve?",
        "How do I get between the islands?",
    ]
    transcripts = ["\n\n".join(turns[: t + 1]) for t in range(len(turns))]
    vectors = unit(np.random.default_rng(2).normal(size=(len(turns) + 2, engine.dim))).astype(np.float32)
    engine.observe_embeddings(["traveller"] * len(turns), vectors[: len(turns)], prompts=transcripts)
    state = engine.pipeline.states["traveller"]
    assert state.ring_continues[: len(turns)].tolist() == [FRESH] + [CONTINUES] * (len(turns) - 1)

    path = tmp_path / "snapshot.npz"
    engine.save(path)
    restored = pw.Engine.load(path)
    more = transcripts[-1] + "\n\nAnd is the ferry bookable online?"
    restored.observe_embeddings(["traveller"], vectors[len(turns) : len(turns) + 1], prompts=[more])
    restored.observe_embeddings(["traveller"], vectors[len(turns) + 1 :])
    marks = restored.pipeline.states["traveller"].ring_continues[: len(turns) + 2].tolist()
    assert marks[len(turns) :] == [CONTINUES, UNKNOWN_TEXT]


def test_snapshots_keep_which_prompts_were_extended_and_what_was_appended(tmp_path):
    """Saved at t and restored, an engine marks a branch and a repeated addition as it would
    have without the snapshot."""
    import probewatch as pw

    first = "Explain how vaccines train the immune system."
    other = "Explain how bridges carry their load."
    prompts = [first, first + " Use exactly 3 bullet points.", other]
    later = [first + " Answer in all lowercase letters.", other + " Use exactly 4 bullet points."]
    vectors = unit(np.random.default_rng(5).normal(size=(len(prompts) + len(later), 384))).astype(np.float32)

    def marks_of(engine) -> list[int]:
        engine.observe_embeddings(["prober"] * len(later), vectors[len(prompts) :], prompts=later)
        state = engine.pipeline.states["prober"]
        return state.ring_continues[len(prompts) : len(prompts) + len(later)].tolist()

    straight = pw.Engine(device="cpu", campaigns=False)
    saved = pw.Engine(device="cpu", campaigns=False)
    for engine in (straight, saved):
        engine.observe_embeddings(["prober"] * len(prompts), vectors[: len(prompts)], prompts=prompts)
    path = tmp_path / "snapshot.npz"
    saved.save(path)
    assert marks_of(straight) == marks_of(pw.Engine.load(path)) == [FRESH, FRESH]
