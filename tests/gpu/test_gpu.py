"""CUDA paths: the embedder's DLPack hand-off, GPU engine vs CPU engine, snapshots across
devices, and the GPU store (segmented kernel and GPU FAISS indexes) vs brute force.

Every test is marked ``gpu`` and skips, saying why, without CuPy / faiss-gpu / CUDA torch.
"""

from __future__ import annotations

import numpy as np
import pytest

import probewatch as pw
from probewatch.backend import Backend
from probewatch.backend.store import AccountStore
from tests.support import requires_cuda_engine, requires_faiss_gpu, requires_gpu, unit_rows
from tests.unit.test_store import BruteStore, assert_matches, random_batches

pytestmark = pytest.mark.gpu

DIM = 384

PROMPTS = [
    "How do I roast garlic in the oven?",
    "What is the capital of Australia?",
    "Explain the difference between TCP and UDP.",
    "Write a haiku about autumn leaves.",
    "Why does my Python list comprehension return None values?",
    "Suggest a three-day itinerary for Kyoto.",
    "Ünïcödé and emoji 🚀 survive the tokenizer?",
    "x" * 5000,
]


def clustered_stream(seed, n_accounts=8, per=40):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_accounts, DIM))
    acc = rng.integers(0, n_accounts, size=n_accounts * per)
    spread = np.where(acc == 0, 0.2, 1.0)[:, None]  # account 0 is template-like
    vecs = unit_rows(centres[acc] + spread * rng.standard_normal((acc.size, DIM)))
    return [f"acct-{a}" for a in acc], vecs


def feed(engine, acc, vecs, step=32):
    out = []
    for s in range(0, len(acc), step):
        out.extend(engine.observe_embeddings(acc[s : s + step], vecs[s : s + step]))
    return out


@requires_cuda_engine
def test_embedder_cuda_dlpack_matches_cpu(embedder):
    import cupy as cp

    gpu = pw.Embedder(device="cuda")
    dev = gpu.encode_device(PROMPTS)
    assert isinstance(dev, cp.ndarray) and dev.dtype == cp.float32 and dev.shape == (len(PROMPTS), gpu.dim)
    host = gpu.encode(PROMPTS)
    np.testing.assert_allclose(dev.get(), host, atol=1e-6)
    cpu = embedder.encode(PROMPTS)
    # fp16 model on the GPU vs fp32 on the CPU: same directions within half-precision noise
    cos = (dev.get() * cpu).sum(axis=1)
    assert (cos > 0.995).all(), cos
    np.testing.assert_allclose(np.linalg.norm(dev.get(), axis=1), 1.0, atol=2e-3)
    empty = gpu.encode_device([])
    assert isinstance(empty, cp.ndarray) and empty.shape == (0, gpu.dim)


@requires_cuda_engine
def test_engine_cuda_vs_cpu_same_levels():
    acc, vecs = clustered_stream(0)
    cpu, gpu = pw.Engine(device="cpu"), pw.Engine(device="cuda")
    assert gpu.stats().device == "cuda" and cpu.stats().device == "cpu"
    vc, vg = feed(cpu, acc, vecs), feed(gpu, acc, vecs)
    for a, b in zip(vc, vg, strict=True):
        assert a.account == b.account and a.n_queries == b.n_queries
        assert abs(a.score - b.score) <= 1e-3 * max(1.0, abs(a.score))
        if a.level != b.level:  # only where the score sits on a threshold
            thr = (cpu.detector.flag_threshold, cpu.detector.watch_threshold)
            assert min(abs(a.score - t) for t in thr) < 1e-2
    assert {a: cpu.report(a).level for a in set(acc)} == {a: gpu.report(a).level for a in set(acc)}
    assert cpu.report("acct-0").level != "ok"


