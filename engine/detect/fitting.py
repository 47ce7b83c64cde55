"""Fitting what benign looks like: the reference and calibration tables.

Nothing here ever sees attack traffic. The steps of :func:`fit_calibration`:

1. 15 % of the benign accounts (at least 10) fit the reference bank and codebook;
   the others fit the tables, so no account is compared with its own queries.
2. The table accounts are streamed through a scratch pipeline exactly as live traffic
   would be, and every query's feature vector is kept with its history length.
3. Two-fold cross-fitting: tables from one half score the other half, so the benign
   lifetime-maximum scores (which set the flag threshold) are out-of-sample.

Learning from the provider's own live traffic is :mod:`probewatch.detect.learning`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..backend.device import Backend
from ..campaigns.elicitation_default import default_elicitation_head
from ..campaigns.fitting import benign_probe_linked, fit_group_calibration
from ..config import EngineConfig
from ..errors import CalibrationError
from .boilerplate import read_streams
from .features import FEATURE_NAMES, N_FEATURES
from .reference import BenignReference
from .scoring import (
    CHANNELS,
    LOOKALIKE_RULE,
    MAX_BIN_SAMPLES,
    MIN_BIN_SAMPLES,
    MIN_SCORED_QUERIES,
    MIN_TOPIC_RETURN_ACCOUNTS,
    N_BINS,
    PROBE_MIN_QUERIES,
    PROBE_MIN_RATE,
    PROBE_QUANTILE,
    TOPIC_RETURN_MIN_QUERIES,
    TOPIC_RETURN_QUANTILE,
    WALK_AWAY_MIN_QUERIES,
    WALK_AWAY_MIN_RATE,
    WALK_AWAY_QUANTILE,
    BenignModel,
    Calibration,
    bin_of,
    nearest_populated_bins,
    rolling_mean_per_account,
    topic_return_evidence,
)
from .stream import FeatureStream, repeated_prompts

MIN_CALIBRATION_ACCOUNTS = 20
MIN_TAIL_ACCOUNTS = 10  # Calibration.set_account_max_scores needs this many lifetime maxima
MIN_REFERENCE_ACCOUNTS = 10
# Accounts that fit the reference bank and not the tables: enough for a 2k-query bank,
# few enough that the rarer kinds of benign account stay well represented in the tables.
REFERENCE_SHARE = 0.15
OFF_REFERENCE_QUANTILE = 0.02
STREAM_CHUNK = 64
NEAR_COPY_SIMILARITY = 0.9
# Random two-fold splits pooled for the out-of-sample scale and lifetime maxima (see _cross_fitted).
CROSS_FIT_REPEATS = 8


def group_by_account(accounts: Sequence[str]) -> dict[str, np.ndarray]:
    """{account: (row indices in arrival order)} preserving first-seen order.

    >>> {a: rows.tolist() for a, rows in group_by_account(["a", "b", "a"]).items()}
    {'a': [0, 2], 'b': [1]}
    """
    groups: dict[str, list[int]] = {}
    for i, a in enumerate(accounts):
        groups.setdefault(a, []).append(i)
    return {a: np.asarray(rows, dtype=np.int64) for a, rows in groups.items()}


def _stream_features(
    config: EngineConfig,
    reference: BenignReference,
    off_ref: float,
    groups: dict[str, np.ndarray],
    vectors: np.ndarray,
    ts: list,
    progress: Callable[[int], None] | None,
    texts: Sequence[str | None] | None = None,
    read: Sequence[str | None] | None = None,
):
    stream = FeatureStream(config, reference, Backend.host(), off_ref)
    feats, ns, owner = [], [], []
    for k, (account, rows) in enumerate(groups.items()):
        for start in range(0, rows.size, STREAM_CHUNK):
            chunk = rows[start : start + STREAM_CHUNK]
            result = stream.step(
                [account] * chunk.size,
                vectors[chunk],
                [ts[i] for i in chunk],
                None if texts is None else [texts[i] for i in chunk],
                None if read is None else [read[i] for i in chunk],
            )
            feats.append(result.features)
            ns.append(result.n)
            owner.append(np.full(chunk.size, k, dtype=np.int64))
            if progress is not None:
                progress(chunk.size)
        stream.forget(account)  # accounts are independent; keep the scratch store small
    if not feats:
        return np.zeros((0, N_FEATURES)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(feats), np.concatenate(ns), np.concatenate(owner)


def _bin_samples(features: np.ndarray, ns: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Benign feature rows per history bin; a uniform sample where a bin has too many, so each
    kind of benign traffic is represented in proportion to its volume."""
    bins = bin_of(ns)
    out = []
    for b in range(N_BINS):
        rows = np.flatnonzero(bins == b)
        if rows.size > MAX_BIN_SAMPLES:
            rows = np.sort(rng.choice(rows, size=MAX_BIN_SAMPLES, replace=False))
        out.append(features[rows])
    return out


