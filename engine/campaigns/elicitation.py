"""How strongly a prompt asks the model to expose its reasoning: a per-query elicitation score.

Reasoning-distillation campaigns (reported in February 2026) harvest more than answers: they
ask for the chain of thought, for the internal deliberation behind a completed answer
("imagine and articulate the internal reasoning ... step by step"), for tool-use traces (every
call, its arguments and observations) and for rubric grades with per-criterion reasoning.
:class:`ElicitationHead` scores one prompt for that intent from its sentence embedding alone
(the engine already holds every prompt's embedding), as a logistic regression: ``sigmoid(w . x + b)``
on the unit-norm all-MiniLM-L6-v2 vector.

Training (``python -m bench.elicitation.train``; data in ``bench/elicitation/dataset.py``):
1,140 positives (76 wordings of our own over the four intents in five styles: polite, terse,
system-prompt-like, tagged such as ``<thinking>`` or a scratchpad, structured output) around real
questions, tasks and answers from the benchmark's calibration half, against 1,140 negatives:
the plain payloads and benign near-misses in 88 wordings (tutoring, how-to steps, grade-my-essay,
summarise or translate, code explanation, "what would you do" chat, answer-only requests, benign
system prompts, output formats, tool requests, questions *about* reasoning and model training).
Class-balanced L2 logistic regression fitted by Newton's method; the L2 weight was chosen by
cross-validation over wordings.

Measured (``docs/benchmark/elicitation.md``; AUC, then TPR at 1 % / 0.1 % FPR on the negatives):

- in-distribution cross-validation: 0.963, 0.70 / 0.39;
- a whole wording style held out: 0.928, 0.44 / 0.20; a whole intent held out: 0.837, 0.28 / 0.12;
- the benchmark's eight chain-of-thought wrappers (never trained on) around fresh payloads, against
  1,000 held-out plain prompts and 247 near-misses in unseen wordings: 0.882, 0.19 / 0.03;
- on plain benign prompts the median probability is 0.045, the 99th percentile 0.87 and the
  99.9th 0.97 (1,000 held-out prompts).

So one prompt's score is weak evidence: the head reads words and topics more than intent, and
prompts *about* chain of thought or grading, or with "reasoning" and "final answer" in them, score
like requests for them. Averaged over an account's prompts it separates much better (mean over 10
prompts: wrapper accounts vs plain accounts AUC 1.00 in the report's illustration), but an account
that repeats one near-miss template is flagged too: use it as one signal beside the others.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, SnapshotError
from ..io.npz_files import leading_bytes

DEFAULT_HEAD_PATH = Path(__file__).resolve().parent.parent / "data" / "elicitation_head.npz"
ARRAY_PREFIX = "elicit_"
HEAD_FORMAT = "probewatch-elicitation-head"
HEAD_VERSION = 1


class ElicitationHead:
    """Logistic regression on unit embeddings: ``probability(x) = sigmoid(weights . x + bias)``.

    ``meta`` records how the head was made (embedding model id, training set sizes, wordings
    count, L2 weight); it is plain JSON and holds no dates, so a rebuild from the same data
    gives the same weights and the same meta.

    >>> head = ElicitationHead(np.array([4.0, 0.0]), bias=-2.0)
    >>> head.probability(np.array([[1.0, 0.0], [0.0, 1.0]])).round(3)
    array([0.881, 0.119])
    """

    def __init__(self, weights: np.ndarray, bias: float, meta: dict[str, Any] | None = None):
        weights = np.array(weights, dtype=np.float64)  # a copy: the head owns its arrays
        if weights.ndim != 1 or weights.size == 0 or not np.isfinite(weights).all():
            raise InputError(f"ElicitationHead weights must be a finite non-empty 1-d array; got shape {weights.shape}")
        if not np.isfinite(bias):
            raise InputError(f"ElicitationHead bias must be finite; got {bias!r}")
        weights.flags.writeable = False
        self.weights = weights
        self.bias = float(bias)
        self.dim = int(weights.size)
        self.meta: dict[str, Any] = dict(meta or {})

    def __repr__(self) -> str:
        return f"ElicitationHead(dim={self.dim}, model={self.meta.get('model_id', 'unknown')!r})"

    def _rows(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise InputError(
                f"ElicitationHead expects embeddings of shape (n, {self.dim}) or ({self.dim},); got shape {x.shape}"
            )
        if x.shape[1] != self.dim:
            raise InputError(
                f"ElicitationHead expects embeddings of width {self.dim} (the model it was trained on: "
                f"{self.meta.get('model_id', 'unknown')}); got width {x.shape[1]}"
            )
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise InputError(f"ElicitationHead expects real-valued embeddings; got dtype {x.dtype}")
        x = x.astype(np.float64, copy=False)
        if not np.isfinite(x).all():
            raise InputError("ElicitationHead got embeddings containing NaN or inf")
        return x

    def logit(self, vectors: np.ndarray) -> np.ndarray:
        """``weights . x + bias`` per row, shape (n,) float64: the score before the sigmoid."""
        return self._rows(vectors) @ self.weights + self.bias

    def probability(self, vectors: np.ndarray) -> np.ndarray:
        """Probability that each prompt asks for its reasoning to be exposed, shape (n,) float64
        in [0, 1]; a single (d,) vector gives shape (1,)."""
        z = self.logit(vectors)
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow for large |z|

    # --- persistence -----------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for an engine snapshot (names prefixed ``elicit_``); ``meta`` goes in its JSON header."""
        return {f"{ARRAY_PREFIX}weights": self.weights.copy(), f"{ARRAY_PREFIX}bias": np.array([self.bias])}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> ElicitationHead:
        try:
            weights = np.asarray(arrays[f"{ARRAY_PREFIX}weights"], dtype=np.float64)
            bias = np.asarray(arrays[f"{ARRAY_PREFIX}bias"], dtype=np.float64).reshape(-1)
        except KeyError as exc:
            raise SnapshotError(
                f"elicitation head arrays are missing {exc}; expected {ARRAY_PREFIX}weights and {ARRAY_PREFIX}bias"
            ) from exc
        if bias.size != 1:
            raise SnapshotError(f"{ARRAY_PREFIX}bias must hold one value; got {bias.size}")
        return cls(weights, float(bias[0]), meta)

    def save(self, path: str | os.PathLike) -> None:
        """Write a small uncompressed .npz (arrays plus ``elicit_meta``, a JSON string), atomically."""
        path = Path(path)
        header = {"format": HEAD_FORMAT, "version": HEAD_VERSION, "meta": self.meta}
        arrays = {**self.to_arrays(), f"{ARRAY_PREFIX}meta": np.array(json.dumps(header, sort_keys=True))}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> ElicitationHead:
        path = Path(path)
        if not path.is_file():
            raise SnapshotError(f"no elicitation head file at {path}")
        leading_bytes(path, "elicitation head")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            header = json.loads(str(arrays.pop(f"{ARRAY_PREFIX}meta")[()]))
        except (OSError, ValueError, KeyError, AttributeError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise SnapshotError(f"{path} is not an elicitation head written by ElicitationHead.save: {exc}") from exc
        if not isinstance(header, dict) or header.get("format") != HEAD_FORMAT:
            found = header.get("format") if isinstance(header, dict) else type(header).__name__
            raise SnapshotError(f"{path} is not an elicitation head (format {found!r}, expected {HEAD_FORMAT!r})")
        if header.get("version") != HEAD_VERSION:
            raise SnapshotError(
                f"{path} has head version {header.get('version')}; this probewatch reads {HEAD_VERSION}"
            )
        return cls.from_arrays(arrays, header.get("meta") or {})

    @classmethod
    def default(cls) -> ElicitationHead:
        """The head shipped with probewatch for all-MiniLM-L6-v2 (loaded once per process, shared)."""
        return _default_head()


@lru_cache(maxsize=1)
def _default_head() -> ElicitationHead:
    return ElicitationHead.load(DEFAULT_HEAD_PATH)
