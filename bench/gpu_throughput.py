"""End-to-end throughput of the pipeline on one device: embedding alone, the whole
``observe_batch``, detection alone, and the detection share of embedding time.

    python -m bench.gpu_throughput --device cuda --out throughput.json   # on a GPU machine
    python -m bench.gpu_throughput --device cpu --prompts 256 --batch 32 # a smoke run here

Prompts are 6-40 words drawn from the model's own WordPiece vocabulary (seeded; every prompt
distinct, so the exact-repeat cache never helps), spread over ``--accounts`` accounts. Each
phase runs once untimed on a warm-up slice, then is timed over all prompts with the device
synchronised at the end. Detection alone replays the phase's own vectors into a fresh engine.
Issue 14's GPU targets: >= 50k prompts/s end to end on one H200-class GPU, detection <= 5 % of
embedding time.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from probewatch.cli.args import at_least


def vocabulary_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct prompts of 6-40 whole words from the bundled model's vocabulary."""
    from probewatch.backend.embedder import bundled_model_path

    words = [
        w
        for w in (bundled_model_path() / "vocab.txt").read_text(encoding="utf-8").split()
        if w.isalpha() and w.isascii() and len(w) >= 3
    ]
    rng = random.Random(seed)
    prompts: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        text = " ".join(rng.choice(words) for _ in range(rng.randint(6, 40)))
        if text not in prompts:
            prompts.add(text)
            out.append(text)
    return out


class Workload(NamedTuple):
    """What every run measures: ``n_prompts`` distinct prompts over ``n_accounts`` accounts in
    calls of ``batch``, a warm-up slice of one call before them, and the embedder (repeat
    cache off) with its encode function (device rows on CUDA). Unpacks in field order."""

    embedder: Any
    encode: Callable
    warm: list[str]
    warm_accounts: list[str]
    prompts: list[str]
    batches: list[tuple[list[str], list[str]]]

    @classmethod
    def build(cls, device: str, n_prompts: int, batch: int, n_accounts: int, seed: int = 0) -> Workload:
        import probewatch as pw

        texts = vocabulary_prompts(n_prompts + batch, seed)
        warm, prompts = texts[:batch], texts[batch:]
        accounts = [f"acct-{i % n_accounts}" for i in range(len(prompts))]
        batches = [(accounts[i : i + batch], prompts[i : i + batch]) for i in range(0, len(prompts), batch)]
        embedder = pw.Embedder(device=device, batch_size=batch, cache_size=0)
        encode = embedder.encode_device if embedder.device.startswith("cuda") else embedder.encode
        return cls(embedder, encode, warm, [f"warm-{i}" for i in range(len(warm))], prompts, batches)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        from probewatch.kernels import cupy_available

        if cupy_available():
            import cupy as cp

            cp.cuda.Device().synchronize()


def _timed(device: str, run) -> float:
    _synchronize(device)
    start = time.perf_counter()
    run()
    _synchronize(device)
    return time.perf_counter() - start


