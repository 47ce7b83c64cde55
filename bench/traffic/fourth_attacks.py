"""A fourth wording of the perturbation strategy: written after the third wording's misses
(``third_attacks.py``) had been looked at, and fixed before any detector was measured on it,
so that what is changed after looking at the third is measured on chains nobody had looked at.

Nothing here may be changed to suit a detector (add a fifth set instead).

| strategy | how its chains differ from the three earlier sets |
| --- | --- |
| perturbation_chain | *Behavioural-test edits*: each step applies one of the invariance or directional edits of CheckList (Ribeiro et al. 2020, "Beyond Accuracy: Behavioral Testing of NLP Models with CheckList") to the last prompt sent: a contraction made or undone, a number changed or written out, a name or place swapped, an intensifier added or dropped, a negation added or dropped, end punctuation changed. *Parallel chains*: an account walks two to five seeds at once and picks which to step next at random, as a pool of workers would, so consecutive queries mostly come from different seeds. Seeds: Mind2Web tasks (test half) and Lee news sentences, which no earlier set perturbs; each chain starts at its first edit (the seed as written can be another set's prompt) |
"""

from __future__ import annotations

import random
import re

from . import sources
from .attacks import Query, _sample, chain_order, check_later_wording, distinct_steps

FOURTH_PREFIX = "fourth_"
FOURTH_STRATEGIES = (FOURTH_PREFIX + "perturbation_chain",)

_CONTRACTIONS = (
    ("do not", "don't"),
    ("does not", "doesn't"),
    ("is not", "isn't"),
    ("are not", "aren't"),
    ("was not", "wasn't"),
    ("cannot", "can't"),
    ("will not", "won't"),
    ("it is", "it's"),
    ("I am", "I'm"),
    ("they are", "they're"),
    ("we are", "we're"),
    ("that is", "that's"),
)
_NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_NAMES = (
    "Alba", "Bogdan", "Camille", "Dario", "Elif", "Femi", "Greta", "Hamza", "Ilse", "Joao",
    "Keiko", "Luca", "Marta", "Nikhil", "Olga", "Pablo", "Rania", "Sven", "Thandi", "Viktor",
)  # fmt: skip
_PLACES = (
    "Adelaide", "Bilbao", "Cordoba", "Dresden", "Entebbe", "Fresno", "Graz", "Harbin", "Iquitos",
    "Jeddah", "Kochi", "Lyon", "Malmo", "Nagpur", "Odessa", "Pune", "Reno", "Split", "Tulsa", "Utrecht",
)  # fmt: skip
_INTENSIFIERS = ("very", "really", "extremely", "quite", "slightly", "somewhat", "truly")
_AUXILIARIES = ("is", "are", "was", "were", "can", "will", "should", "would", "could", "does", "do", "did")
_END_MARKS = ("", ".", "!", "?", "...", " ?", "!!")
_NUMBER = re.compile(r"\b\d+\b")
_CAPITALISED = re.compile(r"(?<=\s)[A-Z][a-z]{2,}\b")
_WORD = re.compile(r"\b[a-z]{4,}\b")
_AUXILIARY = re.compile(r"\b(" + "|".join(_AUXILIARIES) + r")\b")


def _contraction(rng: random.Random, text: str) -> str | None:
    pairs = [(a, b) for a, b in _CONTRACTIONS if a in text] + [(b, a) for a, b in _CONTRACTIONS if b in text]
    if not pairs:
        return None
    old, new = rng.choice(pairs)
    return text.replace(old, new, 1)


def _number(rng: random.Random, text: str) -> str | None:
    found = list(_NUMBER.finditer(text))
    if found:
        m = rng.choice(found)
        value = int(m.group())
        if value <= 10 and rng.random() < 0.3:
            new = _NUMBER_WORDS[max(value, 1) - 1]
        else:
            new = str(max(0, value + rng.choice([-3, -2, -1, 1, 2, 3, 10, -10])))
        return text[: m.start()] + new + text[m.end() :]
    words = [w for w in _NUMBER_WORDS if re.search(rf"\b{w}\b", text)]
    if words:
        w = rng.choice(words)
        return re.sub(rf"\b{w}\b", str(_NUMBER_WORDS.index(w) + 1), text, count=1)
    return None


