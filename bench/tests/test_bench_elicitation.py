"""The elicitation dataset and trainer: deterministic, balanced, calibration half only, and
nothing of the benchmark's own chain-of-thought wrappers in training. No model is loaded."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bench.elicitation import dataset as ds
from bench.elicitation import train as tr
from bench.metrics import roc_auc
from bench.traffic import sources
from bench.traffic.attacks import _COT_WRAPPERS

LOADERS = {
    "sharegpt": sources.sharegpt,
    "fanoutqa": sources.fanoutqa,
    "freshqa": sources.freshqa,
    "writingbench": sources.writingbench,
    "mind2web": sources.mind2web,
    "bbc": sources.bbc_news,
    "snips": sources.snips,
    "multiwoz": sources.multiwoz_templates,
    "roleprompt": sources.role_prompts,
}


@pytest.fixture(scope="module")
def data() -> ds.ElicitationDataset:
    return ds.build_dataset()


def _fingerprint(d: ds.ElicitationDataset) -> dict:
    return {name: [(e.text, e.label, e.wording, e.units) for e in part] for name, part in d.parts().items()}


def test_the_build_is_deterministic(data):
    first = _fingerprint(data)
    ds.build_dataset.cache_clear()
    ds.payload_pools.cache_clear()
    try:
        assert _fingerprint(ds.build_dataset()) == first
    finally:
        ds.build_dataset.cache_clear()


def test_training_labels_are_balanced_and_every_text_is_distinct(data):
    labels = Counter(e.label for e in data.train)
    assert labels[0] == labels[1] > 500
    texts = data.all_texts()
    assert len(texts) == len(set(texts)) <= 4000
    assert {e.label for e in data.heldout_wrappers} == {1}
    assert {e.label for e in data.heldout_near_miss} == {0} == {e.label for e in data.heldout_plain}


def test_wordings_cover_every_intent_and_style(data):
    wordings = ds.positive_wordings()
    per_intent = Counter(w.intent for w in wordings)
    assert set(per_intent) == set(ds.POSITIVE_INTENTS) and min(per_intent.values()) >= 12
    assert {w.group for w in wordings} == set(ds.STYLES)
    assert {w.intent for w in ds.near_miss_wordings()} == set(ds.NEAR_MISS_FAMILIES)
    used = Counter(e.wording for e in data.train if e.label == 1)
    assert set(used) == {w.id for w in wordings} and set(used.values()) == {ds.PER_POSITIVE_WORDING}


def test_no_benchmark_wrapper_text_in_training(data):
    fragments = ds.wrapper_fragments()
    assert len(fragments) >= len(_COT_WRAPPERS)  # every wrapper contributes at least one fragment
    for e in data.train:
        assert not any(f in e.text for f in fragments), (e.wording, e.text[:120])
    templates = [w.template for w in ds.positive_wordings() + ds.near_miss_wordings()]
    assert not set(templates) & set(_COT_WRAPPERS)
    assert not {e.text for e in data.heldout_wrappers} & {e.text for e in data.train}
    assert {e.wording for e in data.heldout_wrappers} == {w.id for w in ds.heldout_wrapper_wordings()}


def test_payloads_come_from_the_calibration_half_only(data):
    calibration = {
        name: {u.key for u in sources.split_units(loader())["calibration"]} for name, loader in LOADERS.items()
    }
    for part in data.parts().values():
        for e in part:
            for key in e.units:
                if key.startswith("own:"):
                    continue
                source, group = key.split(":", 1)
                assert sources.half_of(sources.Unit(source, group, "", ())) == "calibration", key
                assert key in calibration[source], key


def test_held_out_sets_share_no_payload_with_training(data):
    trained = {k for e in data.train for k in e.units}
    for name in ("heldout_wrappers", "heldout_near_miss", "heldout_plain"):
        held = {k for e in data.parts()[name] for k in e.units}
        assert not trained & held, name
        assert all(ds.part_of(k) == "eval" for k in held if not k.startswith(("snips:", "multiwoz:"))), name


def test_fit_logistic_separates_a_toy_problem_and_respects_l2():
    rng = np.random.default_rng(0)
    direction = np.zeros(8)
    direction[2] = 1.0
    x = rng.normal(size=(400, 8))
    y = (x @ direction + 0.3 * rng.normal(size=400) > 0.5).astype(float)
    w, b = tr.fit_logistic(x, y, 1e-3)
    assert np.argmax(np.abs(w)) == 2 and w[2] > 0
    scores = tr.predict(w, b, x)
    assert roc_auc(scores[y == 0], scores[y == 1]) > 0.95
    w_strong, _ = tr.fit_logistic(x, y, 10.0)
    assert np.linalg.norm(w_strong) < np.linalg.norm(w)


def test_threshold_at_fpr_lets_at_most_that_share_of_negatives_through():
    negatives = np.arange(1000, dtype=float)
    for fpr in (0.01, 0.001, 0.0):
        t = tr.threshold_at_fpr(negatives, fpr)
        assert np.mean(negatives > t) <= fpr
    assert tr.threshold_at_fpr(np.array([0.2, 0.9]), 0.001) == 0.9  # too few negatives: above them all
