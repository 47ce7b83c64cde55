"""Detection on traffic the calibration never saw: unseen apps, learning the provider's normal, poisoning.

Three measurements over the benign populations of ``bench/traffic/populations.py`` (every
population has its own accounts; calibration and test halves share no source unit):

0. **The shipped calibration** (``engine/data/default_calibration.npz``, what ``Engine()``
   loads) on each population's test-half accounts.
1. **Leave one population out.** For each population P, probewatch is calibrated on every
   *other* population's calibration accounts and P's accounts (both halves: none was seen) are
   streamed as fresh accounts: P's false-positive rate as an *unseen app*, out of the box.
2. **After warm-up.** The same P-less calibration, with the provider's normal learned
   (:mod:`probewatch.detect.learning`, its default rules) from a warm-up: P's calibration-half
   accounts plus a sample of every other population's test accounts, interleaved in time
   order as a provider would see them. P's test-half accounts are then scored fresh.
3. **Poisoning.** The full calibration learns from a warm-up that includes patient attackers:
   each starts as an ordinary chat user and then runs one extraction strategy (the very query
   streams later scored). The pure and mixed scenarios' TPR is measured before and after, and
   after the same warm-up without the attackers (the control).

Thresholds are probewatch's own ``flag`` (0.1 %) and ``watch`` (1 %) from the calibration;
learning never moves them. The campaign layer is off here (accounts are judged alone).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bench.traffic import AccountStream

# Learning rules as the sidecar ships them (probewatch.config defaults) except the schedule:
# the benchmark refits once, at the end of the warm-up, so the scored accounts never teach.
NEVER = 10**12
WARM_UP_OTHERS_PER_POPULATION = 8  # other populations' test accounts in each warm-up
POISONERS_PER_STRATEGY = 10
POISON_BENIGN_QUERIES = (40, 120)  # the patient phase: ordinary chat before extraction
# Queries per observe_embeddings call: one account's chunk gives the same verdicts as
# one-at-a-time calls (to float32 rounding), and larger calls amortise the per-call
# overhead (~20 % faster than 64 on 2,000-query accounts).
SCORE_CHUNK = 256


def embedded_benchmark(size: str, seed: int):
    """(embedder, traffic, embedded traffic) as ``bench.eval --calibration both`` builds them:
    the generator's traffic with the populations merged in, every prompt embedded once (cached)."""
    import probewatch as pw
    from bench.embedcache import EmbeddingCache
    from bench.eval import embed_traffic, with_populations
    from bench.traffic import build_traffic
    from bench.traffic.populations import build_populations

    embedder = pw.Embedder(device="cpu")
    cache = EmbeddingCache(embedder)
    traffic = with_populations(build_traffic(size, seed, embed=cache.embed), build_populations(size, seed))
    return embedder, traffic, embed_traffic(traffic, cache, show_progress=False)


def calibrated_engine(
    streams: Sequence[AccountStream],
    vectors_of: Callable[[AccountStream], np.ndarray],
    embedder,
    seed: int,
    target_fpr: float,
    watch_fpr: float,
    source: str,
    **config,
):
    """probewatch calibrated from scratch on benign ``streams`` (each account's queries in
    time order), learning off: the live (test) accounts must never shape the tables."""
    import probewatch as pw

    return pw.Engine.from_benign_embeddings(
        [s.account for s in streams for _ in s.prompts],
        np.concatenate([vectors_of(s) for s in streams]),
        [t for s in streams for t in s.ts],
        prompts=[p for s in streams for p in s.prompts],
        device="cpu",
        embedder=embedder,
        seed=seed,
        target_fpr=target_fpr,
        watch_fpr=watch_fpr,
        population_update_every=0,
        source=source,
        **config,
    )


