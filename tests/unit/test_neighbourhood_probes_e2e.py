"""Neighbourhood probes end to end: real prompts, the bundled model, the shipped calibration.

An explainer maps which words of its seed prompts the model's answers depend on: it sends each
seed with one word left out or masked, position after position, and random subsets of its
words (occlusion and LIME-style sampling). A contrast-set builder never sends its seeds: each
query is a seed with one word replaced, so no two of its queries changed at different places
are a small edit of each other. A person reworks their prompts one version at a time, and a
templated app fills one-word slots of one fixed prompt. All four send many prompts a word or two
away from earlier ones; only the explainer and the contrast sets are flagged, on the probe rate.
All prompts are written here.
"""

from __future__ import annotations

import random

import pytest

SEEDS = [
    "Is this review positive or negative: the battery dies within an hour and support never answered",
    "Does this email look like phishing: your parcel is held at customs, pay the fee at the link below",
    "Classify the intent of this message: I want to move my dentist appointment to next Tuesday",
    "Is the following statement true: the Great Wall of China is visible from the Moon",
    "Which department should handle this ticket: my invoice shows a charge I never authorised",
    "Rate the toxicity of this comment: nobody asked for your opinion, go back to your cave",
]
MASKS = ["[MASK]", "___"]
REPLACEMENTS = ["great", "terrible", "never", "always", "Monday", "refund", "blue", "seven", "quickly", "nobody"]
EDITS = ["please", "briefly", "carefully", "today", "again", "exactly"]


def explainer(seed: int = 5, per_seed: int = 16) -> list[str]:
    rng = random.Random(seed)
    out = []
    for text in SEEDS:
        words = text.split()
        out.append(text)
        mask = rng.choice(MASKS)
        for i in range(per_seed // 2):  # occlusion, half masked
            at = (i * 3) % len(words)
            kept = words[:at] + ([mask] if i % 2 else []) + words[at + 1 :]
            out.append(" ".join(kept))
        for _ in range(per_seed // 2):  # random subsets of the seed's words
            out.append(" ".join(w for w in words if rng.random() < 0.8))
    return out


def contrast_sets(seed: int = 8, per_seed: int = 14) -> list[str]:
    """Each seed, never sent, with one word at a time replaced by another."""
    rng = random.Random(seed)
    out = []
    for text in SEEDS:
        words = text.split()
        for _ in range(per_seed):
            at = rng.randrange(len(words))
            out.append(" ".join([*words[:at], rng.choice(REPLACEMENTS), *words[at + 1 :]]))
    return out


def reworking_user(seed: int = 6) -> list[str]:
    """Each prompt reworked three to five times, each version built on the one before."""
    rng = random.Random(seed)
    out = []
    for text in SEEDS:
        words = text.split()
        out.append(text)
        for _ in range(rng.randint(3, 5)):
            if rng.random() < 0.5:
                words.insert(rng.randrange(len(words) + 1), rng.choice(EDITS))
            else:
                words[rng.randrange(len(words))] = rng.choice(EDITS)
            out.append(" ".join(words))
    return out


def templated_app(seed: int = 7, n: int = 96) -> list[str]:
    rng = random.Random(seed)
    products = ["kettle", "toaster", "blender", "lamp", "heater", "fan", "radio", "scale", "clock", "mixer"]
    issues = ["broken", "late", "missing", "noisy", "damaged", "wrong"]
    return [
        f"You are a returns assistant. Decide refund or repair. Customer: my {rng.choice(products)} "
        f"arrived {rng.choice(issues)}"
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def engine(text_engine_factory):
    engine = text_engine_factory(device="cpu")
    accounts = {
        "explainer": explainer(),
        "contrast": contrast_sets(),
        "reworker": reworking_user(),
        "app": templated_app(),
    }
    for account, prompts in accounts.items():
        for start in range(0, len(prompts), 16):
            chunk = prompts[start : start + 16]
            engine.observe_batch([account] * len(chunk), chunk)
    return engine


@pytest.mark.slow
@pytest.mark.parametrize("account", ["explainer", "contrast"])
def test_probes_around_seeds_are_flagged(engine, account):
    report = engine.report(account)
    state = engine.pipeline.states[account]
    assert state.probes[1] >= state.n // 2, state.probes  # most probes after the first few around a seed
    assert report.level.value == "flag", report.to_dict()
    assert report.reasons[0].feature == "neighbourhood_probe_rate", report.to_dict()


@pytest.mark.slow
@pytest.mark.parametrize("account", ["reworker", "app"])
def test_editing_and_templated_prompts_are_not_probes(engine, account):
    state = engine.pipeline.states[account]
    assert state.probes[1] <= 2, state.probes
    assert engine.report(account).level.value != "flag", engine.report(account).to_dict()
