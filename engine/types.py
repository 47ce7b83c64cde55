"""What the engine hands back: levels, verdicts and their reasons, account reports, stats.

Every result is a frozen dataclass whose ``to_dict()`` is the JSON the sidecar serves.

>>> Level.WATCH > Level.OK, max(Level.FLAG, Level.WATCH), str(Level.FLAG), Level("watch") is Level.WATCH
(True, <Level.FLAG: 'flag'>, 'flag', True)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError


class Level(str, enum.Enum):
    """How far an account has gone; ordered ``OK < WATCH < FLAG`` and sticky at its peak.

    String-valued, so ``Level.FLAG == "flag"`` and JSON carries the plain string.
    """

    OK = "ok"
    WATCH = "watch"
    FLAG = "flag"

    @property
    def rank(self) -> int:
        return _RANK[self]

    # Ordered by rank, not alphabetically as the str mixin would.
    def __lt__(self, other: object) -> bool:
        return self.rank < other.rank if isinstance(other, Level) else NotImplemented

    def __le__(self, other: object) -> bool:
        return self.rank <= other.rank if isinstance(other, Level) else NotImplemented

    def __gt__(self, other: object) -> bool:
        return self.rank > other.rank if isinstance(other, Level) else NotImplemented

    def __ge__(self, other: object) -> bool:
        return self.rank >= other.rank if isinstance(other, Level) else NotImplemented

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: object) -> Level:
        """``value`` (a Level or its string) as a Level; :class:`InputError` naming the levels otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise InputError(f"a level must be one of {[level.value for level in cls]}; got {value!r}") from None

    @classmethod
    def for_score(cls, score: float, flag_threshold: float, watch_threshold: float) -> Level:
        """The level a score reaches: ``flag`` at or above the flag threshold, then ``watch``."""
        if score >= flag_threshold:
            return cls.FLAG
        if score >= watch_threshold:
            return cls.WATCH
        return cls.OK

    __format__ = str.__format__  # f"{level}" is the value on every Python version


_RANK = {Level.OK: 0, Level.WATCH: 1, Level.FLAG: 2}
LEVELS: tuple[str, ...] = tuple(level.value for level in Level)


@dataclass(frozen=True)
class Reason:
    """One feature that separates an account from its nearest benign look-alikes."""

    feature: str
    value: float
    benign_percentile: float  # 0-100: share of benign accounts (same history length) below this value
    direction: str  # "above" or "below" the benign look-alikes
    deviation: float  # scaled distance from the look-alikes
    description: str = ""  # what the feature measures, in words

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "description": self.description,
            "value": round(self.value, 6),
            "benign_percentile": round(self.benign_percentile, 3),
            "direction": self.direction,
            "deviation": round(self.deviation, 3),
        }

    def __str__(self) -> str:
        return (
            f"{self.feature}={self.value:.4g} ({self.direction} benign; percentile "
            f"{self.benign_percentile:.1f}, z={self.deviation:.1f})"
        )


@dataclass(frozen=True)
class CampaignSummary:
    """The campaign an account belongs to, as its verdicts carry it."""

    id: str
    size: int  # member accounts
    risk: float  # 1 - share of benign groups that ever reach the campaign's score
    level: Level
    reasons: tuple[str, ...] = ()  # plain sentences: what links the members, never raw metadata
    indicator_kinds: tuple[str, ...] = ()  # "template", "meta:ip", "payload", ...

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "size": self.size,
            "risk": round(self.risk, 6),
            "level": self.level.value,
            "reasons": list(self.reasons),
            "indicator_kinds": list(self.indicator_kinds),
        }


@dataclass(frozen=True)
class Verdict:
    """probewatch's judgement of an account right after one of its queries."""

    account: str
    risk: float  # 1 - share of benign accounts that ever reach this score
    level: Level  # sticky at the account's peak
    flagged: bool
    n_queries: int
    score: float
    peak_risk: float
    reasons: tuple[Reason, ...] = field(default_factory=tuple)
    campaign: CampaignSummary | None = None  # set while the account belongs to a campaign at watch or flag
    one_in: float = 1.0  # about 1 in this many benign accounts ever scores this high (extrapolated past the data)
    peak_one_in: float = 1.0  # the same at the account's peak score: rank accounts by this, risk saturates
    # the account sent this prompt before, character for character: not judged anew, the
    # verdict is the account's as it stood (a retry or a re-run asks the model nothing new)
    repeat: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "risk": round(self.risk, 6),
            "level": self.level.value,
            "flagged": self.flagged,
            "n_queries": self.n_queries,
            "score": round(self.score, 4),
            "peak_risk": round(self.peak_risk, 6),
            "one_in": float(f"{self.one_in:.4g}"),
            "peak_one_in": float(f"{self.peak_one_in:.4g}"),
            "reasons": [r.to_dict() for r in self.reasons],
            "campaign": None if self.campaign is None else self.campaign.to_dict(),
            "repeat": self.repeat,
        }


