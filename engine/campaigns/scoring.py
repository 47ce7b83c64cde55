"""Judging a candidate group against benign groups of the same size.

A group's features (:class:`GroupFeatures`) come from its pooled sums. Two questions, each
answered on a calibrated scale, and a group scores only as high as the weaker answer:

* *coordination*: how much less do its members keep to their own topics than benign groups
  of as many members? (``member_focus`` deficit; 2.33 at the benign 1st percentile);
* *content*: how much higher is the per-account detector's mean evidence on the members'
  queries than in benign groups of as many members? (2.33 at the benign 99th percentile).
  Light accounts are each too short to flag; a thousand of them, each a little off, are not.
  Members that probe around the same unsent prompts (probe links, :mod:`.split_probes`) count
  here too, against the share of benign accounts that send such probes at all.

A summarisation app's users are as unfocused as a campaign but send nothing extraction-like;
a class doing one assignment is focused on one topic. Queries that another member had
already sent (an evaluation harness re-running one benchmark from several keys) count for
neither. Benign groups (random crowds and look-alike crowds of benign accounts, see
:mod:`.fitting`) set the tables; risk is one minus the share of benign groups whose score
reaches the group's, with the same exponential tail beyond the calibrated range as
account risk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from ..errors import CalibrationError
from ..types import Level
from .topics import UNKNOWN, asked_share

# Member-count bins: [2, 4), [4, 8), ... [128, inf)
MEMBER_BIN_EDGES = np.array([2, 4, 8, 16, 32, 64, 128])
N_MEMBER_BINS = len(MEMBER_BIN_EDGES)
MIN_BIN_GROUPS = 8
Z_AT_Q01 = 2.326  # standard-normal z of the 1st percentile, for a familiar scale
TAIL_FRACTION = 0.05
# A member counts once it sent this many of the group's queries: one shared "think step by
# step" prefix makes nobody a member of a campaign.
MIN_MEMBER_QUERIES = 2
MIN_GROUP_MEMBERS = 4
DISTINCT_CROWD_MAX_DUPLICATES = 0.2
# Per-query evidence is clipped before it is pooled, so no single odd query carries a group.
EVIDENCE_CLIP = (-3.0, 6.0)
# The benign prober rate is read at this one-sided upper confidence bound (probe_link_rate).
PROBE_LINK_CONFIDENCE = 0.95


def joint_evidence(coordination, content) -> np.ndarray:
    """Both lines' evidence together, as one z: where each is past Z_AT_Q01 (beyond the benign
    1 % point of its own scale), the z whose normal tail is the product of their two tails
    (independent lines that both hold add up, so it exceeds the stronger); elsewhere the weaker
    line, as :meth:`GroupCalibration.score` takes it. Non-decreasing in each argument."""
    a = np.asarray(coordination, dtype=np.float64)
    b = np.asarray(content, dtype=np.float64)
    weaker = np.minimum(a, b)
    with np.errstate(invalid="ignore"):
        added = -special.ndtri_exp(special.log_ndtr(-a) + special.log_ndtr(-b))
    return np.where(weaker >= Z_AT_Q01, np.maximum(added, np.maximum(a, b)), weaker)


def probe_link_evidence(linked, counted, rate) -> np.ndarray:
    """How unlikely ``linked`` probers among ``counted`` members are for benign accounts, each a
    prober (MIN_LINKED_PROMPTS of its prompts sent as the probe side of a link) with
    probability ``rate``, independently: the standard-normal z of the binomial tail
    P(X >= linked), 0 where nobody is a prober. Capped where the tail underflows, so scores
    stay finite.

    >>> round(float(probe_link_evidence(3, 20, 0.001)), 2), float(probe_link_evidence(0, 20, 0.001))
    (4.73, 0.0)
    """
    k = np.asarray(linked, dtype=np.float64)
    m = np.maximum(np.asarray(counted, dtype=np.float64), k)
    with np.errstate(invalid="ignore"):
        # P(X >= k) of a binomial (m, rate) is the regularised incomplete beta I_rate(k, m - k + 1)
        tail = special.betainc(np.maximum(k, 1.0), m - np.maximum(k, 1.0) + 1.0, rate)
        z = -special.ndtri(np.clip(tail, 1e-300, 1.0))
    return np.where(k >= 1, np.maximum(z, 0.0), 0.0)


def held_score(score, previous):
    """The score a group holds after a judgement: the lower of this look's and the last one's.
    A growing group is judged again and again (``CampaignLayer``: every JUDGE_EVERY of its
    queries or a sixteenth, and at each new member while it is small) and keeps its level at its
    peak, while the lines are fitted on one look per benign crowd; a look of a few
    light members can land past a line by chance (at a member-count bin's edge, against tables
    fitted on deeper histories) and drop back at the next. A campaign's evidence stays past it,
    so a level is reached on two looks in a row."""
    return np.minimum(score, previous)


class ScoreTail:
    """Benign groups' score maxima, and an exponential tail fitted past their top
    TAIL_FRACTION: the share of benign groups that reach a score, and its inverse."""

    def __init__(self, max_scores: np.ndarray, what: str = "scores"):
        m = np.sort(np.asarray(max_scores, dtype=np.float64).ravel())
        m = m[np.isfinite(m)]
        if m.size < 10:
            raise CalibrationError(f"group calibration needs {what} of at least 10 benign groups; got {m.size}")
        self.max_scores = m
        self.tail_start = float(np.quantile(m, 1.0 - TAIL_FRACTION))
        excess = m[m > self.tail_start] - self.tail_start
        self.tail_scale = max(float(excess.mean()) if excess.size else 0.0, 0.05)

    def exceedance(self, score) -> np.ndarray:
        s = np.asarray(score, dtype=np.float64)
        m = self.max_scores
        empirical = 1.0 - np.searchsorted(m, s, side="left") / m.size
        tail = TAIL_FRACTION * np.exp(-(s - self.tail_start) / self.tail_scale)
        return np.clip(np.where(s > self.tail_start, tail, empirical), 0.0, 1.0)

    def threshold_for(self, fpr):
        """The score a share ``fpr`` of benign groups reaches (elementwise for arrays)."""
        p = np.clip(np.asarray(fpr, dtype=np.float64), 1e-300, 1.0)
        out = np.atleast_1d(self.tail_start + self.tail_scale * np.log(TAIL_FRACTION / p))
        bulk = np.atleast_1d(p >= TAIL_FRACTION)
        if bulk.any():  # inside the data: its quantile; past it, the fitted exponential tail
            out[bulk] = np.quantile(self.max_scores, 1.0 - np.atleast_1d(p)[bulk])
        return float(out[0]) if p.ndim == 0 else out


def member_bin(members: int | np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(MEMBER_BIN_EDGES, np.asarray(members), side="right") - 1, 0, N_MEMBER_BINS - 1)


@dataclass(frozen=True)
class GroupFeatures:
    """What a group looks like now."""

    members: int  # members with at least MIN_MEMBER_QUERIES of the group's queries
    accounts_seen: int
    queries: int
    member_focus: float  # within- minus between-member query similarity, averaged over members
    within_similarity: float
    between_similarity: float
    member_evidence: float  # mean per-query score (signed) the account detector gave these queries
    duplicate_share: float  # share of queries another member had already sent
    elicitation_rate: float  # mean reasoning-trace elicitation probability (NaN without a head)
    start_spread_hours: float  # interquartile range of members' first queries (NaN without timestamps)
    # members that count in the group (enough of its queries), and how many of them are probers:
    # MIN_LINKED_PROMPTS prompts sent as probes linked to other counted members
    counted_members: int = 0
    probe_linked_members: int = 0
    # distinct things the group asked (:mod:`.topics`), up to MAX_TOPICS; UNKNOWN: not counted
    topics: int = UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.__dict__.items()}


class GroupCalibration:
    """Per member-count bin: benign ``member_focus`` (median, 1st percentile) over every
    benign crowd; benign mean evidence and mean elicitation probability (median, 99th
    percentile) over *look-alike* crowds; and benign group score maxima.

    Content is read against look-alike crowds on purpose: the mean of a random benign crowd
    varies less and less as the crowd grows, so against random crowds any app whose traffic
    is a little unusual (a summariser, a support bot) would look certain. Look-alike crowds
    are the benign accounts most like each other, the nearest thing to one app's users.
    """

    TABLES = (
        "focus_median",
        "focus_q01",
        "between_median",
        "between_q01",
        "evidence_median",
        "evidence_q99",
        "elicitation_median",
        "elicitation_q99",
    )

    # how member focus is averaged (groups.member_mean_focus, one weight per member, since 0.22.0;
    # calibration files before it hold tables of the pair-weighted focus, PairStats.focus, and
    # are read that way: groups are measured as their tables were)
    FOCUS_WEIGHTINGS = ("pairs", "members")

    def __init__(
        self,
        tables: dict[str, np.ndarray],
        max_scores: np.ndarray,
        source: str = "",
        joint_max_scores: np.ndarray | None = None,
        focus_weighting: str = "members",
        probe_linked: tuple[int, int] | None = None,
    ):
        if focus_weighting not in self.FOCUS_WEIGHTINGS:
            raise CalibrationError(
                f"group calibration focus weighting must be one of {self.FOCUS_WEIGHTINGS}; got {focus_weighting!r}"
            )
        self.focus_weighting = focus_weighting
        for name in self.TABLES:
            table = np.asarray(tables[name], dtype=np.float64)
            if table.shape != (N_MEMBER_BINS,) or not np.isfinite(table).all():
                raise CalibrationError(
                    f"group calibration table {name} must hold {N_MEMBER_BINS} finite values; got {table.shape}"
                )
            setattr(self, name, table)
        self.tail = ScoreTail(max_scores)
        # benign groups' joint_evidence scores; None (calibration files before 0.12.4): every group
        # is scored by the weaker line
        self.joint_tail = None if joint_max_scores is None else ScoreTail(joint_max_scores, "joint scores")
        self.source = source
        # (probers, accounts) among the benign calibration accounts (benign_probe_linked); None
        # (calibrations fitted without prompts, or before 0.24.0): probe links add no content evidence
        if probe_linked is not None:
            probers, accounts = (int(v) for v in probe_linked)
            if not 0 <= probers <= accounts or accounts < 1:
                raise CalibrationError(
                    "group calibration probe_linked must be (probers, accounts) with 0 <= probers <= accounts "
                    f"and accounts >= 1; got {tuple(probe_linked)!r}"
                )
            probe_linked = (probers, accounts)
        self.probe_linked = probe_linked

    @property
    def probe_link_rate(self) -> float | None:
        """The share of benign accounts that are probers, at its one-sided upper confidence
        bound (PROBE_LINK_CONFIDENCE, Clopper-Pearson): with none among 2,700 calibration
        accounts it is 1.1e-3, not 0, so a benign prober or two never reads as a campaign."""
        if self.probe_linked is None:
            return None
        probers, accounts = self.probe_linked
        if probers >= accounts:
            return 1.0
        return float(special.betaincinv(probers + 1.0, float(accounts - probers), PROBE_LINK_CONFIDENCE))

    @property
    def max_scores(self) -> np.ndarray:
        """Benign groups' score maxima, sorted."""
        return self.tail.max_scores

    @classmethod
    def fit(
        cls, crowds: dict[str, np.ndarray], source: str = "", probe_linked: tuple[int, int] | None = None
    ) -> GroupCalibration:
        """From benign crowds (``focus``, ``evidence``, ``elicitation`` (NaN without a head),
        ``members``, ``duplicate_share``, ``lookalike`` per crowd): the tables (bins with too
        few crowds borrow from their nearest populated bin), then every benign crowd's score
        on them for the risk tail. ``probe_linked``: (probers, accounts) of the benign accounts
        (:func:`probewatch.campaigns.fitting.benign_probe_linked`). The crowds are scored without
        probe links: they are made up after the fact, so their members never met in one stream."""
        focus = np.asarray(crowds["focus"], dtype=np.float64)
        evidence = np.asarray(crowds["evidence"], dtype=np.float64)
        elicitation = np.asarray(crowds["elicitation"], dtype=np.float64)
        members = np.asarray(crowds["members"])
        lookalike = np.asarray(crowds["lookalike"], dtype=bool)
        duplicate_share = np.asarray(crowds["duplicate_share"], dtype=np.float64)
        between = np.asarray(crowds["between"], dtype=np.float64)
        ok = np.isfinite(focus) & np.isfinite(evidence) & np.isfinite(between) & (members >= MEMBER_BIN_EDGES[0])
        bins = member_bin(members)
        tables = {name: np.full(N_MEMBER_BINS, np.nan) for name in cls.TABLES}
        for b in range(N_MEMBER_BINS):
            every, alike = ok & (bins == b), ok & (bins == b) & lookalike
            if every.sum() < MIN_BIN_GROUPS or alike.sum() < MIN_BIN_GROUPS // 2:
                continue
            # the coordination scale comes from crowds that do not re-send each other's prompts:
            # a class or a harness run is coordinated, and is told apart by its duplicates
            distinct = every & (duplicate_share < DISTINCT_CROWD_MAX_DUPLICATES)
            scale = focus[distinct] if distinct.sum() >= MIN_BIN_GROUPS else focus[every]
            tables["focus_median"][b], tables["focus_q01"][b] = np.quantile(scale, [0.5, 0.01])
            random_crowds = every & ~lookalike
            tables["between_median"][b], tables["between_q01"][b] = np.quantile(
                between[random_crowds] if random_crowds.sum() >= MIN_BIN_GROUPS else between[every], [0.5, 0.01]
            )
            tables["evidence_median"][b], tables["evidence_q99"][b] = np.quantile(evidence[alike], [0.5, 0.99])
            p = elicitation[alike]
            p = p[np.isfinite(p)]
            # without an elicitation head no rate can reach 2: its content evidence stays 0
            tables["elicitation_median"][b], tables["elicitation_q99"][b] = (
                np.quantile(p, [0.5, 0.99]) if p.size else (2.0, 3.0)
            )
        populated = np.flatnonzero(np.isfinite(tables["focus_median"]))
        if populated.size == 0:
            raise CalibrationError(
                f"group calibration needs at least {MIN_BIN_GROUPS} benign groups of one size; got {int(ok.sum())}"
            )
        for b in range(N_MEMBER_BINS):
            if not np.isfinite(tables["focus_median"][b]):
                donor = populated[np.argmin(np.abs(populated - b))]
                for table in tables.values():
                    table[b] = table[donor]
        weighting = str(crowds.get("focus_weighting", "members"))
        draft = cls(tables, np.zeros(10), source, focus_weighting=weighting)
        lines = (focus[ok], between[ok], evidence[ok], elicitation[ok], members[ok], duplicate_share[ok])
        return cls(
            tables,
            draft.score(*lines),
            source,
            joint_max_scores=draft.joint_score(*lines),
            focus_weighting=weighting,
            probe_linked=probe_linked,
        )

    def coordination(self, focus, members) -> np.ndarray:
        """Focus deficit against benign groups of the size, in benign spreads (0 = as
        member-focused as the benign median or more; 2.33 = the benign 1st percentile)."""
        b = member_bin(members)
        med, q01 = self.focus_median[b], self.focus_q01[b]
        z = Z_AT_Q01 * (med - np.asarray(focus, dtype=np.float64)) / np.maximum(med - q01, 1e-6)
        return np.where(np.isfinite(z), np.maximum(z, 0.0), 0.0)

    def member_focus_tolerance(self) -> float:
        """How far one member's focus may sit above its group's and still count as dealt from
        the group's pool: the benign spread (median to 1st percentile) of the smallest crowds,
        two accounts. Averaged one weight per member, a two-account crowd's focus is the mean of
        two members' and spreads 1/sqrt(2) as far as one member's, so the spread is scaled back
        up; pooled over pairs, the heavier account's pairs dominate and it stands for one."""
        spread = float(self.focus_median[0] - self.focus_q01[0])
        return spread * math.sqrt(2.0) if self.focus_weighting == "members" else spread

    def content(self, between, evidence, elicitation, members, linked=0, counted=0) -> np.ndarray:
        """How extraction-like the members' queries are, on benign crowds' scales (2.33 = the
        benign 1st or 99th percentile), by the strongest of four signals:

        * dispersion: pairs of queries from different members less alike than in random
          benign crowds (coverage-maximising selection spreads its picks on purpose);
        * the account detector's mean signed per-query score (against look-alike crowds);
        * the mean reasoning-trace elicitation probability (against look-alike crowds);
        * ``linked`` of the ``counted`` members probe around prompts other members vary and
          nobody sent (:func:`probe_link_evidence`, against the benign accounts' prober rate;
          off without one): a campaign that deals each seed's variants to different members.
        """
        b = member_bin(members)
        scales = (
            (-np.asarray(between, dtype=np.float64), -self.between_median[b], -self.between_q01[b]),
            (evidence, self.evidence_median[b], self.evidence_q99[b]),
            (elicitation, self.elicitation_median[b], self.elicitation_q99[b]),
        )
        out = np.zeros(np.broadcast(np.asarray(evidence), b).shape)
        for value, med, tail in scales:
            z = Z_AT_Q01 * (np.asarray(value, dtype=np.float64) - med) / np.maximum(tail - med, 1e-6)
            out = np.maximum(out, np.where(np.isfinite(z), z, 0.0))
        rate = self.probe_link_rate
        if rate is not None:
            out = np.maximum(out, probe_link_evidence(linked, counted, rate))
        return out

    def score(
        self,
        focus,
        between,
        evidence,
        elicitation,
        members,
        duplicate_share,
        joint=False,
        linked=0,
        counted=0,
        asked=1.0,
    ) -> np.ndarray:
        """Both must hold: members act as one (coordination) and what they send looks like
        extraction (content). Queries another member already sent count for neither.

        By default the weaker line is the score. ``joint`` (for groups nobody joins by chance:
        a rare wrapper, a payment instrument, an organisation) scores by :func:`joint_evidence`
        instead, so a crowd as unfocused as a dealt pool whose content is far past benign is not
        held at its coordination line; that score is put back on this scale by its benign tail
        (the score of the same benign share), so thresholds, risks and comparisons stay one
        scale. Without joint scores in the calibration, ``joint`` changes nothing.

        ``asked`` (:func:`.topics.asked_share`) scales the score down where the group asked fewer
        distinct things than it has accounts. Benign crowds are scored at 1 for the tables: the
        share only lowers a live group's score, so a benign group stays within the calibrated
        benign tail."""
        if joint and self.joint_tail is not None:
            raw = self.joint_score(
                focus, between, evidence, elicitation, members, duplicate_share, linked, counted, asked
            )
            return np.asarray(self.tail.threshold_for(self.joint_tail.exceedance(raw)), dtype=np.float64)
        content = self.content(between, evidence, elicitation, members, linked, counted)
        return np.minimum(self.coordination(focus, members), content) * self._kept(duplicate_share, asked)

    def joint_score(
        self, focus, between, evidence, elicitation, members, duplicate_share, linked=0, counted=0, asked=1.0
    ) -> np.ndarray:
        """:func:`joint_evidence` of the two lines, discounted for duplicates as :meth:`score` is,
        on its own scale (benign groups' joint scores, ``joint_tail``)."""
        content = self.content(between, evidence, elicitation, members, linked, counted)
        return joint_evidence(self.coordination(focus, members), content) * self._kept(duplicate_share, asked)

    @staticmethod
    def _kept(duplicate_share, asked) -> np.ndarray:
        """The share of a score a group keeps: less the queries another member had already sent,
        and ``asked``, the share it keeps for the distinct things it asked
        (:func:`.topics.asked_share`: less than 1 where it asked fewer than it has accounts)."""
        repeats = 1.0 - np.clip(np.asarray(duplicate_share, dtype=np.float64), 0.0, 1.0)
        return repeats * np.clip(np.asarray(asked, dtype=np.float64), 0.0, 1.0)

    def exceedance(self, score) -> np.ndarray:
        return self.tail.exceedance(score)

    def threshold_for(self, fpr: float) -> float:
        return float(self.tail.threshold_for(fpr))

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {f"group_{name}": getattr(self, name) for name in self.TABLES}
        out["group_max_scores"] = self.max_scores
        if self.joint_tail is not None:
            out["group_joint_max_scores"] = self.joint_tail.max_scores
        out["group_focus_weighting"] = np.array(self.FOCUS_WEIGHTINGS.index(self.focus_weighting), dtype=np.int8)
        if self.probe_linked is not None:
            out["group_probe_linked"] = np.array(self.probe_linked, dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays, source: str = "") -> GroupCalibration:
        tables = {name: np.asarray(arrays[f"group_{name}"]) for name in cls.TABLES}
        joint = np.asarray(arrays["group_joint_max_scores"]) if "group_joint_max_scores" in arrays else None
        weighting = "pairs"  # files before 0.22.0
        if "group_focus_weighting" in arrays:
            code = np.asarray(arrays["group_focus_weighting"])
            if code.shape != () or int(code) not in range(len(cls.FOCUS_WEIGHTINGS)):
                raise CalibrationError(
                    f"group_focus_weighting must be one number in 0..{len(cls.FOCUS_WEIGHTINGS) - 1}; "
                    f"got {code.tolist()!r}"
                )
            weighting = cls.FOCUS_WEIGHTINGS[int(code)]
        probe_linked = None  # files before 0.24.0, or fitted without prompts
        if "group_probe_linked" in arrays:
            counts = np.asarray(arrays["group_probe_linked"])
            if counts.shape != (2,) or not np.issubdtype(counts.dtype, np.integer):
                raise CalibrationError(
                    "group_probe_linked must be two integers (probers, accounts); "
                    f"got {counts.dtype} of shape {counts.shape}"
                )
            probe_linked = (int(counts[0]), int(counts[1]))
        return cls(
            tables,
            np.asarray(arrays["group_max_scores"]),
            source,
            joint_max_scores=joint,
            focus_weighting=weighting,
            probe_linked=probe_linked,
        )


class GroupJudge:
    """Scores, risks and levels of groups under one :class:`GroupCalibration`."""

    def __init__(self, calibration: GroupCalibration, target_fpr: float, watch_fpr: float):
        self.calibration = calibration
        self.flag_threshold = calibration.threshold_for(target_fpr)
        self.watch_threshold = calibration.threshold_for(watch_fpr)

    def judge(self, features: GroupFeatures, joint: bool = False) -> tuple[float, float]:
        """(score, risk); 0 for groups below MIN_GROUP_MEMBERS members. ``joint``: see
        :meth:`GroupCalibration.score`."""
        if features.members < MIN_GROUP_MEMBERS:
            return 0.0, 0.0
        score = float(
            self.calibration.score(
                features.member_focus,
                features.between_similarity,
                features.member_evidence,
                features.elicitation_rate,
                features.members,
                features.duplicate_share,
                joint=joint,
                linked=features.probe_linked_members,
                counted=features.counted_members,
                asked=asked_share(features.topics, features.accounts_seen),
            )
        )
        return score, float(1.0 - self.calibration.exceedance(score))

    def level_for(self, score: float) -> Level:
        return Level.for_score(score, self.flag_threshold, self.watch_threshold)
