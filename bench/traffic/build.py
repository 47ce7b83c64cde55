"""Assemble the benchmark traffic for one size and seed."""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from . import (
    attacks,
    benign,
    eighth_attacks,
    eleventh_attacks,
    fifth_attacks,
    fourteenth_attacks,
    fourth_attacks,
    heldout_attacks,
    ninth_attacks,
    seventh_attacks,
    sixth_attacks,
    tenth_attacks,
    third_attacks,
    thirteenth_attacks,
    twelfth_attacks,
)
from .edits import human_edit
from .model import AccountStream, Traffic
from .timing import script_times

HARD_BENIGN = (
    "benign:power_user",
    "benign:rag_app",
    "benign:translation_app",
    "benign:summarisation_app",
    "benign:support_bot",
    "benign:edit_resender",
)
MIXED_SHARES = {"mixed_5pct": 0.05, "mixed_10pct": 0.10, "mixed_25pct": 0.25}
# Blended accounts written a second time, as the blind check of per-account burst evidence:
# the held-out wordings (heldout_attacks.py) in bursts of 2-12 with the account's own
# queries sometimes falling between them; shorter and more varied benign bases. Committed
# before any detector ran on it.
HELDOUT_MIXED_SHARES = {"heldout_mixed_5pct": 0.05}
# Ordinary users as long-lived as the mixed accounts, built as their benign bases are: the
# accounts a blended attacker must be told apart from. Test pool only (never calibrated on).
LONG_BENIGN = "benign:long_chat"


@dataclass(frozen=True)
class SizeSpec:
    calibration_accounts: int
    test_accounts: int
    hard_share: tuple[float, float]  # (calibration, test) share of hard-benign accounts, even over classes
    normal_median: float  # heavy-tailed (log-normal) prompts per ordinary account
    normal_sigma: float
    normal_cap: int
    power_range: tuple[int, int]
    app_median: float  # log-normal prompts per app / edit-resender account
    app_sigma: float
    app_cap: int
    source_caps: dict[str, int]  # units per source per half (the unique-text budget)
    attack_accounts: int
    attack_queries: tuple[int, int]
    attack_pool: int
    kcenter_pool: int
    mixed_accounts: int
    mixed_base: tuple[int, int]
    long_accounts: int  # benign LONG_BENIGN test accounts, mixed_base queries each
    splits: dict[str, tuple[int, int]]  # scenario -> (accounts, queries per account)


SIZES = {
    "quick": SizeSpec(
        calibration_accounts=64,
        test_accounts=64,
        hard_share=(0.45, 0.5),
        normal_median=7,
        normal_sigma=0.8,
        normal_cap=30,
        power_range=(20, 40),
        app_median=10,
        app_sigma=0.5,
        app_cap=25,
        source_caps={
            "sharegpt": 40,
            "snips": 30,
            "fanoutqa": 15,
            "freshqa": 12,
            "writingbench": 5,
            "mind2web": 8,
            "roleprompt": 5,
            "bbc": 12,
            "lee": 4,
            "snips_support": 15,
            "writingbench_edits": 3,
            "multiwoz_per_domain": 5,
        },
        attack_accounts=3,
        attack_queries=(30, 50),
        attack_pool=64,
        kcenter_pool=100,
        mixed_accounts=3,
        mixed_base=(60, 100),
        long_accounts=3,
        splits={"split_10": (10, 30), "split_50": (50, 12), "split_200": (200, 6)},
    ),
    "default": SizeSpec(
        calibration_accounts=640,
        test_accounts=1050,
        hard_share=(0.2, 0.36),
        normal_median=12,
        normal_sigma=1.2,
        normal_cap=2000,
        power_range=(100, 500),
        app_median=25,
        app_sigma=0.9,
        app_cap=300,
        source_caps={
            "sharegpt": 1000,
            "snips": 700,
            "fanoutqa": 250,
            "freshqa": 150,
            "writingbench": 80,
            "mind2web": 60,
            "roleprompt": 120,
            "bbc": 250,
            "lee": 70,
            "snips_support": 400,
            "writingbench_edits": 40,
            "multiwoz_per_domain": 120,
        },
        attack_accounts=20,
        attack_queries=(100, 400),
        attack_pool=600,
        kcenter_pool=1200,
        mixed_accounts=10,
        mixed_base=(1000, 2000),
        long_accounts=30,
        splits={"split_10": (10, 300), "split_50": (50, 200), "split_200": (200, 150)},
    ),
}


