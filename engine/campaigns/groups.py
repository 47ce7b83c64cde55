"""Candidate groups: the accounts that share one indicator, and their pooled statistics.

Every indicator value (a template anchor, a hashed metadata value, a payload region) that
two or more accounts share is a candidate group. A group keeps, for each tracked member,
the sum of the member's unit vectors that carry the indicator, and for the whole group the
sum of all of them. From sums alone the mean similarity of query pairs *within* members
and *between* members follows exactly (for unit vectors, ``|s|^2 = n + 2 * sum of pair
similarities``), so each query updates a group in O(d) and judging needs no search:

* a campaign deals one pool of payloads out to its accounts: a member's queries are no
  more alike than queries of two different members (``member_focus`` near 0);
* independent users who share a template or a NAT each bring their own documents and
  topics: their own queries are more alike than other users' (``member_focus`` > 0).

A shared template adds the same component to every vector and cancels out of the
difference. :func:`pair_similarities` is the brute-force definition the tests compare with.
Judging takes the focus member by member (:func:`member_mean_focus`: O(members x d)), so a
few heavy members do not outweigh many light ones.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from ..types import Level
from .topics import MAX_TOPICS, UNKNOWN, opens_topic


def fingerprint(vector: np.ndarray) -> int:
    """A stable 64-bit id of a query vector: one prompt always embeds to one vector, so
    equal fingerprints are (nearly always) one prompt sent again. Stable across processes,
    unlike ``hash``, so snapshots keep them."""
    digest = hashlib.blake2b(np.asarray(vector, dtype=np.float16).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


@dataclass
class PairStats:
    """Mean similarity of query pairs within members and between members."""

    within: float  # NaN without within-member pairs
    between: float  # NaN without between-member pairs
    within_pairs: int
    between_pairs: int

    @property
    def focus(self) -> float:
        return self.within - self.between


def pair_similarities(vectors_by_member: list[np.ndarray]) -> PairStats:
    """Brute force over every pair of queries (the reference for tests)."""
    within_sum, within_n, between_sum, between_n = 0.0, 0, 0.0, 0
    for i, a in enumerate(vectors_by_member):
        a = np.asarray(a, dtype=np.float64)
        for r in range(a.shape[0]):
            for s in range(r + 1, a.shape[0]):
                within_sum += float(a[r] @ a[s])
                within_n += 1
        for b in vectors_by_member[i + 1 :]:
            b = np.asarray(b, dtype=np.float64)
            between_sum += float((a @ b.T).sum())
            between_n += a.shape[0] * b.shape[0]
    return PairStats(
        within_sum / within_n if within_n else math.nan,
        between_sum / between_n if between_n else math.nan,
        within_n,
        between_n,
    )


def pair_stats_from_sums(total: np.ndarray, n: int, member_sq_norms: float, member_sq_counts: float) -> PairStats:
    """:class:`PairStats` from the group sum ``total`` of ``n`` unit vectors, the sum over
    members of their squared sum norms, and the sum over members of their squared counts."""
    all_pairs = n * (n - 1) / 2
    within_pairs = (member_sq_counts - n) / 2
    between_pairs = all_pairs - within_pairs
    all_sum = (float(total @ total) - n) / 2
    within_sum = (member_sq_norms - n) / 2
    between_sum = all_sum - within_sum
    return PairStats(
        within_sum / within_pairs if within_pairs > 0 else math.nan,
        between_sum / between_pairs if between_pairs > 0 else math.nan,
        round(within_pairs),
        round(between_pairs),
    )


def member_focuses(own: np.ndarray, counts: np.ndarray, sq_norms: np.ndarray, total: np.ndarray, n: int) -> np.ndarray:
    """Each member's focus: the mean similarity of its own query pairs minus that of its
    queries with the rest of the group's. Rows ``own``: member sums of ``counts`` unit vectors
    with squared norms ``sq_norms``; ``total``: the group sum of ``n``. NaN for a member with
    fewer than two queries or no rest to compare with."""
    counts = np.asarray(counts, dtype=np.float64)
    sq_norms = np.asarray(sq_norms, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        within = (sq_norms - counts) / (counts * (counts - 1))
        between = (np.asarray(own, dtype=np.float64) @ np.asarray(total, dtype=np.float64) - sq_norms) / (
            counts * (n - counts)
        )
    return np.where((counts >= 2) & (counts < n), within - between, np.nan)


def member_mean_focus(own: np.ndarray, counts: np.ndarray, sq_norms: np.ndarray, total: np.ndarray, n: int) -> float:
    """:func:`member_focuses` averaged with one weight per member (members with two queries or
    more and a rest to compare with); NaN without any.

    Pooled over pairs (:func:`pair_stats_from_sums`), a few heavy members own most of the
    within-member pairs and the many light ones most of the between-member pairs, so a crowd of
    one app's light users beside a few varied heavy accounts reads as less focused than a dealt
    pool (a negative focus). One weight per member compares like with like: a dealt pool's
    members average 0 at every size, benign crowds stay above it."""
    focus = member_focuses(own, counts, sq_norms, total, n)
    kept = focus[np.isfinite(focus)]
    return float(np.mean(kept)) if kept.size else math.nan


def member_deviation(own: np.ndarray, counts: np.ndarray, total: np.ndarray, n: int) -> np.ndarray:
    """How far each member's mean lies from the mean of the rest of its group, in units of
    what exchangeable draws would give: ``|m_i - m_rest|^2 / ((1 - |m|^2) (1/n_i + 1/n_rest))``
    for member sums ``own`` (one row each) of ``counts`` unit vectors, group sum ``total`` of
    ``n``. If a member's queries were dealt from the same pool as the others', its expected
    value is 1 whatever its size (``1 - |m|^2`` is the pool's total variance); an account
    that brings its own topics sits further out. NaN for a member that is the whole group."""
    own = np.asarray(own, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    rest_n = n - counts
    mean = total / max(n, 1)
    variance = max(1.0 - float(mean @ mean), 1e-6)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = own / counts[:, None] - (total[None, :] - own) / rest_n[:, None]
        return np.einsum("ij,ij->i", gap, gap) / (variance * (1.0 / counts + 1.0 / rest_n))


def exchangeable_spread(vectors: np.ndarray) -> float:
    """Standard deviation of :func:`member_deviation` for members dealt from a pool shaped
    like ``vectors`` (unit rows): ``sqrt(2 tr(C^2)) / tr(C)`` for their covariance ``C``,
    i.e. ``sqrt(2 / effective dimensions)``."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"exchangeable_spread needs a 2-D array of at least 2 rows; got shape {x.shape}")
    centred = x - x.mean(axis=0)
    cov = centred.T @ centred / (x.shape[0] - 1)
    trace = float(np.trace(cov))
    return math.sqrt(2.0 * float((cov * cov).sum())) / trace


class MembershipPool:
    """Per (group, member) sums in preallocated rows, so memory is capped by ``capacity``."""

    def __init__(self, dim: int, capacity: int):
        self.dim = dim
        self.capacity = capacity
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self.counts = np.zeros(0, dtype=np.int64)
        self.sq_norms = np.zeros(0, dtype=np.float64)
        self.first_ts = np.zeros(0, dtype=np.float64)
        self._free: list[int] = []
        self.used = 0

    def allocate(self) -> int | None:
        """A zeroed row, or None when the pool is full."""
        if not self._free:
            size = self.vectors.shape[0]
            if size >= self.capacity:
                return None
            grown = min(self.capacity, max(64, 2 * size))
            self.vectors = np.concatenate([self.vectors, np.zeros((grown - size, self.dim), dtype=np.float32)])
            self.counts = np.concatenate([self.counts, np.zeros(grown - size, dtype=np.int64)])
            self.sq_norms = np.concatenate([self.sq_norms, np.zeros(grown - size)])
            self.first_ts = np.concatenate([self.first_ts, np.full(grown - size, np.nan)])
            self._free = list(range(grown - 1, size - 1, -1))
        slot = self._free.pop()
        self.vectors[slot] = 0.0
        self.counts[slot] = 0
        self.sq_norms[slot] = 0.0
        self.first_ts[slot] = math.nan
        self.used += 1
        return slot

    def release(self, slot: int) -> None:
        self._free.append(slot)
        self.used -= 1

    def nbytes(self) -> int:
        return self.vectors.nbytes + self.counts.nbytes + self.sq_norms.nbytes + self.first_ts.nbytes


@dataclass
class Group:
    """One indicator's accounts and their pooled statistics (see the module docstring)."""

    key: str
    kind: str  # "template", "meta" or "payload"
    label: str  # template anchor words, or the metadata kind; never a raw metadata value
    dim: int
    members: dict[str, int] = field(default_factory=dict)  # account -> pool row
    linked: set[str] = field(default_factory=set)  # accounts linked by probes, not members (layer)
    total: np.ndarray | None = None  # float64 sum of every tracked member's vectors
    n: int = 0  # queries summed into total
    member_sq_norms: float = 0.0
    member_sq_counts: float = 0.0
    accounts_seen: int = 0  # members ever, tracked or not
    elicitation_sum: float = 0.0
    evidence_sum: float = 0.0
    duplicates: int = 0  # queries another member had already sent
    fingerprints: dict[int, str] = field(default_factory=dict)  # query fingerprint -> first sender
    first_ts: float = math.nan
    last_ts: float = math.nan
    last_seen: int = 0  # engine observation count at the last update (eviction order)
    judged_at: int = 0  # n at the last judgement
    score: float = 0.0
    risk: float = 0.0
    level: Level = Level.OK
    peak_score: float = 0.0
    campaign_judged_at: int = 0  # n when its campaign was last judged as one group
    campaign_score: float = 0.0  # peak score of its campaign judged as one group (layer._judge_campaign)
    flagged_at_n: int = -1
    # the same without probers as content evidence (layer._judge): the level bystanders may reach
    plain_score: float = 0.0
    plain_peak: float = 0.0
    # distinct things asked (.topics): the first query of each topic as it came, up to MAX_TOPICS;
    # topics >= rows (a payload region's block of history counts its queries as topics, unseen)
    topics: int = 0
    topic_rows: np.ndarray | None = None

    def note_topic(self, x: np.ndarray) -> None:
        """Count unit vector ``x``, already summed into ``total``, among the group's topics."""
        if self.topics == UNKNOWN or self.topics >= MAX_TOPICS:
            return
        rows = self.topic_rows
        if rows is None or opens_topic(rows, x, self.total / self.n):
            row = np.asarray(x, dtype=np.float32)[None, :]
            self.topic_rows = row if rows is None else np.concatenate([rows, row])
            self.topics += 1

    def note_unseen_topics(self, count: int) -> None:
        """Count ``count`` queries whose vectors the group never saw (a payload region's block of
        an account's history: diverse by selection) as topics of their own."""
        if self.topics != UNKNOWN:
            self.topics = min(MAX_TOPICS, self.topics + count)

    def __post_init__(self) -> None:
        if self.total is None:
            self.total = np.zeros(self.dim, dtype=np.float64)

    def pair_stats(self) -> PairStats:
        return pair_stats_from_sums(self.total, self.n, self.member_sq_norms, self.member_sq_counts)
