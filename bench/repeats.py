"""Prompts sent again: monitors, retrying users, and extraction padded with one harmless prompt.

Since 0.18.0 a prompt its account sent before, character for character, is not judged anew
(``Verdict.repeat``). Three kinds of traffic that send prompts again, each
account new to the shipped calibration (``Engine()``, campaign layer off), one query per call:

* **monitors**: ``--accounts`` accounts, each sending one health-check prompt ``--sends``
  times (an uptime probe, a smoke test after each deploy, a load test's fixed request);
* **retrying users**: ordinary ShareGPT users (test half) who send each prompt again 0-3
  times, as a client retries a timeout or a person presses "regenerate"; the same users
  without the retries beside them;
* **padded extraction**: extraction accounts (``--attackers`` per strategy, 120 queries) that
  send one harmless prompt again after each query, and the same accounts unpadded.

Each cell: % of accounts flagged / % at watch or flag at the end. Run it on an older
version (``PYTHONPATH`` at a checkout of 0.17.4) for the before column: it uses nothing newer.

    python -m bench.repeats [--accounts 30] [--sends 200] [--attackers 10] [--seed 3]
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from bench.traffic import attacks, sources
from probewatch.cli.args import at_least
from probewatch.detect.boilerplate import read_texts

MONITOR_PROMPTS = (
    "Say OK.",
    "ping",
    "Reply with the single word: pong",
    "Health check. Respond with 'healthy'.",
    "What is 2+2? Answer with a number only.",
    'Return the JSON {"status": "ok"} and nothing else.',
    "Write one sentence about the weather.",
    "This is a test. Please reply 'received'.",
    "hello",
    "Translate 'good morning' to French.",
)
PADDING = ("thanks!", "ok, next", "continue", "Please go on.")
STRATEGIES = ("cot_elicitation", "template_sweep", "random_words", "corpus_sentences")
ATTACK_QUERIES = 120


def flagged_share(accounts: list[list[str]], vectors_of) -> tuple[float, float]:
    """(flag share, watch-or-flag share) of ``accounts`` (each a list of prompts), each new."""
    import probewatch as pw

    engine = pw.Engine(device="cpu", campaigns=False, population_update_every=0)
    flagged = watched = 0
    for i, prompts in enumerate(accounts):
        account, level = f"acct-{i}", "ok"
        vectors = vectors_of(prompts)
        for k, prompt in enumerate(prompts):
            level = engine.observe_embeddings([account], vectors[k : k + 1], prompts=[prompt])[0].level.value
        flagged += level == "flag"
        watched += level in ("watch", "flag")
        engine.forget(account)
    return flagged / len(accounts), watched / len(accounts)


def share_cells(groups: Iterable[list[list[str]]]) -> Callable[[list[list[str]]], str]:
    """Embed every text of ``groups`` (groups of accounts, each a list of prompts) once, as the
    engine reads them (``boilerplate.read_texts``; through the benchmark's cache), and return what
    reads one of those groups as a table cell: "% flag / % watch or flag" (``flagged_share``)."""
    import probewatch as pw
    from bench.embedcache import EmbeddingCache

    ordered = sorted({t for accounts in groups for prompts in accounts for t in read_texts(prompts)})
    print(f"embedding {len(ordered)} distinct texts ...", flush=True)
    vectors = np.asarray(EmbeddingCache(pw.Embedder(device="cpu")).embed(ordered), dtype=np.float32)
    rows = {t: i for i, t in enumerate(ordered)}

    def cell(accounts: list[list[str]]) -> str:
        flag, watch = flagged_share(accounts, lambda prompts: vectors[[rows[t] for t in read_texts(prompts)]])
        return f"{100 * flag:.0f} / {100 * watch:.0f}"

    return cell


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=at_least(1), default=30, help="monitors, and retrying users")
    parser.add_argument("--sends", type=at_least(2), default=200, help="sends of each monitor's prompt")
    parser.add_argument("--attackers", type=at_least(1), default=10, help="extraction accounts per strategy")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    import probewatch as pw

    rng = random.Random(args.seed)
    monitors = [[MONITOR_PROMPTS[i % len(MONITOR_PROMPTS)]] * args.sends for i in range(args.accounts)]
    units = [u for u in sources.split_units(sources.sharegpt())["test"] if len(u.texts) >= 6]
    users = []
    for unit in rng.sample(units, min(args.accounts, len(units))):
        users.append([t for t in unit.texts for _ in range(1 + min(3, int(rng.expovariate(1.2))))])
    plain_users = [list(dict.fromkeys(u)) for u in users]
    pools = attacks.build_attack_pools(rng, 60 * args.attackers, 0)
    extraction = {
        s: [[t for t, _ in attacks.queries(s, rng, pools, ATTACK_QUERIES)] for _ in range(args.attackers)]
        for s in STRATEGIES
    }
    padded = {
        s: [[p for q in queries for p in (q, PADDING[i % len(PADDING)])] for i, queries in enumerate(accounts)]
        for s, accounts in extraction.items()
    }
    harmless = [t for u in units[: 4 * args.accounts] for t in u.texts if 10 <= len(t) <= 120]
    rotated = {  # 50 harmless prompts of ordinary chat users, sent again in turn
        s: [
            [p for k, q in enumerate(queries) for p in (q, harmless[(50 * i + k % 50) % len(harmless)])]
            for i, queries in enumerate(accounts)
        ]
        for s, accounts in extraction.items()
    }
    numbered = {  # near copies instead: the harmless prompt with a counter, never the same text twice
        s: [
            [p for k, q in enumerate(queries) for p in (q, f"{PADDING[i % len(PADDING)]} ({k + 1})")]
            for i, queries in enumerate(accounts)
        ]
        for s, accounts in extraction.items()
    }

    cell = share_cells(
        [monitors, users, *(accounts for group in (padded, rotated, numbered) for accounts in group.values())]
    )

    print(f"\nprobewatch {pw.__version__}, shipped calibration; % flag / % watch or flag")
    print(
        "\n| traffic | accounts | as sent | without the repeats | near copies instead of repeats | 50 harmless prompts in turn |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    print(
        f"| monitors ({args.sends} sends of one prompt) | {len(monitors)} | {cell(monitors)} | 0 / 0 (one query) | | |"
    )
    repeats = sum(len(u) for u in users) - sum(len(u) for u in plain_users)
    print(
        f"| retrying users ({repeats} retries in {sum(len(u) for u in users)} prompts) | {len(users)} "
        f"| {cell(users)} | {cell(plain_users)} | | |"
    )
    for strategy in STRATEGIES:
        print(
            f"| {strategy}, a harmless prompt after each query | {args.attackers} | {cell(padded[strategy])} "
            f"| {cell(extraction[strategy])} | {cell(numbered[strategy])} | {cell(rotated[strategy])} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
