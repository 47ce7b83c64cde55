"""The heavy-user builder: whole test accounts of one kind, each used once, in time order."""

from __future__ import annotations

from bench.heavy_users import stitched_heavy_users
from bench.traffic import AccountStream


def _account(name: str, kind: str, n: int) -> AccountStream:
    return AccountStream(
        name, 0, kind, [f"{name} q{i}" for i in range(n)], [1000.0 + 10 * i for i in range(n)], [False] * n
    )


def test_heavy_users_are_whole_accounts_of_one_kind_in_time_order():
    benign = [_account(f"a{i}", "benign:chat", 30) for i in range(10)] + [_account("b0", "benign:app", 40)]
    heavy = stitched_heavy_users(benign, min_queries=100, per_kind=5, seed=0)
    assert [h.kind for h in heavy] == ["benign:chat", "benign:chat"]  # 300 chat queries make two of >= 100
    used = [p for h in heavy for p in h.prompts]
    assert len(used) == len(set(used))  # every prompt once
    for h in heavy:
        assert len(h) >= 100 and h.label == 0 and not any(h.is_attack)
        assert all(b > a for a, b in zip(h.ts, h.ts[1:], strict=False))
        counts = {}
        for prompt in h.prompts:
            counts[prompt.split()[0]] = counts.get(prompt.split()[0], 0) + 1
        assert set(counts.values()) == {30}  # whole accounts only, never part of one
