"""Neighbourhood probes (probewatch.detect.probes): word sketches, the small-edit relation, the
per-account count, its snapshot, and the statistic judged on it. All prompts are written here."""

from __future__ import annotations

import math
import random
import re
import zlib
from collections import Counter

import numpy as np
import pytest

from probewatch.detect.features import FEATURE_NAMES, AccountState, QueryFacts
from probewatch.detect.probes import (
    COMPARED_MAX_WORDS,
    EMPTY,
    MIN_RELATED,
    MIN_SEED_WORDS_VARIED,
    MIN_VARIED_ELSEWHERE,
    MIN_WORDS,
    NEAR_ADDED,
    NEAR_DROPPED,
    SKETCH_WORDS,
    TEXT_CHARS,
    is_small_edit,
    near_slots,
    related_slots,
    signature,
    sketch_set,
    word_hashes,
    word_sketch,
)
from probewatch.detect.prompt_memory import CONTINUATION_MEMORY, CONTINUATION_MIN_ADDED
from probewatch.detect.scoring import PROBE_MIN_RATE, excess_count_evidence
from tests.support import blas_sums_rows_alike

SEEDS = [
    "what will the weather be like in lisbon on saturday morning",
    "play the latest album by a jazz pianist from new orleans",
    "which river flows through the capital city of hungary and slovakia",
    "book a table for four people at an italian restaurant tonight",
]
FILLER = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
]


def sketch_of(text: str) -> tuple[frozenset[int], int]:
    sketch, words = word_sketch(text)
    return sketch_set(sketch, words), words


def small_edit(query: str, earlier: str) -> bool:
    return is_small_edit(*sketch_of(query), *sketch_of(earlier))


def exact_small_edit(query: str, earlier: str) -> bool:
    """The relation on whole word sets: the brute-force reference for short prompts."""
    q, e = set(query.lower().split()), set(earlier.lower().split())
    if len(q) < MIN_WORDS or len(q) > len(e) or 2 * len(q) < len(e):
        return False
    return len(q - e) == 1 if len(q) == len(e) else q <= e


def occlusions(seed: str) -> list[str]:
    words = seed.split()
    return [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]


def lime_samples(rng: random.Random, seed: str, count: int) -> list[str]:
    words = seed.split()
    return [" ".join(w for w in words if rng.random() < 0.75) for _ in range(count)]


def editing_chain(rng: random.Random, seed: str, edits: int) -> list[str]:
    """A person reworking a prompt: each version is the last one with a word added or changed."""
    words, out = seed.split(), [seed]
    for _ in range(edits):
        if rng.random() < 0.5:
            words.insert(rng.randrange(len(words) + 1), rng.choice(FILLER))
        else:
            words[rng.randrange(len(words))] = rng.choice(FILLER)
        out.append(" ".join(words))
    return out


def counterfactual_grid(rng: random.Random, seed: str, count: int) -> list[str]:
    """Contrast sets around a seed that is never sent: each probe is the seed with one word
    replaced, at a random place."""
    words = seed.split()
    out = []
    for _ in range(count):
        at = rng.randrange(len(words))
        out.append(" ".join([*words[:at], rng.choice(FILLER), *words[at + 1 :]]))
    return out


def explainer_and_contrast_sets() -> list[str]:
    """Each seed with its occlusions, then a contrast set around it: both kinds of probe in one stream."""
    rng = random.Random(9)
    return [p for seed in SEEDS for p in [seed, *occlusions(seed), *counterfactual_grid(rng, seed, 8)]]


def count_probes(prompts: list[str]) -> AccountState:
    state = AccountState(32, 8)
    for text in prompts:
        mark, probe = state.note_prompt(text)
        state.update(QueryFacts(math.nan, math.nan, 0.5, 0.5, 0, mark, probe), None)
    return state


# -- word sketches -----------------------------------------------------------------------


def test_a_sketch_is_the_sorted_hashes_of_distinct_lower_case_words_padded():
    sketch, words = word_sketch("The cat saw THE dog, the cat ran!")
    expected = sorted({zlib.crc32(w.encode()) for w in ("the", "cat", "saw", "dog", "ran")})
    assert words == 5
    assert sketch.dtype == np.uint32 and sketch.shape == (SKETCH_WORDS,)
    assert sketch[:5].tolist() == expected
    assert (sketch[5:] == EMPTY).all()