def _swap_entity(rng: random.Random, text: str) -> str | None:
    found = list(_CAPITALISED.finditer(text))
    if not found:
        return None
    m = rng.choice(found)
    pool = _PLACES if rng.random() < 0.5 else _NAMES
    return text[: m.start()] + rng.choice([p for p in pool if p != m.group()]) + text[m.end() :]


def _intensifier(rng: random.Random, text: str) -> str | None:
    present = [w for w in _INTENSIFIERS if re.search(rf"\b{w} ", text)]
    if present and rng.random() < 0.5:
        return re.sub(rf"\b{rng.choice(present)} ", "", text, count=1)
    found = [m for m in _WORD.finditer(text) if m.group() not in _INTENSIFIERS]
    if not found:
        return None
    m = rng.choice(found)
    return text[: m.start()] + rng.choice(_INTENSIFIERS) + " " + text[m.start() :]


def _negation(rng: random.Random, text: str) -> str | None:
    if " not " in text:
        return text.replace(" not ", " ", 1)
    found = list(_AUXILIARY.finditer(text))
    if not found:
        return None
    m = rng.choice(found)
    return text[: m.end()] + " not" + text[m.end() :]


def _end_mark(rng: random.Random, text: str) -> str | None:
    stem = text.rstrip(" .!?")
    return stem + rng.choice([mark for mark in _END_MARKS if stem + mark != text])


_EDITS = (_contraction, _number, _swap_entity, _intensifier, _negation, _end_mark)


def behavioural_edit(rng: random.Random, text: str) -> str:
    """One CheckList-style edit of ``text``; edits that do not apply to it are skipped (the
    end-punctuation edit always applies)."""
    for edit in rng.sample(_EDITS, len(_EDITS)):
        edited = edit(rng, text)
        if edited is not None and edited != text:
            return edited
    return text + "."  # unreachable in practice: the end mark always changes the text


def build_fourth_chains(rng: random.Random, pool_size: int) -> list[list[Query]]:
    """Perturbation chains for the fourth wording (see the module docstring)."""
    test = lambda loader: sources.split_units(loader())["test"]  # noqa: E731 - attacks live in the test half
    tasks = [(" ".join(u.texts[0].split()), u.key) for u in test(sources.mind2web)]
    news = [(s, u.key) for u in sources.lee_news() for s in sources.sentences(u.texts[0])[:3] if 30 <= len(s) <= 300]
    seeds = _sample(rng, tasks, pool_size // 20) + _sample(rng, news, pool_size // 20)
    chains = []
    for seed_text, key in seeds:
        # the seed itself is not sent: as written, it can be another set's prompt (a corpus
        # sentence, a k-center pick), and the chain is what this set is about
        texts, current = [], seed_text
        for _ in range(rng.randint(6, 30)):
            current = behavioural_edit(rng, current)
            texts.append(current)
        chains.append(distinct_steps(texts, key, frozenset([seed_text])))  # an edit undone is no step
    return chains


def interleaved(rng: random.Random, chains: list[list[Query]], n: int) -> list[Query]:
    """The first ``n`` queries of an account that walks two to five chains at once, stepping
    one picked at random each time and starting the next chain when one ends."""
    width = rng.randint(2, 5)
    queue = chain_order(rng, chains, n)
    active: list[list[Query]] = []
    out: list[Query] = []
    while len(out) < n and (active or queue):
        while len(active) < width and queue:
            active.append(list(queue.pop(0)))
        chain = rng.choice(active)
        out.append(chain.pop(0))
        if not chain:
            active = [c for c in active if c is not chain]
    return out


def fourth_queries(strategy: str, rng: random.Random, chains: list[list[Query]], n: int) -> list[Query]:
    """The next ``n`` queries of one fourth-wording attack account."""
    check_later_wording(strategy, FOURTH_PREFIX, FOURTH_STRATEGIES)
    return interleaved(rng, chains, n)
