"""AccountStore: k-NN before insert against an exact brute-force model of each account's history."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probewatch.backend import Backend
from probewatch.backend.device import int8_codes, int8_range, int8_step
from probewatch.backend.faiss_compat import reserve_rows
from probewatch.backend.store import AccountStore, _flat_topk_gemm
from probewatch.errors import UnknownAccountError
from tests.support import unit_rows

DIM = 24


def make_store(
    *, storage="float32", history_cap=10_000, eviction_block=512, segmented_max_history=2048, on_gpu=False, dim=DIM
) -> AccountStore:
    return AccountStore(
        dim=dim,
        storage=storage,
        history_cap=history_cap,
        eviction_block=eviction_block,
        segmented_max_history=segmented_max_history,
        backend=Backend.resolve("cuda" if on_gpu else "cpu"),
    )


class BruteStore:
    """Exact reference: per-account lists in float64, same cap/block policy, same batch order."""

    def __init__(self, history_cap, eviction_block):
        self.cap, self.block = history_cap, eviction_block
        self.hist: dict[str, list[np.ndarray]] = {}

    def search_then_add(self, accounts, vectors, k):
        n = len(accounts)
        sims = np.full((n, k), -np.inf)
        counts = np.zeros(n, dtype=np.int64)
        batch_rows: dict[str, list[int]] = {}
        for i, a in enumerate(accounts):
            earlier = self.hist.get(a, []) + [vectors[j] for j in batch_rows.get(a, [])]
            counts[i] = len(earlier)
            if earlier:
                s = np.sort(np.asarray(earlier, dtype=np.float64) @ vectors[i].astype(np.float64))[::-1][:k]
                sims[i, : s.size] = s
            batch_rows.setdefault(a, []).append(i)
        for a, rows in batch_rows.items():
            h = self.hist.setdefault(a, [])
            h.extend(vectors[j] for j in rows)
            overflow = len(h) - self.cap
            if overflow > 0:
                drop = min(len(h), -(-overflow // self.block) * self.block)
                del h[:drop]
        return sims, counts


def random_batches(rng, n_accounts, n_batches, max_batch, dim=DIM, clustered=True):
    centres = rng.standard_normal((n_accounts, dim)) * 2
    for _ in range(n_batches):
        size = int(rng.integers(1, max_batch + 1))
        acc = rng.integers(0, n_accounts, size=size)
        noise = rng.standard_normal((size, dim))
        vecs = unit_rows(centres[acc] + noise if clustered else noise)
        yield [f"acct-{a}" for a in acc], vecs


def assert_matches(store, brute, batches, k, atol):
    for accounts, vecs in batches:
        sims, counts = store.search_then_add(accounts, vecs, k)
        ref_s, ref_c = brute.search_then_add(accounts, vecs, k)
        np.testing.assert_array_equal(counts, ref_c)
        assert sims.dtype == np.float32 and sims.shape == (len(accounts), k)
        finite = np.isfinite(ref_s)
        np.testing.assert_array_equal(np.isfinite(sims), finite)
        np.testing.assert_allclose(sims[finite], ref_s[finite], rtol=0, atol=atol)
    for a, h in brute.hist.items():
        assert store.history_size(a) == len(h) == int(store.get(a).index.ntotal)
        np.testing.assert_allclose(store.get(a).vectors(), np.asarray(h), atol=atol)
    # The running total the memory budget reads is the sum over FAISS indexes.
    assert store.total_vectors() == sum(int(store.get(a).index.ntotal) for a in store.accounts())


@pytest.mark.parametrize("segmented_max_history", [2048, 0, 5], ids=["segmented", "faiss-long", "mixed"])
@pytest.mark.parametrize("k", [1, 4, 8])
def test_search_then_add_matches_brute_force(segmented_max_history, k):
    rng = np.random.default_rng(100 * k + segmented_max_history)
    store = make_store(segmented_max_history=segmented_max_history)
    brute = BruteStore(store.history_cap, store.eviction_block)
    assert_matches(store, brute, random_batches(rng, n_accounts=9, n_batches=14, max_batch=24), k, atol=2e-6)
    assert store.total_vectors() == sum(len(h) for h in brute.hist.values())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    seg_max=st.sampled_from([0, 1, 3, 2048]),
    k=st.integers(1, 10),
    n_accounts=st.integers(1, 6),
    cap=st.integers(16, 40),
    block=st.integers(1, 16),
)
def test_search_then_add_property(seed, seg_max, k, n_accounts, cap, block):
    """Any batch layout, either route, with the history cap biting: same as the brute model."""
    rng = np.random.default_rng(seed)
    block = min(block, cap)
    store = make_store(segmented_max_history=seg_max, history_cap=cap, eviction_block=block)
    brute = BruteStore(cap, block)
    assert_matches(store, brute, random_batches(rng, n_accounts, n_batches=8, max_batch=12), k, atol=2e-6)


def test_duplicate_queries_in_one_batch_see_each_other():
    store = make_store()
    v = unit_rows(np.ones((1, DIM)))
    sims, counts = store.search_then_add(["a", "a", "b", "a"], np.repeat(v, 4, axis=0), 3)
    assert counts.tolist() == [0, 1, 0, 2]
    assert np.isneginf(sims[0]).all() and np.isneginf(sims[2]).all()
    np.testing.assert_allclose(sims[1, :1], 1.0, atol=1e-6)
    assert np.isneginf(sims[1, 1:]).all()
    np.testing.assert_allclose(sims[3, :2], 1.0, atol=1e-6)


def test_long_path_is_used_and_matches_short_path():
    """The same stream through both routes gives the same neighbours (float rounding aside)."""
    rng = np.random.default_rng(7)
    batches = list(random_batches(rng, n_accounts=4, n_batches=12, max_batch=40))
    short, long_ = make_store(segmented_max_history=10**6), make_store(segmented_max_history=0)
    calls = {"long": 0}
    original = long_._search_long

    def counting(*args, **kwargs):
        calls["long"] += 1
        return original(*args, **kwargs)

    long_._search_long = counting
    for accounts, vecs in batches:
        s1, c1 = short.search_then_add(accounts, vecs, 8)
        s2, c2 = long_.search_then_add(accounts, vecs, 8)
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_allclose(np.nan_to_num(s1, neginf=-9), np.nan_to_num(s2, neginf=-9), atol=2e-6)
    assert calls["long"] > 0


@pytest.mark.parametrize("segmented_max_history", [2048, 0])
def test_float16_storage_within_tolerance(segmented_max_history):
    rng = np.random.default_rng(11)
    store = make_store(storage="float16", segmented_max_history=segmented_max_history)
    assert store.bytes_per_vector == DIM * 2
    brute = BruteStore(store.history_cap, store.eviction_block)
    assert_matches(store, brute, random_batches(rng, n_accounts=5, n_batches=15, max_batch=20), 6, atol=3e-3)
    # stored vectors are the float16 rounding of what was added (FAISS's fp16 encoder may
    # round the last bit differently from NumPy: allow one float16 ulp)
    for a, h in brute.hist.items():
        stored = store.get(a).vectors()
        np.testing.assert_allclose(stored, np.asarray(h, dtype=np.float16).astype(np.float32), rtol=1e-3, atol=1e-7)
        np.testing.assert_array_equal(stored.astype(np.float16).astype(np.float32), stored)


@pytest.mark.parametrize("segmented_max_history", [2048, 0])
def test_int8_storage_within_tolerance(segmented_max_history):
    """int8 rows at a sentence embedding's dimension: one byte each, similarities within 1e-2 of
    exact, and every stored row a whole number of code steps (re-encoding it changes nothing)."""
    dim = 384
    rng = np.random.default_rng(12)
    store = make_store(storage="int8", segmented_max_history=segmented_max_history, dim=dim)
    assert store.bytes_per_vector == dim
    brute = BruteStore(store.history_cap, store.eviction_block)
    assert_matches(store, brute, random_batches(rng, n_accounts=4, n_batches=10, max_batch=20, dim=dim), 6, atol=1e-2)
    step = 2 * int8_range(dim) / 255
    for a, h in brute.hist.items():
        stored = store.get(a).vectors()
        assert np.abs(stored - np.asarray(h, dtype=np.float32)).max() <= step / 2 + 1e-6
        codes = int8_codes(stored, step)
        assert np.abs(codes).max() <= 127
        np.testing.assert_array_equal(codes * np.float32(step), stored)


@pytest.mark.parametrize("queries", [1, 3, 80])
def test_int8_search_is_exact_on_the_grid(queries):
    """FAISS's signed 8-bit scan and the NumPy product over codes (many queries of one account)
    give exactly the inner products of the decoded rows with a query on the grid, and the
    same top-k; the index decodes to the rows it was given, rounded to the grid."""
    dim = 384
    backend = Backend.host()
    index = backend.new_index(dim, "int8")
    rows = unit_rows(np.random.default_rng(5).normal(size=(3000, dim)))
    index.add(rows)
    step = int8_step(dim)
    decoded = index.reconstruct_n(0, index.ntotal)
    np.testing.assert_array_equal(decoded, int8_codes(rows, step) * np.float32(step))
    np.testing.assert_array_equal(index.reconstruct(7), decoded[7])
    q = int8_codes(unit_rows(np.random.default_rng(6).normal(size=(queries, dim))), step) * np.float32(step)
    exact = np.sort(q.astype(np.float64) @ decoded.T.astype(np.float64), axis=1)[:, ::-1][:, :10]
    faiss_sims, _ = index.search(q, 10)
    np.testing.assert_allclose(faiss_sims, exact, rtol=0, atol=1e-6)
    gemm_sims = _flat_topk_gemm(index, q, 10, backend.faiss, "int8")
    np.testing.assert_array_equal(gemm_sims, faiss_sims)


@pytest.mark.parametrize("storage", ["float32", "float16", "int8"])
@pytest.mark.parametrize("rows", [5, 100, 250])
def test_matrix_product_top_k_matches_brute_force_across_blocks(storage, rows, monkeypatch):
    """``_flat_topk_gemm`` over fewer rows than k, one block and several blocks of history
    (blocks shrunk to 64 rows): the k largest inner products with the decoded rows, descending."""
    import probewatch.backend.store as store_module

    monkeypatch.setattr(store_module, "_GEMM_ROWS", 64)
    backend = Backend.host()
    index = backend.new_index(DIM, storage)
    index.add(unit_rows(np.random.default_rng(rows).normal(size=(rows, DIM))))
    decoded = index.reconstruct_n(0, index.ntotal).astype(np.float64)
    q = unit_rows(np.random.default_rng(rows + 1).normal(size=(20, DIM)))
    if storage == "int8":  # the store hands the index queries on the grid
        q = int8_codes(q, int8_step(DIM)) * np.float32(int8_step(DIM))
    k = 8
    exact = np.sort(q.astype(np.float64) @ decoded.T, axis=1)[:, ::-1][:, :k]
    got = _flat_topk_gemm(index, q, k, backend.faiss, storage)
    assert got.shape == (20, min(k, rows))
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-5)


@pytest.mark.parametrize("storage", ["float16", "int8"])
@pytest.mark.parametrize("segmented_max_history", [2048, 0])
def test_rounded_storage_batch_equals_one_at_a_time(segmented_max_history, storage):
    """A query meets the earlier rows of its own batch at the precision they are stored in, so
    a float16 or int8 store answers a batch as it answers the same rows one call at a time
    (FAISS's float16 encoder can round a last bit differently from NumPy's: 1e-6, far below the
    ~1e-4 that comparing unrounded batch rows gave)."""
    rng = np.random.default_rng(5)
    batches = random_batches(rng, n_accounts=3, n_batches=12, max_batch=25)
    batched = make_store(storage=storage, segmented_max_history=segmented_max_history)
    single = make_store(storage=storage, segmented_max_history=segmented_max_history)
    for accounts, vectors in batches:
        together, _ = batched.search_then_add(accounts, vectors, 6)
        apart = np.concatenate([single.search_then_add([a], vectors[i : i + 1], 6)[0] for i, a in enumerate(accounts)])
        np.testing.assert_allclose(together, apart, rtol=0, atol=1e-6)


@pytest.mark.parametrize("storage", ["float32", "float16", "int8"])
def test_many_queries_of_one_account_take_the_matrix_product_and_match_faiss(storage, monkeypatch):
    """Past HOST_GEMM_MIN_QUERIES(_FLOAT16) queries of one account, the stored rows are read in
    place (float16 or int8 codes widened) and multiplied by NumPy: the same neighbours as FAISS's
    search."""
    import probewatch.backend.store as store_module

    rng = np.random.default_rng(3)
    history = unit_rows(rng.standard_normal((3000, DIM)))
    queries = unit_rows(rng.standard_normal((70, DIM)))
    stores = {route: make_store(storage=storage, segmented_max_history=0) for route in ("gemm", "faiss")}
    for store in stores.values():
        store.search_then_add(["a"] * len(history), history, 8)
    products = []
    original = store_module._flat_topk_gemm
    monkeypatch.setattr(store_module, "_flat_topk_gemm", lambda *a: products.append(1) or original(*a))
    via_gemm, _ = stores["gemm"].search_then_add(["a"] * len(queries), queries, 8)
    assert products, "70 queries of one account should take the matrix product"
    monkeypatch.setattr(store_module, "HOST_GEMM_MIN_QUERIES", 10**9)
    monkeypatch.setattr(store_module, "HOST_GEMM_MIN_QUERIES_FLOAT16", 10**9)
    products.clear()
    via_faiss, _ = stores["faiss"].search_then_add(["a"] * len(queries), queries, 8)
    assert not products
    np.testing.assert_allclose(via_gemm, via_faiss, rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3, 7, 40])
def test_history_cap_drops_oldest_blocks(batch):
    cap, block = 16, 5
    store = make_store(history_cap=cap, eviction_block=block, segmented_max_history=4)
    rng = np.random.default_rng(batch)
    added: list[np.ndarray] = []
    for _ in range(max(6, 3 * cap // batch + 2)):
        vecs = unit_rows(rng.standard_normal((batch, DIM)))
        store.search_then_add(["acct"] * batch, vecs, 4)
        added.extend(vecs)
        size = store.history_size("acct")
        assert size <= cap
        if len(added) > cap:
            # whole blocks: an eviction leaves more than cap - block rows
            assert size >= cap - block + 1
        else:
            assert size == len(added)
        # the kept rows are exactly the newest ones, oldest first
        np.testing.assert_array_equal(store.get("acct").vectors(), np.asarray(added[len(added) - size :]))
    assert len(added) > cap


def test_history_cap_one_at_a_time_sizes():
    cap, block = 16, 5
    store = make_store(history_cap=cap, eviction_block=block)
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(40):
        store.search_then_add(["acct"], unit_rows(rng.standard_normal((1, DIM))), 4)
        sizes.append(store.history_size("acct"))
    # grows to the cap, then the 17th query drops one block of 5 (12 left), and so on
    assert sizes[:16] == list(range(1, 17))
    assert sizes[16] == cap + 1 - block
    assert max(sizes) == cap and min(sizes[16:]) == cap + 1 - block


def test_window_and_unknown_account():
    store = make_store()
    rng = np.random.default_rng(0)
    v = unit_rows(rng.standard_normal((10, DIM)))
    store.search_then_add(["x"] * 10, v, 2)
    np.testing.assert_array_equal(store.window("x", 3), v[-3:])
    np.testing.assert_array_equal(store.window("x", 100), v)
    with pytest.raises(UnknownAccountError, match="nope"):
        store.get("nope")
    assert store.history_size("nope") == 0


@pytest.mark.parametrize("storage", ["float32", "float16", "int8"])
def test_export_import_round_trip(storage):
    rng = np.random.default_rng(5)
    store = make_store(storage=storage, segmented_max_history=3)
    batches = list(random_batches(rng, n_accounts=6, n_batches=10, max_batch=15))
    for accounts, vecs in batches[:6]:
        store.search_then_add(accounts, vecs, 5)
    store.search_then_add(["empty-later"], unit_rows(rng.standard_normal((1, DIM))), 5)
    ids, offsets, flat = store.export()
    assert ids == store.accounts()
    assert offsets[0] == 0 and offsets[-1] == flat.shape[0] == store.total_vectors()
    assert flat.dtype == np.float32 and flat.shape[1] == DIM

    other = make_store(storage=storage, segmented_max_history=3)
    other.import_(ids, offsets, flat)
    assert other.accounts() == ids
    for i, a in enumerate(ids):
        np.testing.assert_array_equal(other.get(a).vectors(), flat[offsets[i] : offsets[i + 1]])
        np.testing.assert_array_equal(other.get(a).vectors(), store.get(a).vectors())
    # both continue identically
    for accounts, vecs in batches[6:]:
        s1, c1 = store.search_then_add(accounts, vecs, 5)
        s2, c2 = other.search_then_add(accounts, vecs, 5)
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_array_equal(s1, s2)

    empty = make_store()
    ids, offsets, flat = empty.export()
    assert ids == [] and offsets.tolist() == [0] and flat.shape == (0, DIM)


@pytest.mark.parametrize(("storage", "per"), [("float32", 4), ("float16", 2), ("int8", 1)])
def test_memory_accounting(storage, per):
    store = make_store(storage=storage, history_cap=20, eviction_block=4)
    rng = np.random.default_rng(1)
    assert store.vector_bytes() == 0
    store.search_then_add(["a"] * 7 + ["b"] * 30, unit_rows(rng.standard_normal((37, DIM))), 3)
    expected_rows = 7 + store.history_size("b")
    assert store.history_size("b") <= 20
    assert store.total_vectors() == expected_rows
    assert store.vector_bytes() == expected_rows * DIM * per
    store.remove("a")
    assert store.vector_bytes() == store.history_size("b") * DIM * per and len(store) == 1
    assert store.total_vectors() == int(store.get("b").index.ntotal)
    store.clear()
    assert store.vector_bytes() == 0 and len(store) == 0 and "b" not in store


def test_lru_order_follows_last_arrival():
    store = make_store()
    rng = np.random.default_rng(2)
    store.search_then_add(["a", "b", "c"], unit_rows(rng.standard_normal((3, DIM))), 2)
    assert store.accounts() == ["a", "b", "c"]
    store.search_then_add(["a"], unit_rows(rng.standard_normal((1, DIM))), 2)
    assert store.accounts() == ["b", "c", "a"]
    # inside one batch the account whose last item came last is the most recent
    store.search_then_add(["c", "b", "c", "b"], unit_rows(rng.standard_normal((4, DIM))), 2)
    assert store.accounts() == ["a", "c", "b"]


def test_empty_batch():
    store = make_store()
    sims, counts = store.search_then_add([], np.zeros((0, DIM), np.float32), 4)
    assert sims.shape == (0, 4) and counts.shape == (0,) and len(store) == 0


@pytest.mark.parametrize("storage", ["float32", "float16", "int8"])
def test_storage_grows_by_an_eighth_and_never_past_the_cap(storage):
    """One query at a time, an account's allocation stays within 1/8 (or 4 rows) of its size
    while it grows, never exceeds the cap plus the batch that overflows it, and the rows
    survive every reallocation unchanged."""
    cap = 300
    store = make_store(storage=storage, history_cap=cap, eviction_block=50, segmented_max_history=0)
    rng = np.random.default_rng(9)
    rows = unit_rows(rng.standard_normal((cap + 120, DIM)))
    kept: list[np.ndarray] = []
    for i, row in enumerate(rows):
        store.search_then_add(["a"], row[None, :], 3)
        kept.append(row)
        entry = store.get("a")
        if len(kept) > cap:
            kept = kept[-entry.size :]
        assert entry.size <= entry.capacity <= cap + 1, i
        if i < cap:  # growing, before any eviction
            assert entry.capacity <= min(entry.size + max(entry.size // 8, 4), cap), i
        tol = {"float32": 0.0, "float16": 1e-3, "int8": int8_range(DIM) / 255 + 1e-6}[storage]
        np.testing.assert_allclose(entry.vectors(), np.asarray(kept, dtype=np.float32), atol=tol)


@pytest.mark.parametrize("batch", [15, 16, 40])
def test_busy_account_batch_on_long_path_matches_brute_force(batch):
    """Many queries of one long account in one call: the host matrix-product route (16+
    queries) and FAISS's search (fewer) both give the exact k-NN, earlier batch rows included."""
    rng = np.random.default_rng(batch)
    store = make_store(segmented_max_history=0, history_cap=100_000)
    brute = BruteStore(100_000, 512)
    for step in range(3):
        rows = unit_rows(rng.standard_normal((700 if step == 0 else batch, DIM)))
        accounts = ["busy"] * rows.shape[0]
        sims, counts = store.search_then_add(accounts, rows, 5)
        ref_sims, ref_counts = brute.search_then_add(accounts, rows, 5)
        np.testing.assert_array_equal(counts, ref_counts)
        np.testing.assert_allclose(sims, ref_sims, atol=1e-5)


