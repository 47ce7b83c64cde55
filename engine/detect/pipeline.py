"""One batch end to end: store -> features -> scoring -> verdicts, levels and risk trace.

:class:`Pipeline` is everything the engine knows below its facade: the benign model
(reference + calibration) and the detector built on it, every account's history and state
(a :class:`~probewatch.detect.stream.FeatureStream`), the optional live population refit,
and the memory budget. The facade validates, embeds, takes the lock and calls
:meth:`Pipeline.observe`; nothing comes back to it half done.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backend.device import Backend
from ..backend.threads import limit_host_blas
from ..config import EngineConfig
from ..errors import UnknownAccountError
from ..types import AccountReport, FeatureReading, Level, Verdict
from .features import FEATURE_NAMES, AccountState
from .fitting import PopulationSample
from .scoring import BenignModel, Detector
from .stream import FeatureStream, StepResult

# Share of the memory budget eviction brings the engine back down to: some headroom, so
# eviction does not run again on the very next batch.
EVICT_TO_SHARE = 0.9


class Pipeline:
    """Account state and judgement for validated unit vectors. Not thread-safe on its own."""

    def __init__(self, config: EngineConfig, benign: BenignModel, backend: Backend):
        self.config = config
        self.backend = backend
        self.observations = 0
        self.population = PopulationSample()
        self.stream = FeatureStream(config, benign.reference, backend, benign.calibration.off_reference_similarity)
        self._install(benign)

    def _install(self, benign: BenignModel) -> None:
        self.reference = benign.reference
        self.base_calibration = benign.calibration  # population refits blend into this, never into a blend
        self._set_calibration(benign.calibration)

    def _set_calibration(self, calibration) -> None:
        self.calibration = calibration
        self.detector = Detector(calibration, self.config.target_fpr, self.config.watch_fpr)

    @property
    def benign(self) -> BenignModel:
        return BenignModel(self.reference, self.calibration)

    @property
    def dim(self) -> int:
        return self.reference.dim

    @property
    def store(self):
        return self.stream.store

    @property
    def states(self) -> dict[str, AccountState]:
        return self.stream.states

    def state_bytes(self) -> int:
        return self.stream.state_bytes()

    def held_bytes(self) -> int:
        return self.stream.held_bytes()

    # -- observing ----------------------------------------------------------------------
    def observe(self, accounts: Sequence[str], vectors, ts: Sequence[float | None]) -> list[Verdict]:
        """Verdicts for validated unit rows (host or device), in order; then the batch's
        housekeeping (population refit when due, memory budget)."""
        # Judging runs under the same BLAS limit as the feature step: a multi-threaded
        # OpenBLAS call here leaves threads spinning against the embedding model.
        with limit_host_blas(self.config.detection_blas_threads):
            verdicts = self._judge(list(accounts), self.stream.step(accounts, vectors, ts))
        self._after_batch(len(verdicts))
        return verdicts

    def _judge(self, accounts: list[str], step: StepResult) -> list[Verdict]:
        scores, risks, reasons = self.detector.judge(step.features, step.n, [s.recent_scores for s in step.states])
        remember = bool(self.config.population_update_every)
        out = []
        for i, (account, state) in enumerate(zip(accounts, step.states, strict=True)):
            score, risk, n = float(scores[i]), float(risks[i]), int(step.n[i])
            if score > state.peak_score:
                state.peak_score = score
                state.peak_risk = risk
                level = self.detector.level_for(score)
                if level is Level.FLAG and state.level is not Level.FLAG:
                    state.flagged_at = n
                state.level = max(state.level, level)
            state.record_risk(risk, n)
            if remember and state.level is Level.OK:
                self.population.remember(n, step.features[i], self.observations)
            out.append(
                Verdict(
                    account=account,
                    risk=risk,
                    level=state.level,
                    flagged=state.level is Level.FLAG,
                    n_queries=n,
                    score=score,
                    peak_risk=state.peak_risk,
                    reasons=reasons[i],
                )
            )
        return out

    def _after_batch(self, n_items: int) -> None:
        before, self.observations = self.observations, self.observations + n_items
        every = self.config.population_update_every
        if every and self.observations // every != before // every:
            refitted = self.population.refit(self.base_calibration, self.config.population_max_share)
            if refitted is not None:
                self._set_calibration(refitted)
        self._enforce_memory_budget()

    def _enforce_memory_budget(self) -> None:
        budget = self.config.memory_budget_bytes
        if self.held_bytes() <= budget:
            return
        for account in self.store.accounts():  # least recently observed first
            if self.held_bytes() <= EVICT_TO_SHARE * budget:
                break
            self.stream.forget(account)

    # -- calibration ----------------------------------------------------------------------
    def recalibrate(self, benign: BenignModel) -> None:
        """Judge by ``benign`` from now on. Histories are kept when the dimension matches."""
        if benign.reference.dim != self.dim:
            self.stream = FeatureStream(
                self.config, benign.reference, self.backend, benign.calibration.off_reference_similarity
            )
        else:
            self.stream.use_reference(benign.reference, benign.calibration.off_reference_similarity)
        self._install(benign)
        self.population.clear()

    # -- reading state ----------------------------------------------------------------------
    def accounts(self, level: Level | str | None = None) -> list[str]:
        ids = self.store.accounts()
        if level is None:
            return ids
        wanted = Level(level)
        return [a for a in ids if self.states[a].level is wanted]

    def report(self, account: str) -> AccountReport:
        state = self.states.get(account)
        if state is None:
            raise UnknownAccountError(f"no account {account!r}: it was never observed, or was forgotten or evicted")
        cal = self.calibration
        features = state.features(self.config.near_duplicate_similarity, cal.off_reference_similarity)
        n = np.asarray([state.n])
        scores, risks, reasons = self.detector.judge(features[None, :], n, [state.recent_scores.copy()])
        deviations = cal.deviations(features, n)[0]
        readings = {}
        for j, name in enumerate(FEATURE_NAMES):
            value = float(features[j])
            known = not math.isnan(value)
            readings[name] = FeatureReading(
                value=value if known else None,
                benign_percentile=cal.percentile(j, value, state.n) if known else None,
                deviation=None if math.isnan(deviations[j]) else float(deviations[j]),
            )
        return AccountReport(
            account=account,
            n_queries=state.n,
            history_size=self.store.history_size(account),
            first_ts=None if math.isnan(state.first_ts) else state.first_ts,
            last_ts=None if math.isnan(state.last_ts) else state.last_ts,
            level=state.level,
            flagged_at_query=state.flagged_at if state.flagged_at >= 0 else None,
            risk=float(risks[0]),
            score=float(scores[0]),
            peak_risk=state.peak_risk,
            features=readings,
            reasons=reasons[0],
            risk_over_time=tuple(state.history),
        )

    def level_counts(self) -> dict[str, int]:
        counts = {level.value: 0 for level in Level}
        for state in self.states.values():
            counts[state.level.value] += 1
        return counts

    # -- state management ----------------------------------------------------------------------
    def forget(self, account: str) -> bool:
        return self.stream.forget(account)

    def reset(self) -> None:
        self.stream.clear()
        self.observations = 0
        self.population.clear()

    def state_dict(self) -> dict[str, Any]:
        """Every account's history and state, plus the observation count (host copies)."""
        ids, offsets, vectors = self.store.export()
        return {
            "observations": self.observations,
            "accounts": ids,
            "offsets": offsets,
            "vectors": vectors,
            "states": [self.states[a] for a in ids],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace every account with those of a :meth:`state_dict` (same dimension)."""
        self.reset()
        self.store.import_(state["accounts"], state["offsets"], state["vectors"])
        self.states.update(zip(state["accounts"], state["states"], strict=True))
        self.observations = int(state["observations"])