def _rng(size: str, seed: int, purpose: str) -> random.Random:
    # one generator per purpose, so changing one part of the build leaves the others as they were
    return random.Random(f"probewatch-traffic/{size}/{seed}/{purpose}")


def _account_id(size: str, seed: int, section: str, index: int) -> str:
    # opaque: nothing in the id hints at the label
    return "acct-" + hashlib.sha256(f"{size}/{seed}/{section}/{index}".encode()).hexdigest()[:12]


def _lognormal_count(rng: random.Random, median: float, sigma: float, cap: int, floor: int = 2) -> int:
    return int(min(cap, max(floor, round(median * math.exp(rng.gauss(0, sigma))))))


def _benign_accounts(
    spec: SizeSpec, rng: random.Random, pools: benign.BenignPools, count: int, size: str, seed: int, section: str
) -> list[AccountStream]:
    share = spec.hard_share[0] if section == "calibration" else spec.hard_share[1]
    per_hard = max(1, round(count * share / len(HARD_BENIGN)))
    kinds = [k for k in HARD_BENIGN for _ in range(per_hard)]
    kinds = ["benign:normal"] * (count - len(kinds)) + kinds
    streams = []
    for index, kind in enumerate(kinds):
        account = _account_id(size, seed, section, index)
        if kind == "benign:normal":
            n = _lognormal_count(rng, spec.normal_median, spec.normal_sigma, spec.normal_cap)
            streams.append(benign.chat_user(rng, pools, account, n, n_interests=rng.choice([1, 2, 2, 3, 3])))
        elif kind == "benign:power_user":
            n = rng.randint(*spec.power_range)
            streams.append(benign.chat_user(rng, pools, account, n, n_interests=rng.randint(8, 16), kind=kind))
        else:
            n = _lognormal_count(rng, spec.app_median, spec.app_sigma, spec.app_cap, floor=5)
            if kind == "benign:rag_app":
                streams.append(benign.rag_app(rng, pools, account, n))
            elif kind in ("benign:translation_app", "benign:summarisation_app"):
                streams.append(benign.wrapper_app(rng, pools, account, n, kind))
            elif kind == "benign:support_bot":
                streams.append(benign.support_bot(rng, pools, account, n))
            else:
                streams.append(benign.edit_resender(rng, pools, account, n))
    return streams


def _attack_stream(
    account: str, kind: str, picked: list[tuple[str, str]], ts: list[float], campaign: str | None = None
) -> AccountStream:
    return AccountStream(
        account=account,
        label=1,
        kind=kind,
        prompts=[t for t, _ in picked],
        ts=ts,
        is_attack=[True] * len(picked),
        campaign=campaign,
        source_groups=frozenset(k for _, k in picked),
    )


def _mix(rng: random.Random, base: AccountStream, attack: list[tuple[str, str]], kind: str) -> AccountStream:
    """Insert attack queries into a benign stream as short scripted bursts at random times."""
    start, end = base.ts[0], base.ts[-1]
    events = [(t, p, False) for t, p in zip(base.ts, base.prompts, strict=True)]
    i = 0
    while i < len(attack):
        burst = attack[i : i + rng.randint(3, 20)]
        t = rng.uniform(start, end)
        for text, _ in burst:
            t += rng.uniform(0.5, 4.0)
            events.append((t, text, True))
        i += len(burst)
    events.sort(key=lambda e: e[0])
    return _blended(base, events, attack, kind)


def _blended(
    base: AccountStream, events: list[tuple[float, str, bool]], attack: list[tuple[str, str]], kind: str
) -> AccountStream:
    """The blended account of ``base``: its ``(ts, prompt, is_attack)`` events in order."""
    return AccountStream(
        account=base.account,
        label=1,
        kind=kind,
        prompts=[e[1] for e in events],
        ts=[e[0] for e in events],
        is_attack=[e[2] for e in events],
        campaign=None,
        source_groups=base.source_groups | frozenset(k for _, k in attack),
    )


