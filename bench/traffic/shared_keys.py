"""Heavy benign accounts made of light ones: one API key that many users of one kind share.

A provider's busiest benign accounts are rarely one person: an app backend sends its end
users' requests through one key, a team shares a key, a reseller fronts many customers. The
populations' accounts are individual users and apps of tens of queries, so on their own they
say nothing about what a benign account looks like after 500 queries. Stitching whole
accounts of one kind, one after another on one key (each prompt once, timestamps shifted so
the parts follow each other), gives benign histories that long.

Two uses: :func:`shared_keys` turns part of each population's *calibration* half into such keys
(the accounts it uses are not kept as light accounts, so no prompt appears twice), and
``bench.heavy_users`` builds them from the *test* half to measure false positives on heavy
accounts the calibration never saw.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from .model import AccountStream

MIN_PART_QUERIES = 10  # a part shorter than this adds a session boundary and little history
PART_GAP_SECONDS = 3600.0  # the next user's requests start an hour after the last one's
# What a population may give up to its shared keys: the rest stays as light accounts, so the
# short history bins keep (most of) their benign accounts.
MAX_SHARED_QUERY_SHARE = 0.4


def stitch(name: str, kind: str, parts: Sequence[AccountStream]) -> AccountStream:
    """``parts`` sent one after another by one benign account called ``name``."""
    prompts: list[str] = []
    ts: list[float] = []
    groups: set[str] = set()
    clock = 0.0
    for part in parts:
        offset = clock - part.ts[0]
        prompts += part.prompts
        ts += [t + offset for t in part.ts]
        groups |= part.source_groups
        clock = ts[-1] + PART_GAP_SECONDS
    return AccountStream(name, 0, kind, prompts, ts, [False] * len(prompts), source_groups=frozenset(groups))


def stitched_heavy_users(
    benign: Sequence[AccountStream], min_queries: int, per_kind: int, seed: int, prefix: str = "heavy"
) -> list[AccountStream]:
    """Up to ``per_kind`` heavy users per benign kind, each at least ``min_queries`` long, made
    of whole accounts of that kind (each used once)."""
    by_kind: dict[str, list[AccountStream]] = defaultdict(list)
    for stream in benign:
        if len(stream) >= MIN_PART_QUERIES:
            by_kind[stream.kind].append(stream)
    rng = random.Random(f"{seed}:heavy-users")
    heavy = []
    for kind, streams in sorted(by_kind.items()):
        pool = rng.sample(streams, len(streams))
        for n in range(per_kind):
            parts: list[AccountStream] = []
            while pool and sum(len(p) for p in parts) < min_queries:
                parts.append(pool.pop())
            if sum(len(p) for p in parts) < min_queries:
                break
            heavy.append(stitch(f"{prefix}-{kind}-{n}", kind, parts))
    return heavy


def shared_keys(
    streams: Sequence[AccountStream],
    min_queries: int,
    seed: int,
    max_share: float = MAX_SHARED_QUERY_SHARE,
) -> list[AccountStream]:
    """``streams`` (benign accounts of one or more kinds) with some accounts of each kind
    stitched into shared keys of at least ``min_queries`` queries: as many keys per kind as
    fit in ``max_share`` of that kind's queries (none where one does not). Returns the light
    accounts left, then the keys; every prompt of ``streams`` appears exactly once."""
    by_kind: dict[str, list[AccountStream]] = defaultdict(list)
    for stream in streams:
        by_kind[stream.kind].append(stream)
    rng = random.Random(f"{seed}:shared-keys")
    light: list[AccountStream] = []
    keys: list[AccountStream] = []
    for kind, members in by_kind.items():
        budget = max_share * sum(len(s) for s in members)
        pool = rng.sample(members, len(members))
        spent, used = 0, set()
        while True:
            parts, size = [], 0
            for s in pool:
                if s.account not in used and len(s) >= MIN_PART_QUERIES and size < min_queries:
                    parts.append(s)
                    size += len(s)
            if size < min_queries or spent + size > budget:
                break
            used |= {p.account for p in parts}
            spent += size
            keys.append(stitch(f"shared-key-{kind.split(':')[-1]}-{len(keys)}", kind, parts))
        light += [s for s in members if s.account not in used]
    return light + keys
