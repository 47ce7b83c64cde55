"""Benign groups for the group calibration, made from benign accounts alone.

A provider's benign accounts never come labelled with the crowds they form, so the benign
groups are built from them, two ways, at every member count the judge uses:

* *random crowds*: accounts drawn at random, as behind one NAT or one popular default;
* *look-alike crowds*: a seed account and its nearest benign accounts by mean vector, the
  hard case: users of one app, one class, one topic, whose own queries are least distinct.

Each member contributes a random run of at most :data:`LIGHT_ACCOUNT_QUERIES` consecutive
queries, because campaign members are light accounts. Nothing here sees attack traffic.

Probe links (:mod:`.split_probes`) are measured on the benign accounts as they were sent, not
on made-up crowds: :func:`benign_probe_linked` replays their prompts through the cross-account
search in time order and counts the accounts that would be probers there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..detect.probes import word_hashes
from ..errors import CalibrationError
from .groups import member_mean_focus, pair_stats_from_sums
from .scoring import EVIDENCE_CLIP, MEMBER_BIN_EDGES, MIN_MEMBER_QUERIES, GroupCalibration
from .split_probes import MIN_LINKED_PROMPTS, SplitProbes

LIGHT_ACCOUNT_QUERIES = 50
CROWDS_PER_SIZE = 120
MIN_ACCOUNTS = 12


def benign_crowd_features(
    accounts: Sequence[str],
    vectors: np.ndarray,
    evidence: np.ndarray,
    elicitation: np.ndarray | None = None,
    seed: int = 0,
    crowds_per_size: int = CROWDS_PER_SIZE,
) -> dict[str, np.ndarray]:
    """``{"focus", "between", "evidence", "elicitation", "members", "duplicate_share",
    "lookalike"}`` of random and look-alike crowds; ``evidence`` is each query's out-of-sample signed per-query score,
    ``elicitation`` its reasoning-trace elicitation probability (None: no head)."""
    rng = np.random.default_rng(seed)
    rows_of: dict[str, list[int]] = {}
    for i, a in enumerate(accounts):
        rows_of.setdefault(a, []).append(i)
    runs = []
    for rows in rows_of.values():
        if len(rows) < MIN_MEMBER_QUERIES:
            continue
        take = min(len(rows), LIGHT_ACCOUNT_QUERIES)
        start = int(rng.integers(0, len(rows) - take + 1))
        runs.append(np.asarray(rows[start : start + take]))
    if len(runs) < MIN_ACCOUNTS:
        raise CalibrationError(
            f"the campaign calibration needs at least {MIN_ACCOUNTS} benign accounts with {MIN_MEMBER_QUERIES}+ "
            f"queries; got {len(runs)}"
        )
    x = np.asarray(vectors, dtype=np.float64)
    sums = np.stack([x[r].sum(axis=0) for r in runs])
    counts = np.array([r.size for r in runs], dtype=np.float64)
    evidence_sums = np.array([np.clip(evidence[r], *EVIDENCE_CLIP).sum() for r in runs])
    elicitation_sums = (
        np.array([elicitation[r].sum() for r in runs]) if elicitation is not None else np.full(len(runs), np.nan)
    )
    sq_norms = np.einsum("ij,ij->i", sums, sums)
    means = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    keys = [{hash(row.astype(np.float16).tobytes()) for row in np.asarray(vectors[r], dtype=np.float32)} for r in runs]
    sizes = [int(s) for s in MEMBER_BIN_EDGES if s < len(runs)] + [len(runs)]
    focus, between, mean_evidence, mean_elicitation, members, dup, lookalike = [], [], [], [], [], [], []
    for size in sorted(set(sizes)):
        for c in range(crowds_per_size):
            if c % 2 == 0:
                crowd = rng.choice(len(runs), size=size, replace=False)
            else:  # look-alikes: a seed and its nearest accounts by mean vector
                seed_account = int(rng.integers(len(runs)))
                crowd = np.argsort(-(means @ means[seed_account]))[:size]
            n = int(counts[crowd].sum())
            stats = pair_stats_from_sums(
                sums[crowd].sum(axis=0), n, float(sq_norms[crowd].sum()), float((counts[crowd] ** 2).sum())
            )
            seen: set[int] = set()
            duplicates = 0
            for k in crowd:
                duplicates += len(keys[k] & seen)
                seen |= keys[k]
            focus.append(member_mean_focus(sums[crowd], counts[crowd], sq_norms[crowd], sums[crowd].sum(axis=0), n))
            between.append(stats.between)
            mean_evidence.append(evidence_sums[crowd].sum() / n)
            mean_elicitation.append(elicitation_sums[crowd].sum() / n)
            lookalike.append(c % 2 == 1)
            members.append(size)
            dup.append(duplicates / n)
    return {
        "focus": np.array(focus),
        "between": np.array(between),
        "evidence": np.array(mean_evidence),
        "elicitation": np.array(mean_elicitation),
        "members": np.array(members),
        "duplicate_share": np.array(dup),
        "lookalike": np.array(lookalike),
        "focus_weighting": "members",
    }


def benign_probe_linked(
    accounts: Sequence[str], texts: Sequence[str], read: Sequence[str] | None = None, memory: int = 100_000
) -> tuple[int, int]:
    """(probers, accounts) of benign traffic: the accounts with MIN_MEMBER_QUERIES or more
    prompts, and how many of them sent MIN_LINKED_PROMPTS prompts as probes (the later prompt of
    a link: an uncentred variant of a prompt nobody sent, whose near neighbours other accounts
    sent), as :class:`SplitProbes` with ``memory`` remembered prompts finds them when the
    prompts arrive in the order given (time order). ``read``: what the word rules read of each
    prompt (the prompt without the boilerplate it shares, as the engine reads it live)."""
    if read is not None and len(read) != len(texts):
        raise ValueError(f"benign_probe_linked needs one read text per prompt; got {len(read)} for {len(texts)}")
    accounts, texts = list(accounts), list(texts)
    sketches = [word_hashes(t) for t in (texts if read is None else read)]
    found = SplitProbes(memory).observe_batch(accounts, texts, sketches)
    probes = Counter(a for a, partners in zip(accounts, found, strict=True) if partners)
    counted = [a for a, n in Counter(accounts).items() if n >= MIN_MEMBER_QUERIES]
    return sum(probes[a] >= MIN_LINKED_PROMPTS for a in counted), len(counted)


def fit_group_calibration(
    accounts: Sequence[str],
    vectors: np.ndarray,
    evidence: np.ndarray,
    elicitation: np.ndarray | None = None,
    seed: int = 0,
    source: str = "",
    probe_linked: tuple[int, int] | None = None,
) -> GroupCalibration:
    """The group calibration of benign accounts (see the module docstring); ``probe_linked``
    from :func:`benign_probe_linked`, where the prompts are known."""
    crowds = benign_crowd_features(accounts, vectors, evidence, elicitation, seed)
    return GroupCalibration.fit(crowds, source, probe_linked=probe_linked)
