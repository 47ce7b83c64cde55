"""A fourteenth wording of the perturbation strategy: written after 0.16.1's grid rule was fixed
and before any detector ran on this one, as the blind check of that rule (the thirteenth was
spent choosing it).

Nothing here may be changed to suit a detector (add a fifteenth set instead).

| strategy | how its probes differ from the thirteen earlier sets |
| --- | --- |
| perturbation_chain | *Context grids*: the same follow-up requests sent after one pasted conversation history after another, so the student learns how the teacher's answers move with what was said before, as multi-turn evaluations probe a model with fixed follow-ups after varied first turns (MT-Bench, Zheng et al. 2023; follow-up sensitivity, Laban et al. 2024 "Are You Sure?"). Each account takes 4-8 histories (the first 2-4 user turns of ShareGPT conversations of 4-40 words a turn, test half) and 5-10 of 16 follow-ups written here, in one of three transcript layouts (numbered earlier messages, speaker-tagged lines, one JSON message per line), and walks history by history, follow-up by follow-up or shuffled; a longer account takes fresh histories for the next pass |
"""

from __future__ import annotations

import json
import random

from . import sources
from .attacks import Query, _sample, check_later_wording, grid_cells

FOURTEENTH_PREFIX = "fourteenth_"
FOURTEENTH_STRATEGIES = (FOURTEENTH_PREFIX + "perturbation_chain",)

_FOLLOW_UPS = (
    "Summarise what we have discussed so far in two sentences.",
    "What would you recommend I do next?",
    "Explain your last point as if I were twelve years old.",
    "Are there any risks or downsides I should know about?",
    "Which of my questions was the hardest to answer, and why?",
    "Give me a checklist based on this conversation.",
    "What did I get wrong in my assumptions?",
    "Rewrite your advice as a short email to a colleague.",
    "What is one thing you are unsure about here?",
    "Translate the key points into French.",
    "Turn this into three questions for a quiz.",
    "What would an expert disagree with in your answers?",
    "How would the answer change for a small business?",
    "List the sources I should read to learn more.",
    "Give me the opposite argument in one paragraph.",
    "Rate your confidence in each answer from one to ten.",
)


def _histories() -> list[tuple[list[str], str]]:
    """(first 2-4 user turns, unit key) of test-half ShareGPT conversations whose turns have
    4-40 words each."""
    out = []
    for unit in sources.split_units(sources.sharegpt())["test"]:
        turns = [" ".join(t.split()) for t in unit.texts[:4]]
        if len(turns) >= 2 and all(4 <= len(t.split()) <= 40 for t in turns):
            out.append((turns, unit.key))
    return out


def _prompt(layout: int, turns: list[str], follow_up: str) -> str:
    if layout == 0:
        earlier = [f"{i}. {t}" for i, t in enumerate(turns, 1)]
        return "\n".join(["My earlier messages in this chat:", *earlier, "", follow_up])
    if layout == 1:
        return "\n".join([*(f"[user] {t}" for t in turns), f"[user] {follow_up}"])
    return "\n".join(json.dumps({"role": "user", "content": t}) for t in [*turns, follow_up])


def context_grid(rng: random.Random, histories: list[tuple[list[str], str]], n: int) -> list[Query]:
    """``n`` queries of one account's grid (fewer once every history is used): its follow-ups
    after each of its histories, history by history, follow-up by follow-up or shuffled."""
    follow_ups = _sample(rng, list(_FOLLOW_UPS), rng.randint(5, 10))
    picked = _sample(rng, histories, rng.randint(4, 8))
    layout = rng.randrange(3)
    order = rng.choice(("by_payload", "by_frame", "shuffled"))
    used = {key for _, key in picked}
    out: list[Query] = []
    while len(out) < n and picked:
        cells = grid_cells(rng, follow_ups, picked, order)
        out += [(_prompt(layout, turns, f), key) for f, (turns, key) in cells]
        # a longer account takes fresh histories for the next pass: a grid never repeats a query
        picked = _sample(rng, [h for h in histories if h[1] not in used], len(picked))
        used.update(key for _, key in picked)
    return out[:n]


def build_fourteenth_histories(rng: random.Random, pool_size: int) -> list[tuple[list[str], str]]:
    """The history pool the fourteenth wording's accounts draw their grids from."""
    return _sample(rng, _histories(), pool_size)


def fourteenth_queries(
    strategy: str, rng: random.Random, histories: list[tuple[list[str], str]], n: int
) -> list[Query]:
    """The next ``n`` queries of one fourteenth-wording attack account (one context grid)."""
    check_later_wording(strategy, FOURTEENTH_PREFIX, FOURTEENTH_STRATEGIES)
    return context_grid(rng, histories, n)
