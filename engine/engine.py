"""The facade: :class:`Engine` validates, embeds, takes the lock and hands each batch to the pipeline."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probewatch.kernels.backend import get_array_module, to_numpy

from .backend.device import Backend
from .backend.embedder import Embedder, RepeatCacheStats
from .campaigns.metadata import check_meta
from .config import EngineConfig
from .detect.boilerplate import read_streams
from .detect.fitting import fit_calibration
from .detect.pipeline import Pipeline
from .detect.reference import BenignReference
from .detect.scoring import BenignModel, Calibration, Detector
from .errors import (
    BatchError,
    BatchLengthError,
    CalibrationError,
    InputError,
    InvalidEmbeddingError,
    ProbewatchError,
    SnapshotError,
)
from .io.persistence import read_calibration, read_snapshot, write_calibration, write_snapshot
from .io.validation import check_account, check_accounts, check_items, check_same_length, check_vectors
from .types import AccountReport, CampaignReport, CampaignStats, EngineStats, Level, Verdict

DEFAULT_CALIBRATION_PATH = Path(__file__).resolve().parent / "data" / "default_calibration.npz"


@dataclass(frozen=True)
class EmbeddedBatch:
    """A batch checked and embedded by :meth:`Engine.embed_batch`, not yet observed."""

    accounts: list[str]
    good: list[int]  # indices of the valid items, in order
    vectors: Any  # (len(good), d) embeddings of the valid prompts on the engine's device; None when none
    stamps: list[float | None]  # the valid items' timestamps
    errors: dict[int, ProbewatchError]  # index -> why that item was rejected
    texts: list[str]  # the valid items' prompts (the campaign layer reads shared templates)
    metas: Sequence[dict[str, str] | None] | None
    # what the model read of each valid prompt (probewatch.detect.boilerplate); the word rules read it too
    read: list[str] | None = None


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

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        embedder: Embedder | None = None,
        calibration_path: str | Path | None = None,
        benign: BenignModel | None = None,
        **overrides: Any,
    ):
        """``benign`` (a fitted reference and calibration) replaces the calibration file."""
        config = config or EngineConfig()
        if overrides:
            config = config.replace(**overrides)
        if benign is None:
            benign = read_calibration(Path(calibration_path or DEFAULT_CALIBRATION_PATH))
        self.config = config
        self._lock = threading.RLock()
        self._embedder = embedder
        self._backend = Backend.resolve(
            embedder.device if embedder is not None else config.device, config.gpu_temp_memory_bytes
        )
        self.pipeline = Pipeline(config, benign, self._backend)

    @classmethod
    def from_benign_embeddings(
        cls,
        accounts: Sequence[str],
        vectors: Any,
        ts: Sequence[float | None] | None = None,
        config: EngineConfig | None = None,
        *,
        embedder: Embedder | None = None,
        source: str = "from_benign_embeddings()",
        progress=None,
        prompts: Sequence[str | None] | None = None,
        **overrides: Any,
    ) -> Engine:
        """An engine calibrated from scratch on benign vectors (no default calibration needed).
        ``prompts``, where the caller has them, mark the queries that continue an earlier prompt
        of their account, as live traffic with prompts is judged."""
        config = config or EngineConfig()
        if overrides:
            config = config.replace(**overrides)
        arr = _checked_calibration_vectors(accounts, vectors, _width(vectors), ts)
        texts = _prompt_texts(accounts, prompts)
        benign = fit_calibration(config, list(accounts), arr, ts, None, True, source, progress, texts)
        return cls(config, embedder=embedder, benign=benign)

    # -- what the pipeline holds, read-only ---------------------------------------------
    @property
    def reference(self) -> BenignReference:
        return self.pipeline.reference

    @property
    def calibration(self) -> Calibration:
        return self.pipeline.calibration

    @property
    def detector(self) -> Detector:
        return self.pipeline.detector

    @property
    def embedder(self) -> Embedder:
        """The text encoder, loaded on first use (observe_embeddings never needs it)."""
        with self._lock:
            if self._embedder is None:
                cfg = self.config
                self._embedder = Embedder(
                    cfg.model,
                    self._backend.device,
                    cfg.embed_batch_size,
                    backend=cfg.embed_backend,
                    precision=cfg.embed_precision,
                    quantize=cfg.embed_quantize,
                    cache_size=cfg.embed_cache_size,
                )
            return self._embedder

    def repeat_cache_stats(self) -> RepeatCacheStats:
        """Hits and misses of the embedder's exact-repeat cache (all zero before the model loads)."""
        embedder = self._embedder
        if embedder is None:
            return RepeatCacheStats(0, 0, 0, self.config.embed_cache_size)
        return embedder.cache.stats()

    @property
    def dim(self) -> int:
        return self.pipeline.dim

    # -- observing ------------------------------------------------------------------------
    def observe(
        self, account: str, prompt: str | bytes, ts: float | None = None, meta: dict[str, str] | None = None
    ) -> Verdict:
        """Observe one prompt; raises the item's own error when it is invalid.

        ``meta`` (optional request metadata: ``ip``, ``network``, ``user_agent``, ``org``,
        ``payment``, ``key_created``) links accounts that share infrastructure; only salted
        hashes of the values are kept.
        """
        try:
            return self.observe_batch([account], [prompt], None if ts is None else [ts], [meta])[0]
        except BatchError as exc:
            raise exc.errors[0] from None

    def observe_batch(
        self,
        accounts: Sequence[str],
        prompts: Sequence[str | bytes],
        ts: Sequence[float | None] | None = None,
        metas: Sequence[dict[str, str] | None] | None = None,
    ) -> list[Verdict]:
        """Observe many prompts (one embedding batch); verdicts in input order.

        A prompt its account sent before, character for character (among the last 4,096 of its
        prompts that were judged as new), is a repeat: it is not judged anew, and its verdict
        (``repeat=True``) is the account's as it stood. The same as ``observe_embedded(embed_batch(...))``: callers that have slow work of
        their own to do (the sidecar's journal fsync) run it between the two phases."""
        return self.observe_embedded(self.embed_batch(accounts, prompts, ts, metas))

    def embed_batch(
        self,
        accounts: Sequence[str],
        prompts: Sequence[str | bytes],
        ts: Sequence[float | None] | None = None,
        metas: Sequence[dict[str, str] | None] | None = None,
    ) -> EmbeddedBatch:
        """The first phase of :meth:`observe_batch`: check the items and embed the valid prompts.

        Touches no account statistics (only the embedder's repeat cache and, on their own lock,
        the accounts' boilerplate memory: :mod:`probewatch.detect.boilerplate`), so it may run while
        another batch is being observed or while the caller waits on something else; batches
        must be embedded in the order they are observed. Invalid items are kept in the result
        and reported by :meth:`observe_embedded`. A mismatched batch length raises here, before
        anything is embedded."""
        if prompts is None:
            raise BatchLengthError(
                "prompts must be a sequence with one prompt per account; got None (observe_embeddings takes vectors)"
            )
        good, texts, stamps, errors = check_items(accounts, ts, prompts, self.config.max_prompt_chars, metas)
        # the model reads each prompt without the long boilerplate its account's last long prompt had
        read = self.pipeline.boilerplate.read([accounts[i] for i in good], texts) if texts else []
        vectors = self.embedder.encode_device(read) if texts else None
        return EmbeddedBatch(list(accounts), good, vectors, stamps, errors, texts, metas, read)

    def observe_embedded(self, batch: EmbeddedBatch) -> list[Verdict]:
        """The second phase of :meth:`observe_batch`: detection and the account state update,
        under the engine's lock. Raises :class:`~probewatch.errors.BatchError` (with the valid
        items' verdicts) when the batch held invalid items, as observe_batch does."""
        return self._observe_valid(
            batch.accounts, batch.good, batch.vectors, batch.stamps, batch.errors, batch.texts, batch.metas, batch.read
        )

    def observe_embeddings(
        self,
        accounts: Sequence[str],
        vectors: Any,
        ts: Sequence[float | None] | None = None,
        metas: Sequence[dict[str, str] | None] | None = None,
        prompts: Sequence[str | None] | None = None,
        read: Sequence[str | None] | None = None,
    ) -> list[Verdict]:
        """Observe precomputed (n, d) vectors (normalised to unit length here). ``prompts``,
        when the caller has them, let the text rules and the campaign layer read them, and mark
        exact repeats of an account's recent prompts (see :meth:`observe_batch`); without them
        every vector is judged.

        A prompt is read without the long boilerplate it shares with its account's last long
        prompt (:mod:`probewatch.detect.boilerplate`), by the model and by the word rules. To
        embed as observe_batch does, take each prompt's reading from :meth:`read_prompts`, embed
        that, and pass it here as ``read`` (one per item, None where there is no prompt); without
        ``read``, the prompts are read here, for the word rules only."""
        arr = check_vectors(accounts, vectors, self.dim, ts)
        if not self._backend.on_gpu:
            arr = to_numpy(arr)  # device rows handed to a CPU engine: one copy to the host
        good, _, stamps, errors = check_items(accounts, ts, None, 0, metas)
        texts = _prompt_texts(accounts, prompts)
        if read is not None:
            check_same_length(accounts=accounts, read=read)
            given = [None] * len(read) if texts is None else texts
            odd = next(
                (i for i, (r, t) in enumerate(zip(read, given, strict=True)) if (r is None) != (t is None)), None
            )
            if odd is not None:
                raise BatchLengthError(
                    f"read must hold a text for each item with a prompt (Engine.read_prompts) and None for the "
                    f"others; item {odd} has {'no prompt' if given[odd] is None else 'a prompt'} and read "
                    f"{'None' if read[odd] is None else 'a text'}"
                )
        if texts is not None:
            texts = [texts[i] for i in good]
            if read is None:  # the word rules read what observe_batch's embedder would have
                read = self.pipeline.boilerplate.read([accounts[i] for i in good], texts)
            else:
                read = [read[i] if isinstance(read[i], str) else None for i in good]
        xp = get_array_module(arr)
        kept = arr[xp.asarray(good, dtype=xp.int64)] if errors else arr
        return self._observe_valid(accounts, good, kept, stamps, errors, texts, metas, read)

    def read_prompts(self, accounts: Sequence[str], prompts: Sequence[str | None]) -> list[str | None]:
        """What the model reads of each prompt, as :meth:`observe_batch` reads it: the prompt
        without the long boilerplate its account's last long prompt also had
        (:mod:`probewatch.detect.boilerplate`; short prompts as they are). Remembers each
        account's long prompts, so call it once per prompt, in the order they are observed, and
        pass the result to :meth:`observe_embeddings` as ``read``. None where a prompt is None."""
        check_same_length(accounts=accounts, prompts=prompts, required=("accounts", "prompts"))
        return self.pipeline.boilerplate.read(list(accounts), [p if isinstance(p, str) else None for p in prompts])

    def _observe_valid(
        self,
        accounts: Sequence[str],
        good: list[int],
        vectors,
        stamps: list[float | None],
        errors: dict[int, ProbewatchError],
        texts: list[str | None] | None = None,
        metas: Sequence[dict[str, str] | None] | None = None,
        read: list[str | None] | None = None,
    ) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(accounts)
        if good:
            if vectors.shape[1] != self.dim:
                raise InvalidEmbeddingError(
                    f"the embedding model gives {vectors.shape[1]}-d vectors but the calibration is for {self.dim}-d; "
                    "calibrate the engine with this model (engine.calibrate)"
                )
            good_metas = [check_meta(metas[i]) for i in good] if metas is not None else None
            with self._lock:
                for i, verdict in zip(
                    good,
                    self.pipeline.observe([accounts[i] for i in good], vectors, stamps, texts, good_metas, read),
                    strict=True,
                ):
                    verdicts[i] = verdict
        if errors:
            raise BatchError(errors, verdicts)
        return verdicts  # type: ignore[return-value]

    # -- calibration -----------------------------------------------------------------------
    def calibrate(
        self,
        accounts: Sequence[str],
        prompts: Sequence[str],
        ts: Sequence[float | None] | None = None,
        *,
        refit_reference: bool = True,
        source: str = "calibrate()",
    ) -> None:
        """Calibrate on known-benign traffic (accounts' prompts in time order)."""
        _, texts, _, errors = check_items(accounts, ts, prompts, self.config.max_prompt_chars)
        _raise_first_calibration_error(errors)
        vectors = self.embedder.encode(read_streams(list(accounts), texts))  # as embed_batch reads them
        self.calibrate_embeddings(accounts, vectors, ts, refit_reference=refit_reference, source=source, prompts=texts)

    def calibrate_embeddings(
        self,
        accounts: Sequence[str],
        vectors: Any,
        ts: Sequence[float | None] | None = None,
        *,
        refit_reference: bool = True,
        source: str = "calibrate_embeddings()",
        progress=None,
        prompts: Sequence[str | None] | None = None,
    ) -> None:
        """Like :meth:`calibrate` with precomputed vectors (and, optionally, their prompts).
        Replaces the calibration; account histories are kept and judged by the new calibration
        from their next query on."""
        arr = _checked_calibration_vectors(accounts, vectors, _width(vectors) if refit_reference else self.dim, ts)
        texts = _prompt_texts(accounts, prompts)
        benign = fit_calibration(
            self.config, list(accounts), arr, ts, self.reference, refit_reference, source, progress, texts
        )
        with self._lock:
            if benign.reference.dim != self.dim and len(self.pipeline.states):
                raise CalibrationError(
                    f"the new calibration is for {benign.reference.dim}-d vectors but the engine holds {self.dim}-d "
                    "histories; reset() the engine first"
                )
            self.pipeline.recalibrate(benign)

    def save_calibration(self, path: str | Path) -> None:
        with self._lock:
            write_calibration(path, self.pipeline.benign)

    # -- reading state -------------------------------------------------------------------------
    def accounts(self, level: Level | str | None = None) -> list[str]:
        """Account ids held now, optionally only those at ``level`` (most recently seen last)."""
        with self._lock:
            return self.pipeline.accounts(level)

    def campaigns(self, level: Level | str | None = None) -> list[CampaignReport]:
        """Campaigns at ``watch`` or ``flag`` now (optionally only at ``level``), riskiest first."""
        with self._lock:
            reports = [self.pipeline.campaign(c) for c in self.pipeline.campaign_ids(level)]
        return sorted(reports, key=lambda r: (-r.score, r.id))

    def campaign_page(
        self, level: Level | str | None = None, after: str | None = None, limit: int = 100
    ) -> tuple[list[CampaignReport], str | None]:
        """Campaigns at ``level`` (watch or flag when None) in id order after ``after``, at most
        ``limit``, and the cursor of the next page (None on the last). Ids and reports are read
        in one hold of the lock, so a page never names a campaign a concurrent batch merged away."""
        if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 1:
            raise InputError(f"limit must be a whole number of campaigns, at least 1; got {limit!r}")
        if after is not None and not isinstance(after, str):
            raise InputError(f"after must be a campaign id (str) or None; got {type(after).__name__} {after!r}")
        with self._lock:
            ids = self.pipeline.campaign_ids(level)
            if after is not None:
                ids = ids[bisect.bisect_right(ids, after) :]
            reports = [self.pipeline.campaign(c) for c in ids[:limit]]
        return reports, (reports[-1].id if len(ids) > limit else None)

    def campaign_stats(self) -> CampaignStats:
        """The campaign layer's table sizes (all zero while it is off)."""
        with self._lock:
            layer = self.pipeline.campaigns
            if layer is None:
                return CampaignStats({"watch": 0, "flag": 0}, 0, 0, 0, 0)
            return CampaignStats(
                campaigns={level: len(layer.campaign_ids(level)) for level in ("watch", "flag")},
                groups=len(layer.groups),
                pending=len(layer.pending),
                memberships=layer.pool.used,
                evicted_flagged=layer.evicted_flagged,
            )

    def campaign(self, campaign_id: str) -> CampaignReport:
        """One campaign: members, linking indicators, features, reasons, timeline."""
        if not isinstance(campaign_id, str):
            raise InputError(
                f"campaign_id must be a campaign id (str, e.g. report.id); got {type(campaign_id).__name__}"
            )
        with self._lock:
            return self.pipeline.campaign(campaign_id)

    def report(self, account: str) -> AccountReport:
        """History size, current features with benign percentiles, risk over time."""
        check_account(account)
        with self._lock:
            return self.pipeline.report(account)

    def stats(self) -> EngineStats:
        with self._lock:
            p = self.pipeline
            return EngineStats(
                accounts=len(p.states),
                stored_queries=p.store.total_vectors(),
                bytes_held=p.held_bytes(),
                levels=p.level_counts(),
                observations=p.observations,
                repeats=p.repeats,
                device=self._backend.kind,
                flag_threshold=p.detector.flag_threshold,
                calibration={**p.calibration.meta(), "learned": dict(p.population.last_refit)},
                evicted=p.evictions,
                evicted_records=len(p.evicted),
                memory_pressure=p.memory_pressure,
            )

    # -- state management -------------------------------------------------------------------------
    def forget(self, account: str) -> bool:
        """Drop an account's history and statistics (e.g. a privacy request). True if it existed."""
        check_account(account)
        with self._lock:
            return self.pipeline.forget(account)

    def mark_benign(self, account: str) -> bool:
        """An analyst vouches that ``account`` is benign: its feature rows teach the live benign
        population (see :mod:`probewatch.detect.learning`) whatever its level, which stays as
        it is. True if the account is held."""
        check_account(account)
        with self._lock:
            return self.pipeline.mark_benign(account)

    def known_benign(self, account: str) -> bool:
        """Whether ``account`` was marked with :meth:`mark_benign` (and not forgotten since)."""
        check_account(account)
        with self._lock:
            return account in self.pipeline.population.vouched

    # -- memory-budget evictions (the sidecar journals them and replays them by name) --------------
    def evict(self, accounts: Sequence[str]) -> list[str]:
        """Evict ``accounts`` as the memory budget would: history dropped, a compact record kept
        for those at watch or flag (their level returns with them). Returns those that were held."""
        accounts = check_accounts(accounts)
        with self._lock:
            return self.pipeline.evict(accounts)

    def take_evicted(self) -> list[str]:
        """Accounts the memory budget evicted at the end of the last observe call, in order; once
        (a second call returns [] until another observe evicts), so none is reported twice."""
        with self._lock:
            evicted, self.pipeline.last_evicted = self.pipeline.last_evicted, []
            return evicted

    @property
    def auto_evict(self) -> bool:
        """Whether observe calls evict for the memory budget (off while replaying recorded evictions)."""
        return self.pipeline.auto_evict

    @auto_evict.setter
    def auto_evict(self, on: bool) -> None:
        with self._lock:
            self.pipeline.auto_evict = bool(on)

    @property
    def memory_pressure(self) -> str | None:
        """Why the memory budget could not be kept cleanly at the last batch (None when it was):
        still over it after evicting everything evictable, or accounts at watch or flag evicted."""
        return self.pipeline.memory_pressure

    def reset(self) -> None:
        """Forget every account; calibration and configuration stay."""
        with self._lock:
            self.pipeline.reset()

    def state_dict(self) -> dict[str, Any]:
        """The complete state as plain objects: config, benign model, accounts (host copies)."""
        with self._lock:
            return {"config": self.config, "benign": self.pipeline.benign, **self.pipeline.state_dict()}

    @classmethod
    def from_state(cls, state: dict[str, Any], *, embedder: Embedder | None = None) -> Engine:
        """A new engine holding a :meth:`state_dict`."""
        engine = cls(state["config"], embedder=embedder, benign=state["benign"])
        engine.pipeline.load_state(state)
        return engine

    def save(self, path: str | Path) -> None:
        """Write the complete state atomically (temporary file, then rename)."""
        write_snapshot(path, self.state_dict())

    @classmethod
    def load(cls, path: str | Path, *, embedder: Embedder | None = None, **overrides: Any) -> Engine:
        """A new engine from a snapshot; ``overrides`` may change runtime settings such as device."""
        state = read_snapshot(path, overrides)
        try:
            return cls.from_state(state, embedder=embedder)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise SnapshotError(f"{path}: snapshot content is malformed ({type(exc).__name__}: {exc})") from exc

    def restore(self, path: str | Path) -> None:
        """Replace this engine's state with a snapshot's; on any error the engine is untouched."""
        other = type(self).load(path, embedder=self._embedder, device=self.config.device)
        with self._lock:
            self.config = other.config
            self.pipeline = other.pipeline
            self._backend = other._backend


