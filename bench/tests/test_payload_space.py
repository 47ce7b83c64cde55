"""bench.payload_space: each query minus its account's recent mean, against raw vectors."""

from __future__ import annotations

import numpy as np
import pytest

from bench.payload_space import centred, main


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_a_shared_template_direction_is_removed():
    rng = np.random.default_rng(0)
    template = _unit(rng.normal(size=384))
    payloads = _unit(rng.normal(size=(40, 384)))
    sent = _unit(template + 0.4 * payloads).astype(np.float32)  # one frame, varying items
    out = centred(sent, window=16)
    raw_similarity = float(np.mean(sent[20:] @ sent[20:].T))
    centred_similarity = float(np.mean((out[20:] @ out[20:].T)[~np.eye(20, dtype=bool)]))
    assert raw_similarity > 0.8
    assert abs(centred_similarity) < 0.15  # what is left is the items, unrelated to each other
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_rows_depend_only_on_earlier_rows_and_the_first_is_kept():
    rng = np.random.default_rng(1)
    x = _unit(rng.normal(size=(30, 16))).astype(np.float32)
    changed = x.copy()
    changed[20:] = _unit(rng.normal(size=(10, 16)))
    a, b = centred(x, window=4), centred(changed, window=4)
    assert np.array_equal(a[:20], b[:20]) and not np.allclose(a[20:], b[20:])
    assert np.allclose(a[0], x[0])
    # row 10 is x[10] minus the mean of rows 6-9 only
    expected = x[10] - x[6:10].mean(axis=0)
    assert np.allclose(a[10], expected / np.linalg.norm(expected), atol=1e-6)


def test_an_exact_resend_of_a_one_prompt_account_stays_raw():
    x = np.tile(_unit(np.arange(1.0, 9.0))[None, :], (5, 1)).astype(np.float32)
    out = centred(x, window=3)
    assert np.isfinite(out).all() and np.allclose(out, x)


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match="at least 1"):
        centred(np.ones((3, 4), dtype=np.float32), window=0)
    with pytest.raises(ValueError, match=r"\(queries, dim\)"):
        centred(np.ones(4, dtype=np.float32), window=2)
    assert main(["--size", "quick", "--window", "0"]) == 2


@pytest.mark.slow
def test_both_spaces_are_calibrated_and_compared(capsys):
    assert main(["--size", "quick", "--window", "8"]) == 0
    out = capsys.readouterr().out
    assert "raw: calibrated" in out and "centred (8): calibrated" in out
    assert "template_sweep" in out and out.count("benign test accounts flagged") == 2
    assert "both: the benign test pool's top 1 % by kind" in out
    header = next(line for line in out.splitlines() if line.startswith("scenario"))
    assert header.split()[-1] == "both"


def test_an_unknown_held_out_kind_is_refused_with_the_known_ones(capsys):
    assert main(["--size", "quick", "--lopo", "no_such_app"]) == 2
    err = capsys.readouterr().err
    assert "benign:no_such_app" in err and "benign:normal" in err