def test_a_long_prompt_keeps_its_smallest_hashes_and_its_word_count():
    text = " ".join(f"word{i}" for i in range(200))
    sketch, words = word_sketch(text)
    assert words == 200
    assert sketch.tolist() == sorted(zlib.crc32(f"word{i}".encode()) for i in range(200))[:SKETCH_WORDS]


def test_only_the_head_of_a_huge_prompt_is_read():
    head = "x" * (TEXT_CHARS - 1)
    assert word_sketch(head + " tail")[1] == 1
    assert word_sketch("")[1] == 0 and (word_sketch("")[0] == EMPTY).all()


def test_sketches_of_odd_text_are_defined():
    # a lone surrogate (which strict UTF-8 cannot encode) separates words as punctuation does
    sketch, words = word_sketch("caf\udce9 \u4e2d\u6587 12 ... \x00")
    assert words == 3
    assert sketch_set(sketch, words) == {zlib.crc32(w.encode()) for w in ("caf", "\u4e2d\u6587", "12")}


# -- the small-edit relation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "earlier", "expected"),
    [
        ("book a table for two at an italian place", "book a table for four at an italian place", True),  # swap
        ("book a table for [MASK] at an italian place", "book a table for four at an italian place", True),
        ("book a table for at an italian place", "book a table for four at an italian place", True),  # left out
        ("book table italian place", "book a table for four at an italian place", False),  # under half the words
        ("book a table for four at an italian place now", "book a table for four at an italian place", False),
        ("book a table for four at an italian place", "book a table for four at an italian place", False),  # repeat
        ("cancel a table for two at an italian cafe", "book a table for four at an italian place", False),
        ("play one song", "play two song", False),  # too few words to be an edit
    ],
)
def test_small_edits(query, earlier, expected):
    assert small_edit(query, earlier) is expected
    assert exact_small_edit(query, earlier) is expected


def test_the_relation_on_short_prompts_matches_whole_word_sets():
    rng = random.Random(0)
    vocabulary = FILLER + SEEDS[0].split()
    for _ in range(3000):
        earlier = rng.sample(vocabulary, rng.randint(3, 12))
        query = [w for w in earlier if rng.random() < 0.8]
        if rng.random() < 0.5 and query:
            query[rng.randrange(len(query))] = rng.choice(vocabulary)
        q, e = " ".join(query), " ".join(earlier)
        assert small_edit(q, e) is exact_small_edit(q, e), (q, e)


def test_long_prompts_compare_on_a_bottom_k_sample():
    words = [f"token{i}" for i in range(COMPARED_MAX_WORDS - 4)]
    assert len(words) > SKETCH_WORDS
    hashes = [zlib.crc32(w.encode()) for w in words]
    low = next(f"w{i}" for i in range(10**6) if zlib.crc32(f"w{i}".encode()) < min(hashes))
    swapped = words.copy()
    swapped[int(np.argmin(hashes))] = low  # a swap the sample sees
    assert small_edit(" ".join(swapped), " ".join(words))
    swapped = words.copy()
    swapped[int(np.argmax(hashes))] = "w" + low  # one it may not see: then it reads as a repeat
    assert small_edit(" ".join(swapped), " ".join(words)) is (zlib.crc32(("w" + low).encode()) <= sorted(hashes)[31])
    assert small_edit(" ".join(words[:40]), " ".join(words))  # words left out, most kept
    other = [f"other{i}" for i in range(30)] + words[:30]
    assert not small_edit(" ".join(other), " ".join(words))


def test_prompts_longer_than_the_compared_limit_are_never_edits():
    words = [f"token{i}" for i in range(COMPARED_MAX_WORDS + 1)]
    hashes = [zlib.crc32(w.encode()) for w in words]
    low = next(f"w{i}" for i in range(10**6) if zlib.crc32(f"w{i}".encode()) < min(hashes))
    swapped = words.copy()
    swapped[int(np.argmin(hashes))] = low
    assert not small_edit(" ".join(swapped), " ".join(words))
    assert not small_edit(" ".join(words[:-2]), " ".join(words))  # the left-out one is within the limit, its seed not
    signatures = [signature(word_hashes(" ".join(words))[0])] * 4
    assert related_slots(signatures[0], len(words), signatures, [len(words)] * 4) == ([], [])