def _width(vectors: Any) -> int:
    """The row width of ``vectors`` (host or device), read without copying them."""
    shape = getattr(vectors, "shape", None)
    if shape is None:
        try:
            shape = np.shape(vectors)
        except (TypeError, ValueError) as exc:  # ragged nested lists
            raise InvalidEmbeddingError(
                f"vectors must be a numeric (n, d) array; got {type(vectors).__name__}: {exc}"
            ) from exc
    if len(shape) == 0:
        raise InvalidEmbeddingError(f"vectors must be a numeric (n, d) array; got a scalar {type(vectors).__name__}")
    return int(shape[-1])


def _prompt_texts(accounts: Sequence[str], prompts: Sequence[str | None] | None) -> list[str | None] | None:
    """The prompts that came with precomputed vectors, one per account item (a non-string one
    counts as absent), or None without any."""
    if prompts is None:
        return None
    check_same_length(accounts=accounts, prompts=prompts)
    return [p if isinstance(p, str) else None for p in prompts]


def _checked_calibration_vectors(accounts, vectors, dim: int, ts) -> np.ndarray:
    arr = to_numpy(check_vectors(accounts, vectors, dim, ts))  # fitting runs on the host
    _, _, _, errors = check_items(accounts, ts)  # every id and stamp, as observe checks them
    _raise_first_calibration_error(errors)
    return arr


def _raise_first_calibration_error(errors: dict[int, ProbewatchError]) -> None:
    """Calibration takes all its items or none: the first invalid one, with its index."""
    if errors:
        first = min(errors)
        raise type(errors[first])(f"calibration item {first} ({len(errors)} invalid in all): {errors[first]}")