@dataclass
class EngineFactory:
    """Fits and builds probewatch engines over one embedded corpus."""

    vectors_of: Callable[[AccountStream], np.ndarray]
    embedder: object
    seed: int
    target_fpr: float
    watch_fpr: float

    def fit(self, streams: Sequence[AccountStream], source: str):
        return calibrated_engine(
            streams, self.vectors_of, self.embedder, self.seed, self.target_fpr, self.watch_fpr, source, campaigns=False
        ).pipeline.benign

    def engine(self, benign, learn: bool):
        import probewatch as pw

        return pw.Engine(
            embedder=self.embedder,
            benign=benign,
            device="cpu",
            seed=self.seed,
            target_fpr=self.target_fpr,
            watch_fpr=self.watch_fpr,
            campaigns=False,
            population_update_every=NEVER if learn else 0,
        )


def verdicts_as_new_account(engine, stream: AccountStream, vectors: np.ndarray, account: str) -> list:
    """Every verdict of ``stream`` observed as ``account`` (never seen before), in chunks of
    one account, which give the same verdicts as one-at-a-time calls; forgotten after."""
    verdicts = []
    for start in range(0, len(stream), SCORE_CHUNK):
        stop = min(start + SCORE_CHUNK, len(stream))
        verdicts += engine.observe_embeddings(
            [account] * (stop - start), vectors[start:stop], stream.ts[start:stop], prompts=stream.prompts[start:stop]
        )
    engine.forget(account)
    return verdicts


def levels_of(engine, streams: Sequence[AccountStream], vectors_of, prefix: str) -> list[str]:
    """Each stream as a new account (forgotten after, so none teaches): its sticky level at the end."""
    return [
        verdicts_as_new_account(engine, stream, vectors_of(stream), f"{prefix}-{i}")[-1].level.value
        for i, stream in enumerate(streams)
    ]


def rates(levels: Sequence[str]) -> dict[str, float | int]:
    n = len(levels)
    return {
        "accounts": n,
        "flag": sum(v == "flag" for v in levels) / n if n else float("nan"),
        "watch": sum(v in ("watch", "flag") for v in levels) / n if n else float("nan"),
    }


def warm_up(engine, streams: Sequence[AccountStream], vectors_of, prefix: str, batch: int = 256) -> dict:
    """Feed ``streams`` interleaved in time order as live accounts, then learn once."""
    events = sorted(
        (t, k, i) for k, s in enumerate(streams) for i, t in enumerate(s.ts)
    )  # (time, stream, query): each account's order kept
    rows = [vectors_of(s) for s in streams]
    for start in range(0, len(events), batch):
        part = events[start : start + batch]
        engine.observe_embeddings(
            [f"{prefix}-{k}" for _, k, _ in part],
            np.stack([rows[k][i] for _, k, i in part]),
            [t for t, _, _ in part],
        )
    learned = engine.pipeline.learn_normal()
    return {"learned": learned, **engine.pipeline.population.last_refit}


def _sample(rng: random.Random, streams: Sequence[AccountStream], k: int) -> list[AccountStream]:
    return list(streams) if len(streams) <= k else rng.sample(list(streams), k)