def test_new_requests_in_a_long_fixed_frame_are_not_probes():
    # An agent app: one tool list of ~150 distinct words, then each request of its own. On a
    # 32-hash sample of ~165 words, a request's few words mostly fall outside the sample, and
    # before COMPARED_MAX_WORDS about one request in five counted as an edit of three others.
    rng = random.Random(4)
    frame = " ".join(f"tool{i} takes arg{i} and returns out{i}" for i in range(50))
    assert word_hashes(frame)[1] > COMPARED_MAX_WORDS
    requests = [" ".join(rng.sample(FILLER + SEEDS[1].split(), rng.randint(4, 9))) for _ in range(80)]
    state = count_probes([f"{frame}\n\nUser request: {r}" for r in requests])
    assert state.probes[1] == 0


# -- the per-account count ---------------------------------------------------------------


def test_an_explainer_around_seeds_is_counted():
    rng = random.Random(1)
    prompts = []
    for seed in SEEDS:
        prompts += [seed, *occlusions(seed)[:6], *lime_samples(rng, seed, 6)]
    state = count_probes(prompts)
    # every probe after the first few around a seed is an edit of the seed and of earlier probes
    assert state.probes[1] >= len(prompts) // 2, (state.probes[1], len(prompts))


def test_a_person_editing_prompts_is_not_counted():
    rng = random.Random(2)
    prompts = [p for seed in SEEDS for p in editing_chain(rng, seed, 6)]
    assert count_probes(prompts).probes[1] <= 2


@pytest.mark.parametrize("order", ["grid", "shuffled"])
def test_an_app_template_with_one_word_slots_is_not_counted(order):
    cities = ["lisbon", "oslo", "cairo", "lima", "perth", "quito", "dakar", "hanoi", "riga", "sofia"]
    days = ["monday", "friday", "sunday"]
    fills = [(c, d) for c in cities for d in days] * 2
    if order == "shuffled":
        random.Random(3).shuffle(fills)
    prompts = [f"You are a weather assistant. Answer briefly. User: weather in {c} on {d}" for c, d in fills]
    # each fill is one word away from many others, but lacks only their own slot values
    state = count_probes(prompts)
    assert state.probes[1] == 0
    words = [f"translate the word {w} from english into spanish" for w in FILLER * 2]
    assert count_probes(words).probes[1] == 0


def test_a_counterfactual_grid_around_an_unsent_seed_is_counted():
    rng = random.Random(4)
    prompts = [p for seed in SEEDS for p in counterfactual_grid(rng, seed, 14)]
    assert not set(prompts) & set(SEEDS)
    # no two probes changed at different places are small edits of each other: the seed is
    # what they share, and once a few probes are out most of the rest are counted
    assert count_probes(prompts).probes[1] >= len(prompts) // 2


def test_edits_that_pile_up_are_not_probes_around_a_seed():
    # a typo fixed here, a word changed there: each version keeps the last one's changes
    rng = random.Random(5)
    for seed in SEEDS:
        words, versions = seed.split(), []
        for at in rng.sample(range(len(words)), len(words)):
            words[at] = words[at][::-1]
            versions.append(" ".join(words))
        assert count_probes([seed, *versions]).probes[1] == 0, versions


def test_a_template_with_a_usual_slot_value_is_not_counted():
    # two slots, one of them nearly always the same: the odd value is one seed word, not three
    rng = random.Random(6)
    prompts = []
    for word in FILLER * 3:
        language = "french" if rng.random() < 0.8 else rng.choice(["german", "italian"])
        prompts.append(f"translate the word {word} from english into {language} please")
    assert count_probes(prompts).probes[1] == 0