def measure(
    device: str, n_prompts: int, batch: int, n_accounts: int, seed: int = 0, profile: Path | None = None
) -> dict:
    import probewatch as pw

    embedder, encode, warm, warm_accounts, prompts, batches = Workload.build(device, n_prompts, batch, n_accounts, seed)
    on_device = embedder.device.startswith("cuda")

    warm_vectors = encode(warm)
    vectors: list = []
    embed_s = _timed(embedder.device, lambda: vectors.extend(encode(p) for _, p in batches))

    engine = pw.Engine(embedder=embedder, device=embedder.device)
    engine.observe_batch(warm_accounts, warm)
    pipeline_s = _timed(embedder.device, lambda: [engine.observe_batch(a, p) for a, p in batches])

    detector = pw.Engine(embedder=embedder, device=embedder.device)
    detector.observe_embeddings(warm_accounts, warm_vectors)
    detect_s = _timed(
        embedder.device, lambda: [detector.observe_embeddings(a, v) for (a, _), v in zip(batches, vectors, strict=True)]
    )
    if profile is not None:  # the detection phase again, into a fresh engine, under cProfile
        import cProfile
        import io
        import pstats

        profiled, profiler = pw.Engine(embedder=embedder, device=embedder.device), cProfile.Profile()
        profiled.observe_embeddings(warm_accounts, warm_vectors)
        profiler.enable()
        _timed(
            embedder.device,
            lambda: [profiled.observe_embeddings(a, v) for (a, _), v in zip(batches, vectors, strict=True)],
        )
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(40)
        profile.write_text(f"detection phase, {len(prompts)} queries in batches of {batch}\n{text.getvalue()}")
    stats = engine.stats()
    result = {
        "device": embedder.device,
        "device_name": _device_name(embedder.device),
        "embedding": f"{embedder.backend} {embedder.precision}",
        "account_indexes": "device (faiss-gpu)" if engine.pipeline.backend.device_indexes else "host",
        "prompts": len(prompts),
        "batch": batch,
        "accounts": n_accounts,
        "embed_prompts_per_s": round(len(prompts) / embed_s, 1),
        "pipeline_prompts_per_s": round(len(prompts) / pipeline_s, 1),
        "detection_queries_per_s": round(len(prompts) / detect_s, 1),
        "detection_share_of_embedding": round(detect_s / embed_s, 4),
        "detection_us_per_query": round(1e6 * detect_s / len(prompts), 1),
        "bytes_held": stats.bytes_held,
        "stored_queries": stats.stored_queries,
    }
    if on_device:
        import torch

        result["torch_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        try:
            import cupy as cp

            result["cupy_pool_used_bytes"] = int(cp.get_default_memory_pool().used_bytes())
        except ImportError:
            pass
    return result


def _shard_worker(role: str, inbox, outbox, blas_threads: int) -> None:
    """One detection process: ``role`` "accounts" runs an account detector (campaign layer
    off) over its shard; "campaigns" runs the campaign layer alone over every query, as the
    scale-out's campaign aggregator does (account evidence zero here: its cost is the same)."""
    import os

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(blas_threads)
    import numpy as np

    import probewatch as pw

    if role == "accounts":
        engine = pw.Engine(device="cpu", campaigns=False)

        def work(accounts, vectors, texts):
            engine.observe_embeddings(accounts, vectors)
    else:
        layer = pw.Engine(device="cpu").pipeline.campaigns

        def work(accounts, vectors, texts):
            n = len(accounts)
            layer.observe(accounts, vectors, texts, [None] * n, [None] * n, np.zeros(n))

    busy, count, first = 0.0, 0, True
    while (message := inbox.get()) is not None:
        started = time.perf_counter()
        work(*message)
        if first:  # the warm-up batch: not counted
            first = False
            outbox.put("ready")
            continue
        busy += time.perf_counter() - started
        count += len(message[0])
    outbox.put((role, busy, count))


def shard_of(account: str, shards: int) -> int:
    """The detection process an account's queries go to (stable across runs and processes)."""
    return zlib.crc32(account.encode("utf-8")) % shards


def measure_sharded(device: str, n_prompts: int, batch: int, n_accounts: int, workers: int, seed: int = 0) -> dict:
    """End to end with detection sharded by account over ``workers`` processes plus one
    campaign-layer process, the parent embedding on ``device`` and handing each batch's host
    rows out through bounded queues (so the slowest stage sets the pace)."""
    import multiprocessing

    from probewatch.kernels.backend import to_numpy

    embedder, encode, warm, warm_accounts, prompts, batches = Workload.build(device, n_prompts, batch, n_accounts, seed)
    warm_vectors = to_numpy(encode(warm))

    context = multiprocessing.get_context("spawn")  # the parent holds a CUDA context: never fork it
    outbox = context.Queue()
    inboxes = [context.Queue(maxsize=4) for _ in range(workers + 1)]
    roles = ["accounts"] * workers + ["campaigns"]
    processes = [
        context.Process(target=_shard_worker, args=(role, inbox, outbox, 1), daemon=True)
        for role, inbox in zip(roles, inboxes, strict=True)
    ]
    for process in processes:
        process.start()
    try:
        for w, inbox in enumerate(inboxes):
            rows = list(range(len(warm))) if w == workers else [i for i in range(len(warm)) if i % workers == w]
            inbox.put(([warm_accounts[i] for i in rows], warm_vectors[rows], [warm[i] for i in rows]))
        for _ in inboxes:
            if outbox.get(timeout=600) != "ready":
                raise RuntimeError("a detection process failed to start")
        started = time.perf_counter()
        embedding = 0.0  # the parent's own time: embedding (host rows ready), then handing out
        for batch_accounts, batch_prompts in batches:
            t0 = time.perf_counter()
            host = to_numpy(encode(batch_prompts))  # waits for the device
            embedding += time.perf_counter() - t0
            shards: list[list[int]] = [[] for _ in range(workers)]
            for i, account in enumerate(batch_accounts):
                shards[shard_of(account, workers)].append(i)
            for rows, inbox in zip(shards, inboxes, strict=False):
                if rows:
                    inbox.put(([batch_accounts[i] for i in rows], host[rows], None))
            inboxes[-1].put((batch_accounts, host, batch_prompts))
        handing_out = time.perf_counter() - started - embedding  # includes waiting on full queues
        for inbox in inboxes:
            inbox.put(None)
        results = [outbox.get(timeout=600) for _ in inboxes]
        wall = time.perf_counter() - started
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    account_busy = [busy for role, busy, _ in results if role == "accounts"]
    campaign_busy = next(busy for role, busy, _ in results if role == "campaigns")
    counted = sum(count for role, _, count in results if role == "accounts")
    if counted != len(prompts):
        raise RuntimeError(f"the account detectors saw {counted} queries of {len(prompts)}")
    return {
        "device": embedder.device,
        "device_name": _device_name(embedder.device),
        "embedding": f"{embedder.backend} {embedder.precision}",
        "prompts": len(prompts),
        "batch": batch,
        "accounts": n_accounts,
        "detect_workers": workers,
        "end_to_end_prompts_per_s": round(len(prompts) / wall, 1),
        "parent_embedding_share": round(embedding / wall, 3),
        "parent_handing_out_share": round(handing_out / wall, 3),
        "account_detector_busy_share_max": round(max(account_busy) / wall, 3),
        "campaign_layer_busy_share": round(campaign_busy / wall, 3),
        "account_detection_us_per_query": round(1e6 * sum(account_busy) / len(prompts), 1),
        "campaign_layer_us_per_query": round(1e6 * campaign_busy / len(prompts), 1),
    }


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--prompts", type=at_least(1), default=20_000, help="timed prompts per phase")
    parser.add_argument("--batch", type=at_least(1), nargs="+", default=[512], help="prompts per call (one run each)")
    parser.add_argument("--accounts", type=at_least(1), default=10_000, help="accounts the prompts are spread over")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    parser.add_argument(
        "--profile", type=Path, default=None, help="also profile the detection phase of the first batch size (text)"
    )
    parser.add_argument(
        "--detect-workers",
        type=int,
        nargs="+",
        default=[],
        help="instead: end to end with detection sharded by account over N processes (one run each, last --batch)",
    )
    args = parser.parse_args(argv)
    rows = []
    if args.detect_workers:
        for workers in args.detect_workers:
            row = measure_sharded(args.device, args.prompts, args.batch[-1], args.accounts, workers)
            print(json.dumps(row), flush=True)
            rows.append(row)
    for i, batch in enumerate([] if args.detect_workers else args.batch):
        row = measure(args.device, args.prompts, batch, args.accounts, profile=args.profile if i == 0 else None)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
