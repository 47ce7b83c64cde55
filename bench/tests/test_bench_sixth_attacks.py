"""The sixth perturbation wording (bench/traffic/sixth_attacks.py): neighbourhood probes around
a seed (occlusion, LIME-style word samples, bisection towards another seed), never a walk."""

from __future__ import annotations

import itertools
import random

import pytest

from bench.traffic import sixth_attacks

SEED = "play the new album by the rolling stones on spotify"
OTHER = "what is the weather going to be like in paris tomorrow morning"


def test_occlusion_leaves_out_or_masks_one_word_at_each_position():
    words = SEED.split()
    for seed in range(6):
        probes = sixth_attacks.occlusion_probe(random.Random(seed), words, 100)
        assert len(probes) == len(words)  # every position once, then it stops
        for text in probes:
            got = text.split()
            if len(got) == len(words) - 1:  # left out
                assert any(got == words[:i] + words[i + 1 :] for i in range(len(words)))
            else:  # masked: one mask token in place of one word
                assert len(got) == len(words)
                differ = [i for i, (a, b) in enumerate(zip(got, words, strict=True)) if a != b]
                assert len(differ) == 1 and got[differ[0]] in sixth_attacks._MASKS


def test_lime_samples_are_subsequences_of_the_seed():
    words = SEED.split()
    probes = sixth_attacks.lime_probe(random.Random(3), words, 40)
    assert len(set(probes)) > 10
    for text in probes:
        it = iter(words)
        assert all(word in it for word in text.split())  # the seed's words, in order, some left out


def test_bisection_splices_the_other_seed_in_front_and_halves_towards_the_boundary():
    words, other = SEED.split(), OTHER.split()
    probes = sixth_attacks.bisection_probe(random.Random(1), words, other, 10)
    assert 2 <= len(probes) <= 4  # about log2(11) halvings before the interval closes
    cuts = []
    for text in probes:
        got = text.split()
        k = next(k for k in range(1, len(other)) if got == other[:k] + words[k:])
        cuts.append(k)
    assert cuts[0] == max(len(words), len(other)) // 2
    gaps = [abs(b - a) for a, b in itertools.pairwise(cuts)]
    assert all(later <= earlier for earlier, later in itertools.pairwise(gaps))  # steps shrink


def test_no_probe_sends_a_prompt_twice():
    chains = sixth_attacks.build_sixth_chains(random.Random(0), 200)
    assert len(chains) >= 15
    sent = [text for chain in chains for text, _ in chain]
    for chain in chains:
        texts = [text for text, _ in chain]
        assert len(set(texts)) == len(texts)
    assert len(sent) > 100


def test_an_unknown_sixth_strategy_is_refused_by_name():
    with pytest.raises(ValueError, match="sixth_perturbation_chain"):
        sixth_attacks.sixth_queries("sixth_random_words", random.Random(0), [], 3)
