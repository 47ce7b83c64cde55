"""Per-account running state and the feature vector the detector scores.

Each account keeps O(window) numbers besides its FAISS history: ring buffers of the
recent queries' nearest-neighbour similarities, reference similarities and codebook
cells; all-time histograms; and window statistics that need the recent vectors (MMD,
participation ratio, pairwise similarity), refreshed from the store on a fixed schedule.
The schedule depends only on the account's query count, so replaying a stream gives the
same features whatever the batch boundaries were.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from probewatch.kernels import (
    coverage_stats,
    mean_pairwise_similarity_from_gram,
    mmd2_from_parts,
    participation_ratio_from_gram,
    shapiro_wilk_w,
)

from ..types import Level
from .prompt_memory import CONTINUES, FRESH, UNKNOWN_TEXT, PromptMemory

# name -> what it measures (shown in verdict reasons)
FEATURES: dict[str, str] = {
    "nn_similarity_mean": "mean similarity of recent queries to their nearest earlier query",
    "nn_similarity_spread": "spread (std) of recent nearest-neighbour similarities",
    "knn_similarity_mean": "mean similarity of recent queries to their k nearest earlier queries",
    "near_duplicate_rate": "share of recent queries that nearly duplicate an earlier one",
    "min_distance_normality": "Shapiro-Wilk W of recent minimum distances (PRADA)",
    "reference_similarity": "mean similarity of recent queries to the nearest benign reference traffic",
    "mmd_to_benign": "MMD^2 between recent queries and benign reference traffic",
    "cell_entropy": "normalised entropy of the codebook cells recent queries fall in",
    "distinct_cell_rate": "distinct codebook cells per recent query",
    "participation_ratio": "effective number of dimensions of recent queries",
    "mean_pairwise_similarity": "mean similarity between recent queries (topical focus)",
    "off_reference_rate": "share of all queries unlike any benign reference traffic",
    "new_cell_rate": "distinct codebook cells per query over the account's lifetime",
    "near_duplicate_rate_lifetime": "share of all queries that nearly duplicate an earlier one",
    "topic_return_rate": (
        "share of all queries that return to the subject of an earlier one (people come back to their "
        "topics; independently drawn samples rarely do)"
    ),
    "follow_up_similarity": (
        "how much more each recent query resembles the one just before it than the rest of the window "
        "(people build on their last turn; extraction scripts send independent samples)"
    ),
    "walk_away_rate": (
        "share of all queries that are a small edit of an earlier query and either far from where that "
        "chain of edits began or eight or more edits down it (perturbation attacks walk away from their "
        "seeds one small step at a time and keep stepping; people editing a prompt make a few edits and "
        "stay close to what they first asked)"
    ),
    "neighbourhood_probe_rate": (
        "share of all queries that are variants of a seed: a small word-level edit of three or more of the "
        "account's last 16 prompts, or one or two words off what its near neighbours share while they vary "
        "other words; or one cell of a grid the account crosses, a payload it sent under three other frames "
        "(persona, audience or task instructions) in a frame it sent around three other payloads (explainers, "
        "boundary searches and contrast sets send many variants around one seed, sent or not, and behavioural "
        "cloning sends every payload under every frame; people editing a prompt build on their "
        "last version, and apps put one frame around new inputs)"
    ),
    "framed_return_rate": (
        "share of the queries under one recurring frame (a sentence the account took up after it "
        "started, such as a reasoning request or a task template around new inputs) that return to the "
        "subject of an earlier query under that frame (a person's framed requests come back to their "
        "topics; a harvesting script puts one frame around independently drawn questions, alone or mixed "
        "into an ordinary user's traffic)"
    ),
    "framed_share": "share of all queries sent under that recurring frame",
}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES)
N_FEATURES = len(FEATURE_NAMES)
_F = {name: i for i, name in enumerate(FEATURE_NAMES)}

_NN_COLUMNS = [
    _F[name]
    for name in (
        "nn_similarity_mean",
        "nn_similarity_spread",
        "knn_similarity_mean",
        "near_duplicate_rate",
        "near_duplicate_rate_lifetime",
    )
]

GRAM_STATS = 4  # window statistics kept from the last Gram refresh
# the feature columns of those statistics, in their order
_GRAM_COLUMNS = [
    _F[name] for name in ("participation_ratio", "mean_pairwise_similarity", "mmd_to_benign", "follow_up_similarity")
]

# Per-query scores averaged into an account's score (see probewatch.detect.scoring).
SMOOTHING_QUERIES = 16

# Histogram of similarities in [-0.2, 1.0]: lifetime rates at any threshold from 48 counters.
SIM_HIST_EDGES = np.linspace(-0.2, 1.0, 49)
# A query whose nearest earlier query of the account is at least this similar (cosine) returns
# to that query's subject: MiniLM puts unrelated prompts near 0.1-0.3 and rewordings above 0.8.
# A histogram edge (SIM_HIST_EDGES), so the lifetime count is exact.
TOPIC_RETURN_SIMILARITY = 0.7
# A walk-away step (``walk_steps``): a query whose nearest earlier query in the window is at least
# WALK_LINK_SIMILARITY (a small edit of it), whose chain of such links goes back at least
# WALK_DEPTH steps with similarity falling at each step back (a path, not a cluster), whose
# chain's first query is below WALK_ROOT_SIMILARITY (it has walked away from it), and which has
# at most WALK_MAX_CLOSE earlier window queries at the link similarity. The last two keep out
# the users of one fixed app template, whose prompts all sit close together: many close
# neighbours, no direction.
WALK_LINK_SIMILARITY = 0.85
WALK_ROOT_SIMILARITY = 0.75
WALK_DEPTH = 4
WALK_MAX_CLOSE = 3
# A query whose chain goes back at least WALK_DEEP_DEPTH links, similarity falling at each step
# back but at most WALK_DEEP_REVERSALS of them, is a step however close it stays to where the
# chain began: character-level edits (typos, swapped words) keep MiniLM similarity above
# WALK_ROOT_SIMILARITY for many steps, and each of a chain's variants is then a close neighbour
# of many others. People editing a prompt stop long before eight successive edits; one app
# template's prompts form a cluster, not a path. One reversal is allowed because a seed that
# dominates its prompt (an adversarial suffix searched after it, one number stepped inside it)
# leaves successive variants almost equally close, and one random mutation can undo part of an
# earlier one. Where the order of the eight similarities along a chain is random, they fall with
# at most one reversal 248 times in 40,320 (0.6 %; Eulerian numbers) against once with none, so
# the bound on close neighbours below keeps chains through a crowd out.
WALK_DEEP_DEPTH = 8
WALK_DEEP_REVERSALS = 1
# A deep path's query has at most WALK_DEEP_CLOSE_PER_LINK close earlier queries (at the link
# similarity) per link back to its chain's first query: in an edit walk the close queries are
# the walk's own earlier variants, while behind one app template that dominates its prompts (a
# support bot's fixed instructions, then each customer's own message) nearly every query is
# close to every other, and a chain of nearest neighbours through such a crowd can fall for
# eight links without being a walk.
WALK_DEEP_CLOSE_PER_LINK = 2
MIN_NORMALITY_SAMPLES = 16  # Shapiro-Wilk on fewer minimum distances is mostly noise
RISK_TRACE_POINTS = 256  # risk-over-time points kept per account for reports


_HIST_LO, _HIST_WIDTH, _HIST_BINS = (
    float(SIM_HIST_EDGES[0]),
    float(SIM_HIST_EDGES[1] - SIM_HIST_EDGES[0]),
    len(SIM_HIST_EDGES) - 1,
)


def _hist_index(value: float) -> int:
    # Scalar arithmetic: this runs for every query, where np.searchsorted's overhead dominates.
    return min(max(int((value - _HIST_LO) // _HIST_WIDTH), 0), _HIST_BINS - 1)


@dataclass
class QueryFacts:
    """What the pipeline knows about one query when it updates its account."""

    nn_similarity: float  # NaN for an account's first query
    knn_similarity: float
    ref_similarity: float
    ref_kernel_mean: float
    cell: int
    # whether the prompt continues one of the account's recent prompts (CONTINUATION_MEMORY):
    # CONTINUES, FRESH, or UNKNOWN_TEXT where the caller passed no prompt
    continues: int = UNKNOWN_TEXT
    # whether the prompt is a neighbourhood probe (see probewatch.detect.probes)
    probe: bool = False
    # (return rate, queries) of the account's reported frame thread right after this query's
    # prompt was noted (AccountState.framed_stats); None: read from the state at capture
    framed: tuple[float, int] | None = None


class AccountState(PromptMemory):
    """Running statistics of one account. Plain arrays and scalars, so snapshots are exact; what
    it remembers of its prompts' text is :class:`PromptMemory`'s."""

    __slots__ = (
        "_trace_len",
        "_trace_n",
        "_trace_risk",
        "cell_counts",
        "first_ts",
        "flagged_at",
        "gram_stats",
        "last_ts",
        "level",
        "n",
        "nn_hist",
        "peak_risk",
        "peak_score",
        "recent_scores",
        "ref_hist",
        "ring_cell",
        "ring_continues",
        "ring_kmean",
        "ring_knn",
        "ring_nn",
        "ring_ref",
        "walk",
        "window",
    )

    RETURN_SIMILARITY = TOPIC_RETURN_SIMILARITY

    def __init__(self, window: int, n_cells: int):
        self.window = window
        self.n = 0
        self.first_ts = math.nan
        self.last_ts = math.nan
        self.ring_nn = np.full(window, np.nan, dtype=np.float32)
        self.ring_knn = np.full(window, np.nan, dtype=np.float32)
        self.ring_ref = np.full(window, np.nan, dtype=np.float32)
        self.ring_kmean = np.full(window, np.nan, dtype=np.float32)
        self.ring_cell = np.full(window, -1, dtype=np.int16)
        self.nn_hist = np.zeros(len(SIM_HIST_EDGES) - 1, dtype=np.int64)
        self.ref_hist = np.zeros(len(SIM_HIST_EDGES) - 1, dtype=np.int64)
        self.cell_counts = np.zeros(n_cells, dtype=np.int64)
        # [participation_ratio, mean_pairwise_similarity, mmd2, follow_up] of the window at the last refresh
        self.gram_stats = np.full(GRAM_STATS, np.nan, dtype=np.float64)
        self.peak_score = 0.0
        self.peak_risk = 0.0
        self.level = Level.OK
        self.flagged_at = -1
        # (n, risk) samples for reports, bounded; two small arrays, not a list of tuples, since
        # every account keeps one.
        self._trace_n = np.zeros(RISK_TRACE_POINTS + 1, dtype=np.int64)
        self._trace_risk = np.zeros(RISK_TRACE_POINTS + 1, dtype=np.float32)
        self._trace_len = 0
        self.recent_scores = np.zeros(SMOOTHING_QUERIES, dtype=np.float64)  # per-query scores, a ring
        # [queries judged for walk-away steps (the count at the last judgement), steps found]
        self.walk = np.zeros(2, dtype=np.int64)
        # each recent query's continuation mark (UNKNOWN_TEXT, FRESH, CONTINUES)
        self.ring_continues = np.full(window, UNKNOWN_TEXT, dtype=np.int8)
        self._init_prompt_memory()

    def update(self, facts: QueryFacts, ts: float | None) -> None:
        slot = self.n % self.window
        self.ring_continues[slot] = facts.continues
        self.ring_nn[slot] = facts.nn_similarity
        self.ring_knn[slot] = facts.knn_similarity
        self.ring_ref[slot] = facts.ref_similarity
        self.ring_kmean[slot] = facts.ref_kernel_mean
        self.ring_cell[slot] = facts.cell
        if facts.probe:
            self.probes[1] += 1
        if not math.isnan(facts.nn_similarity):
            self.nn_hist[_hist_index(facts.nn_similarity)] += 1
        self.ref_hist[_hist_index(facts.ref_similarity)] += 1
        self.cell_counts[facts.cell] += 1
        self.n += 1
        if ts is not None:  # the span seen, whatever order stamps arrive in (min/max skip NaN: ts first)
            self.first_ts = min(ts, self.first_ts)
            self.last_ts = max(ts, self.last_ts)

    def nbytes(self) -> int:
        """Bytes of this state's arrays (what per-account memory accounting charges)."""
        return sum(value.nbytes for value in map(self.__getattribute__, _SLOTS) if isinstance(value, np.ndarray))

    def needs_gram_refresh(self, refresh_every: int) -> bool:
        """Refresh every query while young (features move fast), then every ``refresh_every``."""
        return self.n >= 2 and (self.n <= self.window // 4 or self.n % refresh_every == 0)

    def refresh_gram_stats(self, recent_vectors: np.ndarray, reference_self_kernel: float, gamma: float) -> None:
        """Recompute the Gram-based window statistics from the account's most recent vectors
        (one refresh on its own; :func:`advance` refreshes a batch's accounts together)."""
        due = self.due_refresh(recent_vectors)
        if due is not None:
            stats, steps = window_statistics([due], reference_self_kernel, gamma)
            self.gram_stats[:] = stats[0]
            self.walk[1] += steps[0]

    def due_refresh(self, recent_vectors: np.ndarray) -> DueRefresh | None:
        """What a refresh now needs: the window's rows and their reference kernel means, and
        the first row not yet judged for walk-away steps (marked judged here). None when the
        window holds fewer than 2 rows."""
        x = np.ascontiguousarray(recent_vectors[-self.window :], dtype=np.float32)
        m = x.shape[0]
        if m < 2:
            return None
        # each query is judged once, at the first refresh that sees it (the schedule depends
        # only on the count, so a replay judges the same queries against the same windows)
        unjudged = min(self.n - int(self.walk[0]), m)
        self.walk[0] = self.n
        return DueRefresh(
            x, self._window_values(self.ring_kmean)[-m:], m - unjudged, self._window_values(self.ring_continues)[-m:]
        )

    def _window_values(self, ring: np.ndarray) -> np.ndarray:
        """Ring contents oldest -> newest (only the filled part); a copy, since a batch's due
        refreshes are computed after its later items have written the ring (for a young
        account a view would change under a pending refresh once its ring wraps)."""
        if self.n < self.window:
            return ring[: self.n].copy()
        start = self.n % self.window
        return np.concatenate([ring[start:], ring[:start]])

    def features(self, near_duplicate_similarity: float, off_reference_similarity: float) -> np.ndarray:
        """The feature vector now (order of FEATURE_NAMES); NaN where there is too little data."""
        batch = FeatureBatch(1, self.window, self.cell_counts.shape[0])
        batch.capture(0, self)
        return batch.features(near_duplicate_similarity, off_reference_similarity)[0]

    def record_risk(self, risk: float, n: int) -> None:
        """Keep a bounded risk trajectory: every point while short, then thinned by half."""
        self._trace_n[self._trace_len] = n
        self._trace_risk[self._trace_len] = risk
        self._trace_len += 1
        if self._trace_len > RISK_TRACE_POINTS:
            kept = self._trace_len // 2 + self._trace_len % 2  # every other point, first included
            self._trace_n[:kept] = self._trace_n[: self._trace_len : 2]
            self._trace_risk[:kept] = self._trace_risk[: self._trace_len : 2]
            self._trace_len = kept

    @property
    def history(self) -> list[tuple[int, float]]:
        """The recorded (n, risk) points, oldest first."""
        return [
            (int(n), round(float(r), 6))
            for n, r in zip(self._trace_n[: self._trace_len], self._trace_risk[: self._trace_len], strict=True)
        ]

    @history.setter
    def history(self, points: list[tuple[int, float]]) -> None:
        points = list(points)[-RISK_TRACE_POINTS:]
        self._trace_len = len(points)
        for i, (n, r) in enumerate(points):
            self._trace_n[i], self._trace_risk[i] = n, r

    # -- snapshots ------------------------------------------------------------------
    SCALARS = ("n", "first_ts", "last_ts", "peak_score", "peak_risk", "level", "flagged_at")
    ARRAYS = (
        "ring_nn",
        "ring_knn",
        "ring_ref",
        "ring_kmean",
        "ring_cell",
        "nn_hist",
        "ref_hist",
        "cell_counts",
        "gram_stats",
        "recent_scores",
        "walk",
        "ring_continues",
        "prompt_lengths",
        "prompt_heads",
        "prompt_digests",
        "prompt_sketches",
        "prompt_words",
        "prompt_signatures",
        "probes",
        "prompt_continued",
        "appended",
        "part_ring",
        "part_owners",
        "parts_written",
        "frame_parts",
        "frame_counts",
        "part_noted",
        "sent_count",
    )
    # absent from older snapshots, so they start at their defaults: steps judged from the next
    # refresh on (0.12.0); no recent prompt to continue (0.12.5); no recent prompt to be a probe
    # around, none counted (0.13.0); no prompt continued, no addition remembered (0.15.0); no
    # prompt's parts remembered (0.16.1; 0.16.0's line-level arrays, named grid_*, are not read);
    # no frame thread (0.17.0); no prompt remembered as sent (0.18.0). Every array from "walk" on
    # in ARRAYS; newer ones go at its end. ``frame_vectors`` and ``sent_digests`` are not among
    # them: their sizes differ between accounts, and snapshots store them apart.
    SINCE_0_12 = ARRAYS[ARRAYS.index("walk") :]


_SLOTS = AccountState.__slots__ + PromptMemory.__slots__  # every array an account holds

# Window rows a batch holds before its pending refreshes are computed (a 128-row window of
# 384-d rows is 192 KiB; the stacked copy and Gram matrices add about as much again).
PENDING_WINDOW_BYTES = 16 * 2**20


@dataclass
class DueRefresh:
    """One account window whose Gram statistics are due (see AccountState.due_refresh)."""

    rows: np.ndarray  # (m, d) float32, oldest first
    kernel_means: np.ndarray  # (m,) each row's mean kernel value to the benign reference
    first_unjudged: int  # rows from here on are judged for walk-away steps
    continues: np.ndarray | None = None  # (m,) each row's continuation mark (None: all UNKNOWN_TEXT)


def window_statistics(
    due: list[DueRefresh], reference_self_kernel: float, gamma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gram statistics of many windows: ``(k, GRAM_STATS)`` [participation ratio, mean
    pairwise similarity, MMD^2 to the reference, follow-up similarity] and ``(k,)`` walk-away
    steps. Windows of one length share one stacked product and one call per statistic; every
    reduction runs per matrix, so a window's numbers do not depend on which others came with it."""
    stats = np.empty((len(due), GRAM_STATS), dtype=np.float64)
    steps = np.zeros(len(due), dtype=np.int64)
    by_length: dict[int, list[int]] = {}
    for j, d in enumerate(due):
        by_length.setdefault(d.rows.shape[0], []).append(j)
    for m, members in by_length.items():
        x = due[members[0]].rows[None] if len(members) == 1 else np.stack([due[j].rows for j in members])
        grams = np.matmul(x, x.transpose(0, 2, 1)).astype(np.float64)  # float32 products, float64 statistics
        kernel_means = np.stack([due[j].kernel_means for j in members])
        pairwise = mean_pairwise_similarity_from_gram(grams)
        stats[members, 0] = participation_ratio_from_gram(grams)
        stats[members, 1] = pairwise
        stats[members, 2] = mmd2_from_parts(grams, kernel_means, reference_self_kernel, gamma)
        # consecutive queries (each Gram's first off-diagonal) against all pairs of the window
        stats[members, 3] = np.diagonal(grams, 1, axis1=1, axis2=2).mean(axis=1) - pairwise
        if m > WALK_DEPTH:
            for j, gram in zip(members, grams, strict=True):
                steps[j] = walk_steps(gram, due[j].first_unjudged, due[j].continues)
    return stats, steps


def advance(
    states: list[AccountState],
    facts: list[QueryFacts],
    ts: list[float | None],
    window: int,
    refresh_every: int,
    window_of: Callable[[int], np.ndarray],
    reference,
) -> FeatureBatch:
    """Fold item ``i``'s facts into ``states[i]`` in order and capture each state right then.

    Items of one account share its state, so each sees exactly the queries before it. When a
    state's Gram statistics are due, ``window_of(i)`` gives the account's recent vectors as of
    item ``i``; ``reference`` is the :class:`~probewatch.detect.reference.BenignReference`.
    The due refreshes are computed together at the end (young accounts refresh at every
    query, and one call per statistic per window dominated a batch of many accounts); the
    captured rows from each refresh on are then corrected, in item order.
    """
    batch = FeatureBatch(len(states), window, reference.n_cells)
    due: list[DueRefresh] = []
    due_items: list[int] = []
    due_bytes = 0

    def flush(upto: int) -> None:
        """Refresh the pending windows; correct the rows captured up to item ``upto``."""
        nonlocal due_bytes
        stats, steps = window_statistics(due, reference.self_kernel_mean, reference.gamma)
        refreshed = dict(zip(due_items, range(len(due)), strict=True))
        touched: set[int] = set()
        for i in range(due_items[0], upto):
            state = states[i]
            j = refreshed.get(i)
            if j is not None:
                state.gram_stats[:] = stats[j]
                state.walk[1] += steps[j]
                touched.add(id(state))
            if id(state) in touched:
                batch.gram_stats[i] = state.gram_stats
                batch.walked[i] = state.walk[1]
        due.clear()
        due_items.clear()
        due_bytes = 0

    for i, state in enumerate(states):
        state.update(facts[i], ts[i])
        if state.needs_gram_refresh(refresh_every):
            refresh = state.due_refresh(window_of(i))
            if refresh is not None:
                due.append(refresh)
                due_items.append(i)
                due_bytes += refresh.rows.nbytes
        batch.capture(i, state, facts[i].framed)
        if due_bytes > PENDING_WINDOW_BYTES:  # many full windows at once: bound what is held
            flush(i + 1)
    if due:
        flush(len(states))
    return batch


class FeatureBatch:
    """Copies of the state behind each item's features, so a batch is scored in array calls.

    :meth:`capture` runs right after an item updates its account (a few small copies);
    :meth:`features` then computes every captured row at once. Ring order does not matter
    to any feature, so rings are copied as they are; unfilled slots hold NaN (cells: -1).
    """

    def __init__(self, m: int, window: int, n_cells: int):
        self.nn = np.empty((m, window), dtype=np.float32)
        self.knn = np.empty((m, window), dtype=np.float32)
        self.ref = np.empty((m, window), dtype=np.float32)
        self.cell = np.empty((m, window), dtype=np.int16)
        self.nn_hist = np.empty((m, _HIST_BINS), dtype=np.int64)
        self.ref_hist = np.empty((m, _HIST_BINS), dtype=np.int64)
        self.cell_counts = np.empty((m, n_cells), dtype=np.int64)
        self.gram_stats = np.empty((m, GRAM_STATS), dtype=np.float64)
        self.walked = np.empty(m, dtype=np.int64)
        self.probed = np.empty(m, dtype=np.int64)
        self.framed_rate = np.empty(m, dtype=np.float64)
        self.framed_queries = np.empty(m, dtype=np.int64)
        self.n = np.empty(m, dtype=np.int64)

    def capture(self, i: int, state: AccountState, framed: tuple[float, int] | None = None) -> None:
        """Copy what item ``i``'s features need from ``state``; ``framed``: the frame thread
        figures as of the item's prompt (QueryFacts.framed), else the state's now."""
        self.nn[i] = state.ring_nn
        self.knn[i] = state.ring_knn
        self.ref[i] = state.ring_ref
        self.cell[i] = state.ring_cell
        self.nn_hist[i] = state.nn_hist
        self.ref_hist[i] = state.ref_hist
        self.cell_counts[i] = state.cell_counts
        self.gram_stats[i] = state.gram_stats
        self.walked[i] = state.walk[1]
        self.probed[i] = state.probes[1]
        self.framed_rate[i], self.framed_queries[i] = state.framed_stats() if framed is None else framed
        self.n[i] = state.n

    def features(self, near_duplicate_similarity: float, off_reference_similarity: float) -> np.ndarray:
        """(m, N_FEATURES) feature rows; NaN where there is too little data."""
        if self.n.shape[0] == 1:
            return self._lone_features(near_duplicate_similarity, off_reference_similarity)
        return self._array_features(near_duplicate_similarity, off_reference_similarity)

    def _array_features(self, near_duplicate_similarity: float, off_reference_similarity: float) -> np.ndarray:
        """:meth:`features` in array calls over all rows (any batch size)."""
        m = self.n.shape[0]
        f = np.full((m, N_FEATURES), np.nan, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            nn = self.nn.astype(np.float64)
            valid = ~np.isnan(nn)
            count = valid.sum(axis=1)
            has = count > 0
            safe = np.maximum(count, 1)
            nn0 = np.where(valid, nn, 0.0)
            mean = nn0.sum(axis=1) / safe
            spread = np.sqrt((np.where(valid, nn - mean[:, None], 0.0) ** 2).sum(axis=1) / safe)
            knn = self.knn.astype(np.float64)
            knn_valid = ~np.isnan(knn)
            knn_mean = np.where(knn_valid, knn, 0.0).sum(axis=1) / np.maximum(knn_valid.sum(axis=1), 1)
            near = (valid & (nn >= near_duplicate_similarity)).sum(axis=1) / safe
            near_below, return_below = shares_below(self.nn_hist, (near_duplicate_similarity, TOPIC_RETURN_SIMILARITY))
            near_life = 1.0 - near_below
            # one masked write for the five nearest-neighbour features (NaN without a neighbour yet)
            f[:, _NN_COLUMNS] = np.where(
                has[:, None], np.column_stack((mean, spread, knn_mean, near, near_life)), np.nan
            )
            # PRADA's statistic per sample size: NaN sorts last, so a row's first `count` values are its own.
            distances = np.sort(1.0 - nn, axis=1)
            sizes = count.tolist() if m == 1 else np.unique(count).tolist()
            for size in sizes:
                if size >= MIN_NORMALITY_SAMPLES:
                    rows = slice(None) if m == 1 else np.flatnonzero(count == size)
                    f[rows, _F["min_distance_normality"]] = shapiro_wilk_w(distances[rows, :size])
            ref = self.ref.astype(np.float64)
            ref_valid = ~np.isnan(ref)
            f[:, _F["reference_similarity"]] = np.where(ref_valid, ref, 0.0).sum(axis=1) / np.maximum(
                ref_valid.sum(axis=1), 1
            )
            cells_seen = (self.cell >= 0).sum(axis=1)
            n_cells = self.cell_counts.shape[1]
            flat = (np.arange(m)[:, None] * n_cells + self.cell.astype(np.int64))[self.cell >= 0]
            window_counts = np.bincount(flat, minlength=m * n_cells).reshape(m, n_cells)
            stats = coverage_stats(window_counts)
            f[:, _F["cell_entropy"]] = np.where(cells_seen > 1, stats[:, 2], np.nan)
            f[:, _F["distinct_cell_rate"]] = stats[:, 0] / np.maximum(cells_seen, 1)
            f[:, _F["participation_ratio"]] = self.gram_stats[:, 0]
            f[:, _F["mean_pairwise_similarity"]] = self.gram_stats[:, 1]
            f[:, _F["mmd_to_benign"]] = self.gram_stats[:, 2]
            f[:, _F["follow_up_similarity"]] = self.gram_stats[:, 3]
            f[:, _F["off_reference_rate"]] = shares_below(self.ref_hist, (off_reference_similarity,))[0]
            f[:, _F["topic_return_rate"]] = 1.0 - return_below
            f[:, _F["new_cell_rate"]] = (self.cell_counts > 0).sum(axis=1) / np.maximum(self.n, 1)
            # over every query after the first: those not judged yet count as no step (a lower bound)
            f[:, _F["walk_away_rate"]] = np.where(self.n >= 2, self.walked / np.maximum(self.n - 1, 1), np.nan)
            # over every query after the first: those sent without a prompt count as no probe
            f[:, _F["neighbourhood_probe_rate"]] = np.where(
                self.n >= 2, self.probed / np.maximum(self.n - 1, 1), np.nan
            )
            threaded = self.framed_queries > 0
            f[:, _F["framed_return_rate"]] = np.where(threaded, self.framed_rate, np.nan)
            f[:, _F["framed_share"]] = np.where(threaded, self.framed_queries / np.maximum(self.n, 1), np.nan)
        return f

    def _lone_features(self, near_duplicate_similarity: float, off_reference_similarity: float) -> np.ndarray:
        """:meth:`features` of a one-item batch (a lone query): the same values bit for bit
        with about half the NumPy calls (a lone query's cost is per-call overhead, not
        arithmetic). Full rings skip their NaN masks, counts and shares are Python scalars
        (integer counts divide exactly as NumPy's float64 division does), and the kernels
        get the same arrays the array path gives them (tested bit for bit)."""
        f = np.full((1, N_FEATURES), np.nan, dtype=np.float64)
        row = f[0]
        nn = self.nn[0].astype(np.float64)
        size = nn.shape[0]
        valid = ~np.isnan(nn)
        count = int(np.count_nonzero(valid))
        near_below, return_below = _row_shares_below(
            self.nn_hist[0], (near_duplicate_similarity, TOPIC_RETURN_SIMILARITY)
        )
        if count:
            full = count == size
            mean = (nn if full else np.where(valid, nn, 0.0)).sum() / count
            centred = nn - mean
            spread = math.sqrt(float(((centred if full else np.where(valid, centred, 0.0)) ** 2).sum()) / count)
            knn = self.knn[0].astype(np.float64)
            knn_count = int(np.count_nonzero(~np.isnan(knn)))
            knn_sum = (knn if knn_count == size else np.where(np.isnan(knn), 0.0, knn)).sum()
            near = int(np.count_nonzero(nn >= near_duplicate_similarity)) / count  # NaN compares False
            row[_NN_COLUMNS] = (mean, spread, knn_sum / max(knn_count, 1), near, 1.0 - near_below)
            if count >= MIN_NORMALITY_SAMPLES:  # NaN sorts last: the first `count` are the row's own
                row[_F["min_distance_normality"]] = shapiro_wilk_w(np.sort(1.0 - nn[None], axis=1)[:, :count])[0]
        ref = self.ref[0].astype(np.float64)
        ref_count = int(np.count_nonzero(~np.isnan(ref)))
        row[_F["reference_similarity"]] = (ref if ref_count == size else np.where(np.isnan(ref), 0.0, ref)).sum() / max(
            ref_count, 1
        )
        cells = self.cell[0]
        seen = cells >= 0
        cells_seen = int(np.count_nonzero(seen))
        window_counts = np.bincount(cells[seen] if cells_seen < size else cells, minlength=self.cell_counts.shape[1])
        distinct, _, normalised = coverage_stats(window_counts[None])[0].tolist()
        if cells_seen > 1:
            row[_F["cell_entropy"]] = normalised
        row[_F["distinct_cell_rate"]] = distinct / max(cells_seen, 1)
        row[_GRAM_COLUMNS] = self.gram_stats[0]
        row[_F["off_reference_rate"]] = _row_shares_below(self.ref_hist[0], (off_reference_similarity,))[0]
        row[_F["topic_return_rate"]] = 1.0 - return_below
        n0 = int(self.n[0])
        row[_F["new_cell_rate"]] = int(np.count_nonzero(self.cell_counts[0])) / max(n0, 1)
        row[_F["walk_away_rate"]] = int(self.walked[0]) / (n0 - 1) if n0 >= 2 else math.nan
        row[_F["neighbourhood_probe_rate"]] = int(self.probed[0]) / (n0 - 1) if n0 >= 2 else math.nan
        framed = int(self.framed_queries[0])
        if framed > 0:
            row[_F["framed_return_rate"]] = float(self.framed_rate[0])
            row[_F["framed_share"]] = framed / max(n0, 1)
        return f


_LOWER_MASKS: dict[int, np.ndarray] = {}


def _strictly_lower(m: int) -> np.ndarray:
    """(m, m) mask of earlier rows, made once per window size (read-only, shared)."""
    mask = _LOWER_MASKS.get(m)
    if mask is None:
        mask = np.tri(m, k=-1, dtype=bool)
        mask.flags.writeable = False
        _LOWER_MASKS[m] = mask
    return mask


def walk_steps(gram: np.ndarray, first: int, continues: np.ndarray | None = None) -> int:
    """How many of window rows ``first`` onward are walk-away steps (see WALK_LINK_SIMILARITY),
    given the window's Gram matrix, oldest row first. Links and chains stay inside the window.
    ``continues``: each row's continuation mark. A row that continues an earlier prompt is never
    a step; a deep path (WALK_DEEP_DEPTH) counts only for rows known not to (FRESH)."""
    m = gram.shape[0]
    if m - first <= 0 or m <= WALK_DEPTH:
        return 0
    lower = _strictly_lower(m)
    # A step is linked to an earlier query, and most new queries have none: one cheap look
    # first (a young account's window is judged at every query).
    if not (gram[first:][lower[first:]] >= WALK_LINK_SIMILARITY).any():
        return 0
    rows = np.arange(m)
    earlier = np.where(lower, gram, -np.inf)
    parent = earlier.argmax(axis=1)
    parent = np.where(earlier[rows, parent] >= WALK_LINK_SIMILARITY, parent, rows)
    root = parent
    jumps = max(1, (m - 1).bit_length())  # pointer jumping: chains are shorter than 2^jumps links
    for _ in range(jumps):
        root = root[root]
    judged = rows[first:]
    sims = gram[judged]
    at = np.arange(judged.size)
    linked = np.ones(judged.size, dtype=bool)  # every link back so far exists
    reversals = np.zeros(judged.size, dtype=np.int64)  # links back not less similar than the one before
    shallow = None
    child, previous = judged, None
    deepest = WALK_DEEP_DEPTH if continues is not None and (continues[first:] == FRESH).any() else WALK_DEPTH
    for depth in range(1, deepest + 1):
        ancestor = parent[child]
        linked &= ancestor != child
        if previous is not None:
            reversals += sims[at, ancestor] >= sims[at, previous]
        child, previous = ancestor, ancestor
        if depth == WALK_DEPTH:
            shallow = linked & (reversals == 0)
        walking = linked & (reversals <= WALK_DEEP_REVERSALS)
        if not walking.any():
            break
    if shallow is None:  # every path ended before WALK_DEPTH links
        shallow = np.zeros(judged.size, dtype=bool)
    far = sims[at, root[judged]] < WALK_ROOT_SIMILARITY
    close = (earlier[judged] >= WALK_LINK_SIMILARITY).sum(axis=1)
    sparse = close <= WALK_MAX_CLOSE
    if continues is None:
        return int((shallow & far & sparse).sum())
    marks = continues[first:]
    # ``walking`` is a deep path only where the loop ran WALK_DEEP_DEPTH links, i.e. with FRESH rows
    deep = walking & (marks == FRESH)
    if deep.any():  # few windows hold one: count links back only then
        ahead, links = parent, (parent != rows).astype(np.int64)
        for _ in range(jumps):
            ahead, links = ahead[ahead], links + links[ahead]
        deep &= close <= WALK_DEEP_CLOSE_PER_LINK * links[judged]
    return int((((shallow & far & sparse) & (marks != CONTINUES)) | deep).sum())


def _row_shares_below(hist: np.ndarray, thresholds: tuple[float, ...]) -> list[float]:
    """:func:`shares_below` of one histogram row, in Python scalars (a lone query's features):
    the counts are integers, so every sum is exact and each share is the same float."""
    counts = hist.tolist()
    total = sum(counts)
    out = []
    for threshold in thresholds:
        i = _hist_index(threshold)
        lo = _HIST_LO + i * _HIST_WIDTH
        frac = min(max((threshold - lo) / _HIST_WIDTH, 0.0), 1.0)
        out.append((sum(counts[:i]) + frac * counts[i]) / total if total > 0 else math.nan)
    return out


def shares_below(hist: np.ndarray, thresholds: tuple[float, ...]) -> list[np.ndarray]:
    """Per row of ``hist`` and per threshold, the share of the row's mass below the threshold,
    linear inside the straddling bin (NaN for an empty row). Row totals and running sums are
    taken once for all thresholds (a lone query pays per NumPy call); the counts are integers,
    so running sums equal slice sums exactly. Callers hold ``np.errstate`` (empty rows)."""
    total = hist.sum(axis=1)
    running = hist.cumsum(axis=1)
    empty = total <= 0
    denominator = np.maximum(total, 1)
    out = []
    for threshold in thresholds:
        i = _hist_index(threshold)
        lo = _HIST_LO + i * _HIST_WIDTH
        frac = min(max((threshold - lo) / _HIST_WIDTH, 0.0), 1.0)
        below = (running[:, i - 1] if i > 0 else 0) + frac * hist[:, i]
        share = below / denominator
        share[empty] = np.nan
        out.append(share)
    return out
