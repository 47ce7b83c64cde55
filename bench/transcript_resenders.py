"""Benign apps that send the whole conversation so far with every request.

A completion endpoint, a chat history pasted into one message, an agent's growing scratchpad:
each prompt repeats the last one and adds a turn. In embedding space each is a small step
from the one before and a little further from the first turn, which is what a perturbation
chain looks like. probewatch tells them apart by the text (``FeatureStream.step``: a prompt
that continues one of its account's recent prompts is never a walk-away step, and only a
prompt known not to can be a deep-path step); with vectors alone it cannot.

Each account is 3-6 real ShareGPT conversations (test half, 6+ user turns, at most 16), each
sent as its growing transcript (turn 1; turns 1-2; ...). Every account is scored as a new
account by the shipped calibration (``Engine()``, campaign layer off), once with vectors only
and once with its prompts:

    python -m bench.transcript_resenders [--accounts 40] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from collections.abc import Sequence

import numpy as np

from bench.traffic import sources
from probewatch.cli.args import at_least
from probewatch.detect.boilerplate import read_texts


def transcript_accounts(n_accounts: int, seed: int) -> list[list[str]]:
    """``n_accounts`` accounts, each 3-6 conversations sent as growing transcripts."""
    conversations = [u for u in sources.split_units(sources.sharegpt())["test"] if len(u.texts) >= 6]
    rng = random.Random(seed)
    accounts = []
    for _ in range(n_accounts):
        prompts: list[str] = []
        for unit in rng.sample(conversations, rng.randint(3, 6)):
            turns = list(unit.texts[:16])
            prompts += ["\n\n".join(turns[:t]) for t in range(1, len(turns) + 1)]
        accounts.append(prompts)
    return accounts


def score(accounts: list[list[str]], vectors_of, with_prompts: bool) -> dict:
    """Each account as a new account of ``Engine()``: its final level and, where not ``ok``,
    the first reason at its highest score."""
    import probewatch as pw

    engine = pw.Engine(device="cpu", campaigns=False, population_update_every=0)
    levels: Counter = Counter()
    reasons: Counter = Counter()
    for i, prompts in enumerate(accounts):
        verdicts = engine.observe_embeddings(
            [f"transcript-{i}"] * len(prompts), vectors_of(prompts), prompts=prompts if with_prompts else None
        )
        level = verdicts[-1].level.value
        levels[level] += 1
        if level != "ok":
            peak = max(verdicts, key=lambda v: v.score)
            reasons[peak.reasons[0].feature if peak.reasons else "-"] += 1
        engine.forget(f"transcript-{i}")
    return {"levels": dict(levels), "reasons": dict(reasons)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=at_least(1), default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    import probewatch as pw
    from bench.embedcache import EmbeddingCache

    accounts = transcript_accounts(args.accounts, args.seed)
    cache = EmbeddingCache(pw.Embedder(device="cpu"))
    texts = sorted({t for prompts in accounts for t in read_texts(prompts)})  # as the engine reads them
    rows = {t: i for i, t in enumerate(texts)}
    vectors = np.asarray(cache.embed(texts), dtype=np.float32)

    def vectors_of(prompts: list[str]) -> np.ndarray:
        return vectors[[rows[t] for t in read_texts(prompts)]]

    queries = [len(p) for p in accounts]
    print(f"{len(accounts)} accounts, {sum(queries)} prompts (median {int(np.median(queries))} per account)")
    for with_prompts in (False, True):
        result = score(accounts, vectors_of, with_prompts)
        n = len(accounts)
        flagged, watched = result["levels"].get("flag", 0), result["levels"].get("watch", 0)
        print(
            f"{'with prompts' if with_prompts else 'vectors only':13s} flag {flagged}/{n} ({100 * flagged / n:.1f} %), "
            f"watch {watched}/{n}; top reasons {result['reasons']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