def leave_one_population_out(
    factory: EngineFactory,
    calibration: dict[str, list[AccountStream]],
    test: dict[str, list[AccountStream]],
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """One row per population: its FPR as an unseen app, before and after warm-up."""
    from probewatch.engine import DEFAULT_CALIBRATION_PATH
    from probewatch.io.persistence import read_calibration

    shipped = factory.engine(read_calibration(DEFAULT_CALIBRATION_PATH), learn=False)
    rows = []
    for held_out in calibration:
        if progress is not None:
            progress(held_out)
        others = [s for name, streams in calibration.items() if name != held_out for s in streams]
        benign = factory.fit(others, f"bench.unseen: every population but {held_out}")
        unseen = list(calibration[held_out]) + list(test[held_out])
        plain = factory.engine(benign, learn=False)
        before = levels_of(plain, unseen, factory.vectors_of, "unseen")
        rng = random.Random(f"{seed}:warm-up:{held_out}")
        crowd = [
            s
            for name, streams in test.items()
            if name != held_out
            for s in _sample(rng, streams, WARM_UP_OTHERS_PER_POPULATION)
        ]
        learner = factory.engine(benign, learn=True)
        learned = warm_up(learner, list(calibration[held_out]) + crowd, factory.vectors_of, "warm")
        after_before = levels_of(plain, test[held_out], factory.vectors_of, "t0")
        after = levels_of(learner, test[held_out], factory.vectors_of, "t1")
        rows.append(
            {
                "population": held_out,
                "shipped_calibration_test_half": rates(
                    levels_of(shipped, test[held_out], factory.vectors_of, "shipped")
                ),
                "unseen": rates(before),
                "test_half_before": rates(after_before),
                "test_half_after_warm_up": rates(after),
                "warm_up": learned,
            }
        )
    return rows


def poisoned_stream(rng: random.Random, benign: AccountStream, attack: AccountStream, account: str) -> AccountStream:
    """A patient attacker: ``benign``'s first queries (ordinary chat), then ``attack``'s queries
    starting an hour after, with their own gaps."""
    k = min(len(benign), rng.randint(*POISON_BENIGN_QUERIES))
    shift = benign.ts[k - 1] + 3600.0 - attack.ts[0]
    return AccountStream(
        account=account,
        label=1,
        kind=f"poisoner:{attack.kind}",
        prompts=list(benign.prompts[:k]) + list(attack.prompts),
        ts=list(benign.ts[:k]) + [t + shift for t in attack.ts],
        is_attack=[False] * k + [True] * len(attack),
        campaign=None,
        source_groups=benign.source_groups | attack.source_groups,
    )


def poisoning(
    factory: EngineFactory,
    calibration: dict[str, list[AccountStream]],
    test: dict[str, list[AccountStream]],
    chat_users: Sequence[AccountStream],
    attacks: dict[str, list[AccountStream]],
    seed: int,
) -> dict:
    """TPR per attack scenario before and after a warm-up that patient attackers took part in;
    and the benign FPR of the populations' test accounts not in the warm-up, before and after."""
    rng = random.Random(f"{seed}:poisoning")
    benign = factory.fit([s for streams in calibration.values() for s in streams], "bench.unseen: every population")
    warm, held = [], []
    for streams in test.values():
        order = rng.sample(list(streams), len(streams))
        warm += order[: len(order) // 2]
        held += order[len(order) // 2 :]
    # the patient phase needs long ordinary users; quick traffic has few, so take the longest
    users = [s for s in chat_users if len(s) >= POISON_BENIGN_QUERIES[0]]
    users = users or sorted(chat_users, key=len)[-max(1, len(chat_users) // 2) :]
    poisoners = []
    for scenario, streams in attacks.items():
        for i, attack in enumerate(streams[:POISONERS_PER_STRATEGY]):
            poisoners.append(poisoned_stream(rng, rng.choice(users), attack, f"poison-{scenario}-{i}"))
    plain = factory.engine(benign, learn=False)
    # the control: the same warm-up without the attackers, so what learning itself moves is
    # told apart from what the attackers moved
    clean = factory.engine(benign, learn=True)
    warm_up(clean, warm, factory.vectors_of, "warm")
    learner = factory.engine(benign, learn=True)
    learned = warm_up(learner, warm + poisoners, factory.vectors_of, "warm")
    caught_in_warm_up = sum(
        learner.pipeline.states[f"warm-{len(warm) + j}"].level.value in ("watch", "flag")
        for j in range(len(poisoners))
        if f"warm-{len(warm) + j}" in learner.pipeline.states
    )
    rows = {}
    for scenario, streams in attacks.items():
        rows[scenario] = {
            "accounts": len(streams),
            "before": rates(levels_of(plain, streams, factory.vectors_of, "a0")),
            "after_clean_warm_up": rates(levels_of(clean, streams, factory.vectors_of, "a2")),
            "after": rates(levels_of(learner, streams, factory.vectors_of, "a1")),
        }
    return {
        "warm_up": {
            **learned,
            "benign_accounts": len(warm),
            "poisoners": len(poisoners),
            "poisoners_reaching_watch": caught_in_warm_up,
        },
        "attacks": rows,
        "benign_before": rates(levels_of(plain, held, factory.vectors_of, "b0")),
        "benign_after_clean_warm_up": rates(levels_of(clean, held, factory.vectors_of, "b2")),
        "benign_after": rates(levels_of(learner, held, factory.vectors_of, "b1")),
    }
