"""Learning the provider's normal: live benign feature rows blended into the calibration tables.

A calibration shipped with the package (or fitted on someone else's traffic) has never seen
this provider's apps. A templated single-purpose app the tables have no look-alike for
scores like a template sweep until the tables learn it. :class:`ProviderNormal` learns it
from the provider's own traffic, and is built so that an attacker cannot teach it:

* **Who teaches.** Only accounts that are old enough (``population_min_queries`` queries and,
  where timestamps are given, ``population_min_age_s`` seconds since their first query), that
  never reached ``watch`` (levels are sticky, so ``ok`` now means ok all along) and that belong
  to no campaign group at ``watch`` or above. Eligibility is decided at every refit, so an
  account that reaches ``watch`` later takes its rows back out at the next refit. An account an
  analyst marked known-benign (:meth:`ProviderNormal.vouch`, journaled by the sidecar) teaches
  whatever its level: a person vouched for it.
* **How much each teaches.** At most ``population_rows_per_account`` rows per account, a
  uniform sample over its life (a per-account reservoir): a thousand-query account weighs as
  much as a sixteen-query one.
* **How much all of them teach.** Live rows are at most ``population_max_share`` of each
  history bin's table; the prior's rows stay (the floor). A bin the prior has (almost) no
  rows for, such as histories longer than any shipped account, takes the rows of the bin it
  borrowed as its floor, so heavy accounts teach their own history lengths. The lifetime-maximum tail, and so
  the ``flag`` and ``watch`` thresholds, stay the prior's: learning makes look-alikes of
  benign apps findable, it never moves what ``flag`` means.
* **Warm-up.** No refit until ``population_min_accounts`` accounts are eligible.

Randomness is a keyed hash of (account, query number), so replays and snapshots agree.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .features import N_FEATURES
from .scoring import MIN_BIN_SAMPLES, Calibration, bin_of

POPULATION_RESERVOIR = 20_000  # live feature rows kept
LIVE_SOURCE = " + live population"


def _uniform(account: str, k: int) -> float:
    """A deterministic uniform in [0, 1) for the k-th offer of ``account``."""
    digest = hashlib.blake2b(f"{k}\x00{account}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


@dataclass(frozen=True)
class LearningRules:
    """Who may teach the tables, and how much (EngineConfig's population_* fields)."""

    rows_per_account: int = 16
    min_queries: int = 16
    min_age_s: float = 86_400.0
    min_accounts: int = 50
    max_share: float = 0.5

    @classmethod
    def from_config(cls, config) -> LearningRules:
        return cls(
            rows_per_account=config.population_rows_per_account,
            min_queries=config.population_min_queries,
            min_age_s=config.population_min_age_s,
            min_accounts=config.population_min_accounts,
            max_share=config.population_max_share,
        )


@dataclass(frozen=True)
class AccountStanding:
    """What eligibility needs to know about one account at refit time."""

    n: int
    first_ts: float  # NaN when observed without timestamps
    ok: bool  # never reached watch
    in_suspected_campaign: bool


class ProviderNormal:
    """Feature rows of live accounts (at most ``rows_per_account`` each, ``capacity`` in all),
    and the refit that blends the rows of eligible accounts into a prior calibration."""

    def __init__(self, rules: LearningRules, capacity: int = POPULATION_RESERVOIR):
        self.rules = rules
        self.capacity = capacity
        self.clear()

    def clear(self) -> None:
        self.rows = np.zeros((self.capacity, N_FEATURES), dtype=np.float32)
        self.ns = np.zeros(self.capacity, dtype=np.int64)
        self.owners: list[str | None] = [None] * self.capacity
        self.slots: dict[str, list[int]] = {}
        self.free = list(range(self.capacity - 1, -1, -1))
        self.admitted = 0  # offers that took a slot of their own (global reservoir count)
        self.last_refit: dict[str, int] = {}
        self.vouched: set[str] = set()  # accounts an analyst marked known-benign: they teach whatever their level

    def __len__(self) -> int:
        return self.capacity - len(self.free)

    def accounts(self) -> int:
        return len(self.slots)

    def remember(self, account: str, n: int, features: np.ndarray) -> None:
        """Offer the feature row of ``account``'s ``n``-th query (call in order, while it is at ok)."""
        own = self.slots.setdefault(account, [])
        cap = self.rules.rows_per_account
        if len(own) >= cap:
            # per-account reservoir: each of its n rows is kept with probability cap / n
            pick = int(_uniform(account, n) * n)
            if pick < cap:
                self._write(own[pick], account, n, features)
            return
        self.admitted += 1
        if self.free:
            slot = self.free.pop()
        else:  # global reservoir over first rows: uniform over accounts
            pick = int(_uniform(account, -self.admitted) * self.admitted)
            if pick >= self.capacity:
                if not own:
                    del self.slots[account]
                return
            slot = pick
            if self.owners[slot] == account:  # its own row makes way: no new slot
                self._write(slot, account, n, features)
                return
            self._release(slot)
        own.append(slot)
        self._write(slot, account, n, features)

    def _write(self, slot: int, account: str, n: int, features: np.ndarray) -> None:
        self.rows[slot] = features
        self.ns[slot] = n
        self.owners[slot] = account

    def _release(self, slot: int) -> None:
        owner = self.owners[slot]
        if owner is None:
            return
        own = self.slots.get(owner)
        if own is not None:
            own.remove(slot)
            if not own:
                del self.slots[owner]
        self.owners[slot] = None

    def vouch(self, account: str) -> None:
        """An analyst says ``account`` is benign: its rows teach from now on, even at watch or
        flag or in a suspected campaign (the age and query-count rules are waived too)."""
        self.vouched.add(account)

    def forget(self, account: str) -> None:
        self.vouched.discard(account)
        for slot in self.slots.pop(account, []):
            self.owners[slot] = None
            self.free.append(slot)

    def eligible(self, standing: Callable[[str], AccountStanding | None], clock: float) -> list[str]:
        """Accounts whose rows may teach now (see the module docstring)."""
        rules, out = self.rules, []
        for account in self.slots:
            s = standing(account)
            if s is not None and account in self.vouched:
                out.append(account)
                continue
            if s is None or not s.ok or s.in_suspected_campaign or s.n < rules.min_queries:
                continue
            if not math.isnan(s.first_ts) and not math.isnan(clock) and clock - s.first_ts < rules.min_age_s:
                continue
            out.append(account)
        return out

    def refit(
        self, base: Calibration, standing: Callable[[str], AccountStanding | None], clock: float
    ) -> Calibration | None:
        """``base`` with the rows of eligible accounts added, or None during warm-up."""
        teachers = self.eligible(standing, clock)
        if len(teachers) < self.rules.min_accounts:
            return None
        slots = np.fromiter((s for a in teachers for s in self.slots[a]), dtype=np.int64)
        feats, bins = self.rows[slots].astype(np.float64), bin_of(self.ns[slots])
        # deterministic order, so which rows a full bin keeps does not depend on dict order
        order = np.argsort([_uniform(self.owners[s] or "", int(self.ns[s])) for s in slots.tolist()], kind="stable")
        feats, bins = feats[order], bins[order]
        share = self.rules.max_share
        samples = []
        for b, prior in enumerate(base.samples):
            live = feats[bins == b]
            if not live.size:
                samples.append(prior)
                continue
            # A bin the prior left (nearly) empty borrows its nearest populated bin, so that
            # bin's rows are its floor: long histories the shipped traffic never reached are
            # learned from the provider's heavy accounts, never from live rows alone.
            floor = prior if len(prior) >= MIN_BIN_SAMPLES else base.samples[int(base.donor_bin[b])]
            cap = int(share / (1 - share) * len(floor))
            samples.append(np.concatenate([floor, live[:cap]]))
        self.last_refit = {"accounts": len(teachers), "rows": int(slots.size)}
        return Calibration(
            samples,
            base.account_max_scores,
            base.off_reference_similarity,
            distance_norm=base.distance_norm,
            source=base.source + LIVE_SOURCE,
            n_accounts=base.n_accounts,
            topic_return=base.topic_return,
            walk_away=base.walk_away,
            neighbourhood_probe=base.neighbourhood_probe,
            framed_returns=base.framed_returns,
            lookalike_rule=base.lookalike_rule,
            evidence_norm=base.evidence_norm,
        )

    # -- snapshots ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        used = np.flatnonzero([o is not None for o in self.owners])
        return {
            "rows": self.rows[used],
            "ns": self.ns[used],
            "owners": np.asarray([self.owners[s] for s in used.tolist()], dtype=str),
            "admitted": np.int64(self.admitted),
            "vouched": np.asarray(sorted(self.vouched), dtype=str),
        }

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.clear()
        rows, ns, owners = state["rows"], state["ns"], state["owners"]
        if rows.ndim == 2 and rows.shape[0] == len(owners) and rows.shape[1] < N_FEATURES:
            # saved before the newest features existed (they are appended): unknown for those rows
            rows = np.concatenate([rows, np.full((rows.shape[0], N_FEATURES - rows.shape[1]), np.nan)], axis=1)
        if len(owners) > self.capacity or rows.shape != (len(owners), N_FEATURES) or ns.shape != (len(owners),):
            raise ValueError(
                f"live population state must have at most {self.capacity} rows of {N_FEATURES} features with one "
                f"n and one owner each; got rows {rows.shape}, ns {ns.shape}, owners {len(owners)}"
            )
        for row, n, owner in zip(rows, ns.tolist(), owners.tolist(), strict=True):
            slot = self.free.pop()
            self.slots.setdefault(str(owner), []).append(slot)
            self._write(slot, str(owner), int(n), row)
        self.admitted = int(state["admitted"])
        self.vouched = {str(account) for account in np.asarray(state.get("vouched", ())).tolist()}