def _account_maxima(scores: np.ndarray, owner: np.ndarray, accounts_idx: np.ndarray) -> np.ndarray:
    maxima = np.full(int(owner.max()) + 1, -np.inf)
    np.maximum.at(maxima, owner, scores)
    return maxima[accounts_idx]


def _final_rates(features: np.ndarray, ns: np.ndarray, owner: np.ndarray, feature: str, min_queries: int) -> np.ndarray:
    """``feature`` at the final row of every account with at least ``min_queries`` queries
    (rows grouped by account, in order), where defined."""
    last = np.r_[np.flatnonzero(np.diff(owner)), owner.size - 1]  # each account's final row
    rates = features[last[ns[last] >= min_queries], FEATURE_NAMES.index(feature)]
    return rates[np.isfinite(rates)]


def _fit_topic_return(
    features: np.ndarray,
    ns: np.ndarray,
    owner: np.ndarray,
    scored: np.ndarray,
    lookalike: np.ndarray,
) -> tuple[float, float] | None:
    """(p, weight) of the topic-return statistic (``Calibration.topic_return_scores``), or None
    where too few benign accounts are long enough to say how rarely they return to a topic.

    p is the TOPIC_RETURN_QUANTILE of long accounts' lifetime return rates; the weight puts the
    statistic's benign lifetime maxima on the look-alike score's scale at their 99th
    percentiles, so neither statistic's benign tail decides the flag threshold alone."""
    rates = _final_rates(features, ns, owner, "topic_return_rate", TOPIC_RETURN_MIN_QUERIES)
    if rates.size < MIN_TOPIC_RETURN_ACCOUNTS:
        return None
    p = float(np.clip(np.quantile(rates, TOPIC_RETURN_QUANTILE), 1e-3, 0.999))
    raw = topic_return_evidence(features, ns, p)
    scale = float(np.quantile(_account_maxima(raw, owner, scored), 0.99))
    if scale <= 0.0:
        return None
    return p, max(float(np.quantile(_account_maxima(lookalike, owner, scored), 0.99)), 1e-6) / scale


def _fit_walk_away(features: np.ndarray, ns: np.ndarray, owner: np.ndarray) -> tuple[float, float] | None:
    """(p, weight) of the walk-away statistic (``Calibration.walk_away_scores``), or None where
    too few benign accounts are long enough to say how often they step.

    p is the WALK_AWAY_QUANTILE of long accounts' lifetime step rates, at least
    WALK_AWAY_MIN_RATE. The weight is 1: the statistic is a -log10 probability, and nearly
    every benign account never steps, so anchoring it to the look-alike score at a percentile
    of benign maxima (the topic-return statistic's way) would rest on a handful of editing
    users and stretch their two or three steps past the flag threshold. The flag threshold
    is fitted on the maxima of both together, so it keeps its false-positive rate either way."""
    return _fit_count_rate(
        features, ns, owner, "walk_away_rate", WALK_AWAY_MIN_QUERIES, WALK_AWAY_QUANTILE, WALK_AWAY_MIN_RATE
    )