def test_near_slots_never_rule_out_a_near_neighbour():
    rng = random.Random(7)
    vocabulary = sorted({*FILLER, *" ".join(SEEDS).split()})
    checked = 0
    for _ in range(3000):
        a = rng.sample(vocabulary, rng.randint(MIN_WORDS, 12))
        b = list(a)
        for _ in range(rng.randint(0, 3)):
            b[rng.randrange(len(b))] = rng.choice(vocabulary)
        b += rng.sample(vocabulary, rng.randint(0, 3))
        (qa, na), (qb, nb) = sketch_of(" ".join(a)), sketch_of(" ".join(b))
        added, dropped = len(qa - qb), len(qb - qa)
        if added <= NEAR_ADDED and dropped <= NEAR_DROPPED and nb >= MIN_WORDS:
            checked += 1
            assert near_slots(signature(sorted(qa)), na, [signature(sorted(qb))], [nb]) == [0]
    assert checked > 500


def test_the_edit_slots_never_rule_out_a_small_edit():
    # small edits of a prompt among 16 recent ones (some longer than a sketch: bottom-k), each
    # among the slots the account's probe rule reads (related_slots' first list)
    rng = random.Random(11)
    vocabulary = sorted({*FILLER, *" ".join(SEEDS).split()}) + [f"w{i}" for i in range(60)]
    edits = 0
    for _ in range(400):
        recent = [rng.sample(vocabulary, rng.choice([0, 3, 6, 10, 14, 40])) for _ in range(16)]
        base = rng.choice([r for r in recent if len(r) >= MIN_WORDS])
        query = list(base)
        if rng.random() < 0.5:
            query[rng.randrange(len(query))] = rng.choice(vocabulary)  # a word swapped
        else:
            query = rng.sample(base, max(MIN_WORDS, len(base) - rng.randint(0, 3)))  # words left out
        kept, words = word_hashes(" ".join(query))
        sketches = [word_hashes(" ".join(r)) for r in recent]
        signatures, counts = [signature(k) for k, _ in sketches], [n for _, n in sketches]
        edit_slots, _ = related_slots(signature(kept), words, signatures, counts)
        for j, (other, n) in enumerate(sketches):
            if is_small_edit(frozenset(kept), words, frozenset(other), n):
                edits += 1
                assert j in edit_slots
    assert edits > 300


def test_repeats_and_continuations_are_never_probes():
    seed = SEEDS[0]
    assert count_probes([seed] * 20).probes[1] == 0
    transcript = [seed]
    for turn in range(12):
        transcript.append(transcript[-1] + f" and then what about day {turn}")
    assert count_probes(transcript).probes[1] == 0


def reference_seed_probe(q: set[str], recent: list[set[str]]) -> bool:
    """``is_seed_probe`` the slow way, from its definition, on whole word sets."""
    near = []
    for e in recent:
        if e == q or e in near or len(e) < MIN_WORDS:
            continue
        added, dropped = len(q - e), len(e - q)
        if added <= NEAR_ADDED and dropped <= NEAR_DROPPED and len(q & e) >= 2 * max(added, dropped):
            near.append(e)
    if len(q) < MIN_WORDS or len(near) < MIN_RELATED:
        return False
    counts = Counter(w for s in [*near, q] for w in s)
    seed = {w for w, c in counts.items() if c >= (len(near) + 1) * 2 / 3 - 1e-9}
    lacked = seed - q
    if not 1 <= len(lacked) <= NEAR_DROPPED or len(q - seed) > NEAR_ADDED:
        return False
    around = [seed - e for e in near if len(seed - e) <= NEAR_DROPPED and len(e - seed) <= NEAR_ADDED]
    varied = set(lacked).union(*around)
    return len(varied) >= MIN_SEED_WORDS_VARIED and sum(bool(m - lacked) for m in around) >= MIN_VARIED_ELSEWHERE


def reference_probes(prompts: list[str]) -> int:
    """Probes counted the slow way: whole word sets, every one of the last 16 prompts compared,
    no signature. For prompts of at most SKETCH_WORDS distinct words."""
    found, seen = 0, []
    for text in prompts:
        q = set(re.findall(r"\w+", text.lower()))
        window = seen[-CONTINUATION_MEMORY:]
        recent = [set(re.findall(r"\w+", earlier.lower())) for earlier in window]
        related, lacked = [], Counter()
        for e in recent:
            if e in related or q == e or len(q) < MIN_WORDS or len(q) > len(e) or 2 * len(q) < len(e):
                continue
            if (len(q) == len(e) and len(q - e) == 1) or (len(q) < len(e) and q <= e):
                related.append(e)
                lacked.update(e - q)
        edit = len(related) >= MIN_RELATED and max(lacked.values(), default=0) >= 2
        continues = any(text.startswith(e) and len(text) >= len(e) + CONTINUATION_MIN_ADDED for e in window)
        found += not continues and (edit or reference_seed_probe(q, recent))
        seen.append(text)
    return found