@requires_cuda_engine
def test_engine_cuda_text_stream_matches_cpu(embedder):
    cpu = pw.Engine(embedder=embedder)
    gpu = pw.Engine(device="cuda")
    accounts = ["t1", "t2"] * (len(PROMPTS) // 2)
    vc = cpu.observe_batch(accounts, PROMPTS)
    vg = gpu.observe_batch(accounts, PROMPTS)
    assert [v.level for v in vc] == [v.level for v in vg]
    for a, b in zip(vc, vg, strict=True):
        assert abs(a.score - b.score) <= 0.05 * max(1.0, a.score)


@requires_cuda_engine
@pytest.mark.parametrize("storage", ["float32", "float16", "int8"])
def test_snapshot_gpu_to_cpu_and_back(tmp_path, storage):
    acc, vecs = clustered_stream(1)
    half = len(acc) // 2
    gpu = pw.Engine(device="cuda", storage=storage, segmented_max_history=16)  # long path: GPU FAISS indexes
    feed(gpu, acc[:half], vecs[:half])
    gpu.save(tmp_path / "gpu.npz")

    on_cpu = pw.Engine.load(tmp_path / "gpu.npz", device="cpu")
    assert on_cpu.stats().device == "cpu" and on_cpu.accounts() == gpu.accounts()
    for a in gpu.accounts():
        assert on_cpu.report(a) == gpu.report(a)
    a_gpu = feed(gpu, acc[half:], vecs[half:])
    a_cpu = feed(on_cpu, acc[half:], vecs[half:])
    for x, y in zip(a_gpu, a_cpu, strict=True):
        assert x.n_queries == y.n_queries and abs(x.score - y.score) <= 1e-3 * max(1.0, x.score)

    on_cpu.save(tmp_path / "cpu.npz")
    back = pw.Engine.load(tmp_path / "cpu.npz", device="cuda")
    assert back.stats().device == "cuda"
    for a in on_cpu.accounts():
        assert back.report(a) == on_cpu.report(a)
    more_acc, more_vecs = clustered_stream(2)
    x = feed(back, more_acc, more_vecs)
    y = feed(on_cpu, more_acc, more_vecs)
    assert [v.level for v in x] == [v.level for v in y] or all(
        abs(p.score - q.score) <= 1e-3 * max(1.0, p.score) for p, q in zip(x, y, strict=True)
    )


def _store_checked_against_brute_force(backend: Backend, segmented_max_history: int, k: int) -> AccountStore:
    """A store on ``backend`` fed random batches of 7 accounts, every answer compared with brute force."""
    store = AccountStore(
        dim=24,
        storage="float32",
        history_cap=10_000,
        eviction_block=512,
        segmented_max_history=segmented_max_history,
        backend=backend,
    )
    brute = BruteStore(store.history_cap, store.eviction_block)
    rng = np.random.default_rng(k + segmented_max_history)
    assert_matches(store, brute, random_batches(rng, n_accounts=7, n_batches=15, max_batch=40), k, atol=1e-5)
    return store


@requires_faiss_gpu
@pytest.mark.parametrize("segmented_max_history", [0, 6, 4096], ids=["gpu-faiss-long", "mixed", "gpu-segmented"])
@pytest.mark.parametrize("k", [1, 8, 32])
def test_gpu_store_matches_brute_force(segmented_max_history, k):
    store = _store_checked_against_brute_force(Backend.resolve("cuda"), segmented_max_history, k)
    if segmented_max_history == 0:
        assert any(store.get(a).on_device for a in store.accounts())


@requires_gpu
@pytest.mark.parametrize("segmented_max_history", [0, 6, 4096], ids=["host-faiss-long", "mixed", "gpu-segmented"])
def test_cuda_store_with_host_indexes_matches_brute_force(segmented_max_history):
    """faiss without GPU support on a CUDA device: CuPy kernels for short histories, host
    FAISS indexes for long ones, and the same neighbours as brute force."""
    import cupy as cp

    from probewatch.backend import import_faiss

    backend = Backend("cuda", cp, import_faiss(), None)
    assert backend.on_gpu and not backend.device_indexes
    store = _store_checked_against_brute_force(backend, segmented_max_history, 8)
    assert not any(store.get(a).on_device for a in store.accounts())


@requires_faiss_gpu
def test_gpu_store_eviction_on_device_keeps_newest():
    store = AccountStore(
        dim=24,
        storage="float32",
        history_cap=32,
        eviction_block=8,
        segmented_max_history=0,
        backend=Backend.resolve("cuda"),
    )
    rng = np.random.default_rng(3)
    added = []
    for _ in range(20):
        v = unit_rows(rng.standard_normal((5, 24)))
        store.search_then_add(["a"] * 5, v, 4)
        added.extend(v)
        size = store.history_size("a")
        assert size <= 32
        np.testing.assert_allclose(store.get("a").vectors(), np.asarray(added[-size:]), atol=1e-6)
    assert store.get("a").on_device


@requires_faiss_gpu
def test_gpu_store_float16_long_path():
    store = AccountStore(
        dim=24,
        storage="float16",
        history_cap=10_000,
        eviction_block=512,
        segmented_max_history=0,
        backend=Backend.resolve("cuda"),
    )
    brute = BruteStore(store.history_cap, store.eviction_block)
    rng = np.random.default_rng(4)
    assert_matches(store, brute, random_batches(rng, n_accounts=4, n_batches=10, max_batch=20), 6, atol=3e-3)


@requires_faiss_gpu
def test_gpu_store_export_import_to_cpu():
    gpu = AccountStore(
        dim=24,
        storage="float32",
        history_cap=10_000,
        eviction_block=512,
        segmented_max_history=0,
        backend=Backend.resolve("cuda"),
    )
    rng = np.random.default_rng(5)
    for acc, vecs in random_batches(rng, n_accounts=4, n_batches=6, max_batch=20):
        gpu.search_then_add(acc, vecs, 4)
    ids, offsets, flat = gpu.export()
    cpu = AccountStore(
        dim=24,
        storage="float32",
        history_cap=10_000,
        eviction_block=512,
        segmented_max_history=0,
        backend=Backend.host(),
    )
    cpu.import_(ids, offsets, flat)
    for acc, vecs in random_batches(rng, n_accounts=4, n_batches=3, max_batch=20):
        s1, c1 = gpu.search_then_add(acc, vecs, 4)
        s2, c2 = cpu.search_then_add(acc, vecs, 4)
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_allclose(np.nan_to_num(s1, neginf=-9), np.nan_to_num(s2, neginf=-9), atol=1e-5)


def _close(a, b) -> bool:
    return (
        a.account == b.account
        and a.n_queries == b.n_queries
        and abs(a.score - b.score) <= 1e-3 * max(1.0, abs(a.score))
    )


@requires_cuda_engine
def test_observe_embeddings_takes_device_rows():
    """CuPy arrays and torch CUDA tensors go in as they are: a CUDA engine keeps them on the
    device, a CPU engine copies them once; verdicts match the host rows'."""
    import cupy as cp
    import torch

    acc, vecs = clustered_stream(3)
    as_cupy = [cp.asarray(vecs[s : s + 32]) for s in range(0, len(acc), 32)]
    as_torch = [torch.from_numpy(vecs[s : s + 32]).cuda() for s in range(0, len(acc), 32)]
    host_rows = feed(pw.Engine(device="cuda"), acc, vecs)
    for engine, batches in [
        (pw.Engine(device="cuda"), as_cupy),
        (pw.Engine(device="cuda"), as_torch),
        (pw.Engine(device="cpu"), as_cupy),
    ]:
        got = [v for i, b in enumerate(batches) for v in engine.observe_embeddings(acc[32 * i : 32 * i + 32], b)]
        assert len(got) == len(host_rows)
        mismatched = [i for i, (a, b) in enumerate(zip(host_rows, got, strict=True)) if not _close(a, b)]
        assert not mismatched, (type(batches[0]).__name__, engine.stats().device, mismatched[:5])
    # half-precision device rows are widened on the device
    half = torch.from_numpy(vecs[:4]).cuda().half()
    assert [v.n_queries for v in pw.Engine(device="cuda").observe_embeddings(["h"] * 4, half)] == [1, 2, 3, 4]


@requires_cuda_engine
def test_bad_device_rows_are_refused_and_nothing_is_stored():
    import cupy as cp

    engine = pw.Engine(device="cuda")
    engine.observe_embeddings(["alice"] * 4, unit_rows(np.random.default_rng(0).standard_normal((4, DIM))))
    bad = cp.asarray(unit_rows(np.random.default_rng(1).standard_normal((3, DIM))))
    bad[1, 7] = cp.nan
    with pytest.raises(pw.InvalidEmbeddingError, match=r"finite; rows \[1\]"):
        engine.observe_embeddings(["alice", "bob", "carol"], bad)
    bad[1] = 0
    with pytest.raises(pw.InvalidEmbeddingError, match=r"non-zero norm; rows \[1\]"):
        engine.observe_embeddings(["alice", "bob", "carol"], bad)
    with pytest.raises(pw.InvalidEmbeddingError, match=r"shape \(n, 384\).*got \(3, 100\)"):
        engine.observe_embeddings(["alice", "bob", "carol"], cp.ones((3, 100), cp.float32))
    import torch

    needs_grad = torch.ones((3, DIM), device="cuda", requires_grad=True)
    with pytest.raises(pw.InvalidEmbeddingError, match="got Tensor on a CUDA device"):
        engine.observe_embeddings(["alice", "bob", "carol"], needs_grad)
    assert engine.accounts() == ["alice"] and engine.stats().stored_queries == 4


@requires_cuda_engine
def test_calibration_from_device_rows_matches_host_rows():
    import cupy as cp

    acc, vecs = clustered_stream(4, n_accounts=40, per=30)
    host = pw.Engine(device="cpu")
    host.calibrate_embeddings(acc, vecs)
    device = pw.Engine(device="cpu")
    device.calibrate_embeddings(acc, cp.asarray(vecs))
    assert abs(host.detector.flag_threshold - device.detector.flag_threshold) <= 1e-3 * abs(
        host.detector.flag_threshold
    )