def _fit_neighbourhood_probe(features: np.ndarray, ns: np.ndarray, owner: np.ndarray) -> tuple[float, float] | None:
    """(p, weight) of the neighbourhood-probe statistic (``Calibration.probe_scores``), or None
    where too few benign accounts are long enough to say how often they probe. Fitted as the
    walk-away statistic is (``_fit_walk_away``): p the PROBE_QUANTILE of long accounts' lifetime
    probe rates, at least PROBE_MIN_RATE; weight 1."""
    return _fit_count_rate(
        features, ns, owner, "neighbourhood_probe_rate", PROBE_MIN_QUERIES, PROBE_QUANTILE, PROBE_MIN_RATE
    )


def _fit_count_rate(
    features: np.ndarray,
    ns: np.ndarray,
    owner: np.ndarray,
    feature: str,
    min_queries: int,
    quantile: float,
    floor: float,
) -> tuple[float, float] | None:
    """(p, 1) for a count statistic judged as a binomial tail: p the ``quantile`` of the lifetime
    rates of benign accounts with ``min_queries``+ queries, at least ``floor``; None where too few
    accounts are that long."""
    rates = _final_rates(features, ns, owner, feature, min_queries)
    if rates.size < MIN_TOPIC_RETURN_ACCOUNTS:
        return None
    return float(np.clip(np.quantile(rates, quantile), floor, 0.5)), 1.0


def _distance_norm(distances: np.ndarray, ns: np.ndarray) -> np.ndarray:
    """Per bin: median and 99th percentile of out-of-sample benign kNN distances."""
    bins = bin_of(ns)
    norm = np.full((N_BINS, 2), np.nan)
    for b in range(N_BINS):
        d = distances[bins == b]
        if d.size >= MIN_BIN_SAMPLES:
            norm[b] = np.quantile(d, [0.5, 0.99])
    have = np.flatnonzero(~np.isnan(norm[:, 0]))
    if have.size == 0:
        raise CalibrationError("calibration produced no history bin with enough benign queries to set a scale")
    return norm[nearest_populated_bins(have)]


