"""Session fixtures shared by every test layer (helpers live in tests/support.py).

- ``embedder``: the real bundled model on the CPU, loaded once per session.
- ``text_engine_factory``: engines with the shipped calibration sharing that model.
"""

from __future__ import annotations

import os

# Tests reach nothing but 127.0.0.1: LiteLLM would otherwise try to download its model
# price map, and the Hugging Face libraries to look up model revisions. Subprocesses the
# tests start (the sidecar, the LiteLLM proxy) inherit these.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest

import probewatch as pw


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
