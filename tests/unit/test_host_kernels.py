"""probewatch.backend.host_kernels: torch's CPU kernels give exactly NumPy's floats."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import probewatch.backend.host_kernels as host_kernels
from probewatch.backend import Backend
from probewatch.backend.host_kernels import TORCH_MIN_ELEMENTS, top_values, widen_float16
from probewatch.backend.store import _flat_topk_gemm
from tests.support import unit_rows

pytest.importorskip("torch")


@pytest.fixture
def numpy_only(monkeypatch):
    """host_kernels as it runs where torch cannot be imported."""
    monkeypatch.setattr(host_kernels, "_torch", False)


def every_half_float() -> np.ndarray:
    """All 65,536 float16 bit patterns but the NaNs (whose payloads no caller keeps), as rows."""
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    return np.ascontiguousarray(halves[~np.isnan(halves)].reshape(-1, 2))


def test_widening_every_half_float_is_bit_exact():
    halves = every_half_float()
    assert halves.size >= TORCH_MIN_ELEMENTS  # the torch path, not the fallback
    got = widen_float16(halves)
    assert got.dtype == np.float32 and got.shape == halves.shape
    np.testing.assert_array_equal(got.view(np.uint32), halves.astype(np.float32).view(np.uint32))


def test_widening_without_torch_is_numpy(numpy_only):
    halves = every_half_float()
    np.testing.assert_array_equal(widen_float16(halves).view(np.uint32), halves.astype(np.float32).view(np.uint32))


def test_widening_a_read_only_or_strided_view_falls_back_to_numpy():
    """torch.from_numpy warns on read-only memory and refuses negative strides: neither reaches it."""
    halves = every_half_float()
    frozen = halves.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for view in (frozen, halves[:, ::-1]):
            np.testing.assert_array_equal(widen_float16(view), view.astype(np.float32))


@pytest.mark.parametrize("k", [1, 8, 300])
def test_top_values_are_the_partitions_values(k):
    rng = np.random.default_rng(k)
    values = rng.normal(size=(64, 1024)).astype(np.float32)
    values[:, :40] = np.round(values[:, :40])  # ties
    values[3, 5], values[7, 9], values[9, 1] = np.inf, -np.inf, np.float32(-0.0)
    assert values.size >= TORCH_MIN_ELEMENTS
    want = np.sort(np.partition(values, values.shape[1] - k, axis=1)[:, -k:], axis=1)
    got = top_values(values, k)
    assert got.shape == (64, k)
    np.testing.assert_array_equal(np.sort(got, axis=1), want)


def test_top_values_of_whole_rows_and_without_torch(numpy_only):
    values = np.random.default_rng(1).normal(size=(40, 1000)).astype(np.float32)
    np.testing.assert_array_equal(np.sort(top_values(values, 1000), axis=1), np.sort(values, axis=1))
    np.testing.assert_array_equal(
        np.sort(top_values(values, 5), axis=1), np.sort(np.partition(values, 995, axis=1)[:, -5:], axis=1)
    )


@pytest.mark.parametrize("storage", ["float32", "float16", "int8"])
def test_history_search_is_the_same_with_and_without_torch(storage, monkeypatch):
    """The many-queries search of a 3,000-row history (the sizes where torch does the work)
    gives the very floats the NumPy-only path gives."""
    backend = Backend.host()
    index = backend.new_index(384, storage)
    rng = np.random.default_rng(7)
    index.add(unit_rows(rng.normal(size=(3000, 384))))
    queries = unit_rows(rng.normal(size=(64, 384)))
    if storage == "int8":
        from probewatch.backend.device import int8_codes, int8_step

        queries = int8_codes(queries, int8_step(384)) * np.float32(int8_step(384))
    with_torch = _flat_topk_gemm(index, queries, 8, backend.faiss, storage)
    monkeypatch.setattr(host_kernels, "_torch", False)
    without = _flat_topk_gemm(index, queries, 8, backend.faiss, storage)
    np.testing.assert_array_equal(with_torch, without)
    exact = np.sort(queries.astype(np.float64) @ index.reconstruct_n(0, 3000).T.astype(np.float64), axis=1)
    np.testing.assert_allclose(with_torch, exact[:, ::-1][:, :8], rtol=0, atol=1e-5)


def test_reference_stats_are_the_same_with_and_without_torch(monkeypatch):
    """A 64-row batch against a 2,048-row bank (torch picks the top similarities) gives each
    row the very float the NumPy-only path gives, and so a lone row's."""
    from probewatch.detect.reference import BenignReference

    rng = np.random.default_rng(11)
    reference = BenignReference(unit_rows(rng.normal(size=(2048, 384))), unit_rows(rng.normal(size=(16, 384))), 1.5)
    x = unit_rows(rng.normal(size=(64, 384)))
    assert x.shape[0] * reference.bank.shape[0] >= TORCH_MIN_ELEMENTS
    with_torch = reference.query_stats(x).ref_similarity
    monkeypatch.setattr(host_kernels, "_torch", False)
    without = reference.query_stats(x).ref_similarity
    np.testing.assert_array_equal(with_torch, without)
    exact = np.sort(x.astype(np.float64) @ reference.bank.T.astype(np.float64), axis=1)[:, -4:].mean(axis=1)
    np.testing.assert_allclose(with_torch, exact, rtol=0, atol=1e-6)