@pytest.mark.parametrize("seed", range(6))
def test_the_count_equals_the_slow_way(seed):
    rng = random.Random(seed)
    prompts = []
    for _ in range(8):
        base = rng.choice(SEEDS)
        kind = rng.random()
        if kind < 0.3:
            prompts += occlusions(base)[: rng.randint(2, 8)]
        elif kind < 0.6:
            prompts += lime_samples(rng, base, rng.randint(2, 8))
        elif kind < 0.7:
            prompts += editing_chain(rng, base, rng.randint(2, 6))
        elif kind < 0.85:
            prompts += counterfactual_grid(rng, base, rng.randint(3, 10))
        else:
            prompts += [" ".join(rng.sample(FILLER, rng.randint(3, 9))) for _ in range(4)]
    assert count_probes(prompts).probes[1] == reference_probes(prompts)


def test_a_small_edit_leaves_at_most_one_signature_bit_out():
    rng = random.Random(7)
    for _ in range(500):
        words = rng.sample(FILLER + SEEDS[2].split(), rng.randint(4, 14))
        edited = [w for w in words if rng.random() < 0.8] or words[:1]
        if rng.random() < 0.5:
            edited[rng.randrange(len(edited))] = rng.choice(FILLER)
        q, e = word_hashes(" ".join(edited))[0], word_hashes(" ".join(words))[0]
        if is_small_edit(frozenset(q), len(q), frozenset(e), len(e)):
            assert (signature(q) & ~signature(e)).bit_count() <= 1


def test_the_memory_is_the_last_16_prompts():
    seed = SEEDS[1]
    unrelated = [
        f"{a} {b} {c} {d} question number {i}"
        for i, (a, b, c, d) in enumerate(zip(*[iter(FILLER * 9)] * 4, strict=False))
    ]
    probes = occlusions(seed)[:MIN_RELATED]
    state = count_probes([seed, *probes[:-1], *unrelated[:CONTINUATION_MEMORY], probes[-1]])
    assert state.probes[1] == 0  # the seed and its probes have left the memory
    state = count_probes([seed, *probes])
    assert state.probes[1] >= 1


def test_the_count_survives_a_snapshot(tmp_path):
    import probewatch as pw

    rng = np.random.default_rng(0)
    engine = pw.Engine(device="cpu", seed=0)
    prompts = explainer_and_contrast_sets()
    vectors = rng.normal(size=(len(prompts), 384)).astype(np.float32)
    half = len(prompts) // 2
    engine.observe_embeddings(["a"] * half, vectors[:half], prompts=prompts[:half])
    engine.save(tmp_path / "t.npz")
    rest = engine.observe_embeddings(["a"] * (len(prompts) - half), vectors[half:], prompts=prompts[half:])
    restored = pw.Engine.load(tmp_path / "t.npz")
    again = restored.observe_embeddings(["a"] * (len(prompts) - half), vectors[half:], prompts=prompts[half:])
    assert restored.pipeline.states["a"].probes[1] == engine.pipeline.states["a"].probes[1] > 0
    assert [v.score for v in again] == [v.score for v in rest]
    assert (restored.pipeline.states["a"].prompt_sketches == engine.pipeline.states["a"].prompt_sketches).all()


