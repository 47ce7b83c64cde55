"""A sixth wording of the perturbation strategy: written before the fifth wording's misses
(``fifth_attacks.py``) were looked at, and fixed before any detector was measured on it, so
that what is changed after looking at the fifth is measured on probes nobody had looked at.

Nothing here may be changed to suit a detector (add a seventh set instead).

| strategy | how its probes differ from the five earlier sets |
| --- | --- |
| perturbation_chain | *Neighbourhood sampling around a seed* rather than a walk: the queries an explainer or a boundary search sends. Three kinds per seed: occlusion (the seed with one word left out or masked, position after position: Zeiler & Fergus 2014 applied to text, as in Li et al. 2016, "Understanding Neural Networks through Representation Erasure"), LIME-style samples (each word of the seed kept with a probability drawn per seed, a fresh sample each query: Ribeiro et al. 2016, "Why Should I Trust You?"), and bisection between the seed and another seed of the same source (the first k words of one spliced onto the rest of the other, k halving towards the side a coin picks, as a label-only boundary search would: Chen et al. 2020, "HopSkipJumpAttack", done on words). Every variant is an edit of the seed, not of the query before it, so there is no chain to walk. Seeds: SNIPS voice-assistant utterances and FanOutQA questions (test half), which no earlier set perturbs |
"""

from __future__ import annotations

import random

from . import sources
from .attacks import Query, _sample, chained, check_later_wording, distinct_steps

SIXTH_PREFIX = "sixth_"
SIXTH_STRATEGIES = (SIXTH_PREFIX + "perturbation_chain",)

_MASKS = ("[MASK]", "___", "<unk>", "...")


def occlusion_probe(rng: random.Random, words: list[str], steps: int) -> list[str]:
    """The seed with one word left out (or replaced by one mask token for the whole probe),
    position after position from a random start."""
    mask = rng.choice(_MASKS) if rng.random() < 0.5 else None
    start = rng.randrange(len(words))
    out = []
    for i in range(min(steps, len(words))):
        at = (start + i) % len(words)
        kept = words[:at] + ([mask] if mask else []) + words[at + 1 :]
        out.append(" ".join(kept))
    return out


def lime_probe(rng: random.Random, words: list[str], steps: int) -> list[str]:
    """Random subsets of the seed's words, in order: each kept with one probability per probe."""
    keep = rng.uniform(0.6, 0.9)
    out = []
    for _ in range(steps):
        kept = [w for w in words if rng.random() < keep]
        if kept:
            out.append(" ".join(kept))
    return out


def bisection_probe(rng: random.Random, words: list[str], other: list[str], steps: int) -> list[str]:
    """A boundary search between two seeds: ``other``'s first k words then this seed's from k
    on, k starting half-way and moving half the remaining interval towards a coin's side."""
    lo, hi, out = 0, max(len(words), len(other)), []
    for _ in range(steps):
        k = (lo + hi) // 2
        if k in (lo, hi):
            break
        out.append(" ".join(other[:k] + words[k:]))
        if rng.random() < 0.5:  # the answer changed: the boundary is before k
            hi = k
        else:
            lo = k
    return out


def probe(rng: random.Random, seed: str, others: list[str]) -> list[str]:
    """The prompts of one neighbourhood probe of ``seed`` (a partner from ``others`` for bisection)."""
    words = seed.split()
    kind = rng.random()
    if kind < 0.35:
        return occlusion_probe(rng, words, rng.randint(6, 30))
    if kind < 0.7:
        return lime_probe(rng, words, rng.randint(6, 30))
    texts: list[str] = []
    for _ in range(rng.randint(2, 5)):  # several partners, one bisection each
        texts += bisection_probe(rng, words, rng.choice(others).split(), rng.randint(4, 7))
    return texts


def build_sixth_chains(rng: random.Random, pool_size: int) -> list[list[Query]]:
    """Neighbourhood probes for the sixth wording (see the module docstring), one list per seed."""
    test = lambda loader: sources.split_units(loader())["test"]  # noqa: E731 - attacks live in the test half
    utterances = [(" ".join(u.texts[0].split()), u.key) for u in test(sources.snips)]
    questions = [(" ".join(u.texts[0].split()), u.key) for u in test(sources.fanoutqa)]
    probes = []
    for pool in (utterances, questions):
        usable = [(text, key) for text, key in pool if len(text.split()) >= 5]
        texts = [text for text, _ in usable]
        for seed_text, key in _sample(rng, usable, pool_size // 20):
            # the seed itself is not sent (as written it can be another set's prompt); a variant
            # that comes out equal to the seed or an earlier variant is not sent twice
            probes.append(distinct_steps(probe(rng, seed_text, texts), key, frozenset([seed_text])))
    return [p for p in probes if p]


def sixth_queries(strategy: str, rng: random.Random, chains: list[list[Query]], n: int) -> list[Query]:
    """The next ``n`` queries of one sixth-wording attack account (probes one after another)."""
    check_later_wording(strategy, SIXTH_PREFIX, SIXTH_STRATEGIES)
    return chained(rng, chains, n)
