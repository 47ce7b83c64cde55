"""How many distinct things a group has asked: its *topics*.

A campaign registers accounts to send more prompts: every account it adds brings prompts the
others did not send, so between them its accounts ask about more distinct things than there
are accounts. Many people can be many accounts asking about a few things: a class rewording
the same handout, an app's users pasting the same few tasks. They can look coordinated (each
member's queries are as like the others' as its own) and, reworded, like probes split across
accounts; what they do not do is cover ground. Where a group asked fewer distinct things than
it has accounts, its score is scaled by ``topics / accounts`` (:func:`asked_share`), as it is
scaled down for queries another member had already sent.

Topics are counted online by leader clustering: a query opens a new topic when it is less
alike than TOPIC_COSINE to the first query of every topic so far, both *centred* on the
group's mean. A shared template, system prompt or app context adds the same component to
every query of the group and would make all of them one topic; only what varies between the
queries tells topics apart. The count stops at MAX_TOPICS: a group that has asked that many
distinct things is judged as any other, whatever its size, and memory per group is bounded
(MAX_TOPICS float32 rows).

Measured on the quick campaign benchmark (``bench.hydra_eval --size quick``): a class of 30
students rewording a handout of 5 sentences asks 5 topics at centred cosine 0.5 and 0.6 and 8
at 0.7; groups of a chain-of-thought campaign that share one long template ask 3-7 times as
many topics as they have members at all three (uncentred, the longest template's group of 8
members read as 1 topic at 0.7 and 5 at 0.8).
"""

from __future__ import annotations

import numpy as np

TOPIC_COSINE = 0.6
MAX_TOPICS = 64
UNKNOWN = -1  # a group restored from a snapshot written before topics were counted


def opens_topic(leaders: np.ndarray, x: np.ndarray, mean: np.ndarray) -> bool:
    """Whether unit vector ``x`` opens a new topic among ``leaders`` (each topic's first query,
    a unit row each): its cosine to every leader, both centred on the group ``mean``, is below
    TOPIC_COSINE. From one product of the leaders with ``x`` and ``mean``:
    ``(l - m).(x - m) = l.x - l.m - x.m + m.m`` and ``|l - m|^2 = 1 - 2 l.m + m.m``. A query
    at the mean itself (the only kind of query the group had) opens none once there is a leader."""
    if leaders.shape[0] == 0:
        return True
    probe = np.stack([np.asarray(x, dtype=np.float32), np.asarray(mean, dtype=np.float32)], axis=1)
    to_x, to_mean = (leaders @ probe).T
    x_mean, mean_sq = (probe[:, 1] @ probe).tolist()
    x_norm = max(1.0 - 2.0 * x_mean + mean_sq, 0.0) ** 0.5
    norms = np.sqrt(np.maximum(1.0 - 2.0 * to_mean + mean_sq, 0.0)) * x_norm
    alike = to_x - to_mean - (x_mean - mean_sq) >= TOPIC_COSINE * norms
    return not (bool(alike.any()) or bool((norms < 1e-6).any()))


def count_topics(vectors: np.ndarray) -> int:
    """The topics of unit vectors ``vectors`` fed in order, as a group counts them (the group's
    mean at each step includes the query being placed), up to MAX_TOPICS: centred explicitly,
    in float64, the brute-force reference for tests and offline analysis."""
    x = np.asarray(vectors, dtype=np.float64)
    total = np.zeros(x.shape[1])
    leaders: list[np.ndarray] = []
    for i, row in enumerate(x):
        total += row
        if len(leaders) >= MAX_TOPICS:
            break
        mean = total / (i + 1)
        query = row - mean
        opens = True
        for leader in leaders:
            rows = leader - mean
            norms = np.linalg.norm(rows) * np.linalg.norm(query)
            if norms < 1e-6 or rows @ query >= TOPIC_COSINE * norms:
                opens = False
                break
        if opens:
            leaders.append(row)
    return len(leaders)


def asked_share(topics, accounts) -> np.ndarray:
    """The share of a group's score it keeps for the distinct things it asked: ``topics``
    divided by the ``accounts`` that sent its queries (counted up to MAX_TOPICS), at most 1;
    1 where the count is unknown (negative) or there are no accounts.

    Accounts, not only members with two of the group's queries: a campaign's account brings a
    prompt of its own with its first query, while a class's students reword the same handout
    from their first. The share is not a test with a line: a campaign that relays chains of
    edits among a few accounts each asks about roughly as many things as it has accounts
    (0.6-1.4 topics per account in the default campaign benchmark's relay groups at their first
    look at watch or flag, against 0.4-0.6 in its classes' groups) and loses a little of its
    score, not all of it."""
    t = np.asarray(topics, dtype=np.float64)
    m = np.minimum(np.asarray(accounts, dtype=np.float64), MAX_TOPICS)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.clip(t / m, 0.0, 1.0)
    return np.where((t < 0) | ~(m > 0), 1.0, share)
