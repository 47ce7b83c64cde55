"""A ninth wording of the perturbation strategy: written before the eighth wording's results
(``eighth_attacks.py``) were looked at, and fixed before any detector was measured on it, so
that what is changed after looking at the eighth is measured on probes nobody had looked at.

Nothing here may be changed to suit a detector (add a tenth set instead).

| strategy | how its probes differ from the eight earlier sets |
| --- | --- |
| perturbation_chain | *Character-level adversarial probes around a seed* in the manner of DeepWordBug (Gao et al. 2018, "Black-box Generation of Adversarial Text Sequences to Evade Deep Learning Classifiers") and TextBugger (Li et al. 2019): each query is the seed with one to three of its words perturbed at character level (a letter inserted, deleted, replaced by a keyboard neighbour or by a look-alike digit, or the word split in two by a space), or with two neighbouring words swapped; never the query before it. The words perturbed are drawn with the longer words first, as an importance ranking by a word's length would pick them. The seed itself is not sent. Seeds: FanOutQA questions and WritingBench writing requests of 6 to 40 words (test half) |
"""

from __future__ import annotations

import random

from . import sources
from .attacks import Query, _sample, chained, check_later_wording, rounds_around_seeds

NINTH_PREFIX = "ninth_"
NINTH_STRATEGIES = (NINTH_PREFIX + "perturbation_chain",)

_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_LOOKALIKE_DIGITS = {"o": "0", "l": "1", "i": "1", "e": "3", "a": "4", "s": "5", "t": "7", "b": "8", "g": "9"}


def _keyboard_neighbour(rng: random.Random, letter: str) -> str:
    for row in _KEYBOARD_ROWS:
        at = row.find(letter.lower())
        if at >= 0:
            near = [row[j] for j in (at - 1, at + 1) if 0 <= j < len(row)]
            picked = rng.choice(near)
            return picked.upper() if letter.isupper() else picked
    return letter


def bug_word(rng: random.Random, word: str) -> str:
    """One character-level bug in ``word`` (of at least three letters)."""
    j = rng.randrange(1, len(word) - 1) if len(word) > 2 else 0
    kind = rng.choice(("insert", "delete", "neighbour", "lookalike", "split"))
    if kind == "insert":
        return word[:j] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[j:]
    if kind == "delete":
        return word[:j] + word[j + 1 :]
    if kind == "neighbour":
        return word[:j] + _keyboard_neighbour(rng, word[j]) + word[j + 1 :]
    if kind == "lookalike":
        at = [i for i, c in enumerate(word) if c.lower() in _LOOKALIKE_DIGITS]
        if at:
            i = rng.choice(at)
            return word[:i] + _LOOKALIKE_DIGITS[word[i].lower()] + word[i + 1 :]
        return word[:j] + word[j + 1 :]
    return word[:j] + " " + word[j:]


def probe(rng: random.Random, words: list[str]) -> list[str]:
    """The seed's words with one to three of them bugged (longer words likelier), or with two
    neighbouring words swapped."""
    out = words.copy()
    if rng.random() < 0.2 and len(words) >= 2:
        i = rng.randrange(len(words) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
        return out
    candidates = [i for i, w in enumerate(words) if len(w) >= 3 and w.isalpha()]
    if not candidates:
        return out
    weights = [len(words[i]) ** 2 for i in candidates]
    count = min(len(candidates), rng.choice((1, 1, 2, 3)))
    picked: set[int] = set()
    while len(picked) < count:
        picked.add(rng.choices(candidates, weights)[0])
    for i in picked:
        out[i] = bug_word(rng, out[i])
    return out


def attack_round(rng: random.Random, seed: str, size: int) -> list[str]:
    """One round of ``size`` probes around ``seed``."""
    words = seed.split()
    return [" ".join(probe(rng, words)) for _ in range(size)]


def build_ninth_chains(rng: random.Random, pool_size: int) -> list[list[Query]]:
    """Probe rounds for the ninth wording (see the module docstring), one list per seed."""
    test = lambda loader: sources.split_units(loader())["test"]  # noqa: E731 - attacks live in the test half
    questions = [
        (" ".join(u.texts[0].split()), u.key) for u in test(sources.fanoutqa) if 6 <= len(u.texts[0].split()) <= 40
    ]
    requests = [
        (" ".join(u.texts[0].split()), u.key) for u in test(sources.writingbench) if 6 <= len(u.texts[0].split()) <= 40
    ]
    seeds = _sample(rng, questions, pool_size // 20) + _sample(rng, requests, pool_size // 20)
    return rounds_around_seeds(rng, seeds, attack_round)


def ninth_queries(strategy: str, rng: random.Random, chains: list[list[Query]], n: int) -> list[Query]:
    """The next ``n`` queries of one ninth-wording attack account (rounds one after another)."""
    check_later_wording(strategy, NINTH_PREFIX, NINTH_STRATEGIES)
    return chained(rng, chains, n)
