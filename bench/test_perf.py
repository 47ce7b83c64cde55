"""Speed and memory of the pipeline (pytest-benchmark; not part of the default test run).

    make bench        # or: python -m pytest bench --benchmark-only

Targets on a 2-core CPU (issue 14, see README): the whole ``observe_batch`` pipeline at
>= 2x the throughput of raw sentence-transformers (torch fp32) embedding of the same
prompts, >= 3x with a 30 % exact-repeat share; detection <= 1 ms for a lone query at a
10k-query history and <= 0.3 ms/query batched; <= 1.6 KB per stored query in float32 and
<= 0.8 KB in float16. GPU variants synchronise the device inside the timed function.
"""

from __future__ import annotations

import itertools
import random
import time

import numpy as np
import pytest

import probewatch as pw
from probewatch.kernels import cupy_available

from .conftest import unit_rows
from .scaling import rss

BATCH = 16  # the batch size at which MiniLM runs fastest on 2 cores
HISTORIES = (1_000, 10_000, 100_000)
ROUNDS = 40  # both throughput tests cycle through the same 30 batches; fewer rounds are noise
REPEAT_SHARE = 0.3  # the exact-repeat share of the repeat-cache benchmark
BLOCK = 5  # batches each side runs back to back in the interleaved throughput tests


@pytest.fixture(scope="module")
def raw_st_encode():
    """The baseline: sentence-transformers' own encode, torch fp32, on the bundled model."""
    from sentence_transformers import SentenceTransformer

    from probewatch.backend.embedder import bundled_model_path

    model = SentenceTransformer(str(bundled_model_path()), device="cpu")
    return lambda texts: model.encode(texts, batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False)


@pytest.fixture(scope="module")
def fast_embedder():
    """The fastest embedding runtime on this CPU (``backend="auto"``: OpenVINO bf16 where
    installed and supported), repeat cache off: what every prompt costs the first time."""
    return pw.Embedder(device="cpu", backend="auto", cache_size=0)


def _engine(**overrides) -> pw.Engine:
    return pw.Engine(device="cpu", **overrides)


def _account_batches(prompts: list[str]):
    """(accounts, prompts) batches of BATCH over 40 accounts, cycled: the batches every
    throughput test sees, in the same order."""
    accounts = [f"acct-{i % 40}" for i in range(len(prompts))]
    return itertools.cycle(
        [(accounts[i : i + BATCH], prompts[i : i + BATCH]) for i in range(0, len(prompts) - BATCH, BATCH)]
    )


def test_embedding_only(benchmark, raw_st_encode, prompts):
    batches = (p for _, p in _account_batches(prompts))
    benchmark.extra_info["prompts_per_call"] = BATCH
    benchmark.pedantic(lambda: raw_st_encode(next(batches)), rounds=ROUNDS, warmup_rounds=2)


def test_observe_batch_pipeline(benchmark, fast_embedder, prompts):
    """Embedding + k-NN + features + verdicts, the same batches as test_embedding_only."""
    engine = pw.Engine(device="cpu", embedder=fast_embedder)
    batches = _account_batches(prompts)
    benchmark.extra_info["prompts_per_call"] = BATCH
    benchmark.extra_info["embed_runtime"] = f"{fast_embedder.backend} {fast_embedder.precision}"

    def run():
        a, p = next(batches)
        return engine.observe_batch(a, p)

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=2)