@dataclass(frozen=True)
class FeatureReading:
    """One feature of an account now, against benign accounts of the same history length."""

    value: float | None  # None while the account has too few queries for it
    benign_percentile: float | None
    deviation: float | None  # signed, in benign spreads from the benign median

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "benign_percentile": self.benign_percentile, "deviation": self.deviation}


@dataclass(frozen=True)
class AccountReport:
    """Everything probewatch holds about one account (``Engine.report``)."""

    account: str
    n_queries: int
    history_size: int  # queries kept in its FAISS index (at most history_cap)
    first_ts: float | None
    last_ts: float | None
    level: Level
    flagged_at_query: int | None
    risk: float
    score: float
    peak_risk: float
    features: dict[str, FeatureReading]
    reasons: tuple[Reason, ...]
    risk_over_time: tuple[tuple[int, float], ...]  # (n_queries, risk), thinned to a bounded length
    peak_one_in: float = 1.0  # about 1 in this many benign accounts ever reach its peak score
    elicitation_rate: float | None = None  # mean reasoning-trace elicitation probability of its queries
    campaign: CampaignSummary | None = None  # the campaign it belongs to, at watch or flag

    @property
    def flagged(self) -> bool:
        return self.level is Level.FLAG

    def to_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "n_queries": self.n_queries,
            "history_size": self.history_size,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "level": self.level.value,
            "flagged": self.flagged,
            "flagged_at_query": self.flagged_at_query,
            "risk": self.risk,
            "score": self.score,
            "peak_risk": self.peak_risk,
            "features": {name: reading.to_dict() for name, reading in self.features.items()},
            "reasons": [r.to_dict() for r in self.reasons],
            "risk_over_time": [{"n_queries": n, "risk": r} for n, r in self.risk_over_time],
            "peak_one_in": float(f"{self.peak_one_in:.4g}"),
            "elicitation_rate": self.elicitation_rate,
            "campaign": None if self.campaign is None else self.campaign.to_dict(),
        }


@dataclass(frozen=True)
class CampaignReport:
    """Everything probewatch holds about one campaign (``Engine.campaign``)."""

    id: str
    level: Level
    risk: float
    score: float
    members: tuple[str, ...]  # member account ids (those tracked), most queries first
    size: int  # member accounts
    queries: int  # the members' queries that carry the linking indicators
    indicators: tuple[dict[str, Any], ...]  # per linking group: kind, label, members, features
    reasons: tuple[str, ...]
    first_ts: float | None
    last_ts: float | None
    flagged_at_queries: int | None  # campaign queries seen when it was first flagged

    def summary(self) -> CampaignSummary:
        kinds = tuple(dict.fromkeys(i["kind"] for i in self.indicators))
        return CampaignSummary(self.id, self.size, self.risk, self.level, self.reasons, kinds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "level": self.level.value,
            "risk": self.risk,
            "score": self.score,
            "size": self.size,
            "queries": self.queries,
            "members": list(self.members),
            "indicators": [dict(i) for i in self.indicators],
            "reasons": list(self.reasons),
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "flagged_at_queries": self.flagged_at_queries,
        }


@dataclass(frozen=True)
class CampaignStats:
    """The campaign layer's table sizes now (``Engine.campaign_stats``; all zero while it is off)."""

    campaigns: dict[str, int]  # campaigns per level ("watch", "flag")
    groups: int  # candidate groups: indicator values that two or more accounts share
    pending: int  # indicator values seen from one account so far, waiting for a second
    memberships: int  # (group, member) rows in use, capped by campaign_max_memberships
    evicted_flagged: int  # groups at watch or flag evicted because the tables were full

    def to_dict(self) -> dict[str, Any]:
        return {
            "campaigns": dict(self.campaigns),
            "groups": self.groups,
            "pending": self.pending,
            "memberships": self.memberships,
            "evicted_flagged": self.evicted_flagged,
        }


@dataclass(frozen=True)
class EngineStats:
    """Counts and settings of an engine now (``Engine.stats``)."""

    accounts: int
    stored_queries: int
    bytes_held: int
    levels: dict[str, int]  # accounts per level value
    observations: int
    device: str  # "cpu" or "cuda"
    flag_threshold: float
    calibration: dict[str, Any]
    evicted: int = 0  # accounts evicted for memory since the engine started (or was reset)
    evicted_records: int = 0  # evicted accounts at watch or flag whose level is kept until they return
    memory_pressure: str | None = None  # why the memory budget could not be kept cleanly (Engine.memory_pressure)
    repeats: int = 0  # observed prompts their account had sent before, character for character (not judged anew)

    def to_dict(self) -> dict[str, Any]:
        return {
            "evicted": self.evicted,
            "evicted_records": self.evicted_records,
            "memory_pressure": self.memory_pressure,
            "accounts": self.accounts,
            "stored_queries": self.stored_queries,
            "bytes_held": self.bytes_held,
            "levels": dict(self.levels),
            "observations": self.observations,
            "repeats": self.repeats,
            "device": self.device,
            "flag_threshold": self.flag_threshold,
            "calibration": dict(self.calibration),
        }
