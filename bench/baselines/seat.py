"""SEAT: counting highly similar query pairs per account (Zhang et al. 2021).

Reference: Z. Zhang, Y. Chen, D. Wagner, "SEAT: Similarity Encoder by Adversarial Training
for Detecting Model Extraction Attack Queries", ACM AISec 2021, Section 3.
"""

from __future__ import annotations

import numpy as np

from probewatch.errors import ConfigError

from .base import StreamingBaseline, blocks, check_positive_int


class Seat(StreamingBaseline):
    """Number of highly similar query pairs in the account so far, per query.

    Each new query i is compared with all earlier queries of the account; a pair (j, i) is
    "similar" when its cosine similarity is ``>= similarity_threshold`` (default 0.9). SEAT
    flags an account once its count of similar pairs exceeds a threshold; as asked for the
    benchmark, the score after query i is ``(similar pairs among queries 0..i) / (i + 1)``
    (NaN for the first ``min_queries - 1`` queries), so long benign accounts are not penalised
    merely for being long.

    Adapted from images to text embeddings: SEAT's encoder is adversarially trained so that
    an attacker's perturbed images stay close; here the sentence embedding is the encoder
    (no training), and pair similarity is the cosine of the (unit-norm) embeddings, with a
    fixed threshold instead of SEAT's threshold tuned on the encoder's benign pair distances.
    fit() only records the embedding dimension.

    Cost per query O(i d) (cosines to all earlier queries, in BLAS blocks).
    """

    name = "seat"

    def __init__(self, similarity_threshold: float = 0.9, min_queries: int = 20) -> None:
        super().__init__()
        if (
            isinstance(similarity_threshold, bool)
            or not isinstance(similarity_threshold, (int, float))
            or not (-1.0 < similarity_threshold <= 1.0)
        ):
            raise ConfigError(f"Seat.similarity_threshold must be a cosine in (-1, 1]; got {similarity_threshold!r}.")
        self.similarity_threshold = float(similarity_threshold)
        self.min_queries = check_positive_int(min_queries, "Seat.min_queries")

    def fit(self, benign_accounts: list[np.ndarray]) -> Seat:
        self._check_benign_accounts(benign_accounts)
        return self

    def similar_pair_counts(self, X: np.ndarray) -> np.ndarray:
        """Per query i: how many earlier queries j < i have cosine(x_i, x_j) >= similarity_threshold (int64)."""
        X = self._check_stream(X)
        n = len(X)
        norms = np.linalg.norm(X, axis=1)
        unit = X / np.where(norms > 0, norms, 1.0)[:, None]  # cosine, even if a caller's vectors drift from unit norm
        counts = np.zeros(n, dtype=np.int64)
        for start, stop in blocks(n):
            similar = (unit[start:stop] @ unit[:stop].T) >= self.similarity_threshold
            rows = np.arange(start, stop)[:, None]
            counts[start:stop] = (similar & (np.arange(stop)[None, :] < rows)).sum(axis=1)
        return counts

    def score_stream(self, X: np.ndarray) -> np.ndarray:
        counts = self.similar_pair_counts(X)
        n = len(counts)
        scores = np.full(n, np.nan)
        if n >= self.min_queries:
            pairs = np.cumsum(counts)
            scores[self.min_queries - 1 :] = pairs[self.min_queries - 1 :] / np.arange(self.min_queries, n + 1)
        return scores
