"""Queries in, feature rows out: reference facts, k-NN in the account's history, account state.

:class:`FeatureStream` turns a batch of (account, unit vector, timestamp) into one feature
vector per item, in order, exactly as if the items had arrived one at a time. The live
:class:`~probewatch.detect.pipeline.Pipeline` runs one; calibration runs a scratch one
over benign traffic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from probewatch.kernels.backend import to_numpy

from ..backend.device import Backend
from ..backend.store import AccountStore
from ..backend.threads import limit_host_blas
from ..config import EngineConfig
from .features import N_FEATURES, AccountState, QueryFacts, advance
from .probes import word_hashes
from .prompt_memory import (
    FRAME_MEMORY,
    FRAME_THREADS,
    REPEAT_MAX_CHARS,
    SENT_DIGEST_BYTES,
    SENT_MEMORY,
    PromptMemory,
    sent_digest,
)
from .reference import BenignReference

STEP_CHUNK = 1024  # items per array pass; bounds transient memory for huge batches
GPU_SEGMENTED_MAX_HISTORY = 2048  # on GPU, short histories of a batch share one kernel launch


@dataclass
class StepResult:
    """Per item, in input order: what the scoring stage needs."""

    states: list[AccountState]  # the item's account state (shared by items of one account)
    features: np.ndarray  # (m, N_FEATURES) as of each item
    n: np.ndarray  # (m,) the account's query count right after each item
    # each prompt's probes.word_hashes (None without a prompt; None for all without texts), for
    # the campaign layer, which reads the same words
    sketches: list[tuple[list[int], int] | None] | None = None
    # per item, whether its account sent its prompt before (None: no item repeats one; see
    # repeated_prompts). A repeat is not stored or folded in: its row and n are its account's
    # as they stood right before it
    repeats: list[bool] | None = None

    def subset(self, items: Sequence[int]) -> StepResult:
        """The result of ``items`` alone (in the given order)."""
        return StepResult(
            [self.states[i] for i in items],
            self.features[items],
            self.n[items],
            None if self.sketches is None else [self.sketches[i] for i in items],
        )


class FeatureStream:
    """Every account's FAISS history and running state; :meth:`step` advances them.

    Not thread-safe on its own; the engine serialises access.
    """

    def __init__(
        self, config: EngineConfig, reference: BenignReference, backend: Backend, off_reference_similarity: float
    ):
        self.config = config
        self.reference = reference
        self.off_reference_similarity = off_reference_similarity
        segmented = config.segmented_max_history
        if segmented is None:
            segmented = GPU_SEGMENTED_MAX_HISTORY if backend.on_gpu else 0
        self.store = AccountStore(
            dim=reference.dim,
            storage=config.storage,
            history_cap=config.history_cap,
            eviction_block=config.eviction_block,
            segmented_max_history=segmented,
            backend=backend,
        )
        self.states: dict[str, AccountState] = {}
        self._state_bytes: int | None = None
        self._framed: set[str] = set()  # accounts whose state holds frame-thread vectors
        self._sent_held = 0  # digests held by the accounts' sent memories

    @property
    def dim(self) -> int:
        return self.reference.dim

    def use_reference(self, reference: BenignReference, off_reference_similarity: float) -> None:
        """Judge the next queries against another reference of the same dimension; every
        account's history and state stay."""
        self.reference = reference
        self.off_reference_similarity = off_reference_similarity
        self._state_bytes = None

    def state_bytes(self) -> int:
        """Approximate bytes held per account besides its vectors: its state's arrays plus
        a fixed allowance for the Python objects around them."""
        if self._state_bytes is None:
            self._state_bytes = AccountState(self.config.window, self.reference.n_cells).nbytes() + 1024
        return self._state_bytes

    def held_bytes(self) -> int:
        return (
            self.store.vector_bytes()
            + len(self.states) * self.state_bytes()
            + len(self._framed) * FRAME_THREADS * FRAME_MEMORY * self.dim  # int8 codes of thread vectors
            + SENT_DIGEST_BYTES * self._sent_held  # the sent memories' digests
        )

    def recount_held(self) -> None:
        """Note which accounts hold frame-thread vectors, and how many digests the sent memories
        hold (after states were put in directly)."""
        self._framed = {account for account, state in self.states.items() if state.frame_vectors is not None}
        self._sent_held = sum(state.sent_held() for state in self.states.values())

    def forget(self, account: str) -> bool:
        """Drop an account's history and state; True if it existed."""
        self.store.remove(account)
        self._framed.discard(account)
        state = self.states.pop(account, None)
        if state is not None:
            self._sent_held -= state.sent_held()
        return state is not None

    def clear(self) -> None:
        self.store.clear()
        self.states.clear()
        self._framed.clear()
        self._sent_held = 0

    def step(
        self,
        accounts: Sequence[str],
        vectors,
        ts: Sequence[float | None],
        texts: Sequence[str | None] | None = None,
        read: Sequence[str | None] | None = None,
    ) -> StepResult:
        """Process validated unit rows (host or device) in order; features of every item.

        Each item updates its account's state in arrival order and its state is captured
        right then, so an account seen twice in a batch gets two different feature rows,
        exactly as if the items had arrived one call at a time. The features of the whole
        batch are then computed in array calls. ``texts``, where given, are the prompts: a
        prompt that continues one of its account's recent prompts is never a walk-away step, and
        only a query known not to may be a deep-path step (see ``walk_steps``). ``read``, where
        given, is what the model read of each prompt (``probewatch.detect.boilerplate``): the word
        rules compare that, so long boilerplate an account's prompts share hides no edit.
        """
        with limit_host_blas(self.config.detection_blas_threads):
            if len(accounts) <= STEP_CHUNK:
                return self._step(accounts, vectors, ts, texts, read)
            # Huge batches go through in chunks (same result: chunks are batches in arrival
            # order), so transient buffers stay a few MB whatever the caller sends.
            parts = [
                self._step(
                    accounts[i : i + STEP_CHUNK],
                    vectors[i : i + STEP_CHUNK],
                    ts[i : i + STEP_CHUNK],
                    None if texts is None else texts[i : i + STEP_CHUNK],
                    None if read is None else read[i : i + STEP_CHUNK],
                )
                for i in range(0, len(accounts), STEP_CHUNK)
            ]
            return StepResult(
                [s for p in parts for s in p.states],
                np.concatenate([p.features for p in parts]),
                np.concatenate([p.n for p in parts]),
                None if texts is None else [sketch for p in parts for sketch in p.sketches],
                None
                if all(p.repeats is None for p in parts)
                else [r for p in parts for r in p.repeats or [False] * len(p.n)],
            )

    def repeats(self, accounts: Sequence[str], texts: Sequence[str | None] | None) -> list[bool] | None:
        """:func:`repeated_prompts` against the accounts' memories; None when no item repeats."""
        if texts is None:
            return None
        out = repeated_prompts(accounts, texts, self.states.get)
        return out if any(out) else None

    def _step(self, accounts, vectors, ts, texts=None, read=None) -> StepResult:
        repeats = self.repeats(accounts, texts)
        if repeats is None:
            return self._step_new(accounts, vectors, ts, texts, read)
        cfg = self.config
        m = len(accounts)
        keep = [i for i, repeat in enumerate(repeats) if not repeat]
        source = [-1] * m  # each repeat's latest earlier new item of its account in the batch (-1: none)
        latest: dict[str, int] = {}
        before: dict[str, tuple[np.ndarray, int]] = {}  # as the account stood before the batch
        for i, account in enumerate(accounts):
            if not repeats[i]:
                latest[account] = i
            elif account in latest:
                source[i] = latest[account]
            elif account not in before:
                state = self.states[account]
                before[account] = (
                    state.features(cfg.near_duplicate_similarity, self.off_reference_similarity),
                    state.n,
                )
        new = (
            self._step_new(
                [accounts[i] for i in keep],
                vectors[keep],
                [ts[i] for i in keep],
                None if texts is None else [texts[i] for i in keep],
                None if read is None else [read[i] for i in keep],
            )
            if keep
            else None
        )
        features = np.empty((m, N_FEATURES))
        n = np.empty(m, dtype=np.int64)
        sketches = None if texts is None else [None] * m
        row_of = {i: k for k, i in enumerate(keep)}
        for i, account in enumerate(accounts):
            if not repeats[i]:
                k = row_of[i]
                features[i], n[i] = new.features[k], new.n[k]
                if sketches is not None and new.sketches is not None:
                    sketches[i] = new.sketches[k]
            elif source[i] >= 0:
                features[i], n[i] = features[source[i]], n[source[i]]
            else:
                features[i], n[i] = before[account]
        states = [self.states[account] for account in accounts]
        return StepResult(states, features, n, sketches, repeats)

    def _step_new(self, accounts, vectors, ts, texts=None, read=None) -> StepResult:
        cfg = self.config
        ref = self.reference.query_stats(vectors)
        sims, counts = self.store.search_then_add(list(accounts), vectors, cfg.k_neighbors)
        available = np.minimum(counts, cfg.k_neighbors)
        if len(accounts) == 1:  # a lone query: the same values without the masked array calls
            have = int(available[0])
            row = sims[0]
            nn = [float(row[0])] if have > 0 else [math.nan]
            # float32 sum over one row, divided by an int64 as the batch path does (float64)
            knn = [float(np.where(np.isfinite(row), row, 0.0).sum() / np.int64(have))] if have > 0 else [math.nan]
        else:
            nn, knn = self._neighbour_means(sims, available)
        facts = [
            QueryFacts(*row)
            for row in zip(
                nn, knn, ref.ref_similarity.tolist(), ref.ref_kernel_mean.tolist(), ref.cell.tolist(), strict=True
            )
        ]
        return self._fold(accounts, facts, ts, texts, vectors, read)

    @staticmethod
    def _neighbour_means(sims: np.ndarray, available: np.ndarray) -> tuple[list[float], list[float]]:
        """Each item's nearest similarity and mean of its k nearest (NaN without a neighbour)."""
        with np.errstate(invalid="ignore"):
            nn = np.where(available > 0, sims[:, 0], np.nan).tolist()
            knn = np.where(
                available > 0, np.where(np.isfinite(sims), sims, 0.0).sum(axis=1) / np.maximum(available, 1), np.nan
            ).tolist()
        return nn, knn

    def _fold(self, accounts, facts: list[QueryFacts], ts, texts, vectors, read=None) -> StepResult:
        """Fold each item's facts into its account in order; the batch's feature rows."""
        cfg = self.config
        states = [self._state_of(account) for account in accounts]
        sketches = None
        if texts is not None:  # in arrival order: an item may continue an earlier item of its batch
            words = texts if read is None else read  # read: None exactly where texts is None
            sketches = [None if text is None else word_hashes(text) for text in words]
            rows = to_numpy(vectors)
            for i, text in enumerate(texts):
                state = states[i]
                if text is not None:
                    held = state.sent_held()
                    facts[i].continues, facts[i].probe = state.note_prompt(text, sketches[i], rows[i])
                    self._sent_held += state.sent_held() - held
                    if state.frame_vectors is not None:
                        self._framed.add(accounts[i])
                # as of this item: a later prompt of the batch may extend the account's threads
                facts[i].framed = state.framed_stats()
        # How many later items of the same account follow each item: the store already holds
        # the whole batch, and the window an item sees must end at the item itself.
        later = [0] * len(accounts)
        seen: dict[str, int] = {}
        for i in range(len(accounts) - 1, -1, -1):
            later[i] = seen.get(accounts[i], 0)
            seen[accounts[i]] = later[i] + 1

        def window_of(i: int) -> np.ndarray:
            return self.store.window(accounts[i], cfg.window, end=self.store.history_size(accounts[i]) - later[i])

        batch = advance(states, facts, list(ts), cfg.window, cfg.refresh_every, window_of, self.reference)
        features = batch.features(cfg.near_duplicate_similarity, self.off_reference_similarity)
        return StepResult(states, features, batch.n.copy(), sketches)

    def _state_of(self, account: str) -> AccountState:
        state = self.states.get(account)
        if state is None:
            state = self.states[account] = AccountState(self.config.window, self.reference.n_cells)
        return state


