"""Engine configuration: every knob, its default, and its valid range."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

STORAGE_DTYPES = ("float32", "float16", "int8")
EMBED_BACKENDS = ("auto", "torch", "onnx", "openvino")
EMBED_PRECISIONS = ("auto", "fp32", "bf16")
EMBED_QUANTIZE = ("none", "int8")


@dataclass(frozen=True)
class EngineConfig:
    """Settings of an :class:`~probewatch.Engine`. All have working defaults.

    History policy: each account keeps a sliding window of its most recent
    ``history_cap`` queries; when it grows past the cap the oldest ``eviction_block``
    queries are dropped at once (amortises FAISS's O(n) removal). Whole accounts that
    have been idle longest are evicted when the engine holds more than
    ``memory_budget_bytes`` of vectors and statistics: accounts at ``ok`` first; one at
    ``watch`` or ``flag`` only when nothing else is left, and it leaves a small record that
    gives it its level back when it returns (flooding new accounts does not launder one).
    """

    model: str | None = None
    """sentence-transformers model name or local path; None = bundled all-MiniLM-L6-v2."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu' or 'cuda[:N]'."""
    embed_batch_size: int = 16
    embed_backend: str = "auto"
    """Embedding runtime: 'auto' (the default): torch on CUDA; on CPU OpenVINO when
    probewatch[openvino] is installed (bf16 where the CPU has it: ~2x faster here, detection
    within noise of torch fp32 on the benchmark), else torch. Or by name: 'torch', 'openvino'
    or 'onnx' (CPU; need probewatch[openvino] / probewatch[onnx]). bf16 vectors depend on how
    prompts were batched in their last digits: replays that re-batch differ by that much."""
    embed_precision: str = "auto"
    """'fp32', 'bf16' or 'auto': float16 on CUDA; on CPU fp32 for an explicitly chosen torch
    backend, else bf16 where the CPU has native bf16 (fp32 where it has not)."""
    embed_quantize: str = "none"
    """'none' or 'int8' (onnx backend: dynamic int8 weights; faster, vectors drift from fp32)."""
    embed_cache_size: int = 16_384
    """Distinct prompts whose vectors the exact-repeat cache keeps in memory (0 = off)."""
    history_cap: int = 10_000
    eviction_block: int = 512
    storage: str = "float16"
    """'float16' (the default: 776 B per stored query, and a lone query's scan of a long history
    reads half the bytes; similarities within ~1e-4, detection benchmark unchanged), 'float32'
    (exact, 1,543 B; faster for bulk replays of one account's many queries) or 'int8' (one byte
    per dimension, 394 B: half float16's memory, and its scan of a long history runs on integer
    products, 2.3x faster; similarities within ~7e-3; needs faiss >= 1.9)."""
    memory_budget_bytes: int = 2 * 1024**3
    k_neighbors: int = 8
    """Neighbours searched per query among the account's earlier queries."""
    window: int = 128
    """Recent queries per account that window features (dispersion, coverage, MMD, structure) use."""
    refresh_every: int = 8
    """Once an account is past ``window // 4`` queries, Gram-based window features refresh every this many queries."""
    near_duplicate_similarity: float = 0.95
    max_prompt_chars: int = 200_000
    target_fpr: float = 1e-3
    """Share of benign accounts allowed to reach ``flag`` over their lifetime."""
    watch_fpr: float = 1e-2
    """Share of benign accounts allowed to reach ``watch``."""
    detection_blas_threads: int = 1
    """BLAS and OpenMP threads for detection math and FAISS searches (0 = leave them as
    configured). One is fastest for the small matrices and indexes involved and leaves the
    other cores to the embedding model; more only pays for accounts with very long histories
    on otherwise idle cores."""
    segmented_max_history: int | None = None
    """Accounts with at most this many stored queries are searched together in one segmented
    k-NN call. None = 2048 on GPU (one launch instead of one per account) and 0 on CPU, where
    a FAISS search of an account costs ~12 us and copying histories would cost more."""
    gpu_temp_memory_bytes: int = 256 * 1024**2
    population_update_every: int = 0
    """Learn the provider's normal: refit the calibration tables from live benign accounts every
    N observations (0 = off; the sidecar turns it on). Who may teach, and how much, is bounded by
    the population_* settings below (see probewatch.detect.learning)."""
    population_max_share: float = 0.5
    """Live rows are at most this share of each history bin's table; the prior's rows stay."""
    population_rows_per_account: int = 16
    """Feature rows one account may contribute (a uniform sample over its life)."""
    population_min_queries: int = 16
    """Accounts teach only after this many queries..."""
    population_min_age_s: float = 86_400.0
    """...and this many seconds since their first query (when timestamps are given)."""
    population_min_accounts: int = 50
    """Warm-up: no refit until this many accounts are eligible to teach."""
    campaigns: bool = True
    """Run the cross-account campaign layer (needs a calibration with benign group tables)."""
    campaign_max_groups: int = 20_000
    """Candidate groups (indicator values shared by 2+ accounts) kept; least recently updated go first."""
    campaign_max_memberships: int = 200_000
    """(group, member) sums kept, 4 * dim bytes each (the layer's main memory)."""
    campaign_max_pending: int = 500_000
    """Indicator values seen from one account so far, kept without vectors (~160 bytes each)."""
    campaign_probe_memory: int = 100_000
    """Recent prompts of all accounts (with text) searched for probes split across accounts:
    variants of one prompt nobody sent, each from another account (about 500 bytes each;
    0 turns the search off)."""
    campaign_fpr_share: float = 0.03
    """Groups are flagged at ``target_fpr * campaign_fpr_share`` of benign groups (watched at
    ``watch_fpr * campaign_fpr_share``): a provider has many candidate groups, each of many
    accounts, so a group-level rate equal to the account-level one would flag far more benign
    accounts than ``target_fpr`` allows."""
    campaign_common_meta_share: float = 0.05
    """A metadata value shared by more than this share of all accounts (and 20+) is common: a
    popular browser, a big ISP or a campus NAT, which links nobody on its own."""
    campaign_salt: str | None = None
    """Hex key (16+ bytes) for hashing request metadata. None = random per engine (kept in its
    snapshots); set one shared value where several engines must link the same IPs (workers)."""
    seed: int = 0

    def __post_init__(self) -> None:
        def need(cond: bool, what: str, value: Any) -> None:
            if not cond:
                raise ConfigError(f"config {what}; got {value!r}")

        # Types first: "5" or True for k_neighbors would otherwise fail a comparison with a bare
        # TypeError, or pass as 1. NumPy numbers and path objects are taken as the plain Python
        # values they stand for (a snapshot stores the settings as JSON).
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            plain = _plain_setting(value, f.type)
            if plain is _REFUSED:
                expected = _FIELD_TYPES[f.type]
                raise ConfigError(f"config {f.name} must be {expected}; got {type(value).__name__} {value!r}")
            if plain is not value:
                object.__setattr__(self, f.name, plain)

        need(self.embed_batch_size >= 1, "embed_batch_size must be >= 1", self.embed_batch_size)
        need(self.embed_backend in EMBED_BACKENDS, f"embed_backend must be one of {EMBED_BACKENDS}", self.embed_backend)
        need(
            self.embed_precision in EMBED_PRECISIONS,
            f"embed_precision must be one of {EMBED_PRECISIONS}",
            self.embed_precision,
        )
        need(
            self.embed_quantize in EMBED_QUANTIZE,
            f"embed_quantize must be one of {EMBED_QUANTIZE}",
            self.embed_quantize,
        )
        need(self.embed_cache_size >= 0, "embed_cache_size must be >= 0 (0 = off)", self.embed_cache_size)
        need(self.history_cap >= 16, "history_cap must be >= 16", self.history_cap)
        need(
            1 <= self.eviction_block <= self.history_cap,
            "eviction_block must be in [1, history_cap]",
            self.eviction_block,
        )
        need(self.storage in STORAGE_DTYPES, f"storage must be one of {STORAGE_DTYPES}", self.storage)
        need(self.memory_budget_bytes >= 1024**2, "memory_budget_bytes must be >= 1 MiB", self.memory_budget_bytes)
        need(1 <= self.k_neighbors <= 32, "k_neighbors must be in [1, 32]", self.k_neighbors)
        need(16 <= self.window <= 4096, "window must be in [16, 4096]", self.window)
        need(1 <= self.refresh_every <= self.window, "refresh_every must be in [1, window]", self.refresh_every)
        need(
            0.0 < self.near_duplicate_similarity < 1.0,
            "near_duplicate_similarity must be in (0, 1)",
            self.near_duplicate_similarity,
        )
        need(self.max_prompt_chars >= 1, "max_prompt_chars must be >= 1", self.max_prompt_chars)
        need(
            0.0 < self.target_fpr < self.watch_fpr < 1.0,
            "needs 0 < target_fpr < watch_fpr < 1",
            (self.target_fpr, self.watch_fpr),
        )
        need(self.detection_blas_threads >= 0, "detection_blas_threads must be >= 0", self.detection_blas_threads)
        need(
            self.segmented_max_history is None or self.segmented_max_history >= 0,
            "segmented_max_history must be None or >= 0",
            self.segmented_max_history,
        )
        need(self.population_update_every >= 0, "population_update_every must be >= 0", self.population_update_every)
        need(
            0.0 <= self.population_max_share < 1.0, "population_max_share must be in [0, 1)", self.population_max_share
        )
        for name in ("population_rows_per_account", "population_min_queries", "population_min_accounts"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1", getattr(self, name))
        need(
            self.population_min_age_s >= 0 and math.isfinite(self.population_min_age_s),
            "population_min_age_s must be a finite number of seconds >= 0",
            self.population_min_age_s,
        )

        need(0.0 < self.campaign_fpr_share <= 1.0, "campaign_fpr_share must be in (0, 1]", self.campaign_fpr_share)
        need(
            0.0 < self.campaign_common_meta_share <= 1.0,
            "campaign_common_meta_share must be in (0, 1]",
            self.campaign_common_meta_share,
        )
        if self.campaign_salt is not None:
            try:
                salt_bytes = len(bytes.fromhex(self.campaign_salt))
            except (TypeError, ValueError):
                salt_bytes = 0
            need(salt_bytes >= 16, "campaign_salt must be a hex string of at least 16 bytes", "<hidden>")
        for name in ("campaign_max_groups", "campaign_max_memberships", "campaign_max_pending"):
            need(getattr(self, name) >= 16, f"{name} must be >= 16", getattr(self, name))
        need(
            self.campaign_probe_memory == 0 or self.campaign_probe_memory >= 16,
            "campaign_probe_memory must be 0 (off) or >= 16",
            self.campaign_probe_memory,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        cls._check_known(data)
        return cls(**data)

    def replace(self, **changes: Any) -> EngineConfig:
        self._check_known(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def _check_known(cls, names) -> None:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(names) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; valid keys are {sorted(known)}")


# What each annotation (a string: the module has postponed annotations) accepts, in words.
_FIELD_TYPES = {
    "int": "an int",
    "float": "a number",
    "str": "a str",
    "bool": "a bool (True or False)",
    "str | None": "a str or None",
    "int | None": "an int or None",
}
_REFUSED = object()


def _plain_setting(value: Any, annotation: str) -> Any:
    """``value`` as the plain Python value of its field's type, or _REFUSED. A bool is not a
    number here: ``k_neighbors=True`` is a mistake, not 1."""
    if value is None:
        return value if annotation.endswith("| None") else _REFUSED
    kind = annotation.removesuffix(" | None")
    if kind == "bool":
        return value if isinstance(value, bool) else _REFUSED
    if isinstance(value, bool):
        return _REFUSED
    if kind == "int":
        return (value if type(value) is int else int(value)) if isinstance(value, numbers.Integral) else _REFUSED
    if kind == "float":
        if type(value) in (int, float):
            return value
        return float(value) if isinstance(value, numbers.Real) else _REFUSED
    if isinstance(value, str):
        return value
    return os.fspath(value) if isinstance(value, os.PathLike) else _REFUSED
