"""The synthetic calibration the engine contract tests share: about 100 benign accounts, each
wandering around one of 24 topic centres in 48 dimensions (no text model is loaded). A test
module that needs another calibration defines these fixtures itself."""

from __future__ import annotations

import numpy as np
import pytest

import probewatch as pw
from tests.support import topical_calibration_engine

DIM = 48
SEED_DATA = 2024


@pytest.fixture(scope="module")
def topics():
    return np.random.default_rng(SEED_DATA).standard_normal((24, DIM))


@pytest.fixture(scope="module")
def calibration_path(tmp_path_factory, topics):
    path = tmp_path_factory.mktemp("calibration") / "synthetic_calibration.npz"
    topical_calibration_engine(topics, SEED_DATA + 1).save_calibration(path)
    return path


@pytest.fixture
def make_engine(calibration_path):
    def make(**overrides):
        return pw.Engine(calibration_path=calibration_path, device="cpu", **overrides)

    return make
