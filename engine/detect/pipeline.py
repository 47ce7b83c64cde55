"""One batch end to end: store -> features -> scoring -> verdicts, levels and risk trace.

:class:`Pipeline` is everything the engine knows below its facade: the benign model
(reference + calibration) and the detector built on it, every account's history and state
(a :class:`~probewatch.detect.stream.FeatureStream`), the optional live population refit,
and the memory budget. The facade validates, embeds, takes the lock and calls
:meth:`Pipeline.observe`; nothing comes back to it half done.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from probewatch.kernels.backend import to_numpy

from ..backend.device import Backend
from ..backend.threads import limit_host_blas
from ..campaigns.elicitation_default import default_elicitation_head
from ..campaigns.groups import exchangeable_spread
from ..campaigns.layer import CampaignLayer
from ..config import EngineConfig
from ..errors import UnknownAccountError, UnknownCampaignError
from ..types import AccountReport, CampaignReport, FeatureReading, Level, Reason, Verdict
from .boilerplate import BoilerplateMemory
from .features import FEATURE_NAMES, AccountState
from .learning import AccountStanding, LearningRules, ProviderNormal
from .scoring import BenignModel, Detector
from .stream import FeatureStream, StepResult

# Share of the memory budget eviction brings the engine back down to: some headroom, so
# eviction does not run again on the very next batch.
EVICT_TO_SHARE = 0.9
# What an evicted account at watch or flag leaves behind (level, peak score and risk, the query
# at which it was flagged, its query count, the reasons it was judged by): its level and
# reasons come back when the account does.
EVICTED_RECORD_BYTES = 1024
DIVERSE_PERCENTILE = 10.0
_MEAN_PAIRWISE = FEATURE_NAMES.index("mean_pairwise_similarity")


class Pipeline:
    """Account state and judgement for validated unit vectors. Not thread-safe on its own."""

    def __init__(self, config: EngineConfig, benign: BenignModel, backend: Backend):
        self.config = config
        self.backend = backend
        self.observations = 0
        self.repeats = 0  # items whose prompt their account had sent before (not judged anew)
        self.population = ProviderNormal(LearningRules.from_config(config))
        self.clock = math.nan  # latest timestamp observed: account ages for learning
        # account -> (level, peak_score, peak_risk, flagged_at, n, reasons) of accounts at watch
        # or flag that memory pressure evicted: an attacker cannot shed its level by flooding new accounts
        self.evicted: dict[str, tuple[str, float, float, int, int, tuple[Reason, ...]]] = {}
        # reasons a returned account was evicted with, shown until its own history gives some
        self.carried_reasons: dict[str, tuple[Reason, ...]] = {}
        self.evictions = 0  # accounts evicted for memory (not forgotten on request)
        self.last_evicted: list[str] = []  # what the last observe evicted (the sidecar journals it)
        self.auto_evict = True  # off while the sidecar replays its journal: its evict records say what goes
        self.memory_pressure: str | None = None  # why the budget could not be kept cleanly, at the last batch
        self.stream = FeatureStream(config, benign.reference, backend, benign.calibration.off_reference_similarity)
        self.campaigns: CampaignLayer | None = None
        # each account's last long prompt's segment checksums: Engine.embed_batch reads prompts
        # through it, on its own lock (see probewatch.detect.boilerplate)
        self.boilerplate = BoilerplateMemory()
        self._install(benign)

    def _install(self, benign: BenignModel) -> None:
        self.reference = benign.reference
        self.base_calibration = benign.calibration  # population refits blend into this, never into a blend
        self.group_calibration = benign.groups
        self._set_calibration(benign.calibration)
        if not self.config.campaigns or benign.groups is None:
            self.campaigns = None
            return
        member_spread = exchangeable_spread(self.reference.bank)
        if self.campaigns is None or self.campaigns.dim != self.dim:
            self.campaigns = CampaignLayer(
                self.config,
                self.dim,
                benign.groups,
                codebook=self.reference.codebook,
                diverse_below=self._unusually_diverse,
                elicitation=default_elicitation_head(self.dim),
                salt=bytes.fromhex(self.config.campaign_salt) if self.config.campaign_salt else None,
                member_spread=member_spread,
            )
        else:
            self.campaigns.use_calibration(benign.groups)
            self.campaigns.codebook = self.reference.codebook
            self.campaigns.member_spread = member_spread

    def _unusually_diverse(self, mean_pairwise_similarity: float, n: int) -> bool:
        """Below the benign DIVERSE_PERCENTILE of accounts of the same length: a payload-region candidate."""
        pct = self.calibration.percentile(_MEAN_PAIRWISE, mean_pairwise_similarity, n)
        return pct == pct and pct <= DIVERSE_PERCENTILE

    def _set_calibration(self, calibration) -> None:
        self.calibration = calibration
        self.detector = Detector(calibration, self.config.target_fpr, self.config.watch_fpr)

    @property
    def benign(self) -> BenignModel:
        """The prior (what was installed): snapshots keep it and the live rows apart, so a
        reload re-learns from the same rows instead of compounding them into the prior."""
        return BenignModel(self.reference, self.base_calibration, self.group_calibration)

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
        campaigns = self.campaigns.nbytes() if self.campaigns is not None else 0
        held = self.stream.held_bytes() + campaigns + self.boilerplate.nbytes
        return held + len(self.evicted) * EVICTED_RECORD_BYTES

    # -- observing ----------------------------------------------------------------------
    def observe(
        self,
        accounts: Sequence[str],
        vectors,
        ts: Sequence[float | None],
        texts: Sequence[str | None] | None = None,
        metas: Sequence[dict[str, str] | None] | None = None,
        read: Sequence[str | None] | None = None,
    ) -> list[Verdict]:
        """Verdicts for validated unit rows (host or device), in order; then the batch's
        housekeeping (population refit when due, memory budget). ``texts`` (for template
        anchors) and ``metas`` (checked request metadata) feed the campaign layer; ``read``
        (what the model read of each prompt, ``probewatch.detect.boilerplate``) the word rules."""
        accounts = list(accounts)
        # Judging runs under the same BLAS limit as the feature step: a multi-threaded
        # OpenBLAS call here leaves threads spinning against the embedding model.
        with limit_host_blas(self.config.detection_blas_threads):
            if self.evicted:
                self._restore_evicted(accounts)
            step = self.stream.step(accounts, vectors, ts, texts, read)
            self._advance_clock(ts)
            if step.repeats is not None:
                verdicts = self._observe_with_repeats(accounts, vectors, ts, texts, metas, step)
            else:
                verdicts, evidence = self._judge(accounts, step)
                if self.campaigns is not None:
                    verdicts = self._campaign_step(
                        accounts, to_numpy(vectors), texts, metas, ts, evidence, verdicts, step.sketches
                    )
        self._after_batch(len(verdicts))
        return verdicts

    def _observe_with_repeats(self, accounts, vectors, ts, texts, metas, step: StepResult) -> list[Verdict]:
        """Judge a batch in which some items repeat a prompt their account sent before: only the
        others are judged (and reach the campaign layer); a repeat gets its account's verdict
        as it stood right before it, marked ``repeat``."""
        repeats = step.repeats
        keep = [i for i, repeat in enumerate(repeats) if not repeat]
        judged: set[str] = set()
        first = []  # repeats before any new item of their account in the batch
        for i, account in enumerate(accounts):
            if not repeats[i]:
                judged.add(account)
            elif account not in judged:
                first.append(i)
        # before this batch's new items change their accounts
        standing = dict(
            zip(first, self._standing_verdicts([accounts[i] for i in first], step.subset(first)), strict=True)
        )
        new: list[Verdict] = []
        raised_by_item: list[dict[str, Level]] = []  # what each new item's campaign step raised
        # a repeat after new items names its account's campaign as of right after the last of
        # them (another account's query can put it in a campaign without raising its level)
        read_after: dict[int, list[str]] = {}
        read_back: dict[tuple[int, str], Any] = {}
        kept_before = 0
        for i, account in enumerate(accounts if self.campaigns is not None else ()):
            if not repeats[i]:
                kept_before += 1
            elif kept_before:
                read_after.setdefault(kept_before - 1, []).append(account)
        if keep:
            kept_accounts = [accounts[i] for i in keep]
            kept = step.subset(keep)
            new, evidence = self._judge(kept_accounts, kept)
            if self.campaigns is not None:
                new = self._campaign_step(
                    kept_accounts,
                    to_numpy(vectors)[keep],
                    None if texts is None else [texts[i] for i in keep],
                    None if metas is None else [metas[i] for i in keep],
                    [ts[i] for i in keep],
                    evidence,
                    new,
                    kept.sketches,
                    raised_by_item,
                    read_after,
                    read_back,
                )
        self.repeats += len(accounts) - len(keep)
        out: list[Verdict] = []
        latest: dict[str, Verdict] = {}
        raised_so_far: dict[str, Level] = {}  # campaign levels the new items before each repeat raised
        k = 0
        for i, account in enumerate(accounts):
            if not repeats[i]:
                latest[account] = new[k]
                out.append(new[k])
                for member, level in (raised_by_item[k] if raised_by_item else {}).items():
                    raised_so_far[member] = max(level, raised_so_far.get(member, Level.OK))
                k += 1
                continue
            v = latest.get(account) or standing[i]
            level = max(v.level, raised_so_far.get(account, Level.OK))
            if k and (k - 1, account) in read_back:
                v = dataclasses.replace(v, campaign=read_back[(k - 1, account)])
            if level is not v.level:  # its campaign turned hot earlier in the batch
                v = dataclasses.replace(v, level=level, flagged=level is Level.FLAG)
            out.append(dataclasses.replace(v, repeat=True))
        return out

    def _standing_verdicts(self, accounts: list[str], step: StepResult) -> list[Verdict]:
        """Each account's verdict as it stands (``step``: its features and query count as of its
        last new query), changing nothing: score rings are read from copies."""
        if not accounts:
            return []
        states = step.states
        scores, risks, reasons = self.detector.judge(step.features, step.n, [s.recent_scores.copy() for s in states])
        both = np.concatenate([scores, [s.peak_score for s in states]])
        one_in = np.power(10.0, self.calibration.log10_one_in(both)).tolist()
        campaigns: dict[str, Any] = {}
        if self.campaigns is not None:
            campaigns = {account: self.campaigns.summary_for(account) for account in dict.fromkeys(accounts)}
        return [
            Verdict(
                account=account,
                risk=float(risks[i]),
                level=state.level,
                flagged=state.level is Level.FLAG,
                n_queries=int(step.n[i]),
                score=float(scores[i]),
                peak_risk=state.peak_risk,
                reasons=reasons[i],
                campaign=campaigns.get(account),
                one_in=one_in[i],
                peak_one_in=one_in[len(accounts) + i],
            )
            for i, (account, state) in enumerate(zip(accounts, states, strict=True))
        ]

    def _advance_clock(self, ts: Sequence[float | None]) -> None:
        known = [t for t in ts if t is not None]
        if known:
            latest = max(known)
            self.clock = latest if math.isnan(self.clock) else max(self.clock, latest)

    def _campaign_step(
        self,
        accounts,
        vectors,
        texts,
        metas,
        ts,
        evidence,
        verdicts: list[Verdict],
        sketches=None,
        raised_by_item: list[dict[str, Level]] | None = None,
        read_after=None,
        read_back=None,
    ) -> list[Verdict]:
        """Fold the batch into the campaign layer, raise the members of campaigns that became
        hot (their sticky level), and give each verdict its account's campaign as of its item;
        ``raised_by_item`` (a list to fill) gets the accounts each item raised, with the level."""
        events = self.campaigns.observe(
            accounts, np.asarray(vectors, dtype=np.float32), texts, metas, ts, evidence, sketches, read_after, read_back
        )
        raised_so_far: dict[str, Level] = {}
        out = []
        for v, (campaign, raised) in zip(verdicts, events, strict=True):
            if raised_by_item is not None:
                raised_by_item.append(raised)
            for account, level in raised.items():
                raised_so_far[account] = max(level, raised_so_far.get(account, Level.OK))
                state = self.states.get(account)
                if state is not None and level > state.level:
                    if level is Level.FLAG:
                        state.flagged_at = state.n
                    state.level = level
            level = max(v.level, raised_so_far.get(v.account, Level.OK))
            if campaign is not None or level is not v.level:
                v = dataclasses.replace(v, campaign=campaign, level=level, flagged=level is Level.FLAG)
            out.append(v)
        return out

    def _judge(self, accounts: list[str], step: StepResult) -> tuple[list[Verdict], np.ndarray]:
        scores, risks, reasons, evidence = self.detector.judge_with_evidence(
            step.features, step.n, [s.recent_scores for s in step.states]
        )
        remember = bool(self.config.population_update_every)
        rows = []
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
            if remember and (state.level is Level.OK or account in self.population.vouched):
                self.population.remember(account, n, step.features[i])
            rows.append((account, risk, state.level, n, score, state.peak_risk, state.peak_score))
        # "1 in N benign accounts", now and at the peak: keeps ranking where risk rounds to 1
        both = np.power(10.0, self.calibration.log10_one_in(np.concatenate([scores, [r[6] for r in rows]]))).tolist()
        one_in, peak_one_in = both[: len(rows)], both[len(rows) :]
        out = [
            Verdict(
                account=account,
                risk=risk,
                level=level,
                flagged=level is Level.FLAG,
                n_queries=n,
                score=score,
                peak_risk=peak_risk,
                reasons=reasons[i],
                one_in=one_in[i],
                peak_one_in=peak_one_in[i],
            )
            for i, (account, risk, level, n, score, peak_risk, _) in enumerate(rows)
        ]
        return out, evidence

    def _after_batch(self, n_items: int) -> None:
        before, self.observations = self.observations, self.observations + n_items
        every = self.config.population_update_every
        if every and self.observations // every != before // every:
            self.learn_normal()
        self._enforce_memory_budget()

    def learn_normal(self) -> bool:
        """Refit the tables from eligible live accounts now (see probewatch.detect.learning);
        False while warming up. Runs on its own schedule when population_update_every is set."""
        refitted = self.population.refit(self.base_calibration, self._standing, self.clock)
        if refitted is None:
            return False
        self._set_calibration(refitted)
        return True

    def _standing(self, account: str) -> AccountStanding | None:
        state = self.states.get(account)
        if state is None:
            return None
        suspected = self.campaigns is not None and self.campaigns.suspected(account)
        return AccountStanding(state.n, state.first_ts, state.level is Level.OK, suspected)

    def _enforce_memory_budget(self) -> None:
        """Evict least recently observed accounts at ok first; accounts at watch or flag only
        when nothing else is left, and then they leave a compact record behind."""
        self.last_evicted = []
        budget = self.config.memory_budget_bytes
        if not self.auto_evict or self.held_bytes() <= budget:
            if self.auto_evict:
                self.memory_pressure = None
            return
        suspicious_evicted = 0
        for suspicious_too in (False, True):
            for account in self.store.accounts():  # least recently observed first
                if self.held_bytes() <= EVICT_TO_SHARE * budget:
                    break
                suspicious = self._suspicious(account)
                if suspicious and not suspicious_too:
                    continue
                suspicious_evicted += suspicious
                self._evict(account)
                self.last_evicted.append(account)
        held = self.held_bytes()
        if held > budget:
            self.memory_pressure = (
                f"{held:,} bytes held after evicting every account that could go, over the memory budget of "
                f"{budget:,} (evicted-account records and campaign tables remain): raise memory_budget_bytes"
            )
        elif suspicious_evicted:
            self.memory_pressure = (
                f"{suspicious_evicted} accounts at watch or flag (or in suspected campaigns) were evicted to compact "
                "records at the last batch because nothing else was left: raise memory_budget_bytes"
            )
        else:
            self.memory_pressure = None

    def _suspicious(self, account: str) -> bool:
        state = self.states[account]
        return state.level is not Level.OK or (self.campaigns is not None and self.campaigns.suspected(account))

    def _evict(self, account: str) -> None:
        state = self.states[account]
        if state.level is not Level.OK:
            self.evicted[account] = (
                state.level.value,
                float(state.peak_score),
                float(state.peak_risk),
                int(state.flagged_at),
                int(state.n),
                self.report(account).reasons,
            )
        self.forget(account, keep_record=True)
        self.evictions += 1

    def evict(self, accounts: Sequence[str]) -> list[str]:
        """Evict ``accounts`` as memory pressure would (a record kept for those at watch or flag);
        returns those that were held. The sidecar replays its journaled evictions with this."""
        held = [account for account in dict.fromkeys(accounts) if account in self.states]
        for account in held:
            self._evict(account)
        return held

    def _restore_evicted(self, accounts: Sequence[str]) -> None:
        """An evicted account that comes back starts a new history at its old level."""
        for account in accounts:
            record = self.evicted.pop(account, None)
            if record is None or account in self.states:
                continue
            level, peak_score, peak_risk, flagged_at, _n, reasons = record
            state = self.stream._state_of(account)
            state.level, state.peak_score, state.peak_risk = Level(level), peak_score, peak_risk
            state.flagged_at = flagged_at
            if reasons:
                self.carried_reasons[account] = reasons

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
        wanted = Level.parse(level)
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
            reasons=reasons[0] or self.carried_reasons.get(account, ()),
            risk_over_time=tuple(state.history),
            peak_one_in=float(10.0 ** cal.log10_one_in(state.peak_score)),
            elicitation_rate=self.campaigns.elicitation_rate(account) if self.campaigns is not None else None,
            campaign=self.campaigns.summary_for(account) if self.campaigns is not None else None,
        )

    def mark_benign(self, account: str) -> bool:
        """An analyst vouches for ``account``: its feature rows (from now on, and its current
        one) teach the live benign population at the next refit; its level stays what it
        reached. False when the account is not held."""
        state = self.states.get(account)
        if state is None:
            return False
        self.population.vouch(account)
        if self.config.population_update_every:
            features = state.features(self.config.near_duplicate_similarity, self.calibration.off_reference_similarity)
            self.population.remember(account, state.n, features)
        return True

    def level_counts(self) -> dict[str, int]:
        counts = {level.value: 0 for level in Level}
        for state in self.states.values():
            counts[state.level.value] += 1
        return counts

    # -- state management ----------------------------------------------------------------------
    def forget(self, account: str, keep_record: bool = False) -> bool:
        """Drop the account; ``keep_record`` (eviction) keeps its evicted record, a forget
        (a privacy request) drops that too."""
        self.carried_reasons.pop(account, None)  # an evicted record carries them on, a forget drops them
        self.boilerplate.drop([account])
        if not keep_record and self.evicted.pop(account, None) is not None and account not in self.states:
            return True
        self.population.forget(account)
        if self.campaigns is not None:
            self.campaigns.forget(account)
        return self.stream.forget(account)

    def reset(self) -> None:
        self.stream.clear()
        self.boilerplate.clear()
        self.observations = 0
        self.repeats = 0
        self.evicted.clear()
        self.carried_reasons.clear()
        self.evictions = 0
        self.last_evicted = []
        self.memory_pressure = None
        self.clock = math.nan
        self.population.clear()
        if self.campaigns is not None:
            self.campaigns = None
            self._install(self.benign)

    # -- campaigns ------------------------------------------------------------------------------
    def campaign_ids(self, level: Level | str | None = None) -> list[str]:
        return [] if self.campaigns is None else self.campaigns.campaign_ids(level)

    def campaign(self, campaign_id: str) -> CampaignReport:
        if self.campaigns is None:
            raise UnknownCampaignError(
                f"no campaign {campaign_id!r}: the campaign layer is off (config campaigns=False, or a "
                "calibration without benign group tables)"
            )
        return self.campaigns.campaign(campaign_id)

    def state_dict(self) -> dict[str, Any]:
        """Every account's history and state, plus the observation count (host copies)."""
        ids, offsets, vectors = self.store.export()
        return {
            "observations": self.observations,
            "repeats": self.repeats,
            "accounts": ids,
            "offsets": offsets,
            "vectors": vectors,
            "states": [self.states[a] for a in ids],
            "campaigns": self.campaigns.state_dict() if self.campaigns is not None else None,
            "population": self.population.state_dict(),
            "clock": self.clock,
            "evicted": dict(self.evicted),
            "carried_reasons": dict(self.carried_reasons),
            "boilerplate": self.boilerplate.state_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace every account with those of a :meth:`state_dict` (same dimension)."""
        self.reset()
        self.store.import_(state["accounts"], state["offsets"], state["vectors"])
        self.states.update(zip(state["accounts"], state["states"], strict=True))
        self.stream.recount_held()
        self.observations = int(state["observations"])
        self.repeats = int(state.get("repeats", 0))
        self.clock = float(state.get("clock", math.nan))
        self.evicted = {a: tuple(r) for a, r in (state.get("evicted") or {}).items()}
        self.carried_reasons = dict(state.get("carried_reasons") or {})
        self.boilerplate.load_state(state.get("boilerplate"))  # snapshots before 0.20.0 have none
        if state.get("population") is not None:
            self.population.load_state(state["population"])
        if self.config.population_update_every:
            self.learn_normal()  # the tables the saved engine had learned, not the prior's
        if self.campaigns is not None and state.get("campaigns") is not None:
            self.campaigns.load_state(state["campaigns"])