def test_int8_rows_of_the_uniform_quantizer_load_unchanged():
    """0.11 kept int8 rows with FAISS's 8-bit uniform quantizer over [-r, r]; its decoded rows
    (what its snapshots hold, through float16) are on today's grid and load exactly."""
    dim = 384
    backend = Backend.host()
    faiss = backend.faiss
    old = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit_uniform, faiss.METRIC_INNER_PRODUCT)
    r = int8_range(dim)
    old.train(np.array([[-r] * dim, [r] * dim], dtype=np.float32))
    rows = unit_rows(np.random.default_rng(8).normal(size=(500, dim)))
    old.add(rows)
    saved = old.reconstruct_n(0, old.ntotal).astype(np.float16).astype(np.float32)
    index = backend.new_index(dim, "int8")
    index.add(saved)
    np.testing.assert_allclose(
        index.reconstruct_n(0, index.ntotal), old.reconstruct_n(0, old.ntotal), rtol=0, atol=1e-6
    )


def test_int8_storage_names_the_faiss_it_needs():
    """A faiss older than 1.9 has no signed 8-bit codes: the int8 store says so when it is made."""
    from types import ModuleType, SimpleNamespace

    from probewatch.errors import BackendUnavailableError

    old_faiss = ModuleType("faiss")
    old_faiss.__version__, old_faiss.ScalarQuantizer = "1.8.0", SimpleNamespace(QT_fp16=1)
    backend = Backend("cpu", np, old_faiss)
    with pytest.raises(BackendUnavailableError, match=r"faiss 1\.9 or later.*found faiss 1\.8\.0"):
        AccountStore(8, "int8", 100, 10, 0, backend)
    assert AccountStore(8, "float16", 100, 10, 0, backend).storage == "float16"


@pytest.mark.parametrize("storage", ["float32", "float16", "int8"])
def test_reserve_rows_allocates_once_for_a_new_account(storage):
    """An empty index given room for 10 rows takes 10 single-row adds without moving its
    storage and keeps every row; the 11th add reallocates; a non-empty index is refused."""
    backend = Backend.host()
    index = backend.new_index(DIM, storage)
    reserve_rows(index, 10)
    start = int(index.codes.data())
    rows = unit_rows(np.random.default_rng(11).standard_normal((11, DIM)))
    for i in range(10):
        index.add(rows[i : i + 1])
        assert int(index.codes.data()) == start, i
    index.add(rows[10:])
    assert int(index.codes.data()) != start and index.ntotal == 11
    tol = {"float32": 0.0, "float16": 1e-3, "int8": int8_range(DIM) / 255 + 1e-6}[storage]
    np.testing.assert_allclose(index.reconstruct_n(0, 11), rows, atol=tol)
    with pytest.raises(ValueError, match="needs an empty index; this one holds 11 rows"):
        reserve_rows(index, 20)
