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
from pathlib import Path


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

    prompts = vocabulary_prompts(n_prompts + batch, seed)
    warm, prompts = prompts[:batch], prompts[batch:]
    accounts = [f"acct-{i % n_accounts}" for i in range(len(prompts))]
    batches = [(accounts[i : i + batch], prompts[i : i + batch]) for i in range(0, len(prompts), batch)]
    embedder = pw.Embedder(device=device, batch_size=batch, cache_size=0)
    on_device = embedder.device.startswith("cuda")
    encode = embedder.encode_device if on_device else embedder.encode

    encode(warm)
    vectors: list = []
    embed_s = _timed(embedder.device, lambda: vectors.extend(encode(p) for _, p in batches))

    engine = pw.Engine(embedder=embedder, device=embedder.device)
    engine.observe_batch([f"warm-{i}" for i in range(len(warm))], warm)
    pipeline_s = _timed(embedder.device, lambda: [engine.observe_batch(a, p) for a, p in batches])

    detector = pw.Engine(embedder=embedder, device=embedder.device)
    detect_s = _timed(
        embedder.device, lambda: [detector.observe_embeddings(a, v) for (a, _), v in zip(batches, vectors, strict=True)]
    )
    if profile is not None:  # the detection phase again, into a fresh engine, under cProfile
        import cProfile
        import io
        import pstats

        profiled, profiler = pw.Engine(embedder=embedder, device=embedder.device), cProfile.Profile()
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


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--prompts", type=int, default=20_000, help="timed prompts per phase")
    parser.add_argument("--batch", type=int, nargs="+", default=[512], help="prompts per call (one run each)")
    parser.add_argument("--accounts", type=int, default=10_000, help="accounts the prompts are spread over")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    parser.add_argument(
        "--profile", type=Path, default=None, help="also profile the detection phase of the first batch size (text)"
    )
    args = parser.parse_args(argv)
    rows = []
    for i, batch in enumerate(args.batch):
        row = measure(args.device, args.prompts, batch, args.accounts, profile=args.profile if i == 0 else None)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
