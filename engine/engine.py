"""The facade: :class:`Engine` observes prompts per account and returns verdicts."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import fit_calibration
from .config import EngineConfig
from .detector import Calibration, Detector, Verdict, bin_of
from .embedder import Embedder, resolve_device
from .errors import BatchError, CalibrationError, InvalidEmbeddingError, ProbewatchError, UnknownAccountError
from .features import FEATURE_NAMES, AccountState
from .pipeline import Pipeline, limit_host_blas
from .reference import BenignReference
from .store import IndexBackend
from .validation import check_account, check_embeddings, check_prompt, check_same_length, check_timestamp

DEFAULT_CALIBRATION_PATH = Path(__file__).resolve().parent / "data" / "default_calibration.npz"
POPULATION_RESERVOIR = 20_000


class Engine:
    """Watches prompts per account and tells which accounts are extracting the model.

    ``Engine()`` works with no arguments: the bundled all-MiniLM-L6-v2 model, CUDA when
    present, and the shipped benign calibration. All public methods take and return host
    (NumPy / Python) objects and are safe to call from several threads.

    Batch semantics: items of a batch are validated first. Valid items are processed in
    order; if any item was invalid, :class:`~probewatch.errors.BatchError` is raised *after*
    the valid ones were processed, carrying their verdicts and each rejected item's error.
    A mismatched batch length is rejected whole before anything is processed.
    """

    def __init__(self, config: EngineConfig | None = None, *, embedder: Embedder | None = None,
                 calibration_path: str | Path | None = None, **overrides: Any):
        config = config or EngineConfig()
        if overrides:
            config = config.replace(**overrides)
        reference, calibration = self._load_calibration_file(Path(calibration_path or DEFAULT_CALIBRATION_PATH))
        self._init_from_parts(config, embedder, reference, calibration)

    def _init_from_parts(self, config: EngineConfig, embedder: Embedder | None, reference: BenignReference,
                         calibration: Calibration) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._embedder = embedder
        device = embedder.device if embedder is not None else resolve_device(config.device)
        self._backend = IndexBackend(on_gpu=device.startswith("cuda"), temp_memory_bytes=config.gpu_temp_memory_bytes)
        self._install(reference, calibration)
        self._observations = 0
        self._population: list[tuple[int, np.ndarray]] = []

    @classmethod
    def from_benign_embeddings(cls, accounts: Sequence[str], vectors: Any, ts: Sequence[float | None] | None = None,
                               config: EngineConfig | None = None, *, embedder: Embedder | None = None,
                               source: str = "from_benign_embeddings()", progress=None, **overrides: Any) -> "Engine":
        """An engine calibrated from scratch on benign vectors (no default calibration needed)."""
        config = config or EngineConfig()
        if overrides:
            config = config.replace(**overrides)
        n = check_same_length(accounts=accounts, ts=ts)
        arr = check_embeddings(vectors, np.asarray(vectors).shape[-1])
        if arr.shape[0] != n:
            raise InvalidEmbeddingError(f"expected one vector per account: {n} accounts but {arr.shape[0]} vectors")
        for a in accounts:
            check_account(a)
        reference, calibration = fit_calibration(config, IndexBackend(on_gpu=False), list(accounts), arr, ts,
                                                 None, True, source, progress)
        engine = cls.__new__(cls)
        engine._init_from_parts(config, embedder, reference, calibration)
        return engine

    # -- calibration plumbing -----------------------------------------------------------
    @staticmethod
    def _load_calibration_file(path: Path) -> tuple[BenignReference, Calibration]:
        from .persistence import read_calibration  # noqa: PLC0415

        return read_calibration(path)

    def _install(self, reference: BenignReference, calibration: Calibration) -> None:
        self.reference = reference
        self.calibration = calibration
        self._base_calibration = calibration  # population refits blend into this, never into a blend
        self.detector = Detector(calibration, self.config.target_fpr, self.config.watch_fpr)
        self.pipeline = Pipeline(self.config, reference, self._backend, calibration.off_reference_similarity)

    @property
    def embedder(self) -> Embedder:
        """The text encoder, loaded on first use (observe_embeddings never needs it)."""
        with self._lock:
            if self._embedder is None:
                self._embedder = Embedder(self.config.model, self.config.device, self.config.embed_batch_size)
            return self._embedder

    @property
    def dim(self) -> int:
        return self.reference.dim

    # -- observing ------------------------------------------------------------------------
    def observe(self, account: str, prompt: str | bytes, ts: float | None = None) -> Verdict:
        """Observe one prompt; raises the item's own error when it is invalid."""
        try:
            return self.observe_batch([account], [prompt], None if ts is None else [ts])[0]
        except BatchError as exc:
            raise exc.errors[0] from None

    def observe_batch(self, accounts: Sequence[str], prompts: Sequence[str | bytes],
                      ts: Sequence[float | None] | None = None) -> list[Verdict]:
        """Observe many prompts (one embedding batch); verdicts in input order."""
        check_same_length(accounts=accounts, prompts=prompts, ts=ts)
        errors: dict[int, ProbewatchError] = {}
        good: list[int] = []
        texts: list[str] = []
        for i, (account, prompt) in enumerate(zip(accounts, prompts)):
            try:
                check_account(account)
                texts.append(check_prompt(prompt, self.config.max_prompt_chars))
                check_timestamp(None if ts is None else ts[i])
                good.append(i)
            except ProbewatchError as exc:
                errors[i] = exc
        vectors = self.embedder.encode_device(texts) if texts else None
        return self._observe_valid(accounts, ts, good, errors, vectors)

    def observe_embeddings(self, accounts: Sequence[str], vectors: Any, ts: Sequence[float | None] | None = None) -> list[Verdict]:
        """Observe precomputed (n, d) vectors (normalised to unit length here)."""
        n = check_same_length(accounts=accounts, ts=ts)
        arr = check_embeddings(vectors, self.dim)
        if arr.shape[0] != n:
            raise InvalidEmbeddingError(f"expected one vector per account: {n} accounts but {arr.shape[0]} vectors")
        errors: dict[int, ProbewatchError] = {}
        good: list[int] = []
        for i, account in enumerate(accounts):
            try:
                check_account(account)
                check_timestamp(None if ts is None else ts[i])
                good.append(i)
            except ProbewatchError as exc:
                errors[i] = exc
        return self._observe_valid(accounts, ts, good, errors, arr[good] if errors else arr)

    def _observe_valid(self, accounts, ts, good: list[int], errors: dict, vectors) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(accounts)
        if good:
            if vectors.shape[1] != self.dim:
                raise InvalidEmbeddingError(
                    f"the embedding model gives {vectors.shape[1]}-d vectors but the calibration is for {self.dim}-d; "
                    "calibrate the engine with this model (engine.calibrate)"
                )
            accs = [accounts[i] for i in good]
            stamps = [None if ts is None else check_timestamp(ts[i]) for i in good]
            with self._lock:
                # Judging runs under the same BLAS limit as the pipeline: a multi-threaded
                # OpenBLAS call here leaves threads spinning against the embedding model.
                with limit_host_blas(self.config.detection_blas_threads):
                    step = self.pipeline.step(accs, vectors, stamps)
                    for i, verdict in zip(good, self._verdicts(accs, step.states, step.features, step.n)):
                        verdicts[i] = verdict
                self._after_batch(len(good))
        if errors:
            raise BatchError(errors, verdicts)
        return verdicts  # type: ignore[return-value]

    def _verdicts(self, accounts: list[str], states: list[AccountState], features: np.ndarray, ns: np.ndarray) -> list[Verdict]:
        scores, risks, reasons = self.detector.judge(features, ns, [s.recent_scores for s in states])
        out = []
        for i, (account, state) in enumerate(zip(accounts, states)):
            score, risk, n = float(scores[i]), float(risks[i]), int(ns[i])
            if score > state.peak_score:
                state.peak_score = score
                state.peak_risk = risk
                level = self.detector.level_for(score)
                if level == "flag" and state.level != "flag":
                    state.flagged_at = n
                if _LEVEL_RANK[level] > _LEVEL_RANK[state.level]:
                    state.level = level
            state.record_risk(risk, n)
            if self.config.population_update_every and state.level == "ok":
                self._remember_population_sample(n, features[i])
            out.append(Verdict(account=account, risk=risk, level=state.level, flagged=state.level == "flag",
                               n_queries=n, score=score, peak_risk=state.peak_risk, reasons=reasons[i]))
        return out

    def _after_batch(self, n_items: int) -> None:
        self._observations += n_items
        every = self.config.population_update_every
        if every and self._observations // every != (self._observations - n_items) // every:
            self._refit_from_population()
        self._enforce_memory_budget()

    def _enforce_memory_budget(self) -> None:
        budget = self.config.memory_budget_bytes
        if self.pipeline.held_bytes() <= budget:
            return
        for account in self.pipeline.store.least_recent():
            if self.pipeline.held_bytes() <= 0.9 * budget:
                break
            self.pipeline.forget(account)

    # -- online population updating ----------------------------------------------------------
    def _remember_population_sample(self, n: int, features: np.ndarray) -> None:
        rng = np.random.default_rng(self._observations + n)
        if len(self._population) < POPULATION_RESERVOIR:
            self._population.append((n, features))
        else:
            slot = int(rng.integers(0, self._observations + 1))
            if slot < POPULATION_RESERVOIR:
                self._population[slot] = (n, features)

    def _refit_from_population(self) -> None:
        """Blend live ``ok`` accounts' features into the tables (bounded share); thresholds stay."""
        if len(self._population) < 100:
            return
        share = self.config.population_max_share
        ns = np.asarray([n for n, _ in self._population])
        feats = np.asarray([f for _, f in self._population])
        bins = bin_of(ns)
        base = self._base_calibration
        samples = []
        for b, s in enumerate(base.samples):
            live = feats[bins == b]
            cap = int(share / (1 - share) * max(len(s), 1))
            samples.append(np.concatenate([s, live[:cap]]) if live.size else s)
        merged = Calibration(samples, base.account_max_scores, base.off_reference_similarity,
                             distance_norm=base.distance_norm, source=base.source + " + live population",
                             n_accounts=base.n_accounts)
        self.calibration = merged
        self.detector = Detector(merged, self.config.target_fpr, self.config.watch_fpr)

    # -- calibration -----------------------------------------------------------------------
    def calibrate(self, accounts: Sequence[str], prompts: Sequence[str], ts: Sequence[float | None] | None = None,
                  *, refit_reference: bool = True, source: str = "calibrate()") -> None:
        """Calibrate on known-benign traffic (accounts' prompts in time order)."""
        check_same_length(accounts=accounts, prompts=prompts, ts=ts)
        for a in accounts:
            check_account(a)
        texts = [check_prompt(p, self.config.max_prompt_chars) for p in prompts]
        vectors = self.embedder.encode(texts)
        self.calibrate_embeddings(accounts, vectors, ts, refit_reference=refit_reference, source=source)

    def calibrate_embeddings(self, accounts: Sequence[str], vectors: Any, ts: Sequence[float | None] | None = None,
                             *, refit_reference: bool = True, source: str = "calibrate_embeddings()",
                             progress=None) -> None:
        """Like :meth:`calibrate` with precomputed vectors. Replaces the calibration; account
        histories are kept and judged by the new calibration from their next query on."""
        n = check_same_length(accounts=accounts, ts=ts)
        dim = np.asarray(vectors).shape[-1] if refit_reference else self.dim
        arr = check_embeddings(vectors, dim)
        if arr.shape[0] != n:
            raise InvalidEmbeddingError(f"expected one vector per account: {n} accounts but {arr.shape[0]} vectors")
        for a in accounts:
            check_account(a)
        reference, calibration = fit_calibration(self.config, IndexBackend(on_gpu=False), list(accounts), arr, ts,
                                                 self.reference, refit_reference, source, progress)
        with self._lock:
            if reference.dim != self.dim and len(self.pipeline.states):
                raise CalibrationError(
                    f"the new calibration is for {reference.dim}-d vectors but the engine holds {self.dim}-d "
                    "histories; reset() the engine first"
                )
            old_states, old_store = self.pipeline.states, self.pipeline.store
            self._install(reference, calibration)
            if reference.dim == old_store.dim:
                self.pipeline.states, self.pipeline.store = old_states, old_store
            self._population.clear()

    def save_calibration(self, path: str | Path) -> None:
        from .persistence import write_calibration  # noqa: PLC0415

        with self._lock:
            write_calibration(path, self.reference, self.calibration)

    # -- reading state -------------------------------------------------------------------------
    def accounts(self, level: str | None = None) -> list[str]:
        """Account ids held now, optionally only those at ``level`` (most recently seen last)."""
        with self._lock:
            ids = self.pipeline.store.accounts()
            if level is None:
                return ids
            return [a for a in ids if self.pipeline.states[a].level == level]

    def report(self, account: str) -> dict[str, Any]:
        """History size, current features with benign percentiles, risk over time."""
        check_account(account)
        with self._lock:
            state = self.pipeline.states.get(account)
            if state is None:
                raise UnknownAccountError(f"no account {account!r}: it was never observed, or was forgotten or evicted")
            features = state.features(self.config.near_duplicate_similarity, self.calibration.off_reference_similarity)
            scores, risks, reasons = self.detector.judge(features[None, :], np.asarray([state.n]), [state.recent_scores.copy()])
            score, risk, reasons = float(scores[0]), float(risks[0]), reasons[0]
            z = self.calibration.deviations(features, np.asarray([state.n]))[0]
            feature_report = {}
            for j, name in enumerate(FEATURE_NAMES):
                value = features[j]
                feature_report[name] = {
                    "value": None if math.isnan(value) else float(value),
                    "benign_percentile": None if math.isnan(value) else self.calibration.percentile(j, float(value), state.n),
                    "deviation": None if math.isnan(z[j]) else float(z[j]),
                }
            return {
                "account": account,
                "n_queries": state.n,
                "history_size": self.pipeline.store.history_size(account),
                "first_ts": None if math.isnan(state.first_ts) else state.first_ts,
                "last_ts": None if math.isnan(state.last_ts) else state.last_ts,
                "level": state.level,
                "flagged": state.level == "flag",
                "flagged_at_query": state.flagged_at if state.flagged_at >= 0 else None,
                "risk": risk,
                "score": score,
                "peak_risk": state.peak_risk,
                "features": feature_report,
                "reasons": [r.to_dict() for r in reasons],
                "risk_over_time": [{"n_queries": n, "risk": r} for n, r in state.history],
            }

    def stats(self) -> dict[str, Any]:
        with self._lock:
            levels = {"ok": 0, "watch": 0, "flag": 0}
            for s in self.pipeline.states.values():
                levels[s.level] += 1
            return {
                "accounts": len(self.pipeline.states),
                "stored_queries": self.pipeline.store.total_vectors(),
                "bytes_held": self.pipeline.held_bytes(),
                "levels": levels,
                "observations": self._observations,
                "device": "cuda" if self._backend.on_gpu else "cpu",
                "flag_threshold": self.detector.flag_threshold,
                "calibration": self.calibration.meta(),
            }

    # -- state management -------------------------------------------------------------------------
    def forget(self, account: str) -> bool:
        """Drop an account's history and statistics (e.g. a privacy request). True if it existed."""
        check_account(account)
        with self._lock:
            existed = account in self.pipeline.states
            self.pipeline.forget(account)
            return existed

    def reset(self) -> None:
        """Forget every account; calibration and configuration stay."""
        with self._lock:
            self.pipeline.store.clear()
            self.pipeline.states.clear()
            self._observations = 0
            self._population.clear()

    def save(self, path: str | Path) -> None:
        """Write the complete state atomically (temporary file, then rename)."""
        from .persistence import write_snapshot  # noqa: PLC0415

        with self._lock:
            write_snapshot(path, self)

    @classmethod
    def load(cls, path: str | Path, *, embedder: Embedder | None = None, **overrides: Any) -> "Engine":
        """A new engine from a snapshot; ``overrides`` may change runtime settings such as device."""
        from .persistence import read_snapshot  # noqa: PLC0415

        return read_snapshot(cls, path, embedder=embedder, overrides=overrides)

    def restore(self, path: str | Path) -> None:
        """Replace this engine's state with a snapshot's; on any error the engine is untouched."""
        other = type(self).load(path, embedder=self._embedder, device=self.config.device)
        with self._lock:
            self.config = other.config
            self._install(other.reference, other.calibration)
            self.pipeline.states, self.pipeline.store = other.pipeline.states, other.pipeline.store
            self.pipeline.store.backend = self._backend
            self._observations = other._observations


_LEVEL_RANK = {"ok": 0, "watch": 1, "flag": 2}
