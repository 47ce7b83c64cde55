"""probewatch: find the accounts that are extracting or distilling your LLM.

>>> import probewatch as pw
>>> engine = pw.Engine()
>>> verdict = engine.observe("acct-1", "Summarise this article ...")
"""

from .config import EngineConfig
from .detector import Reason, Verdict
from .embedder import Embedder
from .engine import Engine
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
    ProbewatchError,
    SnapshotError,
    UnknownAccountError,
)
from .features import FEATURE_NAMES

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "BatchError",
    "BatchLengthError",
    "CalibrationError",
    "ConfigError",
    "Embedder",
    "Engine",
    "EngineConfig",
    "FEATURE_NAMES",
    "InputError",
    "InvalidAccountError",
    "InvalidEmbeddingError",
    "InvalidPromptError",
    "ProbewatchError",
    "Reason",
    "SnapshotError",
    "UnknownAccountError",
    "Verdict",
    "__version__",
]
