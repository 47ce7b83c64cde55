"""The walk-away rate end to end: real prompts, the bundled model, the shipped calibration.

An augmentation attacker edits seed prompts one word at a time, each edit built on the last
and sent (JBDA adapted to text); an editing user re-sends their own prompts with a few
tweaks. Both send nothing but near-copies. The attacker walks away from its seeds and is
flagged on the walk-away rate; the editing user stays near what they first asked and is not.
All prompts are written here.
"""

from __future__ import annotations

import random

import pytest

SEEDS = [
    "What are the main causes of inflation in a growing economy",
    "Write a short poem about the ocean at night",
    "How does a vaccine train the immune system to fight a virus",
    "Summarize the plot of a detective novel set in Victorian London",
    "Explain how a neural network learns from labelled examples",
    "Give me three tips for growing tomatoes on a balcony",
    "Why do cats purr when they are content",
    "Describe the water cycle for a ten year old student",
]
# Words an attacker's edits draw from: common, unrelated to the seeds.
VOCABULARY = [
    "table",
    "river",
    "green",
    "quickly",
    "justice",
    "metal",
    "dream",
    "carbon",
    "window",
    "seven",
    "market",
    "silent",
    "orbit",
    "paper",
    "frozen",
    "engine",
    "velvet",
    "harbor",
    "planet",
    "mirror",
    "copper",
    "ladder",
    "thunder",
    "violin",
    "desert",
    "garden",
    "signal",
    "marble",
    "rocket",
    "candle",
    "forest",
    "tunnel",
    "shadow",
    "crystal",
    "meadow",
    "anchor",
    "lantern",
]
TWEAKS = [" Please be brief.", " Use bullet points.", " Thanks!", " In simple terms.", " Give an example."]


def attacker(seed: int = 3, steps: int = 12) -> list[str]:
    """Each seed walked by `steps` edits: insert, replace or delete a word, or swap two."""
    rng = random.Random(seed)
    out = []
    for text in SEEDS:
        words = text.split()
        out.append(text)
        for _ in range(steps):
            op = rng.random()
            if op < 0.35:
                words.insert(rng.randrange(len(words) + 1), rng.choice(VOCABULARY))
            elif op < 0.7:
                words[rng.randrange(len(words))] = rng.choice(VOCABULARY)
            elif op < 0.85 and len(words) > 4:
                del words[rng.randrange(len(words))]
            else:
                i = rng.randrange(len(words) - 1)
                words[i], words[i + 1] = words[i + 1], words[i]
            out.append(" ".join(words))
    return out


def editing_user(seed: int = 4) -> list[str]:
    """Each prompt sent, then re-sent two to four times with a tweak added or a word fixed."""
    rng = random.Random(seed)
    out = []
    for text in SEEDS:
        current = text
        out.append(current)
        for _ in range(rng.randint(2, 4)):
            current = current + rng.choice(TWEAKS) if rng.random() < 0.6 else current.replace(" a ", " one ", 1)
            out.append(current)
    return out


@pytest.fixture(scope="module")
def engine(text_engine_factory):
    engine = text_engine_factory(device="cpu")
    for account, prompts in (("walker", attacker()), ("editor", editing_user())):
        for start in range(0, len(prompts), 16):
            chunk = prompts[start : start + 16]
            engine.observe_batch([account] * len(chunk), chunk)
    return engine


@pytest.mark.slow
def test_the_attacker_walks_away_and_is_flagged_for_it(engine):
    report = engine.report("walker")
    state = engine.pipeline.states["walker"]
    assert state.n == len(SEEDS) * 13
    assert state.walk[1] >= 20, state.walk  # most edits past the fourth of each chain are steps
    assert report.level.value == "flag", report.to_dict()
    assert any(r.feature == "walk_away_rate" for r in report.reasons), report.to_dict()


@pytest.mark.slow
def test_the_editing_user_sends_near_copies_too_but_is_not_flagged(engine):
    state = engine.pipeline.states["editor"]
    assert state.n >= 3 * len(SEEDS)
    assert state.walk[1] <= 2, state.walk
    assert engine.report("editor").level.value != "flag", engine.report("editor").to_dict()
