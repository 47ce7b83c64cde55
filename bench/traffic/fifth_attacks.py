"""A fifth wording of the perturbation strategy: written after the fourth wording's misses
(``fourth_attacks.py``) had been looked at, and fixed before any detector was measured on it,
so that what is changed after looking at the fourth is measured on chains nobody had looked at.

Nothing here may be changed to suit a detector (add a sixth set instead).

| strategy | how its chains differ from the four earlier sets |
| --- | --- |
| perturbation_chain | *Robustness-probe edits* in the manner of PromptBench (Zhu et al. 2023, "PromptBench: Towards Evaluating the Robustness of Large Language Models on Adversarial Prompts"): each step appends a distractor (a tautology, a random token, a stray instruction) to the last prompt sent, drops the last distractor it added, or swaps one word for a synonym from a small thesaurus. Appending makes a prompt that starts with the previous one, as a growing transcript would. Seeds: Wikipedia sentences and BBC headlines (test half), which no earlier set perturbs as they are; each chain starts at its first edit |
"""

from __future__ import annotations

import random
import re
import string

from . import sources
from .attacks import Query, _sample, chained, check_later_wording, distinct_steps

FIFTH_PREFIX = "fifth_"
FIFTH_STRATEGIES = (FIFTH_PREFIX + "perturbation_chain",)

_DISTRACTORS = (
    "and true is true",
    "and false is not true",
    "and the sky is blue",
    "Remember to be concise.",
    "Answer carefully.",
    "This is important.",
    "(see above)",
    "Think twice.",
)
_SYNONYMS = (
    ("big", "large"), ("small", "little"), ("fast", "quick"), ("start", "begin"), ("end", "finish"),
    ("help", "assist"), ("show", "display"), ("buy", "purchase"), ("make", "create"), ("use", "employ"),
    ("get", "obtain"), ("need", "require"), ("find", "locate"), ("old", "aged"), ("new", "recent"),
    ("said", "stated"), ("people", "persons"), ("city", "town"), ("country", "nation"), ("car", "vehicle"),
    ("job", "position"), ("house", "home"), ("many", "numerous"), ("often", "frequently"), ("near", "close to"),
    ("about", "regarding"), ("after", "following"), ("before", "prior to"), ("but", "however"), ("also", "too"),
    ("first", "initial"), ("last", "final"), ("world", "globe"), ("war", "conflict"), ("government", "administration"),
    ("company", "firm"), ("money", "funds"), ("school", "academy"), ("children", "kids"), ("team", "squad"),
)  # fmt: skip
_SWAPS = dict(_SYNONYMS) | {b: a for a, b in _SYNONYMS}
_WORD = re.compile(r"\b[A-Za-z]+\b")  # whole words: never part of a random token


def _random_token(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(4, 8)))


def _synonym_swap(rng: random.Random, text: str) -> str | None:
    pairs = _SWAPS
    found = [m for m in _WORD.finditer(text) if m.group().lower() in pairs]
    if not found:
        return None
    m = rng.choice(found)
    new = pairs[m.group().lower()]
    if m.group()[0].isupper():
        new = new[0].upper() + new[1:]
    return text[: m.start()] + new + text[m.end() :]


def probe_chain(rng: random.Random, seed: str, steps: int) -> list[str]:
    """The prompts of one robustness probe of ``seed``: each step edits the prompt sent last."""
    added: list[str] = []  # distractors appended so far, newest last
    current, out = seed, []
    for _ in range(steps):
        op = rng.random()
        if added and op < 0.3:  # drop the newest distractor again
            current = current[: len(current) - len(added.pop()) - 1]
        elif op < 0.7 or (swapped := _synonym_swap(rng, current)) is None:
            distractor = _random_token(rng) if rng.random() < 0.3 else rng.choice(_DISTRACTORS)
            added.append(distractor)
            current = f"{current} {distractor}"
        else:
            current = swapped
        out.append(current)
    return out


def build_fifth_chains(rng: random.Random, pool_size: int) -> list[list[Query]]:
    """Perturbation chains for the fifth wording (see the module docstring)."""
    test = lambda loader: sources.split_units(loader())["test"]  # noqa: E731 - attacks live in the test half
    wiki = [
        (s, u.key)
        for u in sources.wikipedia()
        for p in u.texts[1:]
        for s in sources.sentences(p)
        if 40 <= len(s) <= 300
    ]
    headlines = [(u.texts[0], u.key) for u in test(sources.bbc_news)]
    seeds = _sample(rng, wiki, pool_size // 20) + _sample(rng, headlines, pool_size // 20)
    chains = []
    for seed_text, key in seeds:
        # a distractor dropped again gives back a prompt sent before: not sent twice
        chains.append(distinct_steps(probe_chain(rng, seed_text, rng.randint(6, 30)), key, frozenset([seed_text])))
    return chains


def fifth_queries(strategy: str, rng: random.Random, chains: list[list[Query]], n: int) -> list[Query]:
    """The next ``n`` queries of one fifth-wording attack account (chains one after another)."""
    check_later_wording(strategy, FIFTH_PREFIX, FIFTH_STRATEGIES)
    return chained(rng, chains, n)
