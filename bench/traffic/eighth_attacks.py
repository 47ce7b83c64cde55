"""An eighth wording of the perturbation strategy: written before the seventh wording's
results (``seventh_attacks.py``) were looked at, and fixed before any detector was measured
on it, so that what is changed after looking at the seventh is measured on probes nobody had
looked at.

Nothing here may be changed to suit a detector (add a ninth set instead).

| strategy | how its probes differ from the seven earlier sets |
| --- | --- |
| perturbation_chain | *Behavioural test suites around a seed* in the manner of CheckList (Ribeiro et al. 2020, "Beyond Accuracy: Behavioral Testing of NLP Models with CheckList"): each query is the seed with one or two capability tests applied, never the query before it (the fourth wording walked such edits as chains, each step editing the last). Invariance tests swap a named entity (a capitalised word inside the sentence) for another name or place, change a number, put a typo into one word (two letters swapped) or put a conversational opener in front; directional tests negate the sentence (``not`` after its first auxiliary verb, or ``Is it true that ...?`` around it). The seed itself is not sent (as written it can be another set's prompt). Seeds: FreshQA questions and Lee Corpus news sentences (test half) |
"""

from __future__ import annotations

import random
import re

from . import sources
from .attacks import Query, _sample, chained, check_later_wording, rounds_around_seeds

EIGHTH_PREFIX = "eighth_"
EIGHTH_STRATEGIES = (EIGHTH_PREFIX + "perturbation_chain",)

_NAMES = (
    "Alice",
    "Ahmed",
    "Beatriz",
    "Chen",
    "Dmitri",
    "Fatima",
    "Hiroshi",
    "Ingrid",
    "Kwame",
    "Lucia",
    "Mateo",
    "Priya",
    "Sven",
    "Yara",
    "Zanele",
)
_PLACES = (
    "Lagos",
    "Lima",
    "Oslo",
    "Hanoi",
    "Quito",
    "Tbilisi",
    "Perth",
    "Montreal",
    "Nairobi",
    "Seville",
    "Busan",
    "Krakow",
    "Valparaiso",
    "Tromso",
    "Cusco",
)
_OPENERS = (
    "Quick question:",
    "I was wondering,",
    "Please tell me:",
    "Hey,",
    "Can you help?",
    "Out of curiosity,",
    "Honest answer please:",
    "For a quiz:",
)
_AUXILIARIES = (
    "is",
    "are",
    "was",
    "were",
    "can",
    "could",
    "will",
    "would",
    "does",
    "do",
    "did",
    "has",
    "have",
    "should",
)
_NUMBER = re.compile(r"^(\D*)(\d+)(\D*)$")


def swap_entity(rng: random.Random, words: list[str]) -> list[str] | None:
    """A capitalised word after the first (a name or a place) replaced by another."""
    at = [i for i, w in enumerate(words) if i > 0 and w[:1].isupper() and w.strip(".,?!;:'\"").isalpha()]
    if not at:
        return None
    i = rng.choice(at)
    core = words[i].strip(".,?!;:'\"")
    out = words.copy()
    out[i] = words[i].replace(core, rng.choice([n for n in _NAMES + _PLACES if n != core]))
    return out


def change_number(rng: random.Random, words: list[str]) -> list[str] | None:
    """A number replaced by another of about the same size."""
    at = [i for i, w in enumerate(words) if _NUMBER.match(w)]
    if not at:
        return None
    i = rng.choice(at)
    head, digits, tail = _NUMBER.match(words[i]).groups()
    value = int(digits)
    new = rng.randint(max(0, value // 2), value * 2 + 9)
    if new == value:
        new += 1
    out = words.copy()
    out[i] = f"{head}{new}{tail}"
    return out


def add_typo(rng: random.Random, words: list[str]) -> list[str] | None:
    """Two neighbouring letters of one word of four letters or more swapped."""
    at = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not at:
        return None
    i = rng.choice(at)
    w = words[i]
    j = rng.randrange(len(w) - 1)
    out = words.copy()
    out[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return out


def negate(rng: random.Random, words: list[str]) -> list[str] | None:
    """``not`` after the first auxiliary verb, or the sentence wrapped as ``Is it true that ...?``."""
    at = [i for i, w in enumerate(words) if w.lower() in _AUXILIARIES]
    if at and rng.random() < 0.7:
        i = at[0]
        return [*words[: i + 1], "not", *words[i + 1 :]]
    body = " ".join(words).rstrip("?.!")
    return ["Is", "it", "true", "that", *(body[:1].lower() + body[1:]).split(), "?"]


def add_opener(rng: random.Random, words: list[str]) -> list[str] | None:
    return [*rng.choice(_OPENERS).split(), *words]


TESTS = (swap_entity, change_number, add_typo, negate, add_opener)


def suite(rng: random.Random, seed: str, size: int) -> list[str]:
    """One test suite around ``seed``: ``size`` tests, each one or two of TESTS applied to it."""
    words = seed.split()
    out: list[str] = []
    for _ in range(size * 3):  # tests that do not apply to this seed are skipped
        if len(out) >= size:
            break
        changed: list[str] | None = words
        for test in rng.sample(TESTS, 2 if rng.random() < 0.25 else 1):
            changed = test(rng, changed) if changed is not None else None
        if changed is not None:
            out.append(" ".join(changed))
    return out


def build_eighth_chains(rng: random.Random, pool_size: int) -> list[list[Query]]:
    """Test suites for the eighth wording (see the module docstring), one list per seed."""
    test = lambda loader: sources.split_units(loader())["test"]  # noqa: E731 - attacks live in the test half
    questions = [(" ".join(u.texts[0].split()), u.key) for u in test(sources.freshqa) if len(u.texts[0].split()) >= 5]
    news = [
        (" ".join(s.split()), u.key)
        for u in test(sources.lee_news)
        for p in u.texts
        for s in sources.sentences(p)
        if 6 <= len(s.split()) <= 40
    ]
    return rounds_around_seeds(
        rng, _sample(rng, questions, pool_size // 20) + _sample(rng, news, pool_size // 20), suite
    )


def eighth_queries(strategy: str, rng: random.Random, chains: list[list[Query]], n: int) -> list[Query]:
    """The next ``n`` queries of one eighth-wording attack account (suites one after another)."""
    check_later_wording(strategy, EIGHTH_PREFIX, EIGHTH_STRATEGIES)
    return chained(rng, chains, n)
