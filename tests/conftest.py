"""Shared fixtures and helpers for probewatch's engine and kernel tests.

- ``requires_gpu`` / ``requires_faiss_gpu``: skip markers with the reason spelled out.
- ``embedder``: the real bundled model on the CPU, loaded once per session.
- ``topical_stream``: synthetic benign traffic (accounts that stay near a topic).
"""

from __future__ import annotations

import os

# Tests reach nothing but 127.0.0.1: LiteLLM would otherwise try to download its model
# price map, and the Hugging Face libraries to look up model revisions. Subprocesses the
# tests start (the sidecar, the LiteLLM proxy) inherit these.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

import probewatch as pw
import probewatch.kernels

def _faiss_gpu_available() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:
        return False


CUPY_OK = probewatch.kernels.cupy_available()
FAISS_GPU_OK = _faiss_gpu_available()

requires_gpu = pytest.mark.skipif(
    not CUPY_OK, reason="needs CuPy with a visible CUDA device (pip install 'probewatch[gpu]' on a CUDA 12 machine)"
)
requires_faiss_gpu = pytest.mark.skipif(
    not (CUPY_OK and FAISS_GPU_OK),
    reason="needs CuPy and faiss built with GPU support seeing a CUDA device (faiss-gpu, not faiss-cpu)",
)


def _torch_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


requires_cuda_engine = pytest.mark.skipif(
    not (CUPY_OK and FAISS_GPU_OK and _torch_cuda()),
    reason="needs a CUDA build of torch, CuPy and faiss-gpu, all seeing a CUDA device",
)


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def topical_stream(rng: np.random.Generator, n_accounts: int, dim: int, q_range=(12, 40), n_topics: int = 24,
                   prefix: str = "benign", topics: np.ndarray | None = None, interleave: bool = False):
    """Benign-looking synthetic traffic: each account wanders around one topic centre.

    Returns (accounts, vectors) with each account's queries in time order; when
    ``interleave`` the accounts' queries are shuffled together (order inside an account kept).
    """
    if topics is None:
        topics = rng.standard_normal((n_topics, dim))
    accounts: list[str] = []
    rows: list[np.ndarray] = []
    for a in range(n_accounts):
        centre = topics[rng.integers(len(topics))] + 0.35 * rng.standard_normal(dim)
        spread = rng.uniform(0.7, 1.1)
        n_q = int(rng.integers(q_range[0], q_range[1] + 1))
        rows.append(centre + spread * rng.standard_normal((n_q, dim)))
        accounts.extend([f"{prefix}-{a}"] * n_q)
    vectors = unit_rows(np.concatenate(rows))
    if interleave:
        order = rng.permutation(len(accounts))
        # stable per account: reassign each account's rows in arrival order
        acc_arr = np.asarray(accounts)
        new_rows = np.empty_like(vectors)
        new_acc = acc_arr[order]
        for name in np.unique(acc_arr):
            src = np.flatnonzero(acc_arr == name)
            dst = np.flatnonzero(new_acc == name)
            new_rows[dst] = vectors[src]
        return list(new_acc), new_rows
    return accounts, vectors


@pytest.fixture(scope="session")
def embedder():
    """The real bundled all-MiniLM-L6-v2 on the CPU (one load per test session)."""
    return pw.Embedder(device="cpu")


@pytest.fixture(scope="session")
def text_engine_factory(embedder):
    """Engines with the shipped default calibration sharing the session's model."""

    def make(**overrides):
        return pw.Engine(embedder=embedder, **overrides)

    return make
