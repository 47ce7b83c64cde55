"""Shared keys: whole benign accounts of one kind stitched into one heavy account."""

from __future__ import annotations

from collections import Counter

from bench.traffic import AccountStream
from bench.traffic.shared_keys import shared_keys, stitch


def _account(name: str, kind: str, n: int) -> AccountStream:
    return AccountStream(
        name, 0, kind, [f"{name} q{i}" for i in range(n)], [1000.0 + 10 * i for i in range(n)], [False] * n
    )


def test_stitching_keeps_every_prompt_once_in_time_order():
    parts = [_account("a", "benign:app", 12), _account("b", "benign:app", 15)]
    key = stitch("key", "benign:app", parts)
    assert key.prompts == parts[0].prompts + parts[1].prompts
    assert all(b > a for a, b in zip(key.ts, key.ts[1:], strict=False))
    assert key.label == 0 and not any(key.is_attack)


def test_shared_keys_take_at_most_their_share_of_each_kind_and_lose_no_prompt():
    streams = [_account(f"app{i}", "benign:app", 20) for i in range(30)]  # 600 queries
    streams += [_account(f"chat{i}", "benign:chat", 20) for i in range(5)]  # 100 queries: too few for a key
    out = shared_keys(streams, min_queries=100, seed=0, max_share=0.4)
    keys = [s for s in out if s.account.startswith("shared-key")]
    # 40 % of 600 app queries is 240: two keys of 100 fit, a third would spend 300
    assert [(k.kind, len(k)) for k in keys] == [("benign:app", 100), ("benign:app", 100)]
    assert Counter(p for s in out for p in s.prompts) == Counter(p for s in streams for p in s.prompts)
    assert all(c == 1 for c in Counter(p for s in out for p in s.prompts).values())
    light = [s for s in out if not s.account.startswith("shared-key")]
    assert sum(s.kind == "benign:chat" for s in light) == 5  # the small kind is untouched
    assert sum(s.kind == "benign:app" for s in light) == 20
    for key in keys:  # whole accounts only
        owners = Counter(p.split()[0] for p in key.prompts)
        assert set(owners.values()) == {20}


def test_shared_keys_are_deterministic_per_seed():
    streams = [_account(f"app{i}", "benign:app", 20) for i in range(30)]
    one = [s.prompts for s in shared_keys(streams, 100, seed=0)]
    assert one == [s.prompts for s in shared_keys(streams, 100, seed=0)]
    assert one != [s.prompts for s in shared_keys(streams, 100, seed=1)]