def _has_near_copy(candidates: np.ndarray, others: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Which candidate rows nearly duplicate (similarity >= NEAR_COPY_SIMILARITY) a row of ``others``.

    A prompt (or a small edit of it) sent by both a reference account and a table account
    would let the table account find itself in the bank and look more benign than a new
    account ever can; dropping such rows errs on the side of fewer false positives.
    """
    out = np.zeros(candidates.shape[0], dtype=bool)
    for start in range(0, others.shape[0], chunk):
        sims = candidates @ others[start : start + chunk].T
        out |= (sims >= NEAR_COPY_SIMILARITY).any(axis=1)
    return out


def fit_calibration(
    config: EngineConfig,
    accounts: Sequence[str],
    vectors: np.ndarray,
    ts: Sequence[float | None] | None,
    reference: BenignReference | None,
    refit_reference: bool,
    source: str,
    progress: Callable[[int], None] | None = None,
    texts: Sequence[str | None] | None = None,
) -> BenignModel:
    """Fit on validated benign traffic (unit rows, each account's queries in time order), on the CPU.

    ``refit_reference=False`` keeps ``reference`` and refits only the tables. ``texts`` (the
    prompts, where known) mark continuations as the live stream does (see ``FeatureStream.step``),
    and leave out the prompts that repeat one their account sent lately, as it does.
    """
    read = None
    if texts is not None:
        # what the model and the word rules read of each prompt, as the engine reads them live:
        # every prompt counts here, repeats included (Engine.embed_batch reads those too)
        read = read_streams(accounts, texts)
        # a prompt sent again is not judged live, so it teaches nothing here
        new = np.flatnonzero(~np.asarray(repeated_prompts(accounts, texts), dtype=bool))
        if new.size < len(accounts):
            accounts, vectors = [accounts[i] for i in new], vectors[new]
            texts, read = [texts[i] for i in new], [read[i] for i in new]
            ts = None if ts is None else [ts[i] for i in new]
    groups = group_by_account(accounts)
    need = MIN_CALIBRATION_ACCOUNTS + (MIN_REFERENCE_ACCOUNTS if refit_reference else 0)
    if len(groups) < need:
        raise CalibrationError(
            f"calibration needs at least {need} benign accounts (each with its queries in time order); got "
            f"{len(groups)}. Pass more accounts, or refit_reference=False to keep the current reference"
        )
    if not refit_reference and reference is None:
        raise CalibrationError("refit_reference=False needs an existing reference; the engine has none")
    rng = np.random.default_rng(config.seed)
    names = list(groups)
    shuffled = [names[i] for i in rng.permutation(len(names))]
    if refit_reference:
        reference, shuffled = _fit_reference(groups, shuffled, vectors, config.seed)
    table_groups = {a: groups[a] for a in shuffled}
    ref_sims = reference.query_stats(vectors[np.concatenate(list(table_groups.values()))]).ref_similarity
    off_ref = float(np.quantile(ref_sims, OFF_REFERENCE_QUANTILE))
    ts_list = list(ts) if ts is not None else [None] * len(accounts)
    features, ns, owner = _stream_features(
        config, reference, off_ref, table_groups, vectors, ts_list, progress, texts, read
    )
    calibration, evidence = _cross_fitted(features, ns, owner, len(table_groups), off_ref, rng)
    calibration.source, calibration.n_accounts = source, len(table_groups)
    # the stream visits table accounts in order, each one's queries in order
    rows = np.concatenate(list(table_groups.values()))
    head = default_elicitation_head(reference.dim)
    probe_linked = None
    if texts is not None and config.campaign_probe_memory > 0:
        # every calibration account, in time order where every query has a time (as they arrived)
        stamps = [np.nan if t is None else float(t) for t in ts_list]
        order = np.argsort(stamps, kind="stable") if np.isfinite(stamps).all() else np.arange(len(accounts))
        kept = [i for i in order.tolist() if texts[i] is not None]
        probe_linked = benign_probe_linked(
            [accounts[i] for i in kept],
            [texts[i] for i in kept],
            None if read is None else [read[i] for i in kept],
            config.campaign_probe_memory,
        )
    groups = fit_group_calibration(
        [accounts[i] for i in rows],
        vectors[rows],
        evidence,
        head.probability(vectors[rows]) if head is not None else None,
        seed=config.seed,
        source=source,
        probe_linked=probe_linked,
    )
    return BenignModel(reference, calibration, groups)


def _fit_reference(
    groups: dict[str, np.ndarray], shuffled: list[str], vectors: np.ndarray, seed: int
) -> tuple[BenignReference, list[str]]:
    """The reference from the first REFERENCE_SHARE of the shuffled accounts (their prompts
    that nearly copy a table account's left out); returns it and the table accounts."""
    n_ref = max(MIN_REFERENCE_ACCOUNTS, round(len(shuffled) * REFERENCE_SHARE))
    ref_rows = np.concatenate([groups[a] for a in shuffled[:n_ref]])
    table_rows = np.concatenate([groups[a] for a in shuffled[n_ref:]])
    bank_rows = ref_rows[~_has_near_copy(vectors[ref_rows], vectors[table_rows])]
    return BenignReference.fit(vectors[bank_rows], codebook_vectors=vectors, seed=seed), shuffled[n_ref:]


def _cross_fitted(
    features: np.ndarray, ns: np.ndarray, owner: np.ndarray, n_accounts: int, off_ref: float, rng: np.random.Generator
) -> tuple[Calibration, np.ndarray]:
    """Tables from every account; the distance scale, the lifetime maxima and each query's
    signed score (returned with the calibration, for the benign groups) out-of-sample.

    Each half of the accounts is judged by tables fitted on the other half, so the scale and
    the maxima (which set the flag threshold) describe benign accounts the tables never saw.
    The split is drawn CROSS_FIT_REPEATS times and everything out-of-sample is pooled over
    the draws: the flag threshold rests on the top 1 % or so of accounts, and with one split
    it moved by +-0.3 (a tenth of its value) with the split's seed alone.
    """
    oof = np.empty((CROSS_FIT_REPEATS, features.shape[0], len(CHANNELS)))
    # the campaign evidence's own distances, where the look-alike rule sets them apart (rule 2)
    separate_evidence = LOOKALIKE_RULE >= 2
    oof_evidence = np.empty((CROSS_FIT_REPEATS, features.shape[0])) if separate_evidence else None
    for repeat in range(CROSS_FIT_REPEATS):
        fold = rng.permutation(n_accounts) % 2
        for fit_idx in (np.flatnonzero(fold == 0), np.flatnonzero(fold == 1)):
            fit_mask = np.isin(owner, fit_idx)
            score_mask = ~fit_mask
            fold_cal = Calibration(
                _bin_samples(features[fit_mask], ns[fit_mask], rng), None, off_ref, lookalike_rule=LOOKALIKE_RULE
            )
            oof[repeat, score_mask] = fold_cal.raw_distances(features[score_mask], ns[score_mask])
            if oof_evidence is not None:
                oof_evidence[repeat, score_mask] = fold_cal.raw_evidence_distances(features[score_mask], ns[score_mask])
    pooled_ns = np.tile(ns, CROSS_FIT_REPEATS)
    pooled = oof.reshape(-1, len(CHANNELS))
    norm = np.stack([_distance_norm(pooled[:, c], pooled_ns) for c in range(len(CHANNELS))])
    evidence_norm = None
    if oof_evidence is None:  # rule 1: the spread channel is the evidence, on its own scale
        oof_evidence = oof[..., 0]
    else:
        evidence_norm = _distance_norm(oof_evidence.ravel(), pooled_ns)
    final = Calibration(
        _bin_samples(features, ns, rng),
        None,
        off_ref,
        distance_norm=norm,
        lookalike_rule=LOOKALIKE_RULE,
        evidence_norm=evidence_norm,
    )
    # The rate is over accounts that can be scored at all: accounts that never reach
    # MIN_SCORED_QUERIES score 0 whatever they send, and counting them would set a lower
    # threshold the lighter the calibration traffic is, and so a higher false-positive rate
    # for every account active enough to be judged. (A tiny calibration with too few such
    # accounts falls back to all of them.)
    scored = np.flatnonzero(np.bincount(owner, minlength=n_accounts) >= MIN_SCORED_QUERIES)
    if scored.size < MIN_TAIL_ACCOUNTS:
        scored = np.arange(n_accounts)
    lookalike = [rolling_mean_per_account(final.standardise(oof[r], ns), owner) for r in range(CROSS_FIT_REPEATS)]
    final.topic_return = _fit_topic_return(features, ns, owner, scored, lookalike[0])
    final.walk_away = _fit_walk_away(features, ns, owner)
    final.neighbourhood_probe = _fit_neighbourhood_probe(features, ns, owner)
    own = np.maximum.reduce(final.own_statistic_scores(features, ns))
    maxima = [_account_maxima(np.maximum(score, own), owner, scored) for score in lookalike]
    final.set_account_max_scores(np.concatenate(maxima))  # every account once per split
    evidence = np.mean([final.evidence_scores(oof_evidence[r], ns) for r in range(CROSS_FIT_REPEATS)], axis=0)
    return final, evidence  # the campaign layer's per-query evidence (Calibration.evidence_scores)
