"""On-disk embedding cache for the benchmark: every text is embedded once per model.

Layout under ``cache_dir/<model hash>/``: ``model.txt`` (the model id), then one pair of
files per write: ``shard-<id>.npy`` (float32 rows) and ``shard-<id>.keys`` (the sha256 of
each row's text, one per line). The keys file is written last, atomically, so a shard
counts only once it is complete: an interrupted run leaves at most an orphan ``.npy`` that
the next run ignores. Concurrent runs may embed a text twice; both copies are identical.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import uuid
from pathlib import Path
from typing import Protocol

import numpy as np

ENV_CACHE_DIR = "PROBEWATCH_BENCH_CACHE"
# Texts embedded per shard: a crash loses at most this much work.
SHARD_ROWS = 2048


class TextEmbedder(Protocol):
    model_id: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


EMBED_BACKENDS = ("torch", "openvino", "onnx", "auto")


def add_embed_backend_flag(parser: argparse.ArgumentParser) -> None:
    """``--embed-backend``: the runtime that embeds a benchmark's traffic (both detection benchmarks)."""
    parser.add_argument(
        "--embed-backend",
        choices=EMBED_BACKENDS,
        default="torch",
        help="embedding runtime for the traffic (default torch fp32; others are cached apart, by runtime)",
    )


def embed_backend_words(backend: str) -> list[str]:
    """The flag as a reproducing command spells it (nothing for the default)."""
    return [] if backend == "torch" else ["--embed-backend", backend]


def default_cache_dir() -> Path:
    override = os.environ.get(ENV_CACHE_DIR)
    return Path(override) if override else Path(__file__).resolve().parent / ".cache" / "embeddings"


def runtime_identity(embedder) -> str:
    """The model id and its long-prompt window, plus the runtime when it is not torch fp32 (OpenVINO bf16, ONNX int8, ...):
    those vectors differ in the last digits or more, and must not be read as torch's."""
    model_id = str(embedder.model_id)
    window = getattr(embedder, "window", None)
    if window is not None:  # what of a long prompt is read (0.19.0): cut at its end before it had this
        model_id += f" <{window}>"
    runtime = (getattr(embedder, "backend", "torch"), getattr(embedder, "precision", "fp32"))
    if runtime in (("torch", "fp32"), ("torch", "fp16")):  # the vectors every cache so far holds
        return model_id
    return f"{model_id} [{runtime[0]} {runtime[1]} {getattr(embedder, 'quantize', 'none')}]"


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """``embed(texts)`` returns ``(len(texts), dim)`` float32, encoding only unseen texts."""

    def __init__(self, embedder: TextEmbedder, cache_dir: str | Path | None = None):
        self.embedder = embedder
        self.dim = int(embedder.dim)
        model_id = runtime_identity(embedder)
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.directory = root / hashlib.sha256(model_id.encode("utf-8")).hexdigest()[:16]
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "model.txt").write_text(model_id + "\n", encoding="utf-8")
        self._where: dict[str, tuple[str, int]] = {}  # text key -> (shard id, row)
        self._shards: dict[str, np.ndarray] = {}
        self._scan()

    def _scan(self) -> None:
        for keys_file in sorted(self.directory.glob("shard-*.keys")):
            shard = keys_file.stem
            for row, key in enumerate(keys_file.read_text(encoding="ascii").split()):
                self._where.setdefault(key, (shard, row))

    def _shard(self, shard: str) -> np.ndarray:
        if shard not in self._shards:
            self._shards[shard] = np.load(self.directory / f"{shard}.npy", mmap_mode="r")
        return self._shards[shard]

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self._where

    def _write_shard(self, keys: list[str], vectors: np.ndarray) -> None:
        shard = f"shard-{uuid.uuid4().hex[:12]}"
        tmp_npy = self.directory / f".{shard}.npy.tmp"
        with open(tmp_npy, "wb") as handle:
            np.save(handle, vectors)
        os.replace(tmp_npy, self.directory / f"{shard}.npy")
        tmp_keys = self.directory / f".{shard}.keys.tmp"
        tmp_keys.write_text("\n".join(keys) + "\n", encoding="ascii")
        os.replace(tmp_keys, self.directory / f"{shard}.keys")
        for row, key in enumerate(keys):
            self._where.setdefault(key, (shard, row))

    def embed(self, texts: list[str]) -> np.ndarray:
        keys = [text_key(t) for t in texts]
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in self._where and key not in missing:
                missing[key] = text
        todo = list(missing.items())
        for start in range(0, len(todo), SHARD_ROWS):
            part = todo[start : start + SHARD_ROWS]
            vectors = np.asarray(self.embedder.encode([text for _, text in part]), dtype=np.float32)
            if vectors.shape != (len(part), self.dim):
                raise ValueError(f"embedder returned shape {vectors.shape}; expected ({len(part)}, {self.dim})")
            self._write_shard([key for key, _ in part], vectors)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, key in enumerate(keys):
            shard, row = self._where[key]
            out[i] = self._shard(shard)[row]
        return out


def default_embedder_cache(cache_dir: str | Path | None = None) -> EmbeddingCache:
    """The engine's default embedder (all-MiniLM-L6-v2) behind the on-disk cache."""
    from probewatch import Embedder

    return EmbeddingCache(Embedder(), cache_dir)
