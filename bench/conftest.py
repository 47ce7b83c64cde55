"""Fixtures for the speed and memory benchmarks (run with `make bench`)."""

from __future__ import annotations

import numpy as np
import pytest

import probewatch as pw
from probewatch.cli.demo import NORMAL_ACCOUNTS, extracting_accounts


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped without it")


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    """Realistic prompts of mixed length: the demo's ordinary and extracting traffic."""
    texts = [p for ps in NORMAL_ACCOUNTS.values() for p in ps]
    texts += [p for ps in extracting_accounts().values() for p in ps]
    return texts


@pytest.fixture(scope="session")
def cpu_embedder() -> pw.Embedder:
    return pw.Embedder(device="cpu")


def unit_rows(n: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors: like real traffic, not uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, dim))
    x = centres[rng.integers(0, 64, size=n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
