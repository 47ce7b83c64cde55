"""Extraction strategies. Each turns a shared pool of real text into the query stream of
one account (or of one campaign split over many accounts).

| strategy | source paper |
| --- | --- |
| random_words | Krishna et al. 2020, "Thieves on Sesame Street! Model Extraction of BERT-based APIs" (RANDOM) |
| corpus_sentences | Orekondy et al. 2019, "Knockoff Nets"; Krishna et al. 2020 (WIKI) |
| template_sweep | Birch et al. 2023, "Model Leeching: An Extraction Attack Targeting LLMs" |
| cot_elicitation | 2026 distillation campaigns: chain-of-thought elicitation wrappers over diverse questions |
| perturbation_chain | Papernot et al. 2017, "Practical Black-Box Attacks" (Jacobian-based augmentation), adapted to text |
| coverage_kcenter | Pal et al. 2020, "ActiveThief" (k-center greedy over an unlabelled pool) |
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import sources
from .edits import perturb

STRATEGIES = (
    "random_words",
    "corpus_sentences",
    "template_sweep",
    "cot_elicitation",
    "perturbation_chain",
    "coverage_kcenter",
)

Query = tuple[str, str]  # (text, source unit key)
Embed = Callable[[list[str]], np.ndarray]

_RANDOM_WORD_FORMATS = ["{words}", "{words}?", "{Words}.", "{comma}", "Q: {words}?\nA:", "{words} ..."]
_CORPUS_WORDINGS = [
    "{s}",
    "{s}",
    "Continue the text: {s}",
    "{s}\n\nWhat do you make of this?",
    "Respond to the following passage.\n\n{s}",
    "Explain: {s}",
]
_SWEEP_TEMPLATES = {
    "snips": [
        "Classify the intent of this utterance (PlayMusic, GetWeather, BookRestaurant, RateBook, "
        "SearchScreeningEvent, SearchCreativeWork, AddToPlaylist): {x}",
        'Extract the slots and intent from: "{x}"\nReturn JSON.',
        "User said: {x}\nWhat should a voice assistant do? Answer in one line.",
    ],
    "fanoutqa": [
        "Answer the following question concisely.\nQuestion: {x}\nAnswer:",
        "{x} Give the final answer only.",
        "Q: {x}\nA (short, factual):",
    ],
    "freshqa": [
        "Answer as of today, briefly: {x}",
        "Question: {x}\nRespond with a short factual answer.",
        "Fact check and answer: {x}",
    ],
    "headlines": [
        "Write a 200-word news article for the headline: {x}",
        "Headline: {x}\nWrite the opening paragraph.",
        "Classify the topic of this headline: {x}",
    ],
    "mind2web": [
        "Plan the browser actions to: {x}. List each click and input.",
        "Task: {x}\nDescribe the steps a web agent should take.",
        "How do I {x} on the website? Steps:",
    ],
}
_COT_WRAPPERS = [
    "Think step by step and show your full reasoning before the final answer.\n\n{q}",
    "{q}\n\nLet's think step by step. Write out every intermediate step.",
    "Please reason carefully. First write your complete chain of thought inside <thinking> tags, then answer.\nQuestion: {q}",
    "Solve this and explain your reasoning in detail, as if teaching a student: {q}",
    "Show all your work. Question: {q}\nReasoning:",
    "Before answering, list the facts you need, reason through them one by one, then conclude.\n{q}",
    "{q}\nExplain your thought process step-by-step, then give the answer on a line starting with 'Answer:'.",
    "I want to see how you think. Walk me through your reasoning for: {q}",
]


@dataclass
class AttackPools:
    random_word_lists: list[tuple[str, ...]]
    corpora: dict[str, list[Query]]
    sweep_items: dict[str, list[Query]]
    cot_questions: list[Query]
    chains: list[list[Query]]
    kcenter_pool: list[Query]
    kcenter_vectors: np.ndarray | None = None


def _sample(rng: random.Random, items: list, k: int) -> list:
    return rng.sample(items, min(k, len(items)))


def build_attack_pools(rng: random.Random, pool_size: int, kcenter_size: int) -> AttackPools:
    """Finite pools per strategy (the unique-text budget); accounts draw from them."""
    vocabulary = sources.english_vocabulary()
    random_lists = [tuple(rng.choice(vocabulary) for _ in range(rng.randint(4, 24))) for _ in range(pool_size)]

    test = lambda loader: sources.split_units(loader())["test"]  # noqa: E731 - attacks live in the test half
    corpora: dict[str, list[Query]] = {}
    quarter = max(1, pool_size // 4, kcenter_size // 4)  # the k-center pool is drawn from these
    wiki = [(s, u.key) for u in sources.wikipedia() for p in u.texts for s in sources.sentences(p)]
    bbc = [(s, u.key) for u in test(sources.bbc_news) for s in sources.sentences(" ".join(u.texts[1:]))]
    lee = [(s, u.key) for u in sources.lee_news() for s in sources.sentences(u.texts[0])]
    verse = [(p, u.key) for u in sources.shakespeare() for p in u.texts]
    for name, sentences in (("wiki", wiki), ("bbc", bbc), ("lee", lee), ("shakespeare", verse)):
        corpora[name] = _sample(rng, sentences, quarter)

    # an account sweeps one dataset, so each dataset gets half a pool (not a fifth)
    fifth = max(1, pool_size // 2)
    bbc_units = test(sources.bbc_news)
    sweep_items = {
        "snips": _sample(rng, [(u.texts[0], u.key) for u in test(sources.snips)], fifth),
        "fanoutqa": _sample(rng, [(u.texts[0], u.key) for u in test(sources.fanoutqa)], fifth),
        "freshqa": _sample(rng, [(u.texts[0], u.key) for u in test(sources.freshqa)], fifth),
        "headlines": _sample(rng, [(u.texts[0], u.key) for u in bbc_units], fifth),
        "mind2web": _sample(rng, [(u.texts[0], u.key) for u in test(sources.mind2web)], fifth),
    }
    for items in sweep_items.values():
        items.sort()  # a sweep walks a dataset in a fixed order

    chat_questions = [
        (t, u.key) for u in test(sources.sharegpt) for t in u.texts if 20 <= len(t) <= 300 and t.rstrip().endswith("?")
    ]
    cot = (
        _sample(rng, chat_questions, pool_size // 3)
        + _sample(rng, [(u.texts[0], u.key) for u in test(sources.fanoutqa) + test(sources.freshqa)], pool_size // 3)
        + _sample(
            rng, [(f"{u.texts[0]}: what happened and why does it matter?", u.key) for u in bbc_units], pool_size // 3
        )
    )
    rng.shuffle(cot)

    seeds = _sample(
        rng, [(t, u.key) for u in test(sources.sharegpt) for t in u.texts[:1] if 15 <= len(t) <= 400], pool_size // 20
    ) + _sample(rng, [(u.texts[0], u.key) for u in test(sources.snips) + test(sources.fanoutqa)], pool_size // 20)
    chains = []
    for seed_text, key in seeds:
        chain, current = [(seed_text, key)], seed_text
        for _ in range(rng.randint(5, 14)):
            current = perturb(rng, current, vocabulary)
            chain.append((current, key))
        chains.append(chain)

    # ActiveThief selects from unlabelled natural text: the raw corpus sentences above, so
    # its pool costs no extra embeddings beyond the corpus_sentences strategy.
    natural = [q for name in sorted(corpora) for q in corpora[name]]
    kcenter_pool = _sample(rng, natural, kcenter_size)
    return AttackPools(random_lists, corpora, sweep_items, cot, chains, kcenter_pool)


def _cycle(rng: random.Random, items: list, n: int) -> list:
    """n items, each distinct within one pass; a new shuffled pass when the pool runs out
    (only long split campaigns need this: within one account queries stay distinct)."""
    out: list = []
    while len(out) < n and items:
        batch = list(items)
        rng.shuffle(batch)
        out.extend(batch[: n - len(out)])
    return out


def sweep_order(rng: random.Random, items: list, n: int) -> list:
    """``n`` items of a dataset as a sweep walks them: from a random start, in dataset order;
    longer than the dataset, it is swept again, shuffled."""
    start = rng.randrange(len(items))
    ordered = [items[(start + i) % len(items)] for i in range(min(n, len(items)))]
    if len(ordered) < n:
        ordered += _cycle(rng, items, n - len(ordered))
    return ordered


def grid_cells(rng: random.Random, frames: list, payloads: list, order: str) -> list[tuple]:
    """Every (frame, payload) pair of a grid: ``"by_payload"`` (each payload under every frame in
    turn), ``"by_frame"`` (each frame around every payload in turn) or ``"shuffled"``."""
    if order == "by_frame":
        return [(frame, payload) for frame in frames for payload in payloads]
    cells = [(frame, payload) for payload in payloads for frame in frames]
    if order == "shuffled":
        rng.shuffle(cells)
    return cells


def distinct_steps(texts: list[str], key: str, sent: frozenset[str] = frozenset()) -> list[Query]:
    """A chain's prompts as sent: each text once, at its first appearance, and none of ``sent``
    (a prompt repeated or an edit undone is a retry of an earlier prompt, not a step)."""
    seen, chain = set(sent), []
    for text in texts:
        if text not in seen:
            seen.add(text)
            chain.append((text, key))
    return chain


def rounds_around_seeds(
    rng: random.Random, seeds: list[Query], make: Callable[[random.Random, str, int], list[str]]
) -> list[list[Query]]:
    """One round of probes per seed, ``make(rng, seed, size)`` with 6 to 24 of them, as sent: each
    text once, never the seed itself (a probe that gives it back is not sent); empty rounds dropped."""
    rounds = [distinct_steps(make(rng, text, rng.randint(6, 24)), key, frozenset([text])) for text, key in seeds]
    return [r for r in rounds if r]


def chain_order(rng: random.Random, chains: list[list[Query]], n: int) -> list[list[Query]]:
    """The order an account takes up ``chains`` in to send ``n`` queries: shuffled passes over
    all of them, as many as ``n`` queries need (one pass when it holds ``n``)."""
    return _cycle(rng, chains, len(chains) * (1 + n // max(1, sum(map(len, chains)))))


def check_later_wording(strategy: str, prefix: str, strategies: tuple[str, ...]) -> None:
    """A later perturbation wording (third_attacks.py onwards) has one strategy,
    ``prefix + "perturbation_chain"``: any other name is refused, naming the one it has."""
    if strategy.removeprefix(prefix) != "perturbation_chain":
        raise ValueError(f"unknown {prefix.rstrip('_')}-wording strategy {strategy!r}; expected one of {strategies}")


def chained(rng: random.Random, chains: list[list[Query]], n: int) -> list[Query]:
    """The first ``n`` queries of whole chains sent one after another, in :func:`chain_order`."""
    out: list[Query] = []
    for chain in chain_order(rng, chains, n):
        out.extend(chain)
        if len(out) >= n:
            break
    return out[:n]


def k_center_greedy(vectors: np.ndarray, k: int, first: int) -> list[int]:
    """Greedy k-center (Sener & Savarese 2018, used by ActiveThief): repeatedly take the
    point farthest from everything chosen so far."""
    chosen = [first]
    distance = np.linalg.norm(vectors - vectors[first], axis=1)
    for _ in range(min(k, len(vectors)) - 1):
        nxt = int(np.argmax(distance))
        chosen.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(vectors - vectors[nxt], axis=1))
    return chosen


def queries(strategy: str, rng: random.Random, pools: AttackPools, n: int, campaign: bool = False) -> list[Query]:
    """The next ``n`` queries of one account or campaign, with wording drawn for it.
    A split ``campaign`` samples every corpus, since it needs many distinct queries."""
    if strategy == "random_words":
        fmt = rng.choice(_RANDOM_WORD_FORMATS)
        out = []
        for words in _cycle(rng, pools.random_word_lists, n):
            joined = " ".join(words)
            out.append((fmt.format(words=joined, Words=joined.capitalize(), comma=", ".join(words)), "wordfreq"))
        return out
    if strategy == "corpus_sentences":
        names = sorted(pools.corpora) if campaign else rng.sample(sorted(pools.corpora), rng.choice([1, 1, 2]))
        wording = rng.choice(_CORPUS_WORDINGS)
        picked = _cycle(rng, [q for name in names for q in pools.corpora[name]], n)
        return [(wording.format(s=text), key) for text, key in picked]
    if strategy == "template_sweep":
        dataset = rng.choice(sorted(pools.sweep_items))
        template = rng.choice(_SWEEP_TEMPLATES[dataset])
        return [(template.format(x=text), key) for text, key in sweep_order(rng, pools.sweep_items[dataset], n)]
    if strategy == "cot_elicitation":
        wrappers = rng.sample(_COT_WRAPPERS, rng.choice([1, 1, 2]))
        return [(rng.choice(wrappers).format(q=text), key) for text, key in _cycle(rng, pools.cot_questions, n)]
    if strategy == "perturbation_chain":
        return chained(rng, pools.chains, n)
    if strategy == "coverage_kcenter":
        if pools.kcenter_vectors is None:
            raise RuntimeError("coverage_kcenter needs the pool embeddings; build_traffic computes them first")
        subset = sorted(rng.sample(range(len(pools.kcenter_pool)), max(1, int(0.7 * len(pools.kcenter_pool)))))
        order = k_center_greedy(pools.kcenter_vectors[subset], min(n, len(subset)), rng.randrange(len(subset)))
        picked = [pools.kcenter_pool[subset[i]] for i in order]
        if len(picked) < n:
            picked += _cycle(rng, [q for q in pools.kcenter_pool if q not in set(picked)], n - len(picked))
        return picked[:n]
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
