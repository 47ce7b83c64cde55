"""How detection cost and memory grow with work: writes docs/benchmark/scaling.md and scaling.png.

    python -m bench.scaling                 # all three parts (~12 min on 2 cores)
    python -m bench.scaling --quick         # histories 100 -> 10k, accounts 1k -> 10k, then the sidecar
    python -m bench.scaling --no-sidecar    # the detection curves only (keeps the sidecar section)
    python -m bench.scaling --sidecar-only  # the sidecar ladder only (keeps the detection sections)

The detection curves run on precomputed clustered unit vectors (the embedding model is out of it):

* detection ms/query against one account's history length, for a lone query and for a
  64-query batch of that account, with the default float16 storage and with int8;
* ms/query of a 256-query batch from random resident accounts, against how many accounts are
  resident, and resident memory (RSS) per account, with the memory budget on (raised so that
  nothing is evicted: the point is what holding the accounts costs).

The sidecar section is the whole service with its model: a real ``probewatch serve`` offered
open-loop Poisson load at a ladder of rates, p50/p99 against offered load (bench.sidecar_latency),
drawn in sidecar_latency.png.

Timings are medians of repeated calls in one process; on a shared machine run it when quiet.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import gc
import importlib.util
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import psutil

import probewatch as pw
from bench import sidecar_latency

OUT_DIR = Path(__file__).resolve().parent.parent / "docs" / "benchmark"
HISTORIES = (100, 1_000, 10_000, 100_000)
HISTORY_STORAGES = ("float16", "int8")  # the default, and the one that halves memory and the scan
ACCOUNTS = (1_000, 3_000, 10_000, 30_000, 100_000)
QUERIES_PER_ACCOUNT = 10
FILL_BATCH = 2_048
DIM = 384
SIDECAR_HEADING = "## Sidecar latency against offered load"


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


def history_point(history: int, repeats: int, storage: str = "float16") -> dict:
    """Lone-query and 64-batch cost for one account holding ``history`` earlier queries."""
    engine = pw.Engine(device="cpu", history_cap=max(history + 8192, 1024), storage=storage)
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
    return {"history": history, "storage": storage, "lone_ms": lone, "batched_ms_per_query": batched}


def history_curve(histories: tuple[int, ...], repeats: int) -> list[dict]:
    """One row per history length, with the default float16 storage's costs and int8's."""
    rows_out = []
    for history in histories:
        row = {"history": history}
        for storage in HISTORY_STORAGES:
            point = history_point(history, repeats, storage)
            row[f"lone_ms_{storage}"] = point["lone_ms"]
            row[f"batched_ms_per_query_{storage}"] = point["batched_ms_per_query"]
            print(
                f"history {history:>7,} ({storage}): lone {point['lone_ms']:.3f} ms, "
                f"batched {point['batched_ms_per_query']:.3f} ms/query",
                flush=True,
            )
            gc.collect()
        rows_out.append(row)
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


def million_note(account_rows: list[dict]) -> str:
    """What the measured accounts curve says about 1M resident accounts (an extrapolation)."""
    last = account_rows[-1]
    kib = last["rss_bytes_per_account"] / 1024
    need_gib = kib * 1_000_000 / 1024**2
    have_gib = psutil.virtual_memory().total / 1024**3
    first = account_rows[0]
    falling = last["rss_bytes_per_account"] <= first["rss_bytes_per_account"]
    trend = (
        "memory per account fell as fixed costs spread; that trend, not a measurement, says 1M would cost "
        f"about the same per query and at most ~{kib:.0f} KiB each"
        if falling
        else f"memory per account rose from {first['rss_bytes_per_account'] / 1024:.0f} KiB, so 1M may need more"
    )
    return (
        f"The curve stops at {last['accounts']:,} accounts: at ~{kib:.0f} KiB of RSS each, 1M resident accounts "
        f"need about {need_gib:.0f} GiB (this machine has {have_gib:.0f} GiB). From {first['accounts']:,} to "
        f"{last['accounts']:,} accounts the cost per query went from {first['ms_per_query']:.3f} to "
        f"{last['ms_per_query']:.3f} ms and {trend}."
    )


def write_report(history_rows: list[dict], account_rows: list[dict], out_dir: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    h = [r["history"] for r in history_rows]
    for storage, style in zip(HISTORY_STORAGES, ("-", "--"), strict=True):
        axes[0].plot(h, [r[f"lone_ms_{storage}"] for r in history_rows], "o" + style, label=f"lone query, {storage}")
        axes[0].plot(
            h,
            [r[f"batched_ms_per_query_{storage}"] for r in history_rows],
            "s" + style,
            label=f"64-query batch, {storage}",
        )
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
        'Stored as float16 (the default) and as int8 (`storage="int8"`: half the bytes, scanned as signed '
        "8-bit codes with integer products).",
        "",
        "| history | lone query, float16 (ms) | lone query, int8 (ms) | 64-query batch, float16 (ms/query) "
        "| 64-query batch, int8 (ms/query) |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {r['history']:,} | {r['lone_ms_float16']:.3f} | {r['lone_ms_int8']:.3f} "
            f"| {r['batched_ms_per_query_float16']:.3f} | {r['batched_ms_per_query_int8']:.3f} |"
            for r in history_rows
        ],
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
        million_note(account_rows),
        "",
    ]
    (out_dir / "scaling.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out_dir / 'scaling.md'} and {out_dir / 'scaling.png'}")


def sidecar_section_of(report: Path) -> str:
    """The sidecar section of an existing scaling.md ("" when none): a partial rerun keeps it."""
    text = report.read_text(encoding="utf-8") if report.exists() else ""
    start = text.find(SIDECAR_HEADING)
    return text[start:] if start >= 0 else ""


def put_sidecar_section(report: Path, section: str) -> None:
    """Replace (or add) the sidecar section, always the last one of scaling.md."""
    text = (
        report.read_text(encoding="utf-8") if report.exists() else "# Scaling: detection cost and memory against work\n"
    )
    start = text.find(SIDECAR_HEADING)
    head = (text[:start] if start >= 0 else text).rstrip("\n") + "\n"
    report.write_text(head + ("\n" + section.rstrip("\n") + "\n" if section else ""), encoding="utf-8")


def write_sidecar_plot(points: list[sidecar_latency.LatencyPoint], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    sidecar_latency.plot_latency(axes[0], points)
    offered = [p.offered_per_s for p in points]
    axes[1].plot(offered, offered, "k--", alpha=0.4, label="achieved = offered")
    axes[1].plot(offered, [p.achieved_per_s for p in points], "o-", label="achieved (verdicts/s)")
    axes[1].set(xlabel="offered load (requests/s)", ylabel="requests/s")
    axes[1].set_title("throughput against offered load")
    axes[1].grid(True, alpha=0.3)
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out_dir / "sidecar_latency.png", dpi=110)
    plt.close(fig)


def sidecar_section(
    points: list[sidecar_latency.LatencyPoint],
    command: str,
    load_before: tuple,
    load_after: tuple,
    args: argparse.Namespace,
) -> str:
    openvino = "installed" if importlib.util.find_spec("openvino") else "not installed, so torch"
    lines = [
        SIDECAR_HEADING,
        "",
        f"Written by `{command}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{psutil.cpu_count()} CPUs shared by the sidecar and the load generator; load average (1 min) "
        f"{load_before[0]:.2f} before and {load_after[0]:.2f} at the end (which counts this run's sidecar and "
        "client too). Rerun this section alone with `python -m bench.scaling --sidecar-only`.",
        "",
        "A real `probewatch serve` on 127.0.0.1 (bundled all-MiniLM-L6-v2, `engine.embed_backend: auto`: "
        f"OpenVINO {openvino}; default repeat cache, micro-batcher, `journal_fsync: batch` and 2 s deadline) "
        f"is offered **open-loop** load: Poisson arrivals, one prompt per `POST /v1/observe`, each sent at its "
        f"scheduled time whatever earlier requests are doing, {args.sidecar_seconds:g} s per rate, from "
        f"{args.sidecar_accounts} accounts; prompts are the demo's, each made distinct by a request number "
        f"(exact-repeat share {args.sidecar_repeat_share:g}). Latency runs from the *scheduled* send time to "
        "the answer, for every answered request (verdicts, fallbacks and 429s alike), so neither a late "
        "client nor a backed-up queue hides (coordinated omission). Achieved counts verdicts only; "
        '"not observed" is everything else (failure-policy fallbacks by cause, 429s, transport errors, '
        "client timeouts at 10 s). From the sidecar's `/metrics`, over each rate: its fallback verdicts "
        "(the items of overload 429s count there too) and rate-limited requests, the mean micro-batch "
        "(items, and ms of journal write with its fsync plus embedding and detection) and an item's mean "
        "wait for its batch to start (the batcher's wait for company, at most `max_wait_ms` = 5 ms, plus "
        "any batch ahead of it). The client lag column is how late requests left the client: near zero "
        "means the load generator kept up.",
        "",
        "A closed-loop test (tests/serve/test_server_load.py: 8 clients, each waiting for its answer) cannot "
        "offer more than the sidecar answers and so never sees a queue; its numbers are not points of this curve.",
        "",
        "![sidecar latency against offered load](sidecar_latency.png)",
        "",
        *sidecar_latency.markdown_table(points),
        "",
    ]
    return "\n".join(lines)


def run_sidecar_part(args: argparse.Namespace, command: str) -> str:
    load_before = os.getloadavg()
    points = sidecar_latency.run_ladder(
        args.sidecar_rates, args.sidecar_seconds, args.sidecar_accounts, args.sidecar_repeat_share
    )
    load_after = os.getloadavg()
    write_sidecar_plot(points, args.out)
    return sidecar_section(points, command, load_before, load_after, args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="histories to 10k and accounts to 10k")
    parser.add_argument("--max-accounts", type=int, default=None, help="stop the accounts curve here")
    parser.add_argument("--repeats", type=int, default=60, help="timed calls per point (median reported)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder for scaling.md and the plots")
    part = parser.add_mutually_exclusive_group()
    part.add_argument("--no-sidecar", action="store_true", help="skip the sidecar latency ladder")
    part.add_argument("--sidecar-only", action="store_true", help="run only the sidecar latency ladder")
    sidecar_latency.add_arguments(parser, prefix="sidecar-")
    args = parser.parse_args(argv)
    sidecar_latency.check_arguments(parser, args.sidecar_seconds, args.sidecar_accounts, args.sidecar_repeat_share)
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
    report = args.out / "scaling.md"
    kept_sidecar = sidecar_section_of(report)
    if not args.sidecar_only:
        write_report(history_curve(histories, args.repeats), accounts_curve(counts, args.repeats), args.out, command)
    if args.no_sidecar:
        put_sidecar_section(report, kept_sidecar)
        return
    sidecar_command = ("python -m bench.scaling --sidecar-only" if args.sidecar_only else command) + sidecar_flags(args)
    put_sidecar_section(report, run_sidecar_part(args, sidecar_command))
    print(f"wrote the sidecar section of {report} and {args.out / 'sidecar_latency.png'}")


def sidecar_flags(args: argparse.Namespace) -> str:
    """The sidecar options that differ from their defaults, as typed on the command line."""
    flags = []
    if args.sidecar_rates != sidecar_latency.DEFAULT_RATES:
        flags.append("--sidecar-rates " + ",".join(f"{r:g}" for r in args.sidecar_rates))
    if args.sidecar_seconds != sidecar_latency.DEFAULT_SECONDS:
        flags.append(f"--sidecar-seconds {args.sidecar_seconds:g}")
    if args.sidecar_accounts != sidecar_latency.DEFAULT_ACCOUNTS:
        flags.append(f"--sidecar-accounts {args.sidecar_accounts}")
    if args.sidecar_repeat_share:
        flags.append(f"--sidecar-repeat-share {args.sidecar_repeat_share:g}")
    return "".join(f" {flag}" for flag in flags)


if __name__ == "__main__":
    main()
