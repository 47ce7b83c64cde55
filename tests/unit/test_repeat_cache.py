"""The exact-repeat cache in front of the embedding model: identical prompts are embedded once,
hits give back the very vector the model produced, the size bound holds, and embedders of
different settings never read each other's entries."""

from __future__ import annotations

import numpy as np
import pytest

import probewatch as pw
from probewatch.backend.embedder import RepeatCache, RepeatCacheStats
from probewatch.errors import ConfigError

PROMPTS = [
    "How do I reset my password?",
    "Translate 'good morning' into French.",
    "Write a haiku about autumn leaves.",
    "What is the capital of Australia?",
    "Summarise the plot of Hamlet in two sentences.",
    "Explain recursion to a ten-year-old.",
]


class RowCounter:
    """Wraps an embedder's model runtime and counts the prompts it is asked to embed."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.rows = 0

    def __call__(self, features):
        self.rows += int(features["input_ids"].shape[0])
        return self.runtime(features)


@pytest.fixture(scope="module")
def fp32_embedder():
    return pw.Embedder(device="cpu", backend="torch", precision="fp32", cache_size=64)


def counted(embedder) -> RowCounter:
    counter = RowCounter(embedder._runtime)
    embedder._runtime = counter
    return counter


def test_repeats_are_embedded_once_and_hits_return_the_same_vector(fp32_embedder):
    embedder = fp32_embedder
    embedder.cache.clear()
    counter = counted(embedder)
    before = embedder.cache.stats()
    try:
        first = embedder.encode(PROMPTS[:3])
        # Two repeats from the earlier call, one new prompt and one repeat inside this call.
        second = embedder.encode([PROMPTS[1], PROMPTS[3], PROMPTS[0], PROMPTS[3]])
    finally:
        embedder._runtime = counter.runtime
    assert counter.rows == 4  # 3 + the one new prompt; repeats never reached the model
    assert np.array_equal(second[0], first[1]) and np.array_equal(second[2], first[0])
    assert np.array_equal(second[1], second[3])
    after = embedder.cache.stats()
    assert (after.hits - before.hits, after.misses - before.misses) == (3, 4)


def test_cached_vectors_match_an_uncached_embedder(fp32_embedder):
    uncached = pw.Embedder(device="cpu", backend="torch", precision="fp32", cache_size=0)
    fp32_embedder.encode(PROMPTS)
    from_cache = fp32_embedder.encode(PROMPTS[::-1])
    fresh = uncached.encode(PROMPTS[::-1])
    assert uncached.cache.stats().hits == 0 and len(uncached.cache) == 0
    np.testing.assert_allclose(from_cache, fresh, atol=1e-6)


def test_a_caller_changing_its_result_does_not_change_the_cache(fp32_embedder):
    vector = fp32_embedder.encode([PROMPTS[4]])
    kept = vector.copy()
    vector[:] = 0.0
    assert np.array_equal(fp32_embedder.encode([PROMPTS[4]]), kept)


def test_the_size_bound_holds_and_the_least_recently_used_goes_first():
    embedder = pw.Embedder(device="cpu", backend="torch", precision="fp32", cache_size=4)
    embedder.encode([f"distinct prompt number {i}" for i in range(4)])
    embedder.encode(["distinct prompt number 0"])  # touched: now the most recently used
    embedder.encode([f"distinct prompt number {i}" for i in range(4, 10)])
    assert len(embedder.cache) == 4 and embedder.cache.stats().entries == 4
    before = embedder.cache.stats()
    embedder.encode(["distinct prompt number 9"])  # kept (newest)
    embedder.encode(["distinct prompt number 1"])  # evicted long ago
    after = embedder.cache.stats()
    assert (after.hits - before.hits, after.misses - before.misses) == (1, 1)
    assert len(embedder.cache) == 4


def test_a_shared_cache_never_hands_one_setting_the_vector_of_another(fp32_embedder):
    shared = RepeatCache(16)
    fp32 = pw.Embedder(device="cpu", backend="torch", precision="fp32", cache=shared)
    bf16 = pw.Embedder(device="cpu", backend="torch", precision="bf16", cache=shared)
    short = pw.Embedder(device="cpu", backend="torch", precision="fp32", batch_size=4, cache=shared)
    assert len({fp32.settings, bf16.settings}) == 2
    a = fp32.encode([PROMPTS[5]])
    b = bf16.encode([PROMPTS[5]])
    assert shared.stats().hits == 0 and len(shared) == 2
    assert not np.array_equal(a, b)  # bf16 arithmetic gives a (slightly) different vector
    # Batch size does not change what a prompt's vector is, so it shares the fp32 entry.
    assert np.array_equal(short.encode([PROMPTS[5]]), a) and shared.stats().hits == 1


def test_the_engine_reports_cache_counts_and_takes_the_size_from_its_config():
    engine = pw.Engine(device="cpu", embed_backend="torch", embed_precision="fp32", embed_cache_size=8)
    assert engine.repeat_cache_stats() == RepeatCacheStats(0, 0, 0, 8)
    engine.observe_batch(["a", "b", "a"], [PROMPTS[0], PROMPTS[1], PROMPTS[0]])
    engine.observe("c", PROMPTS[1])
    stats = engine.repeat_cache_stats()
    assert (stats.hits, stats.misses, stats.entries, stats.max_entries) == (2, 2, 2, 8)
    assert stats.hit_rate == pytest.approx(0.5)


def test_the_cache_can_be_turned_off():
    embedder = pw.Embedder(device="cpu", backend="torch", precision="fp32", cache_size=0)
    embedder.encode([PROMPTS[0], PROMPTS[0]])
    assert len(embedder.cache) == 0 and embedder.cache.stats().misses == 2


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("embed_cache_size", -1, "embed_cache_size must be >= 0"),
        ("embed_backend", "tensorrt", "embed_backend must be one of"),
        ("embed_precision", "fp8", "embed_precision must be one of"),
        ("embed_quantize", "int4", "embed_quantize must be one of"),
    ],
)
def test_bad_settings_say_what_was_expected_and_what_came(setting, value, expected):
    with pytest.raises(ConfigError, match=expected) as err:
        pw.EngineConfig(**{setting: value})
    assert repr(value) in str(err.value)


def test_a_negative_cache_size_is_rejected():
    with pytest.raises(ConfigError, match="got -3"):
        RepeatCache(-3)
