"""A small built-in scenario: five ordinary accounts and two extracting ones.

The text is written for probewatch. Ordinary users stay on a few related subjects, come
back to earlier questions and follow up; the extracting accounts map a decision boundary
the way published campaigns did, with perturbation chains around seed prompts and
one-word edits that probe where a classifier's label flips. The other strategies
(templated sweeps, chain-of-thought wrappers, random or corpus-sampled queries, split and
mixed campaigns) are in the detection benchmark, with what probewatch catches of each.
The prompts and seeds are package data (``data/demo_scenario.json``); this module only
generates the extractors' traffic from the seeds and interleaves everything in time.
"""

from __future__ import annotations

import json
import random
from importlib import resources

_SCENARIO = json.loads(resources.files(__package__).joinpath("data/demo_scenario.json").read_text(encoding="utf-8"))
NORMAL_ACCOUNTS: dict[str, list[str]] = _SCENARIO["ordinary_accounts"]
_PERTURBATION_SEEDS: tuple[str, ...] = tuple(_SCENARIO["perturbation_seeds"])
_FILLER_WORDS: tuple[str, ...] = tuple(_SCENARIO["filler_words"])
_SEED_REVIEWS: tuple[str, ...] = tuple(_SCENARIO["seed_reviews"])
_SENTIMENT_WORDS: tuple[str, ...] = tuple(_SCENARIO["sentiment_words"])
EXTRACTING = ("perturb-bot", "boundary-prober")


def _perturb(text: str, rng: random.Random) -> str:
    words = text.split()
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(("swap", "insert", "delete"))
        i = rng.randrange(len(words))
        if op == "swap" and len(words) > 1:
            j = min(i + 1, len(words) - 1)
            words[i], words[j] = words[j], words[i]
        elif op == "insert":
            words.insert(i, rng.choice(_FILLER_WORDS))
        elif len(words) > 4:
            del words[i]
    return " ".join(words)


def extracting_accounts(seed: int = 7) -> dict[str, list[str]]:
    """Two decision-boundary mappers: perturbation chains around seed prompts, and a prober
    that swaps one word of seed reviews to find where a sentiment label flips."""
    rng = random.Random(seed)
    chains = []
    for seed_prompt in _PERTURBATION_SEEDS:
        current = seed_prompt
        for _ in range(20):
            current = _perturb(current if rng.random() < 0.7 else seed_prompt, rng)
            chains.append(current)
    probes = []
    for _ in range(150):
        words = rng.choice(_SEED_REVIEWS).split()
        words[rng.randrange(len(words))] = rng.choice(_SENTIMENT_WORDS)
        probes.append("Classify the sentiment of this review as positive or negative: " + " ".join(words))
    return {"perturb-bot": chains, "boundary-prober": probes}


def demo_traffic(seed: int = 7) -> list[tuple[str, str, float]]:
    """(account, prompt, ts) interleaved across accounts in time order."""
    rng = random.Random(seed)
    streams = dict(NORMAL_ACCOUNTS)
    streams.update(extracting_accounts(seed))
    events = []
    for account, prompts in streams.items():
        t = rng.uniform(0, 60)
        rate = 4.0 if account in NORMAL_ACCOUNTS else 1.0  # extractors send faster
        for prompt in prompts:
            t += rng.expovariate(1.0 / rate) * 10
            events.append((t, account, prompt))
    events.sort()
    return [(a, p, t) for t, a, p in events]
