"""probewatch: find the accounts that are extracting or distilling your LLM.

>>> import probewatch as pw
>>> engine = pw.Engine(device="cpu")
>>> verdict = engine.observe("acct-1", "Summarise this article about tidal power in two sentences.")
>>> verdict.level, verdict.n_queries
(<Level.OK: 'ok'>, 1)

Layout: the facade (:mod:`.engine`) over four layers, one folder each: :mod:`.detect`
(features, reference, calibration, scoring, the pipeline), :mod:`.backend` (device,
embedding model, per-account FAISS store), :mod:`.io` (input checks, snapshots), and the
surfaces :mod:`.serve` (HTTP sidecar), :mod:`.integrations`, :mod:`.cli`.
"""

from .backend.embedder import Embedder
from .config import EngineConfig
from .detect.features import FEATURE_NAMES
from .engine import EmbeddedBatch, Engine
from .errors import (
    BackendUnavailableError,
    BatchError,
    BatchLengthError,
    CalibrationError,
    ConfigError,
    InputError,
    InvalidAccountError,
    InvalidEmbeddingError,
    InvalidPromptError,
    InvalidTimestampError,
    ProbewatchError,
    SnapshotError,
    UnknownAccountError,
    UnknownCampaignError,
)
from .types import AccountReport, EngineStats, FeatureReading, Level, Reason, Verdict

__version__ = "0.26.0"

__all__ = [
    "FEATURE_NAMES",
    "AccountReport",
    "BackendUnavailableError",
    "BatchError",
    "BatchLengthError",
    "CalibrationError",
    "ConfigError",
    "EmbeddedBatch",
    "Embedder",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "FeatureReading",
    "InputError",
    "InvalidAccountError",
    "InvalidEmbeddingError",
    "InvalidPromptError",
    "InvalidTimestampError",
    "Level",
    "ProbewatchError",
    "Reason",
    "SnapshotError",
    "UnknownAccountError",
    "UnknownCampaignError",
    "Verdict",
    "__version__",
]
