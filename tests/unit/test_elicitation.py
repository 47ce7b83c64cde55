"""The reasoning-trace elicitation head: the shipped file loads, scores behave, files round-trip.

Everything but the last test works on synthetic vectors; the last embeds six prompts with the
session's real model (a few seconds) to check that the shipped head ranks the obvious cases.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from probewatch.campaigns.elicitation import DEFAULT_HEAD_PATH, ElicitationHead
from probewatch.errors import InputError, SnapshotError


def unit_rows(n: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def head() -> ElicitationHead:
    return ElicitationHead.default()


def test_the_shipped_head_loads_once_per_process_with_its_meta(head):
    assert DEFAULT_HEAD_PATH.is_file()
    assert ElicitationHead.default() is head
    assert head.dim == 384 and head.weights.shape == (384,) and head.weights.dtype == np.float64
    assert isinstance(head.bias, float)
    assert "all-MiniLM-L6-v2" in head.meta["model_id"]
    assert head.meta["train_positives"] > 0 and head.meta["positive_wordings"] >= 48
    assert not head.weights.flags.writeable  # shared by every caller: nobody may change it in place


def test_probability_is_float64_in_the_unit_interval_one_per_row(head):
    x = unit_rows(64)
    p = head.probability(x)
    assert p.shape == (64,) and p.dtype == np.float64
    assert np.all((p >= 0.0) & (p <= 1.0))
    single = head.probability(x[3])
    assert single.shape == (1,)
    np.testing.assert_allclose(single[0], p[3], rtol=1e-12)
    assert head.probability(np.zeros((0, 384))).shape == (0,)


@pytest.mark.parametrize("width", [383, 385, 768])
def test_wrong_width_raises_input_error_naming_expected_and_got(head, width):
    with pytest.raises(InputError, match=rf"width 384.*got width {width}"):
        head.probability(unit_rows(2, dim=width))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 3, 384)), np.array([[np.nan] * 384]), np.array([["a"] * 384])],
    ids=["3-d", "nan", "strings"],
)
def test_malformed_input_raises_input_error(head, bad):
    with pytest.raises(InputError):
        head.probability(bad)


def test_probability_is_the_logistic_of_the_logit_and_monotonic_in_it(head):
    x = unit_rows(200, seed=1)
    z, p = head.logit(x), head.probability(x)
    np.testing.assert_allclose(p, 1.0 / (1.0 + np.exp(-z)), rtol=1e-12, atol=1e-300)
    order = np.argsort(z, kind="stable")
    assert np.all(np.diff(p[order]) >= 0)
    # walking along the weights raises the score, and extreme logits stay finite in [0, 1]
    direction = head.weights / np.linalg.norm(head.weights)
    steps = np.array([x[0] + t * direction for t in np.linspace(-50, 50, 21)])
    walked = head.probability(steps)
    assert np.all(np.diff(walked) >= 0) and walked[0] < 1e-6 and walked[-1] > 1 - 1e-6
    assert walked[0] >= 0.0 and walked[-1] <= 1.0 and np.isfinite(walked).all()


def test_save_and_load_round_trip(head, tmp_path):
    path = tmp_path / "head.npz"
    head.save(path)
    back = ElicitationHead.load(path)
    np.testing.assert_array_equal(back.weights, head.weights)
    assert back.bias == head.bias and back.meta == head.meta and back.dim == head.dim
    x = unit_rows(10, seed=2)
    np.testing.assert_array_equal(back.probability(x), head.probability(x))
    with np.load(path, allow_pickle=False) as data:  # no pickles: meta travels as a JSON string
        assert sorted(data.files) == ["elicit_bias", "elicit_meta", "elicit_weights"]


def test_arrays_round_trip_for_snapshots(head):
    arrays = head.to_arrays()
    assert all(name.startswith("elicit_") for name in arrays)
    back = ElicitationHead.from_arrays(arrays, head.meta)
    np.testing.assert_array_equal(back.weights, head.weights)
    assert back.bias == head.bias and back.meta == head.meta
    arrays["elicit_weights"][:] = 0.0  # to_arrays hands out copies
    assert np.any(head.weights != 0.0)


def test_bad_files_raise_snapshot_error(tmp_path):
    with pytest.raises(SnapshotError, match="no elicitation head"):
        ElicitationHead.load(tmp_path / "missing.npz")
    other = tmp_path / "other.npz"
    np.savez(other, something=np.zeros(3))
    with pytest.raises(SnapshotError):
        ElicitationHead.load(other)
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(pickle.dumps({"elicit_weights": [0.0]}))
    with pytest.raises(SnapshotError, match=r"not a readable elicitation head.*first bytes are b'\\x80") as raised:
        ElicitationHead.load(pickled)
    assert "allow_pickle" not in str(raised.value)
    with pytest.raises(SnapshotError, match="elicit_bias"):
        ElicitationHead.from_arrays({"elicit_weights": np.zeros(4)})


def test_a_small_hand_made_head():
    head = ElicitationHead(np.array([4.0, 0.0]), bias=-2.0, meta={"model_id": "toy"})
    np.testing.assert_allclose(head.probability(np.array([[1.0, 0.0], [0.0, 1.0]])), [0.8808, 0.1192], atol=1e-4)
    with pytest.raises(InputError, match=r"width 2 \(the model it was trained on: toy\); got width 3"):
        head.probability(np.ones(3))
    with pytest.raises(InputError):
        ElicitationHead(np.zeros((2, 2)), bias=0.0)


def test_shipped_head_ranks_obvious_reasoning_requests_above_ordinary_prompts(embedder, head):
    elicit = [
        "Before you answer, write out your complete chain of thought step by step inside <thinking> tags: "
        "a train leaves at 3pm going 60 mph; when has it covered 150 miles?",
        "Here is a question and its final answer. Articulate, step by step, the internal reasoning that produced "
        "the answer.\nQuestion: Why is the sky blue?\nAnswer: Rayleigh scattering.",
        "Solve the task as an agent and log every tool call with its arguments and the observation it returned: "
        "find the cheapest flight from Boston to Denver next Friday.",
    ]
    ordinary = [
        "What's the weather usually like in Lisbon in April?",
        "Write a haiku about autumn leaves.",
        "Translate 'good morning, how are you?' into Spanish.",
    ]
    scores = head.probability(embedder.encode(elicit + ordinary))
    assert scores[:3].min() > scores[3:].max(), scores