def _mix_interleaved(
    rng: random.Random, base: AccountStream, attack: list[tuple[str, str]], kind: str
) -> AccountStream:
    """Insert attack queries into a benign stream in bursts of 2-12 where, about one time in
    three, one or two of the account's own queries fall between two attack queries."""
    n = len(base)
    slots: dict[int, list[str]] = {}  # benign index the attack queries go before -> their texts
    i = 0
    while i < len(attack):
        burst = attack[i : i + rng.randint(2, 12)]
        p = rng.randrange(n + 1)
        for text, _ in burst:
            if rng.random() < 0.35:
                p = min(n, p + rng.randint(1, 2))
            slots.setdefault(p, []).append(text)
        i += len(burst)
    events: list[tuple[float, str, bool]] = []
    for p in range(n + 1):
        texts = slots.get(p, [])
        if texts:
            # spread evenly between the benign queries either side (2-45 s apart at the ends)
            before = base.ts[p - 1] if p > 0 else base.ts[0] - 45.0 * (len(texts) + 1)
            after = base.ts[p] if p < n else base.ts[-1] + rng.uniform(2.0, 45.0) * (len(texts) + 1)
            step = (after - before) / (len(texts) + 1)
            events += [(before + j * step, text, True) for j, text in enumerate(texts, 1)]
        if p < n:
            events.append((base.ts[p], base.prompts[p], False))
    return _blended(base, events, attack, kind)


def keep_disjoint(rng: random.Random, calibration: list[AccountStream], others: list[AccountStream]) -> None:
    """Edits and slot filling can, rarely, recreate a calibration text verbatim: re-edit it."""
    taken = {t for s in calibration for t in s.prompts}
    for stream in others:
        for i, _text in enumerate(stream.prompts):
            while stream.prompts[i] in taken:
                stream.prompts[i] = human_edit(rng, stream.prompts[i])


# The later perturbation wordings' scenarios, in the order they were written and are built
# (third_attacks.py onwards; see build_traffic): reports and tests list them from here.
LATER_WORDINGS: tuple[tuple[str, ...], ...] = (
    third_attacks.THIRD_STRATEGIES,
    fourth_attacks.FOURTH_STRATEGIES,
    fifth_attacks.FIFTH_STRATEGIES,
    sixth_attacks.SIXTH_STRATEGIES,
    seventh_attacks.SEVENTH_STRATEGIES,
    eighth_attacks.EIGHTH_STRATEGIES,
    ninth_attacks.NINTH_STRATEGIES,
    tenth_attacks.TENTH_STRATEGIES,
    eleventh_attacks.ELEVENTH_STRATEGIES,
    twelfth_attacks.TWELFTH_STRATEGIES,
    thirteenth_attacks.THIRTEENTH_STRATEGIES,
    fourteenth_attacks.FOURTEENTH_STRATEGIES,
)


