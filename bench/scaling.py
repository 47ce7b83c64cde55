"""How detection cost and memory grow with work: writes docs/benchmark/scaling.md and scaling.png.

    python -m bench.scaling            # histories 100 -> 100k, accounts 1k -> 100k (~10 min on 2 cores)
    python -m bench.scaling --quick    # histories 100 -> 10k, accounts 1k -> 10k

Everything runs on precomputed clustered unit vectors (the embedding model is out of it):

* detection ms/query against one account's history length, for a lone query and for a
  64-query batch of that account;
* ms/query of a 256-query batch from random resident accounts, against how many accounts are
  resident, and resident memory (RSS) per account, with the memory budget on (raised so that
  nothing is evicted: the point is what holding the accounts costs).

Timings are medians of repeated calls in one process; on a shared machine run it when quiet.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import psutil

import probewatch as pw

OUT_DIR = Path(__file__).resolve().parent.parent / "docs" / "benchmark"
HISTORIES = (100, 1_000, 10_000, 100_000)
ACCOUNTS = (1_000, 3_000, 10_000, 30_000, 100_000)
QUERIES_PER_ACCOUNT = 10
FILL_BATCH = 2_048
DIM = 384


def clustered_rows(n: int, seed: int) -> np.ndarray:
    """Unit rows around 64 centres: like real traffic, not uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, DIM))
    x = centres[rng.integers(0, 64, size=n)] + 0.6 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def median_ms(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def history_point(history: int, repeats: int) -> dict:
    """Lone-query and 64-batch cost for one account holding ``history`` earlier queries."""
    engine = pw.Engine(device="cpu", history_cap=max(history + 8192, 1024))
    rows = clustered_rows(history + 64 * (repeats + 8) + repeats + 8, seed=history)
    for start in range(0, history, 8192):
        chunk = rows[start : min(start + 8192, history)]
        engine.observe_embeddings(["big"] * len(chunk), chunk)
    fresh = iter(rows[history:])
    for _ in range(5):  # warm-up
        engine.observe_embeddings(["big"], next(fresh)[None, :])
    lone = median_ms(lambda: engine.observe_embeddings(["big"], next(fresh)[None, :]), repeats)
    rest = rows[history + repeats + 5 :]
    batches = iter(rest[i : i + 64] for i in range(0, len(rest) - 64, 64))
    batched = median_ms(lambda: engine.observe_embeddings(["big"] * 64, next(batches)), max(3, repeats // 8)) / 64
    return {"history": history, "lone_ms": lone, "batched_ms_per_query": batched}


def history_curve(histories: tuple[int, ...], repeats: int) -> list[dict]:
    rows_out = []
    for history in histories:
        point = history_point(history, repeats)
        rows_out.append(point)
        print(
            f"history {history:>7,}: lone {point['lone_ms']:.3f} ms, "
            f"batched {point['batched_ms_per_query']:.3f} ms/query",
            flush=True,
        )
        gc.collect()
    return rows_out


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def rss() -> int:
    """Resident bytes once freed transient buffers are handed back to the system (glibc keeps
    them in its heap otherwise, which is not memory the engine holds)."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    return psutil.Process().memory_info().rss


def accounts_curve(counts: tuple[int, ...], repeats: int) -> list[dict]:
    """One engine grown through ``counts`` resident accounts (QUERIES_PER_ACCOUNT each)."""
    engine = pw.Engine(device="cpu", memory_budget_bytes=64 * 1024**3)
    rng = np.random.default_rng(0)
    pool = clustered_rows(65_536, seed=1)
    engine.observe_embeddings(["warm-up"] * 64, pool[:64])
    engine.forget("warm-up")
    base = rss()
    held = 0
    out = []
    for target in counts:
        ids = np.repeat(np.arange(held, target), QUERIES_PER_ACCOUNT)
        rng.shuffle(ids)
        for start in range(0, ids.size, FILL_BATCH):
            chunk = ids[start : start + FILL_BATCH]
            vectors = pool[rng.integers(0, pool.shape[0], size=chunk.size)]
            engine.observe_embeddings([f"acct-{i}" for i in chunk.tolist()], vectors)
        held = target

        def batch_of_256(held=held):
            chosen = rng.integers(0, held, size=256)
            engine.observe_embeddings([f"acct-{i}" for i in chosen.tolist()], pool[rng.integers(0, pool.shape[0], 256)])

        per_query = median_ms(batch_of_256, repeats) / 256
        stats = engine.stats()
        grown = rss() - base
        out.append(
            {
                "accounts": held,
                "ms_per_query": per_query,
                "rss_bytes_per_account": grown / held,
                "accounted_bytes_per_account": stats.bytes_held / held,
                "evicted": stats.evicted,
            }
        )
        print(
            f"accounts {held:>7,}: {per_query:.3f} ms/query, {grown / held / 1024:.1f} KiB RSS per account "
            f"({stats.bytes_held / held / 1024:.1f} KiB accounted), {stats.evicted} evicted",
            flush=True,
        )
    return out


def write_report(history_rows: list[dict], account_rows: list[dict], out_dir: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    h = [r["history"] for r in history_rows]
    axes[0].plot(h, [r["lone_ms"] for r in history_rows], "o-", label="lone query")
    axes[0].plot(h, [r["batched_ms_per_query"] for r in history_rows], "s-", label="64-query batch, per query")
    axes[0].set(xscale="log", yscale="log", xlabel="history length (queries)", ylabel="ms per query")
    axes[0].set_title("detection cost vs history")
    a = [r["accounts"] for r in account_rows]
    axes[1].plot(a, [r["ms_per_query"] for r in account_rows], "o-")
    axes[1].set(xscale="log", xlabel="resident accounts", ylabel="ms per query (256-query batch)")
    axes[1].set_title("detection cost vs resident accounts")
    axes[2].plot(a, [r["rss_bytes_per_account"] / 1024 for r in account_rows], "o-", label="RSS")
    axes[2].plot(a, [r["accounted_bytes_per_account"] / 1024 for r in account_rows], "s--", label="accounted")
    axes[2].set(xscale="log", xlabel="resident accounts", ylabel=f"KiB per account ({QUERIES_PER_ACCOUNT} queries)")
    axes[2].set_title("memory per account")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[1:]:
        ax.set_ylim(bottom=0)
    axes[0].legend()
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out_dir / "scaling.png", dpi=110)
    plt.close(fig)

    lines = [
        "# Scaling: detection cost and memory against work",
        "",
        f"Written by `{command}` on {platform.processor() or platform.machine()}, "
        f"{psutil.cpu_count()} CPUs, probewatch {pw.__version__}. Precomputed clustered unit vectors "
        "(the embedding model is out of it); medians of repeated calls in one process. The timed "
        "batches also grow the accounts (at 1k accounts each gains ~15 queries while being timed); "
        "on a shared machine the timings move by tens of percent between runs.",
        "",
        "![scaling curves](scaling.png)",
        "",
        "## Detection cost against one account's history length",
        "",
        "| history | lone query (ms) | 64-query batch (ms/query) |",
        "|---:|---:|---:|",
        *[f"| {r['history']:,} | {r['lone_ms']:.3f} | {r['batched_ms_per_query']:.3f} |" for r in history_rows],
        "",
        f"## Resident accounts ({QUERIES_PER_ACCOUNT} queries each, memory budget on at 64 GiB)",
        "",
        "| accounts | ms/query (256-query batch, random accounts) | RSS per account (KiB) | accounted (KiB) | evicted |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {r['accounts']:,} | {r['ms_per_query']:.3f} | {r['rss_bytes_per_account'] / 1024:.1f} | "
            f"{r['accounted_bytes_per_account'] / 1024:.1f} | {r['evicted']} |"
            for r in account_rows
        ],
        "",
    ]
    (out_dir / "scaling.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out_dir / 'scaling.md'} and {out_dir / 'scaling.png'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="histories to 10k and accounts to 10k")
    parser.add_argument("--max-accounts", type=int, default=None, help="stop the accounts curve here")
    parser.add_argument("--repeats", type=int, default=60, help="timed calls per point (median reported)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder for scaling.md and scaling.png")
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error(f"--repeats must be >= 3; got {args.repeats}")
    histories = tuple(h for h in HISTORIES if not args.quick or h <= 10_000)
    limit = args.max_accounts or (10_000 if args.quick else ACCOUNTS[-1])
    counts = tuple(c for c in ACCOUNTS if c <= limit)
    if not counts:
        parser.error(f"--max-accounts must be >= {ACCOUNTS[0]}; got {args.max_accounts}")
    command = "python -m bench.scaling" + (" --quick" if args.quick else "")
    if args.max_accounts:
        command += f" --max-accounts {args.max_accounts}"
    write_report(history_curve(histories, args.repeats), accounts_curve(counts, args.repeats), args.out, command)


if __name__ == "__main__":
    main()
