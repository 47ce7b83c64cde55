"""probewatch's exception hierarchy.

Every message says what was expected, what came instead, and what to do about it.
Catch :class:`ProbewatchError` to handle anything probewatch raises on purpose.
"""

from __future__ import annotations


class ProbewatchError(Exception):
    """Base class of every error probewatch raises on purpose."""


class InputError(ProbewatchError, ValueError):
    """An argument does not have the expected type, shape or content."""


class InvalidPromptError(InputError):
    """A prompt is empty, not text, not valid UTF-8, or contains NUL bytes."""


class InvalidAccountError(InputError):
    """An account id is empty, too long, or not a string."""


class InvalidTimestampError(InputError):
    """A timestamp is not a finite number of seconds."""


class InvalidEmbeddingError(InputError):
    """A vector has the wrong shape or dimension, or holds NaN/inf or a zero norm."""


class BatchLengthError(InputError):
    """Parallel lists (accounts, prompts, timestamps) differ in length."""


class BatchError(InputError):
    """Some items of a batch were rejected; the valid items were processed.

    ``errors`` maps the index of each rejected item to the exception it raised, and
    ``verdicts`` holds one entry per item: a :class:`~probewatch.Verdict` for the items that
    were processed and ``None`` for the rejected ones.
    """

    def __init__(self, errors: dict[int, ProbewatchError], verdicts: list):
        self.errors = dict(errors)
        self.verdicts = list(verdicts)
        first = min(self.errors)
        super().__init__(
            f"{len(self.errors)} of {len(self.verdicts)} batch items were rejected and the "
            f"other {len(self.verdicts) - len(self.errors)} were processed; item {first}: "
            f"{self.errors[first]}. Read .errors for every rejected item and .verdicts for the results."
        )


class UnknownAccountError(ProbewatchError, KeyError):
    """The account has never been observed (or was forgotten or evicted)."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class UnknownCampaignError(ProbewatchError, KeyError):
    """No campaign has this id (never formed, or its groups were forgotten or evicted)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(ProbewatchError, ValueError):
    """A configuration value is out of range or inconsistent."""


class CalibrationError(ProbewatchError):
    """Calibration data is missing, too small, or incompatible with the engine."""


class SnapshotError(ProbewatchError):
    """A snapshot file is missing, corrupt, of another format version, or not probewatch's."""


class BackendUnavailableError(ProbewatchError, ImportError):
    """A required backend package (faiss, cupy, a model package) is not installed."""
