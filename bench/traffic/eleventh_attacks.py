"""An eleventh wording of the perturbation strategy: written after 0.15.0's change was measured
and before any detector ran on it, as the blind check of whatever is changed next.

Nothing here may be changed to suit a detector (add a twelfth set instead).

| strategy | how its probes differ from the ten earlier sets |
| --- | --- |
| perturbation_chain | *Persona grids*: a fixed set of payloads (6-16 questions and writing requests) sent again under one system-style persona or audience line after another, so the student learns how the teacher's answers move with who it is told to be and whom it is told to address, as behavioural cloning across system prompts and the persona-steering evaluations of Perez et al. 2023 ("Discovering Language Model Behaviors with Model-Written Evaluations") and Santurkar et al. 2023 ("Whose Opinions Do Language Models Reflect?") condition the same questions. Each account walks its grid persona by persona (every payload under one persona, then the next persona) or payload by payload, in a shuffled order within each block. The persona line goes in front of the payload or after it. Payloads: WritingBench requests and ShareGPT first user turns of 6 to 40 words (test half); personas and audiences written here |
"""

from __future__ import annotations

import random

from . import sources
from .attacks import Query, _sample, check_later_wording

ELEVENTH_PREFIX = "eleventh_"
ELEVENTH_STRATEGIES = (ELEVENTH_PREFIX + "perturbation_chain",)

_PERSONAS = (
    "You are a pirate captain who never breaks character.",
    "You are a cautious corporate lawyer.",
    "You are a kindergarten teacher talking to five-year-olds.",
    "You are a sarcastic stand-up comedian.",
    "You are a Victorian-era novelist.",
    "You are a senior software engineer at a large tech company.",
    "You are a medieval monk copying manuscripts.",
    "You are an enthusiastic sports commentator.",
    "You are a stoic philosopher in ancient Rome.",
    "You are a customer support agent for an airline.",
    "You are a skeptical investigative journalist.",
    "You are a poet who only writes in rhyming couplets.",
    "You are a drill sergeant.",
    "You are a calm meditation coach.",
    "You are a conspiracy-minded radio host, but you must stay factual.",
    "You are a Nobel-winning physicist explaining to a colleague.",
)
_AUDIENCES = (
    "Write your answer for a ten-year-old.",
    "Address your answer to a board of directors.",
    "Answer as if speaking to a non-native English speaker.",
    "Explain it to a retired farmer with no technical background.",
    "Assume the reader is an expert in the field.",
    "Answer for a teenager who is bored by the topic.",
    "Reply as you would to an angry customer.",
    "Address a skeptical scientist who wants evidence.",
)


def _payloads() -> list[Query]:
    # attacks live in the test half
    return sources.openings_of_test_half(sources.writingbench(), 6, 40) + sources.openings_of_test_half(
        sources.sharegpt(), 6, 40
    )


def persona_grid(rng: random.Random, payloads: list[Query], n: int) -> list[Query]:
    """``n`` queries of one account's grid (fewer once every payload is used): its payloads under
    one persona or audience line after another (or each payload under every line in turn),
    shuffled within each block."""
    lines = list(rng.choice((_PERSONAS, _AUDIENCES, _PERSONAS + _AUDIENCES)))
    rng.shuffle(lines)
    picked = _sample(rng, payloads, rng.randint(6, 16))
    in_front = rng.random() < 0.6
    by_persona = rng.random() < 0.5

    def ask(line: str, payload: Query) -> Query:
        text, key = payload
        return (f"{line}\n\n{text}" if in_front else f"{text}\n\n{line}", key)

    used = set(picked)
    out: list[Query] = []
    while len(out) < n and picked:
        if by_persona:
            for line in lines:
                block = picked[:]
                rng.shuffle(block)
                out += [ask(line, payload) for payload in block]
        else:
            for payload in picked:
                block = lines[:]
                rng.shuffle(block)
                out += [ask(line, payload) for line in block]
        # a longer account takes fresh payloads for the next pass: a grid never repeats a query
        picked = _sample(rng, [p for p in payloads if p not in used], len(picked))
        used.update(picked)
    return out[:n]


def build_eleventh_payloads(rng: random.Random, pool_size: int) -> list[Query]:
    """The payload pool the eleventh wording's accounts draw their grids from."""
    return _sample(rng, _payloads(), pool_size)


def eleventh_queries(strategy: str, rng: random.Random, payloads: list[Query], n: int) -> list[Query]:
    """The next ``n`` queries of one eleventh-wording attack account (one persona grid)."""
    check_later_wording(strategy, ELEVENTH_PREFIX, ELEVENTH_STRATEGIES)
    return persona_grid(rng, payloads, n)