def _interleaved_ratio(benchmark, raw_st_encode, engine, batches, label: str) -> float:
    """The throughput ratio from one run that alternates the two sides in blocks: each round
    embeds BLOCK batches with raw sentence-transformers, then observes the same batches.

    Alternating keeps the ratio immune to the machine's speed drifting. Blocks rather than
    single batches: each side runs back to back, as it would in service. Alternating every
    batch charges each side for the other's thread pools still spinning on both cores after
    returning (torch's OpenMP workers, OpenVINO's), ~1.6 ms of a 16-prompt pipeline batch.
    Other processes on the cores slow torch's OpenMP baseline several times more than OpenVINO
    (raw ST 40-45 ms per batch quiet, 140+ ms contended on 2 cores): a contended run inflates
    the ratio, so read it next to the printed raw-ST milliseconds.
    """
    spent = {"embedding": 0.0, "pipeline": 0.0}
    counted = {"batches": 0}

    def run():
        block = [next(batches) for _ in range(BLOCK)]
        t0 = time.perf_counter()
        for _, p in block:
            raw_st_encode(p)
        t1 = time.perf_counter()
        for a, p in block:
            engine.observe_batch(a, p)
        spent["embedding"] += t1 - t0
        spent["pipeline"] += time.perf_counter() - t1
        counted["batches"] += len(block)

    run()  # warm-up (first shapes, caches), not counted
    spent.update(embedding=0.0, pipeline=0.0)
    counted["batches"] = 0
    benchmark.pedantic(run, rounds=ROUNDS // 2)
    ratio = spent["embedding"] / spent["pipeline"]
    n = counted["batches"]
    benchmark.extra_info["pipeline_throughput_vs_raw_embedding"] = round(ratio, 3)
    print(
        f"\n{label}: observe_batch throughput = {ratio:.3f} x raw sentence-transformers fp32 embedding "
        f"({spent['pipeline'] * 1e3 / n:.1f} vs {spent['embedding'] * 1e3 / n:.1f} ms per batch, {n} batches)"
    )
    return ratio


def test_pipeline_vs_embedding_interleaved(benchmark, raw_st_encode, fast_embedder, prompts):
    """Every prompt new to the engine (repeat cache off)."""
    engine = pw.Engine(device="cpu", embedder=fast_embedder)
    runtime = f"{fast_embedder.backend} {fast_embedder.precision}"
    benchmark.extra_info["embed_runtime"] = runtime
    _interleaved_ratio(benchmark, raw_st_encode, engine, _account_batches(prompts), f"no repeats, {runtime}")


def test_pipeline_vs_embedding_with_repeats(benchmark, raw_st_encode, prompts):
    """30 % of each batch repeats a prompt sent earlier (retries, templates, re-sent seeds),
    with the engine's default repeat cache; the other prompts are new (two demo prompts
    joined, so no shared suffix or template links them), over the same 40 accounts."""
    rng = random.Random(14)
    sent: list[str] = []

    def batches():
        for i in itertools.count():
            batch = []
            for _ in range(BATCH):
                if sent and rng.random() < REPEAT_SHARE:
                    batch.append(rng.choice(sent))
                else:
                    first, cycle = len(sent) % len(prompts), len(sent) // len(prompts)
                    second = (cycle + 3 * first + 1) % len(prompts)  # a pair never sent before
                    batch.append(f"{prompts[first]} {prompts[second]}")
                    sent.append(batch[-1])
            yield [f"acct-{(i * BATCH + j) % 40}" for j in range(BATCH)], batch

    engine = pw.Engine(device="cpu", embed_backend="auto")  # the fastest runtime, default repeat cache
    ratio = _interleaved_ratio(benchmark, raw_st_encode, engine, batches(), f"{REPEAT_SHARE:.0%} repeats")
    stats = engine.repeat_cache_stats()
    benchmark.extra_info["repeat_cache_hit_rate"] = round(stats.hit_rate, 3)
    print(f"repeat cache: {stats.hits} hits, {stats.misses} misses ({stats.hit_rate:.0%})")
    assert stats.hits > 0 and ratio > 0


def _engine_with_history(history: int, storage: str | None = None) -> tuple[pw.Engine, np.ndarray]:
    """An engine holding one account with ``history`` queries (default storage unless given)."""
    overrides = {} if storage is None else {"storage": storage}
    engine = _engine(history_cap=max(history, 1024), eviction_block=512, **overrides)
    rows = unit_rows(history + 4096, seed=history)
    for start in range(0, history, 8192):
        chunk = rows[start : min(start + 8192, history)]
        engine.observe_embeddings(["big"] * len(chunk), chunk)
    return engine, rows[history:]


@pytest.mark.parametrize("history", HISTORIES)
def test_detection_cost_one_query(benchmark, history):
    """One query to an account holding `history` earlier queries (no embedding; default
    float16 storage)."""
    engine, fresh = _engine_with_history(history)
    queries = itertools.cycle(fresh[:, None, :])
    benchmark.extra_info["history"] = history
    benchmark(lambda: engine.observe_embeddings(["big"], next(queries)))


@pytest.mark.parametrize("storage", ["float32", "int8"])
def test_detection_cost_one_query_other_storage(benchmark, storage):
    """The lone query at a 10k history with ``storage="float32"`` (the memory-bound k-NN scan
    reads twice the bytes of the default float16 rows) or ``"int8"`` (half the bytes, scanned
    by FAISS's signed 8-bit codes with integer products)."""
    engine, fresh = _engine_with_history(10_000, storage=storage)
    queries = itertools.cycle(fresh[:, None, :])
    benchmark.extra_info["history"] = 10_000
    benchmark.extra_info["storage"] = storage
    benchmark(lambda: engine.observe_embeddings(["big"], next(queries)))


@pytest.mark.parametrize("history", HISTORIES)
def test_detection_cost_batch_of_64(benchmark, history):
    """64 queries of the same account in one call (how a busy account arrives in a micro-batch)."""
    engine, fresh = _engine_with_history(history)
    batches = itertools.cycle([fresh[i : i + 64] for i in range(0, 4096, 64)])
    benchmark.extra_info["history"] = history
    benchmark.extra_info["queries_per_call"] = 64
    benchmark(lambda: engine.observe_embeddings(["big"] * 64, next(batches)))


def test_detection_cost_batch_of_64_int8(benchmark):
    """64 queries of one account at a 10k history with ``storage="int8"``: the history is read
    as whole-number codes and multiplied against the queries' codes."""
    engine, fresh = _engine_with_history(10_000, storage="int8")
    batches = itertools.cycle([fresh[i : i + 64] for i in range(0, 4096, 64)])
    benchmark.extra_info["history"] = 10_000
    benchmark.extra_info["storage"] = "int8"
    benchmark.extra_info["queries_per_call"] = 64
    benchmark(lambda: engine.observe_embeddings(["big"] * 64, next(batches)))


def test_detection_cost_many_short_accounts(benchmark):
    """A batch of 256 queries from 256 different accounts with ~50 queries each (the common case)."""
    engine = _engine()
    rows = unit_rows(256 * 60, seed=3)
    accounts = [f"a{i}" for i in range(256)]
    for r in range(50):
        engine.observe_embeddings(accounts, rows[r * 256 : (r + 1) * 256])
    more = itertools.cycle([rows[r * 256 : (r + 1) * 256] for r in range(50, 60)])
    benchmark.extra_info["queries_per_call"] = 256
    benchmark(lambda: engine.observe_embeddings(accounts, next(more)))


def _many_short_accounts_with_prompts(prompts: list[str], repeats: bool = False):
    """An engine holding 256 accounts x 50 queries sent with their prompts, and a call that
    sends the next 256 (one an account; 10 batches of vectors, cycled, each prompt numbered
    by the call so that none was sent before); ``repeats``: a call that sends each account's
    last prompt again instead, which since 0.18.0 is not judged anew."""
    engine = _engine()
    rows = unit_rows(256 * 60, seed=3)
    accounts = [f"a{i}" for i in range(256)]
    # prompts of 6-24 words drawn from the demo's words: no two accounts share a template (the
    # demo's own prompts, shared by all 256 accounts, would make every query a campaign-group
    # member and measure the campaign layer instead)
    rng = np.random.default_rng(11)
    words = sorted({w for p in prompts for w in p.split()})
    texts = [" ".join(rng.choice(words, size=int(rng.integers(6, 25)))) for _ in range(256 * 60)]
    for r in range(50):
        engine.observe_embeddings(accounts, rows[r * 256 : (r + 1) * 256], prompts=texts[r * 256 : (r + 1) * 256])
    if repeats:
        sent = (rows[49 * 256 : 50 * 256], texts[49 * 256 : 50 * 256])
        return lambda: engine.observe_embeddings(accounts, sent[0], prompts=sent[1])
    more = itertools.cycle([(rows[r * 256 : (r + 1) * 256], texts[r * 256 : (r + 1) * 256]) for r in range(50, 60)])
    calls = itertools.count()

    def call():
        vectors, batch_prompts = next(more)
        k = next(calls)
        engine.observe_embeddings(accounts, vectors, prompts=[f"{text} {k}" for text in batch_prompts])

    return call


def test_detection_cost_many_short_accounts_with_prompts(benchmark, prompts):
    """The many-short-accounts batch with each query's prompt: what reading the text adds (the
    continuation check, and since 0.13.0 each prompt's word sketch and the neighbourhood-probe
    check against the account's last 16 prompts, since 0.13.1 around an unsent seed too)."""
    call = _many_short_accounts_with_prompts(prompts)
    benchmark.extra_info["queries_per_call"] = 256
    benchmark(call)


def test_detection_cost_many_short_accounts_sending_again(benchmark, prompts):
    """The many-short-accounts batch where every account sends its last prompt again (a retry,
    a health check): each gets its standing verdict, one batched judgement, nothing folded in."""
    call = _many_short_accounts_with_prompts(prompts, repeats=True)
    benchmark.extra_info["queries_per_call"] = 256
    benchmark(call)


def test_detection_cost_many_short_accounts_busy_cpu(benchmark, prompts):
    """The many-short-accounts batch with prompts while another process keeps every core busy
    (``bench/busy_cpu.py``), as on an inference node. Each call searches 256 small FAISS
    indexes; before 0.14.2 those searches ran on torch's OpenMP pool whatever
    ``detection_blas_threads`` said, and under this load a call took 0.4-1.8 s (medians)
    instead of about 0.13 s."""
    from .busy_cpu import busy_cpu

    call = _many_short_accounts_with_prompts(prompts)
    benchmark.extra_info["queries_per_call"] = 256
    with busy_cpu(seconds=120):
        benchmark.pedantic(call, rounds=20, iterations=1)


def test_detection_cost_light_accounts(benchmark):
    """10,000 light accounts sending two queries each, in calls of 1,024 (a campaign of many
    light accounts, or a busy front end): every query refreshes its young account's window
    statistics, which a call computes together. Reported per query."""
    n_accounts, per_call, total = 10_000, 1_024, 20_480
    rows = unit_rows(total, seed=7)
    accounts = [f"light-{i % n_accounts}" for i in range(total)]

    def replay():
        engine = _engine()
        for start in range(0, total, per_call):
            engine.observe_embeddings(accounts[start : start + per_call], rows[start : start + per_call])

    benchmark.pedantic(replay, rounds=3, iterations=1)
    benchmark.extra_info["queries"] = total
    benchmark.extra_info["us_per_query_min"] = round(1e6 * benchmark.stats.stats.min / total, 1)


@pytest.mark.parametrize("rows", [1, 256])
def test_lookalike_search(benchmark, rows):
    """The look-alike search alone (``Calibration.neighbours``, shipped calibration): feature
    rows of 64-127-query accounts against that bin's benign rows, in every channel and the
    campaign evidence, one BLAS thread as in the engine."""
    from probewatch.backend.threads import limit_host_blas

    calibration = pw.Engine(device="cpu").detector.calibration
    samples = calibration.samples[6]
    picked = samples[np.random.default_rng(0).choice(samples.shape[0], rows, replace=False)]
    n = np.full(rows, 64)
    benchmark.extra_info["rows_per_call"] = rows
    with limit_host_blas(1):
        benchmark(lambda: calibration.neighbours(picked, n))


@pytest.mark.parametrize("storage", ["float32", "float16", "int8"])
def test_memory_per_stored_query(benchmark, storage):
    """Resident memory added per stored query, measured over 200 accounts x 1,000 queries.

    The engine first serves a throwaway account, so one-off costs (BLAS work buffers, lazy
    imports, caches) are not charged to stored queries; it is then filled in micro-batches
    of 1,000 queries (50 accounts x 20), the way traffic arrives.
    """
    n_accounts, per_account, per_call = 200, 1000, 20
    rows = unit_rows(per_account * 4, seed=5)

    def fill():
        engine = _engine(storage=storage, history_cap=per_account)
        engine.observe_embeddings(["warm-up"] * per_account, rows[:per_account])
        engine.forget("warm-up")
        before = rss()
        for r in range(0, per_account, per_call):
            for a in range(0, n_accounts, 50):
                accounts = [f"acct-{i}" for i in range(a, a + 50) for _ in range(per_call)]
                engine.observe_embeddings(accounts, np.tile(rows[r : r + per_call], (50, 1)))
        added = rss() - before
        return engine, added

    engine, added = benchmark.pedantic(fill, rounds=1, iterations=1)
    stored = engine.stats().stored_queries
    per_query = added / stored
    benchmark.extra_info["stored_queries"] = stored
    benchmark.extra_info["rss_bytes_per_query"] = round(per_query, 1)
    benchmark.extra_info["held_bytes_per_query"] = round(engine.stats().bytes_held / stored, 1)
    print(f"\n{storage}: {per_query:.0f} B RSS per stored query, {engine.stats().bytes_held / stored:.0f} B accounted")
    assert stored == n_accounts * per_account


@pytest.mark.gpu
@pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a CUDA device")
@pytest.mark.parametrize("history", HISTORIES)
def test_detection_cost_gpu(benchmark, history):
    import cupy as cp

    engine = pw.Engine(device="cuda", history_cap=max(history, 1024))
    rows = unit_rows(history + 4096, seed=history)
    for start in range(0, history, 8192):
        chunk = rows[start : min(start + 8192, history)]
        engine.observe_embeddings(["big"] * len(chunk), chunk)
    batches = itertools.cycle([rows[history + i : history + i + 64] for i in range(0, 4096, 64)])

    def run():
        out = engine.observe_embeddings(["big"] * 64, next(batches))
        cp.cuda.Device().synchronize()
        return out

    benchmark(run)


@pytest.mark.parametrize("probe_memory", [0, 100_000], ids=["probe-search-off", "probe-search-on"])
def test_campaign_layer_cost_with_prompts(benchmark, probe_memory):
    """The campaign layer alone as the scale-out's campaign process runs it: 20,000 distinct
    prompts of 6-40 words from the model's vocabulary over 10,000 accounts, calls of 1,024,
    with the cross-account probe search off and on (``campaign_probe_memory``). Reported per
    query; every prompt goes through ``SplitProbes`` when the search is on."""
    from probewatch.backend.threads import limit_host_blas

    from .gpu_throughput import vocabulary_prompts

    n, batch = 20_000, 1_024
    texts = vocabulary_prompts(n, 0)
    vectors = unit_rows(n, seed=13)
    accounts = [f"acct-{i % 10_000}" for i in range(n)]
    evidence = np.zeros(batch)

    def fresh_layer():  # a new engine per round, built outside the timed call
        return (_engine(campaign_probe_memory=probe_memory).pipeline.campaigns,), {}

    def replay(layer):
        with limit_host_blas(1):  # as the campaign process holds it (detection_blas_threads)
            for start in range(0, n, batch):
                stop = min(n, start + batch)
                m = stop - start
                layer.observe(
                    accounts[start:stop], vectors[start:stop], texts[start:stop], [None] * m, [None] * m, evidence[:m]
                )

    benchmark.pedantic(replay, setup=fresh_layer, rounds=3, iterations=1)
    benchmark.extra_info["queries"] = n
    benchmark.extra_info["us_per_query_min"] = round(1e6 * benchmark.stats.stats.min / n, 1)


def test_campaign_layer_replay_100k_accounts(benchmark):
    """The campaign layer alone over 100k accounts x 10 queries (1M queries): the extra cost
    per query it adds to the pipeline, and the memory it holds under its default caps.

    Traffic: every account sends prompts from one of 2,000 templates (Zipf popularity: a few
    frameworks dominate), each with its own payload, and metadata from a 20k-address pool;
    vectors are clustered unit rows. The account detector's per-query evidence is zero.
    """
    n_accounts, per_account, batch = 100_000, 10, 1_000
    engine = _engine()
    layer = engine.pipeline.campaigns
    rng = np.random.default_rng(9)
    template_of = np.minimum(rng.zipf(1.3, size=n_accounts), 2_000) - 1
    ip_of = rng.integers(0, 20_000, size=n_accounts)
    order = np.repeat(np.arange(n_accounts), per_account)
    rng.shuffle(order)
    centres = rng.normal(size=(64, 384)).astype(np.float32)
    evidence = np.zeros(batch)

    def replay():
        before = rss()
        spent = 0.0
        for start in range(0, order.size, batch):
            ids = order[start : start + batch]
            x = centres[ids % 64] + 0.6 * rng.normal(size=(ids.size, 384)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            accounts = [f"acct-{i}" for i in ids.tolist()]
            texts = [
                f"Template {t} for the task at hand, please follow the format exactly: payload {i}-{start + j} "
                f"then answer in the style the template {t} asks for, citing sources."
                for j, (t, i) in enumerate(zip(template_of[ids].tolist(), ids.tolist(), strict=True))
            ]
            metas = [{"ip": f"198.51.{a % 256}.{a // 256 % 256}"} for a in ip_of[ids].tolist()]
            t0 = time.perf_counter()
            layer.observe(accounts, x, texts, metas, [None] * ids.size, evidence[: ids.size])
            spent += time.perf_counter() - t0
        return spent, rss() - before

    spent, added = benchmark.pedantic(replay, rounds=1, iterations=1)
    per_query_ms = 1000 * spent / order.size
    benchmark.extra_info.update(
        {
            "queries": int(order.size),
            "ms_per_query": round(per_query_ms, 4),
            "groups": len(layer.groups),
            "pending": len(layer.pending),
            "memberships": layer.pool.used,
            "layer_bytes_accounted": layer.nbytes(),
            "rss_bytes_added": added,
        }
    )
    print(
        f"\ncampaign layer: {per_query_ms:.3f} ms/query over {order.size} queries; {len(layer.groups)} groups, "
        f"{layer.pool.used} memberships, {layer.nbytes() / 2**20:.0f} MiB accounted, {added / 2**20:.0f} MiB RSS added"
    )
    config = engine.config
    assert len(layer.groups) <= config.campaign_max_groups and layer.pool.used <= config.campaign_max_memberships