def repeated_prompts(
    accounts: Sequence[str],
    texts: Sequence[str | None],
    state_of: Callable[[str], PromptMemory | None] = lambda account: None,
) -> list[bool]:
    """Per item, whether its prompt is character for character one its account's sent memory
    holds (see SENT_MEMORY), as the memory stands at that item: the prompts judged as new before
    the batch (``state_of``: each account's memory, None for a new one) and earlier in it.
    Prompts over REPEAT_MAX_CHARS are never repeats."""
    out: list[bool] = []
    # per account in the batch: its new digests (in order), and how many of the memory's
    # prompts from before the batch they pushed out
    fresh: dict[str, dict[tuple[int, int], None]] = {}
    pushed: dict[str, int] = {}
    for account, text in zip(accounts, texts, strict=True):
        if text is None or len(text) > REPEAT_MAX_CHARS:  # judged, and not remembered
            out.append(False)
            continue
        digest = sent_digest(text)
        state = state_of(account)
        new = fresh.setdefault(account, {})
        if digest in new:
            out.append(True)
            continue
        gone = pushed.get(account, 0)
        rank = state.sent_rank(digest) if state is not None else -1
        if rank >= gone:
            out.append(True)
            continue
        out.append(False)
        new[digest] = None
        held = (state.sent_held() if state is not None else 0) - gone + len(new)
        if held > SENT_MEMORY:  # the memory is full: its oldest prompt goes
            if state is not None and gone < state.sent_held():
                pushed[account] = gone + 1
            else:
                del new[next(iter(new))]
    return out
