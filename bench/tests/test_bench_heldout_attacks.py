"""The held-out attack wordings (bench/traffic/heldout_attacks.py) are really other wordings:
no fixed text shared with the strategies the detector was developed on or with the
elicitation head's training wordings, and no prompt shared with the plain attacks."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from bench.elicitation import dataset as elicitation
from bench.tests.test_bench_traffic import hashed_bag_of_words
from bench.traffic import HELDOUT_STRATEGIES, STRATEGIES, attacks, build_traffic, heldout_attacks


def _fragments(templates: list[str]) -> list[str]:
    """The fixed text of templates, split at their placeholders."""
    out = []
    for template in templates:
        for part in template.replace("{{", "").replace("}}", "").split("{"):
            fixed = part.split("}", 1)[-1].strip()
            if len(fixed) >= 12:
                out.append(fixed)
    return out


def _developed_on() -> list[str]:
    sweeps = [t for templates in attacks._SWEEP_TEMPLATES.values() for t in templates]
    trained = [w.template for w in elicitation.positive_wordings() + elicitation.near_miss_wordings()]
    return attacks._RANDOM_WORD_FORMATS + attacks._CORPUS_WORDINGS + sweeps + attacks._COT_WRAPPERS + trained


def test_no_heldout_wording_repeats_a_wording_the_detector_was_developed_on():
    heldout = (
        heldout_attacks._WORD_LIST_FORMATS
        + heldout_attacks._REPLAY_WRAPPERS
        + [t for templates in heldout_attacks._HELDOUT_SWEEPS.values() for t in templates]
        + heldout_attacks._HELDOUT_REASONING_WRAPPERS
    )
    fragments = _fragments(heldout)
    assert len(fragments) >= 15
    known = "\n".join(_developed_on())
    assert [f for f in fragments if f in known] == []


@pytest.fixture(scope="module")
def traffic():
    return build_traffic("quick", seed=0, embed=hashed_bag_of_words)


def test_heldout_scenarios_are_pure_attacks_that_share_no_prompt_with_the_plain_ones(traffic):
    plain = {p for name in STRATEGIES for s in traffic.attacks[name] for p in s.prompts}
    for name in HELDOUT_STRATEGIES:
        streams = traffic.attacks[name]
        assert len(streams) == 3
        prompts = [p for s in streams for p in s.prompts]
        assert not plain & set(prompts), name
        if name not in ("heldout_template_sweep", "heldout_perturbation_chain"):  # small pools in quick: reused
            for stream in streams:
                assert len(set(stream.prompts)) >= 0.9 * len(stream)  # an account does not resend its queries


def test_heldout_chains_are_edits_of_one_seed():
    rng = random.Random(3)
    text = "Can you help me find a cheap hotel in the north of town?"
    chain = [text]
    for _ in range(12):
        chain.append(heldout_attacks._edit_chars(rng, chain[-1]))
    assert len(set(chain)) >= 10
    for before, after in itertools.pairwise(chain):
        assert abs(len(before) - len(after)) <= 1 or sorted(before.lower()) == sorted(after.lower())


def test_d2_sampling_reaches_small_far_clusters_that_a_random_sample_misses():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, 16)) * 10
    sizes = [910] + [10] * 9
    points = np.concatenate([c + rng.standard_normal((n, 16)) for c, n in zip(centres, sizes, strict=True)])
    cluster = np.repeat(np.arange(10), sizes)
    d2_hits, random_hits = [], []
    for seed in range(20):
        picked = heldout_attacks.d2_sampling(random.Random(seed), points, 10)
        assert len(set(picked)) == len(picked) == 10
        d2_hits.append(len(set(cluster[picked])))
        random_hits.append(len(set(cluster[random.Random(seed).sample(range(len(points)), 10)])))
    assert np.mean(d2_hits) >= 7 > 3 >= np.mean(random_hits)


def test_unknown_heldout_strategy_is_named_in_the_error():
    pools = attacks.AttackPools([], {}, {}, [], [], [])
    with pytest.raises(ValueError, match="heldout_random_words"):
        heldout_attacks.heldout_queries("heldout_bogus", random.Random(0), pools, 5)