@pytest.mark.parametrize("spread", [1, 3])
def test_lone_calls_and_one_batch_count_the_same(spread):
    """A batch notes all its prompts before it counts any query: each item's features must
    still see only the probes before it (one account or several in the batch)."""
    import probewatch as pw

    rng = np.random.default_rng(1)
    prompts = explainer_and_contrast_sets()
    accounts = [f"acct{i % spread}" for i in range(len(prompts))]
    vectors = rng.normal(size=(len(prompts), 384)).astype(np.float32)
    lone, batched = pw.Engine(device="cpu", seed=0), pw.Engine(device="cpu", seed=0)
    assert lone.calibration.neighbourhood_probe is not None  # the shipped calibration judges probes
    one_by_one = [
        lone.observe_embeddings([a], v[None], prompts=[p])[0]
        for a, v, p in zip(accounts, vectors, prompts, strict=True)
    ]
    together = batched.observe_embeddings(accounts, vectors, prompts=prompts)
    if blas_sums_rows_alike(embedding_dim=vectors.shape[1]):
        assert [v.score for v in one_by_one] == [v.score for v in together]
    else:  # the look-alike distances of a lone row and a batch's differ in their last bits
        assert [v.score for v in one_by_one] == pytest.approx([v.score for v in together], rel=2e-6, abs=1e-9)
    assert [v.level for v in one_by_one] == [v.level for v in together]
    # (window statistics of stacked windows may differ in their last bits; the features named may not)
    assert [[r.feature for r in v.reasons] for v in one_by_one] == [[r.feature for r in v.reasons] for v in together]
    assert max(v.score for v in together) > lone.detector.flag_threshold  # probes did count
    for account in set(accounts):
        assert lone.pipeline.states[account].probes.tolist() == batched.pipeline.states[account].probes.tolist()


# -- the statistic -----------------------------------------------------------------------


def rows_with_rate(rate: float, n: int) -> np.ndarray:
    row = np.full((1, len(FEATURE_NAMES)), np.nan)
    row[0, FEATURE_NAMES.index("neighbourhood_probe_rate")] = rate
    return row


def probe_evidence(features: np.ndarray, n: np.ndarray, p: float) -> np.ndarray:
    return excess_count_evidence(features, n, p, FEATURE_NAMES.index("neighbourhood_probe_rate"))


def test_evidence_is_a_binomial_tail_that_grows_with_the_count():
    from scipy.stats import binom

    p = PROBE_MIN_RATE
    for n, k in ((100, 10), (200, 40), (60, 3)):
        expected = -np.log10(binom.sf(k - 1, n - 1, p))
        assert probe_evidence(rows_with_rate(k / (n - 1), n), np.array([n]), p)[0] == pytest.approx(expected, rel=1e-9)
    assert probe_evidence(rows_with_rate(0.0, 100), np.array([100]), p)[0] == 0.0
    assert probe_evidence(rows_with_rate(0.5, 5), np.array([5]), p)[0] == 0.0  # too few queries to act on


def test_a_calibration_without_the_statistic_scores_nothing_with_it():
    from tests.support import uniform_calibration

    cal = uniform_calibration()
    assert cal.neighbourhood_probe is None
    assert cal.probe_scores(rows_with_rate(0.4, 200), np.array([200]))[0] == 0.0
    cal.neighbourhood_probe = (PROBE_MIN_RATE, 1.0)
    assert cal.probe_scores(rows_with_rate(0.4, 200), np.array([200]))[0] > 20.0
    arrays = cal.to_arrays()
    assert arrays["cal_neighbourhood_probe"].tolist() == [PROBE_MIN_RATE, 1.0]


@pytest.mark.parametrize("bad", [[0.0, 1.0], [0.5, 0.0], [0.1], [1.5, 1.0]])
def test_a_damaged_calibration_value_is_refused(bad):
    from probewatch.detect.scoring import _rate_and_weight
    from probewatch.errors import CalibrationError

    with pytest.raises(CalibrationError, match="neighbourhood-probe"):
        _rate_and_weight({"cal_neighbourhood_probe": np.array(bad)}, "cal_neighbourhood_probe", "neighbourhood-probe")


def test_long_prompts_around_a_seed_compare_on_their_sketches():
    rng = random.Random(8)
    document = " ".join(f"w{i}" for i in range(60))  # 60 distinct words: sketches are samples
    grid = counterfactual_grid(rng, document, 40)
    assert count_probes(grid).probes[1] >= len(grid) // 4
    # one pasted document asked about again and again: the questions add words, none is left out
    questions = [f"{document} question {i}: what does part {FILLER[i % len(FILLER)]} say" for i in range(40)]
    assert count_probes(questions).probes[1] == 0
