"""observe_batch is embed_batch then observe_embedded: the sidecar runs the two phases apart
(its journal fsync in between), so they must give exactly what observe_batch gives."""

from __future__ import annotations

import numpy as np
import pytest

import probewatch as pw
from probewatch.errors import BatchError

ACCOUNTS = ["alice", "", "bob", "alice", "carol"]  # "" is an invalid account
PROMPTS = [
    "How do I repot a cactus?",
    "This item is rejected for its account.",
    "Summarise the causes of the French revolution.",
    "How often should I water it?",
    "How do I repot a cactus?",  # a repeat: the embedder's cache answers it
]
TS = [1.7e9, 1.7e9 + 1, 1.7e9 + 2, 1.7e9 + 3, 1.7e9 + 4]


def twin_engines(text_engine_factory) -> tuple[pw.Engine, pw.Engine]:
    """Two engines with the same state, metadata salt included (campaign ids derive from it)."""
    first = text_engine_factory(device="cpu")
    first.observe_batch(["warm"] * 3, ["one question", "another question", "a third question"], [1.0, 2.0, 3.0])
    return first, pw.Engine.from_state(first.state_dict(), embedder=first.embedder)


def test_the_two_phases_give_observe_batch_bit_for_bit(text_engine_factory):
    whole, split = twin_engines(text_engine_factory)
    with pytest.raises(BatchError) as by_whole:
        whole.observe_batch(ACCOUNTS, PROMPTS, TS)
    embedded = split.embed_batch(ACCOUNTS, PROMPTS, TS)
    assert split.stats().observations == whole.stats().observations - 4  # embedding took nothing in
    with pytest.raises(BatchError) as by_split:
        split.observe_embedded(embedded)

    assert sorted(by_whole.value.errors) == sorted(by_split.value.errors) == [1]
    assert type(by_whole.value.errors[1]) is type(by_split.value.errors[1])
    assert by_whole.value.verdicts[1] is None and by_split.value.verdicts[1] is None
    want = [v.to_dict() for v in by_whole.value.verdicts if v is not None]
    got = [v.to_dict() for v in by_split.value.verdicts if v is not None]
    assert got == want  # exact float equality, not approximate
    for account in ("alice", "bob", "carol"):
        assert split.report(account).to_dict() == whole.report(account).to_dict()
    vectors = np.asarray(embedded.vectors)
    assert vectors.shape == (4, split.dim)
    assert np.array_equal(vectors, np.asarray(split.embedder.encode_device([PROMPTS[i] for i in embedded.good])))


def test_embed_batch_rejects_a_mismatched_batch_before_embedding(text_engine_factory):
    engine = text_engine_factory(device="cpu")
    with pytest.raises(pw.errors.ProbewatchError):
        engine.embed_batch(["alice", "bob"], ["only one prompt"])
    assert engine.stats().observations == 0