def build_traffic(size: str = "quick", seed: int = 0, embed: attacks.Embed | None = None) -> Traffic:
    """Labelled per-account traffic for the detection benchmark; deterministic given
    ``size`` and ``seed`` (and, for the k-center strategy, the embedder).

    ``embed`` maps a list of texts to unit vectors; it is only used to select the
    coverage-maximising (k-center) queries. By default it is the engine's embedder behind
    the on-disk cache of ``bench/embedcache.py``.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}; got {size!r}")
    spec = SIZES[size]

    calibration_pools = benign.build_pools(_rng(size, seed, "calibration-pools"), "calibration", spec.source_caps)
    test_pools = benign.build_pools(_rng(size, seed, "test-pools"), "test", spec.source_caps)
    calibration = _benign_accounts(
        spec, _rng(size, seed, "calibration"), calibration_pools, spec.calibration_accounts, size, seed, "calibration"
    )
    test_benign = _benign_accounts(
        spec, _rng(size, seed, "test-benign"), test_pools, spec.test_accounts, size, seed, "test"
    )

    pools = attacks.build_attack_pools(_rng(size, seed, "attack-pools"), spec.attack_pool, spec.kcenter_pool)
    if embed is None:
        from bench.embedcache import default_embedder_cache

        embed = default_embedder_cache().embed
    pools.kcenter_vectors = embed([text for text, _ in pools.kcenter_pool])

    scenarios: dict[str, list[AccountStream]] = {}
    rng = _rng(size, seed, "attacks")
    for strategy in attacks.STRATEGIES:
        streams = []
        for index in range(spec.attack_accounts):
            picked = attacks.queries(strategy, rng, pools, rng.randint(*spec.attack_queries))
            streams.append(
                _attack_stream(
                    _account_id(size, seed, strategy, index),
                    f"attack:{strategy}",
                    picked,
                    script_times(rng, len(picked)),
                )
            )
        scenarios[strategy] = streams

    rng = _rng(size, seed, "mixed")
    for scenario, share in MIXED_SHARES.items():
        streams = []
        offset = rng.randrange(len(attacks.STRATEGIES))
        for index in range(spec.mixed_accounts):
            strategy = attacks.STRATEGIES[(offset + index) % len(attacks.STRATEGIES)]
            account = _account_id(size, seed, scenario, index)
            base = benign.chat_user(rng, test_pools, account, rng.randint(*spec.mixed_base), rng.randint(3, 6))
            n_attack = max(1, round(share * len(base) / (1 - share)))
            kind = f"mixed:{round(share * 100)}pct:{strategy}"
            streams.append(_mix(rng, base, attacks.queries(strategy, rng, pools, n_attack), kind))
        scenarios[scenario] = streams

    rng = _rng(size, seed, "split")
    split_strategies = rng.sample(attacks.STRATEGIES, len(spec.splits))  # one campaign each, all different
    for (scenario, (n_accounts, per_account)), strategy in zip(spec.splits.items(), split_strategies, strict=True):
        campaign = f"campaign-{hashlib.sha256(f'{size}/{seed}/{scenario}'.encode()).hexdigest()[:10]}"
        counts = [max(2, round(per_account * rng.uniform(0.8, 1.2))) for _ in range(n_accounts)]
        picked = attacks.queries(strategy, rng, pools, sum(counts), campaign=True)
        streams, cursor = [], 0
        for index, count in enumerate(counts):
            part = picked[cursor : cursor + count]
            cursor += count
            # each member stays quiet: a steady trickle or low-and-slow
            ts = script_times(rng, len(part), rng.choice(["steady", "slow"]))
            streams.append(
                _attack_stream(
                    _account_id(size, seed, scenario, index), f"split:{n_accounts}:{strategy}", part, ts, campaign
                )
            )
        scenarios[scenario] = streams

    # the same strategies in other wordings, from other text (heldout_attacks.py): never tuned on
    heldout_pools = heldout_attacks.build_heldout_pools(
        _rng(size, seed, "heldout-attack-pools"), spec.attack_pool, spec.kcenter_pool
    )
    heldout_pools.kcenter_vectors = embed([text for text, _ in heldout_pools.kcenter_pool])
    rng = _rng(size, seed, "heldout-attacks")
    for scenario in heldout_attacks.HELDOUT_STRATEGIES:
        streams = []
        for index in range(spec.attack_accounts):
            picked = heldout_attacks.heldout_queries(scenario, rng, heldout_pools, rng.randint(*spec.attack_queries))
            account = _account_id(size, seed, scenario, index)
            streams.append(_attack_stream(account, f"attack:{scenario}", picked, script_times(rng, len(picked))))
        scenarios[scenario] = streams

    # perturbation chains in a third to fourteenth wording, each written before the misses of the one
    # before were looked at (third_attacks.py ... fourteenth_attacks.py): the evidence for what was
    # changed after looking
    later: dict[str, list[AccountStream]] = {}
    for name, build_chains, next_queries, strategies in (
        ("third", third_attacks.build_third_chains, third_attacks.third_queries, third_attacks.THIRD_STRATEGIES),
        ("fourth", fourth_attacks.build_fourth_chains, fourth_attacks.fourth_queries, fourth_attacks.FOURTH_STRATEGIES),
        ("fifth", fifth_attacks.build_fifth_chains, fifth_attacks.fifth_queries, fifth_attacks.FIFTH_STRATEGIES),
        ("sixth", sixth_attacks.build_sixth_chains, sixth_attacks.sixth_queries, sixth_attacks.SIXTH_STRATEGIES),
        (
            "seventh",
            seventh_attacks.build_seventh_chains,
            seventh_attacks.seventh_queries,
            seventh_attacks.SEVENTH_STRATEGIES,
        ),
        ("eighth", eighth_attacks.build_eighth_chains, eighth_attacks.eighth_queries, eighth_attacks.EIGHTH_STRATEGIES),
        ("ninth", ninth_attacks.build_ninth_chains, ninth_attacks.ninth_queries, ninth_attacks.NINTH_STRATEGIES),
        ("tenth", tenth_attacks.build_tenth_chains, tenth_attacks.tenth_queries, tenth_attacks.TENTH_STRATEGIES),
        (
            "eleventh",
            eleventh_attacks.build_eleventh_payloads,
            eleventh_attacks.eleventh_queries,
            eleventh_attacks.ELEVENTH_STRATEGIES,
        ),
        (
            "twelfth",
            twelfth_attacks.build_twelfth_passages,
            twelfth_attacks.twelfth_queries,
            twelfth_attacks.TWELFTH_STRATEGIES,
        ),
        (
            "thirteenth",
            thirteenth_attacks.build_thirteenth_pools,
            thirteenth_attacks.thirteenth_queries,
            thirteenth_attacks.THIRTEENTH_STRATEGIES,
        ),
        (
            "fourteenth",
            fourteenth_attacks.build_fourteenth_histories,
            fourteenth_attacks.fourteenth_queries,
            fourteenth_attacks.FOURTEENTH_STRATEGIES,
        ),
    ):
        chains = build_chains(_rng(size, seed, f"{name}-attack-pools"), spec.attack_pool)
        rng = _rng(size, seed, f"{name}-attacks")
        for scenario in strategies:
            later[scenario] = []
            for index in range(spec.attack_accounts):
                picked = next_queries(scenario, rng, chains, rng.randint(*spec.attack_queries))
                account = _account_id(size, seed, scenario, index)
                later[scenario].append(
                    _attack_stream(account, f"attack:{scenario}", picked, script_times(rng, len(picked)))
                )

    rng = _rng(size, seed, "long-benign")
    long_benign = [
        benign.chat_user(
            rng,
            test_pools,
            _account_id(size, seed, "long", index),
            rng.randint(*spec.mixed_base),
            rng.randint(3, 6),
            kind=LONG_BENIGN,
        )
        for index in range(spec.long_accounts)
    ]

    # blended accounts in the held-out wordings, after everything else so no earlier stream changes
    blind_mixed: dict[str, list[AccountStream]] = {}
    rng = _rng(size, seed, "heldout-mixed")
    n_blind = len(heldout_attacks.HELDOUT_STRATEGIES) * max(1, round(spec.mixed_accounts / 5))
    for scenario, share in HELDOUT_MIXED_SHARES.items():
        blind_mixed[scenario] = []
        offset = rng.randrange(len(heldout_attacks.HELDOUT_STRATEGIES))
        for index in range(n_blind):
            strategy = heldout_attacks.HELDOUT_STRATEGIES[(offset + index) % len(heldout_attacks.HELDOUT_STRATEGIES)]
            account = _account_id(size, seed, scenario, index)
            n_base = rng.randint(spec.mixed_base[0] // 2, spec.mixed_base[1])
            base = benign.chat_user(rng, test_pools, account, n_base, rng.randint(2, 8))
            n_attack = max(2, round(share * len(base) / (1 - share)))
            picked = heldout_attacks.heldout_queries(strategy, rng, heldout_pools, n_attack)
            blind_mixed[scenario].append(
                _mix_interleaved(rng, base, picked, f"mixed:{round(share * 100)}pct:{strategy}")
            )

    names = attacks.STRATEGIES + tuple(MIXED_SHARES) + tuple(spec.splits) + heldout_attacks.HELDOUT_STRATEGIES
    ordered = {name: scenarios[name] for name in names}
    # the long accounts after those, and the third to fourteenth wordings after them, so every
    # stream built before them keeps its re-edits (and texts)
    keep_disjoint(
        _rng(size, seed, "disjoint"),
        calibration,
        test_benign
        + [s for streams in ordered.values() for s in streams]
        + long_benign
        + [s for streams in later.values() for s in streams]
        + [s for streams in blind_mixed.values() for s in streams],
    )
    ordered.update(later)
    ordered.update(blind_mixed)
    return Traffic(
        size=size, seed=seed, calibration=calibration, test_benign=test_benign + long_benign, attacks=ordered
    )
