"""Lone queries (the sidecar's common call: one item) give what the batch path gives.

At a 10k-query history a lone query is a memory-bound scan of the account's history plus the
fixed per-call cost of the detection pipeline (issue 14 measured both; a store-level
single-item shortcut gained nothing measurable and was not kept). These tests pin what any
faster lone-query path must keep: ``AccountStore.search_then_add`` on one item agrees with an
exact float64 brute-force store (tests/unit/test_store.py) and with the batched path.
Similarities agree to 1e-5 (float32 FAISS against float64 NumPy; 2e-3 with float16 storage);
counts, levels and flags agree exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

import probewatch as pw
from tests.support import unit_rows
from tests.unit.test_store import DIM, BruteStore, make_store

K = 8
SIM_TOLERANCE = 1e-5


def stream(seed: int, n: int, accounts: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, DIM))
    rows = unit_rows(centres[rng.integers(0, 6, n)] + 0.5 * rng.normal(size=(n, DIM))).astype(np.float32)
    # Skewed: one busy account crosses the segmented/long boundary and the history cap.
    ids = [f"acct-{min(int(rng.exponential(1.5)), accounts - 1)}" for _ in range(n)]
    return ids, rows


@pytest.mark.parametrize(
    ("segmented_max_history", "storage"), [(0, "float32"), (40, "float32"), (40, "float16"), (0, "int8")]
)
def test_lone_queries_match_brute_force_and_the_batched_path(segmented_max_history, storage):
    ids, rows = stream(seed=segmented_max_history, n=700, accounts=5)
    lone = make_store(storage=storage, history_cap=256, eviction_block=32, segmented_max_history=segmented_max_history)
    batched = make_store(
        storage=storage, history_cap=256, eviction_block=32, segmented_max_history=segmented_max_history
    )
    brute = BruteStore(history_cap=256, eviction_block=32)
    lone_sims, lone_counts, exact_sims, exact_counts = [], [], [], []
    for i in range(len(ids)):
        sims, counts = lone.search_then_add([ids[i]], rows[i : i + 1], K)
        lone_sims.append(sims[0])
        lone_counts.append(counts[0])
        sims, counts = brute.search_then_add([ids[i]], rows[i : i + 1], K)
        exact_sims.append(sims[0])
        exact_counts.append(counts[0])
    lone_sims, lone_counts = np.asarray(lone_sims), np.asarray(lone_counts)
    exact_sims, exact_counts = np.asarray(exact_sims), np.asarray(exact_counts)
    batch_parts = [batched.search_then_add(ids[i : i + 50], rows[i : i + 50], K) for i in range(0, len(ids), 50)]
    batch_sims = np.concatenate([p[0] for p in batch_parts])
    batch_counts = np.concatenate([p[1] for p in batch_parts])

    tol = {"float16": 2e-3, "int8": 2e-2}.get(storage, SIM_TOLERANCE)
    assert max(lone_counts) >= 256 - 1  # the busy account did reach the cap
    np.testing.assert_array_equal(lone_counts, exact_counts)
    np.testing.assert_array_equal(np.isinf(lone_sims), np.isinf(exact_sims))
    finite = np.isfinite(lone_sims)
    np.testing.assert_allclose(lone_sims[finite], exact_sims[finite], atol=tol)
    # The batched path drops capped blocks at its own call boundaries: equal up to the first drop.
    before_cap = np.cumsum(exact_counts >= 256 - 1) == 0
    np.testing.assert_array_equal(lone_counts[before_cap], batch_counts[before_cap])
    both = before_cap[:, None] & finite
    np.testing.assert_allclose(lone_sims[both], batch_sims[both], atol=tol)
    assert lone.accounts()[-1] == ids[-1]  # the newest account is the most recently observed


def test_engine_verdicts_one_at_a_time_equal_the_batched_ones():
    rng = np.random.default_rng(7)
    dim = 384
    topics = unit_rows(rng.normal(size=(3, dim)))
    n = 400
    rows = unit_rows(topics[rng.integers(0, 3, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)
    # An extractor-like account (uniform spread) among topical ones.
    rows[::4] = unit_rows(rng.normal(size=(len(rows[::4]), dim))).astype(np.float32)
    ids = ["spread" if i % 4 == 0 else f"user-{i % 3}" for i in range(n)]
    lone = pw.Engine(device="cpu", campaigns=False)
    batched = pw.Engine(device="cpu", campaigns=False)
    singles = [lone.observe_embeddings([ids[i]], rows[i : i + 1])[0] for i in range(n)]
    batches = [v for i in range(0, n, 16) for v in batched.observe_embeddings(ids[i : i + 16], rows[i : i + 16])]
    assert [v.level for v in singles] == [v.level for v in batches]
    assert [v.n_queries for v in singles] == [v.n_queries for v in batches]
    np.testing.assert_allclose([v.score for v in singles], [v.score for v in batches], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose([v.risk for v in singles], [v.risk for v in batches], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows", [2, 16, 64, 65, 300])
def test_reference_stats_of_a_batch_equal_brute_force_and_lone_rows(rows):
    """Micro-batches multiply bank-first (faster under OpenBLAS), larger ones query-first: both
    must give each row what a lone row gets, and what float64 brute force says."""
    from probewatch.detect.reference import REFERENCE_TOP_K, BenignReference
    from probewatch.kernels import rbf_from_similarity

    rng = np.random.default_rng(rows)
    reference = BenignReference(
        unit_rows(rng.normal(size=(512, DIM))).astype(np.float32),
        unit_rows(rng.normal(size=(16, DIM))).astype(np.float32),
        gamma=1.5,
    )
    x = unit_rows(rng.normal(size=(rows, DIM))).astype(np.float32)
    batch = reference.query_stats(x)
    lone = [reference.query_stats(x[i : i + 1]) for i in range(rows)]
    np.testing.assert_allclose(batch.ref_similarity, [s.ref_similarity[0] for s in lone], rtol=0, atol=1e-6)
    np.testing.assert_allclose(batch.ref_kernel_mean, [s.ref_kernel_mean[0] for s in lone], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(batch.cell, [s.cell[0] for s in lone])
    sims = x.astype(np.float64) @ reference.bank.astype(np.float64).T
    top = np.sort(sims, axis=1)[:, ::-1][:, :REFERENCE_TOP_K].mean(axis=1)
    np.testing.assert_allclose(batch.ref_similarity, top, atol=1e-5)
    np.testing.assert_allclose(batch.ref_kernel_mean, rbf_from_similarity(sims, 1.5).mean(axis=1), rtol=1e-4)
    np.testing.assert_array_equal(batch.cell, np.argmax(x.astype(np.float64) @ reference.codebook.T, axis=1))
