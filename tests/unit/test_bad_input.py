"""Bad input: a specific probewatch exception naming what was expected and what came, and
no other account's state changes. Vector tests use observe_embeddings (no model); prompt
tests use the real model (session fixture)."""

from __future__ import annotations

import io
import json
import os
import pickle
import stat
import zipfile

import numpy as np
import pytest

import probewatch as pw
from probewatch.io.persistence import FORMAT_VERSION
from tests.support import header_edit, rewrite_snapshot, unit_rows

DIM = 384  # the shipped default calibration's dimension


def state_of(engine):
    return {
        "accounts": engine.accounts(),
        "reports": {a: engine.report(a) for a in engine.accounts()},
        "observations": engine.stats().observations,
        "stored": engine.stats().stored_queries,
    }


@pytest.fixture
def vec_engine():
    """Default calibration, CPU, a few accounts with history; no text model is loaded."""
    engine = pw.Engine(device="cpu")
    rng = np.random.default_rng(0)
    engine.observe_embeddings(["alice"] * 12 + ["bob"] * 12, unit_rows(rng.standard_normal((24, DIM))))
    return engine


@pytest.fixture
def text_engine(text_engine_factory):
    engine = text_engine_factory()
    # history seeded from vectors: the model is only needed for the prompts under test
    engine.observe_embeddings(["alice", "bob", "alice"], unit_rows(np.random.default_rng(2).standard_normal((3, DIM))))
    return engine


def pattern_in(pattern, text):
    import re

    return re.search(pattern, text) is not None


def rows(n, seed=1):
    return unit_rows(np.random.default_rng(seed).standard_normal((n, DIM)))


# ---------------------------------------------------------------------------------------
# prompts (real model)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "pattern"),
    [
        ("", "non-whitespace"),
        ("   \n\t  ", "non-whitespace"),
        (42, "must be a str or UTF-8 bytes; got int"),
        (None, "got NoneType"),
        (["a list"], "got list"),
        (3.5, "got float"),
        ("before\x00after", "NUL characters; got one at position 6"),
        (b"ok \x00 bytes", "NUL"),
        (b"\xff\xfe not utf8", "valid UTF-8; byte 0"),
        (b"caf\xc3", "valid UTF-8; byte 3"),
        ("lone \ud800 surrogate", "lone surrogate at position 5"),
    ],
    ids=[
        "empty",
        "whitespace",
        "int",
        "none",
        "list",
        "float",
        "nul",
        "nul-bytes",
        "bad-utf8",
        "cut-utf8",
        "surrogate",
    ],
)
def test_bad_prompt(text_engine, prompt, pattern):
    before = state_of(text_engine)
    with pytest.raises(pw.InvalidPromptError, match=pattern) as info:
        text_engine.observe("carol", prompt)
    assert isinstance(info.value, pw.InputError) and isinstance(info.value, pw.ProbewatchError)
    assert "carol" not in text_engine.accounts()
    assert state_of(text_engine) == before


def test_megabyte_prompt_over_limit(text_engine):
    before = state_of(text_engine)
    limit = text_engine.config.max_prompt_chars
    with pytest.raises(pw.InvalidPromptError, match=f"at most {limit} characters.*got {1_000_000}"):
        text_engine.observe("alice", "x" * 1_000_000)
    assert state_of(text_engine) == before
    small = type(text_engine)(embedder=text_engine.embedder, max_prompt_chars=50)
    with pytest.raises(pw.InvalidPromptError, match="at most 50 characters"):
        small.observe("alice", "y" * 51)


def test_long_prompt_under_limit_is_truncated_and_embedded(text_engine, embedder):
    words = " ".join(f"word{i}" for i in range(30_000))  # ~240k chars
    prompt = words[: text_engine.config.max_prompt_chars - 10]
    verdict = text_engine.observe("longwriter", prompt)
    assert verdict.n_queries == 1 and 0.0 <= verdict.risk <= 1.0
    vec = embedder.encode([prompt])
    assert vec.shape == (1, embedder.dim) and np.isfinite(vec).all()
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-4
    # only its opening and its end reach the model
    np.testing.assert_allclose(vec, embedder.encode([prompt[:20_000] + " " + prompt[-20_000:]]), atol=1e-5)
    assert float(vec[0] @ embedder.encode([prompt[:20_000]])[0]) < 0.999


def test_valid_utf8_bytes_are_accepted(text_engine):
    v = text_engine.observe("dave", "Wie kocht man Spätzle? café".encode())
    assert v.account == "dave" and v.n_queries == 1


# ---------------------------------------------------------------------------------------
# account ids
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("account", "pattern"),
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        ("a" * 257, "at most 256 characters; got 257"),
        ("line\nbreak", "control characters"),
        ("nul\x00id", "control characters"),
        ("del\x7f", "control characters"),
        ("tab\tid", "control characters"),
        ("sur\udc80rogate", "lone surrogates"),
        ("next\u0085line", r"U\+0085"),
        ("line\u2028sep", r"U\+2028 \(LINE SEPARATOR\)"),
        ("user\u202egnp.exe", r"U\+202E \(RIGHT-TO-LEFT OVERRIDE\)"),
        ("\u200b", r"U\+200B \(ZERO WIDTH SPACE\)"),
        (123, "must be a str; got int"),
        (None, "must be a str; got NoneType"),
        (b"bytes-id", "must be a str; got bytes"),
    ],
    ids=[
        "empty",
        "blank",
        "too-long",
        "newline",
        "nul",
        "del",
        "tab",
        "surrogate",
        "c1-next-line",
        "line-separator",
        "rtl-override",
        "only-zero-width",
        "int",
        "none",
        "bytes",
    ],
)
def test_bad_account_id(vec_engine, account, pattern):
    before = state_of(vec_engine)
    with pytest.raises(pw.BatchError) as info:  # batch API: the item's error inside a BatchError
        vec_engine.observe_embeddings([account], rows(1))
    assert list(info.value.errors) == [0] and info.value.verdicts == [None]
    assert isinstance(info.value.errors[0], pw.InvalidAccountError)
    assert pattern_in(pattern, str(info.value.errors[0]))
    assert state_of(vec_engine) == before
    with pytest.raises(pw.InvalidAccountError, match=pattern):
        vec_engine.report(account)
    with pytest.raises(pw.InvalidAccountError, match=pattern):
        vec_engine.forget(account)
    assert state_of(vec_engine) == before


def test_longest_account_id_is_fine(vec_engine):
    assert vec_engine.observe_embeddings(["z" * 256], rows(1))[0].n_queries == 1


def test_bad_account_id_in_text_path(text_engine):
    before = state_of(text_engine)
    with pytest.raises(pw.InvalidAccountError, match="control characters"):
        text_engine.observe("bad\nid", "Hello there")
    assert state_of(text_engine) == before


# ---------------------------------------------------------------------------------------
# batch shapes and vectors
# ---------------------------------------------------------------------------------------
def test_mismatched_batch_lengths_process_nothing(vec_engine, text_engine):
    before = state_of(vec_engine)
    with pytest.raises(pw.BatchLengthError, match="accounts=3, ts=2"):
        vec_engine.observe_embeddings(["alice", "bob", "carol"], rows(3), ts=[1.0, 2.0])
    with pytest.raises(pw.InvalidEmbeddingError, match="3 accounts but 2 vectors"):
        vec_engine.observe_embeddings(["alice", "bob", "carol"], rows(2))
    assert state_of(vec_engine) == before

    before = state_of(text_engine)
    with pytest.raises(pw.BatchLengthError, match="accounts=2, prompts=3"):
        text_engine.observe_batch(["alice", "carol"], ["a", "b", "c"])
    with pytest.raises(pw.BatchLengthError, match="ts=1"):
        text_engine.observe_batch(["alice", "carol"], ["a", "b"], ts=[1.0])
    assert state_of(text_engine) == before


def test_a_string_where_a_batch_belongs_processes_nothing(vec_engine, text_engine):
    """A str is a sequence of its characters: taken for a batch it would observe accounts
    'a', 'b', 'c'. It, bytes, a mapping and an iterator without a length are refused."""
    before = state_of(text_engine)
    with pytest.raises(pw.BatchLengthError, match=r"accounts must be a sequence .*got str 'abc'.*wrap it in a list"):
        text_engine.observe_batch("abc", "xyz")
    with pytest.raises(pw.BatchLengthError, match=r"prompts must be a sequence .*got str"):
        text_engine.observe_batch(["a", "b", "c"], "xyz")
    with pytest.raises(pw.BatchLengthError, match=r"accounts must be .*got bytes"):
        text_engine.observe_batch(b"abc", ["x", "y", "z"])
    with pytest.raises(pw.BatchLengthError, match=r"metas must be .*got dict"):
        text_engine.observe_batch(["alice"], ["hello"], metas={"ip": "10.0.0.1"})
    with pytest.raises(pw.BatchLengthError, match=r"accounts must be .*has no length.*list\(\.\.\.\)"):
        text_engine.observe_batch(iter(["alice"]), ["hello"])
    assert state_of(text_engine) == before
    before = state_of(vec_engine)
    with pytest.raises(pw.BatchLengthError, match=r"accounts must be .*got str 'ab'"):
        vec_engine.observe_embeddings("ab", rows(2))
    assert state_of(vec_engine) == before


def test_missing_or_unordered_batch_arguments_process_nothing(vec_engine, text_engine):
    """None where a batch belongs, and a set (whose order would pair ids with the wrong rows)."""
    before = state_of(text_engine)
    with pytest.raises(pw.BatchLengthError, match=r"prompts must be a sequence .*got None"):
        text_engine.observe_batch(["alice", "bob"], None)
    with pytest.raises(pw.BatchLengthError, match=r"accounts must be a sequence .*got None"):
        text_engine.observe_batch(None, ["hello"])
    assert state_of(text_engine) == before
    before = state_of(vec_engine)
    with pytest.raises(pw.BatchLengthError, match=r"accounts must be .*unordered set"):
        vec_engine.observe_embeddings({"alice", "bob"}, rows(2))
    with pytest.raises(pw.BatchLengthError, match=r"accounts must be a sequence .*got None"):
        vec_engine.observe_embeddings(None, rows(2))
    assert state_of(vec_engine) == before


def test_evicting_by_a_bare_string_evicts_nothing(vec_engine):
    """evict("alice") would evict accounts 'a', 'l', 'i', ... if the str were taken for a list."""
    vec_engine.observe_embeddings(["a", "b"], rows(2, seed=5))
    before = state_of(vec_engine)
    with pytest.raises(pw.BatchLengthError, match=r"got str 'ab'.*wrap it in a list"):
        vec_engine.evict("ab")
    with pytest.raises(pw.BatchLengthError, match="got None"):
        vec_engine.evict(None)
    with pytest.raises(pw.InvalidAccountError):
        vec_engine.evict(["a", ""])  # every id is checked before any account is evicted
    assert state_of(vec_engine) == before
    assert vec_engine.evict(["ab"]) == []  # held by no one: nothing to evict
    assert vec_engine.evict(["a"]) == ["a"] and "b" in vec_engine.accounts()


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (lambda e: e.campaign_page(limit=-1), pw.InputError, r"limit must be .*at least 1; got -1"),
        (lambda e: e.campaign_page(limit=0), pw.InputError, r"limit must be .*got 0"),
        (lambda e: e.campaign_page(limit="10"), pw.InputError, r"limit must be .*got '10'"),
        (lambda e: e.campaign_page(after=5), pw.InputError, r"after must be a campaign id .*got int 5"),
        (lambda e: e.accounts("bogus"), pw.InputError, r"level must be one of \['ok', 'watch', 'flag'\]; got 'bogus'"),
        (lambda e: e.campaigns("flagged"), pw.InputError, r"level must be one of .*got 'flagged'"),
        (lambda e: e.known_benign(["alice"]), pw.InvalidAccountError, r"must be a str; got list"),
    ],
    ids=[
        "page-limit-negative",
        "page-limit-zero",
        "page-limit-text",
        "page-after-number",
        "level",
        "campaign-level",
        "known-benign-list",
    ],
)
def test_bad_query_arguments_say_what_is_expected(vec_engine, call, error, pattern):
    before = state_of(vec_engine)
    with pytest.raises(error, match=pattern):
        call(vec_engine)
    assert state_of(vec_engine) == before


def test_numpy_timestamps_count_as_the_numbers_they_hold(vec_engine):
    """A timestamp column read from a DataFrame or an array arrives as NumPy scalars."""
    twin = pw.Engine(device="cpu")
    new = rows(3, seed=11)
    stamps = [np.int64(1_700_000_000), np.float32(1_700_000_100), np.float64(1_700_000_200)]
    a = vec_engine.observe_embeddings(["carol"] * 3, new, ts=stamps)
    twin.observe_embeddings(
        ["alice"] * 12 + ["bob"] * 12, unit_rows(np.random.default_rng(0).standard_normal((24, DIM)))
    )
    b = twin.observe_embeddings(["carol"] * 3, new, ts=[float(t) for t in stamps])
    assert [v.to_dict() for v in a] == [v.to_dict() for v in b]
    assert vec_engine.report("carol").first_ts == 1_700_000_000.0
    with pytest.raises(pw.BatchError) as info:
        vec_engine.observe_embeddings(["carol"], rows(1), ts=[np.True_])
    assert isinstance(info.value.errors[0], pw.InvalidTimestampError)


def test_an_account_s_time_span_holds_whatever_order_stamps_arrive_in(vec_engine):
    vec_engine.observe_embeddings(["dave"] * 3, rows(3, seed=12), ts=[2000.0, 1000.0, 1500.0])
    vec_engine.observe_embeddings(["dave"], rows(1, seed=13), ts=[1200.0])
    report = vec_engine.report("dave")
    assert (report.first_ts, report.last_ts) == (1000.0, 2000.0)


@pytest.mark.parametrize(
    ("meta", "pattern"),
    [
        ({"ip": "10.0.0.\ud800"}, r"meta\['ip'\] must be valid Unicode; got a lone surrogate at position 7"),
        ({"org": 10**5000}, r"meta\['org'\] must be at most 512 characters; got an integer of about 5001 digits"),
    ],
    ids=["lone-surrogate", "huge-integer"],
)
def test_bad_meta_values_are_refused_before_anything_is_stored(vec_engine, meta, pattern):
    """The campaign layer hashes meta values as UTF-8: a value it cannot encode used to fail
    there, after the vector was stored and the account's count had moved."""
    before = state_of(vec_engine)
    with pytest.raises(pw.BatchError) as info:
        vec_engine.observe_embeddings(["alice"], rows(1, seed=14), metas=[meta])
    assert isinstance(info.value.errors[0], pw.InputError)
    assert pattern_in(pattern, str(info.value.errors[0]))
    assert state_of(vec_engine) == before


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: np.ones((2, 100), np.float32), r"shape \(n, 384\).*got \(2, 100\)"),
        (lambda: np.ones((2, 3, DIM), np.float32), r"shape \(n, 384\).*got \(2, 3, 384\)"),
        (lambda: np.ones(7, np.float32), r"shape \(n, 384\).*got \(1, 7\)|shape \(n, 384\).*got \(7,\)"),
        (lambda: np.where(np.arange(DIM) == 5, np.nan, 0.1)[None].repeat(2, 0), r"finite; rows \[0, 1\]"),
        (lambda: np.concatenate([rows(1), np.full((1, DIM), np.inf)]), r"finite; rows \[1\]"),
        (lambda: np.concatenate([rows(1), np.zeros((1, DIM))]), r"non-zero norm; rows \[1\]"),
        (lambda: [[1.0, 2.0], [3.0]], r"numeric \(n, 384\) array"),
        (lambda: "not a matrix", r"numeric \(n, 384\) array"),
    ],
    ids=["dim", "3d", "1d", "nan", "inf", "zero", "ragged", "string"],
)
def test_bad_vectors(vec_engine, make, pattern):
    before = state_of(vec_engine)
    vecs = make()
    n = 1 if isinstance(vecs, str) or (isinstance(vecs, np.ndarray) and vecs.ndim == 1) else len(vecs)
    with pytest.raises(pw.InvalidEmbeddingError, match=pattern):
        vec_engine.observe_embeddings(["alice", "carol"][:n], vecs)
    assert state_of(vec_engine) == before


@pytest.mark.parametrize(
    ("vectors", "pattern"),
    [
        (np.full((1, DIM), 1e300), r"must fit in float32 .*rows \[0\] hold larger values.*scale it down"),
        (np.full((1, DIM), 1e-300), r"non-zero norm in float32; rows \[0\] hold only values too small"),
        (np.full((1, DIM), 1 + 1j), r"must be real numbers; got complex128"),
        (np.zeros((1, DIM)), r"non-zero norm; rows \[0\] are zero"),
    ],
    ids=["past-float32", "below-float32", "complex", "zero"],
)
def test_rows_float32_cannot_hold_say_so(vec_engine, vectors, pattern):
    """float64 rows outside float32's range read as inf or 0 after the cast: said as what they are."""
    before = state_of(vec_engine)
    with pytest.raises(pw.InvalidEmbeddingError, match=pattern):
        vec_engine.observe_embeddings(["alice"], vectors)
    assert state_of(vec_engine) == before


def test_large_and_tiny_vectors_are_normalised(vec_engine):
    big = np.full((1, DIM), 1e30, np.float32)  # float32 norm would overflow
    tiny = np.full((1, DIM), 1e-9, np.float32)
    v = vec_engine.observe_embeddings(["big", "tiny"], np.concatenate([big, tiny]))
    assert [x.n_queries for x in v] == [1, 1]
    stored = vec_engine.pipeline.store.get("big").vectors()
    # unit norm up to the rounding of the stored rows (float16 by default: ~1e-4 here)
    tolerance = 1e-5 if vec_engine.config.storage == "float32" else 1e-3
    assert abs(float(np.linalg.norm(stored)) - 1.0) < tolerance


class _FakeCudaArray:
    """Rows that say they live in CUDA memory (as a torch CUDA tensor does), on a machine
    where CuPy cannot take them."""

    shape = (2, DIM)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": "<f4", "data": (0, False), "version": 3}


class _FakeDlpackCuda:
    shape = (2, DIM)

    def __dlpack_device__(self):
        return (2, 0)  # kDLCUDA, device 0

    def __dlpack__(self, stream=None):
        raise AssertionError("never read: CuPy is missing")


@pytest.mark.parametrize("make", [_FakeCudaArray, _FakeDlpackCuda], ids=["cuda-array-interface", "dlpack-cuda"])
def test_device_rows_without_cupy_say_what_to_install(vec_engine, make, monkeypatch):
    import probewatch.io.validation as validation

    monkeypatch.setattr(validation, "cupy_available", lambda: False)
    before = state_of(vec_engine)
    with pytest.raises(pw.InvalidEmbeddingError, match=r"live on a CUDA device \(_Fake.*probewatch\[gpu\].*cpu\(\)"):
        vec_engine.observe_embeddings(["alice", "carol"], make())
    with pytest.raises(pw.InvalidEmbeddingError, match="live on a CUDA device"):
        vec_engine.calibrate_embeddings(["alice", "carol"], make())
    assert state_of(vec_engine) == before


def test_host_arrays_are_not_taken_for_device_rows():
    import torch

    from probewatch.io.validation import on_cuda_device

    rows_ = rows(2)
    assert not on_cuda_device(rows_) and not on_cuda_device(rows_.tolist())
    assert not on_cuda_device(torch.from_numpy(rows_))  # a CPU tensor: DLPack device kDLCPU
    assert on_cuda_device(_FakeCudaArray()) and on_cuda_device(_FakeDlpackCuda())


class _GradCudaTensor:
    """What torch does for a CUDA tensor that requires grad: both interfaces refuse, DLPack's
    device still says CUDA."""

    shape = (2, DIM)

    @property
    def __cuda_array_interface__(self):
        raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad.")

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None):
        raise RuntimeError("Can't export tensors that require gradient, use tensor.detach()")


def test_tensors_that_require_grad_are_refused_clearly(vec_engine, monkeypatch):
    import torch

    import probewatch.io.validation as validation

    before = state_of(vec_engine)
    with pytest.raises(pw.InvalidEmbeddingError, match=r"numeric \(n, 384\) array; got Tensor: .*detach"):
        vec_engine.observe_embeddings(["alice", "carol"], torch.from_numpy(rows(2)).requires_grad_())
    assert validation.on_cuda_device(_GradCudaTensor())
    monkeypatch.setattr(validation, "cupy_available", lambda: False)
    with pytest.raises(pw.InvalidEmbeddingError, match="live on a CUDA device"):
        vec_engine.observe_embeddings(["alice", "carol"], _GradCudaTensor())
    assert state_of(vec_engine) == before


def test_cpu_tensor_rows_are_accepted(vec_engine):
    import torch

    vecs = rows(2)
    twin = pw.Engine(device="cpu")
    twin.observe_embeddings(
        ["alice"] * 12 + ["bob"] * 12, unit_rows(np.random.default_rng(0).standard_normal((24, DIM)))
    )
    got = vec_engine.observe_embeddings(["alice", "carol"], torch.from_numpy(vecs))
    want = twin.observe_embeddings(["alice", "carol"], vecs)
    assert got == want


def test_bad_calibration_timestamps_name_the_item(vec_engine):
    """Calibration takes all its items or none; timestamps are checked as observe checks them."""
    before = state_of(vec_engine)
    calibration = vec_engine.calibration
    accounts = [f"b{i % 40}" for i in range(400)]
    vectors = rows(400, seed=15)
    for stamps, pattern in (
        ([1000.0] * 7 + [float("nan")] + [1000.0] * 392, r"calibration item 7 \(1 invalid in all\): .*finite"),
        ([-5.0] * 400, r"calibration item 0 \(400 invalid in all\): .*between 0 and"),
        (["2024-01-01"] * 400, r"calibration item 0 .*number of seconds or None; got '2024-01-01'"),
    ):
        with pytest.raises(pw.InvalidTimestampError, match=pattern):
            vec_engine.calibrate_embeddings(accounts, vectors, stamps)
    assert vec_engine.calibration is calibration
    assert state_of(vec_engine) == before


@pytest.mark.parametrize(
    ("vectors", "pattern"),
    [([[1.0, 2.0], [3.0]], r"numeric \(n, d\) array; got list"), (3.0, "got a scalar float")],
    ids=["ragged", "scalar"],
)
def test_bad_calibration_vectors(vec_engine, vectors, pattern):
    before = state_of(vec_engine)
    with pytest.raises(pw.InvalidEmbeddingError, match=pattern):
        vec_engine.calibrate_embeddings(["alice", "bob"], vectors)
    with pytest.raises(pw.InvalidEmbeddingError, match=pattern):
        pw.Engine.from_benign_embeddings(["alice", "bob"], vectors, device="cpu")
    assert state_of(vec_engine) == before


def test_bad_timestamps(vec_engine):
    before = state_of(vec_engine)
    for ts, pattern in (
        (float("nan"), "finite"),
        ("yesterday", "number of seconds"),
        (True, "number of seconds"),
        (10**400, "401 digits"),
        (1e308, "between 0 and 100000000000"),
        (-1.0, "between 0 and"),
        (1_764_620_000_000, "milliseconds? divide by 1000"),
    ):
        with pytest.raises(pw.BatchError) as info:
            vec_engine.observe_embeddings(["alice", "bob"], rows(2), ts=[ts, 1.0])
        assert list(info.value.errors) == [0]
        assert isinstance(info.value.errors[0], pw.InvalidTimestampError)
        assert pattern in str(info.value.errors[0])
        assert info.value.verdicts[0] is None and info.value.verdicts[1].account == "bob"
        before["reports"]["bob"] = vec_engine.report("bob")  # bob's item was processed
        before["observations"] += 1
        before["stored"] += 1
        before["accounts"] = vec_engine.accounts()
    assert state_of(vec_engine)["reports"]["alice"] == before["reports"]["alice"]


def test_unknown_account_in_report(vec_engine):
    with pytest.raises(pw.UnknownAccountError, match=r"'mallory'.*never observed") as info:
        vec_engine.report("mallory")
    assert isinstance(info.value, KeyError)
    assert vec_engine.forget("mallory") is False


# ---------------------------------------------------------------------------------------
# batch semantics
# ---------------------------------------------------------------------------------------
def test_batch_error_text(text_engine):
    alice_before = text_engine.report("alice")
    accounts = ["erin", "frank", "", "erin", "gina", "hank"]
    prompts = ["Plan a trip to Rome", "", "Valid text", b"\xff bad", "How do tides work?", "x\x00y"]
    with pytest.raises(pw.BatchError) as info:
        text_engine.observe_batch(accounts, prompts)
    err = info.value
    assert sorted(err.errors) == [1, 2, 3, 5]
    assert isinstance(err.errors[1], pw.InvalidPromptError)
    assert isinstance(err.errors[2], pw.InvalidAccountError)
    assert isinstance(err.errors[3], pw.InvalidPromptError) and "UTF-8" in str(err.errors[3])
    assert isinstance(err.errors[5], pw.InvalidPromptError) and "NUL" in str(err.errors[5])
    assert "4 of 6 batch items were rejected" in str(err)
    assert [v is None for v in err.verdicts] == [False, True, True, True, False, True]
    assert [v.account for v in err.verdicts if v is not None] == ["erin", "gina"]
    assert text_engine.report("erin").n_queries == 1 and text_engine.report("gina").n_queries == 1
    assert "frank" not in text_engine.accounts() and "hank" not in text_engine.accounts()
    assert text_engine.report("alice") == alice_before


def test_batch_error_embeddings_order_kept(vec_engine):
    vecs = rows(5, seed=3)
    twin = pw.Engine(device="cpu")
    rng = np.random.default_rng(0)
    twin.observe_embeddings(["alice"] * 12 + ["bob"] * 12, unit_rows(rng.standard_normal((24, DIM))))
    with pytest.raises(pw.BatchError) as info:
        vec_engine.observe_embeddings(["alice", 7, "carol", "a\nb", "alice"], vecs)
    err = info.value
    assert sorted(err.errors) == [1, 3]
    assert all(isinstance(e, pw.InvalidAccountError) for e in err.errors.values())
    got = [v for v in err.verdicts if v is not None]
    # the valid items were processed in order, exactly as a clean batch of just them
    want = twin.observe_embeddings(["alice", "carol", "alice"], vecs[[0, 2, 4]])
    assert [(v.account, v.n_queries, v.score, v.level) for v in got] == [
        (v.account, v.n_queries, v.score, v.level) for v in want
    ]
    assert [v.n_queries for v in got] == [13, 1, 14]


def test_single_observe_raises_the_item_error_not_batch_error(text_engine):
    with pytest.raises(pw.InvalidPromptError) as info:
        text_engine.observe("alice", "")
    assert not isinstance(info.value, pw.BatchError)


# ---------------------------------------------------------------------------------------
# corrupt snapshots
# ---------------------------------------------------------------------------------------
@pytest.fixture
def good_snapshot(vec_engine, tmp_path):
    path = tmp_path / "good.npz"
    vec_engine.save(path)
    return path


def _drop(name):
    return lambda arrays: arrays.pop(name)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


CORRUPTIONS = {
    "truncated": (
        lambda src, dst: dst.write_bytes(src.read_bytes()[: len(src.read_bytes()) // 2]),
        "not a readable .* damaged or cut short",
    ),
    "random-bytes": (
        lambda src, dst: dst.write_bytes(b"\x00" + np.random.default_rng(0).bytes(4095)),
        r"not a readable .* its first bytes are b'\\x00",
    ),
    "empty-file": (lambda src, dst: dst.write_bytes(b""), "not a readable .* its first bytes are b''"),
    # np.load's own message for a pickle suggests loading it unsafely: never passed on
    "pickle": (
        lambda src, dst: dst.write_bytes(pickle.dumps({"header": 1})),
        r"not a readable .*first bytes are b'\\x80",
    ),
    "foreign-npz": (lambda src, dst: np.savez(dst, weights=np.ones(3)), "no probewatch header"),
    "npy-array": (lambda src, dst: dst.write_bytes(_npy_bytes(np.ones(3))), "single .npy array"),
    "zip-of-text": (lambda src, dst: zipfile.ZipFile(dst, "w").writestr("hello.txt", "hi"), "no probewatch header"),
    "header-garbage": (
        lambda src, dst: rewrite_snapshot(
            src, dst, lambda a: a.__setitem__("header", np.frombuffer(b"\xff{{", np.uint8))
        ),
        "header is corrupt",
    ),
    "header-not-object": (
        lambda src, dst: rewrite_snapshot(
            src, dst, lambda a: a.__setitem__("header", np.frombuffer(b"[1, 2]", np.uint8))
        ),
        "header is corrupt",
    ),
    "wrong-version": (
        lambda src, dst: rewrite_snapshot(
            src, dst, header_edit(lambda h: h.__setitem__("version", FORMAT_VERSION + 1))
        ),
        f"format version {FORMAT_VERSION + 1}; this probewatch reads version {FORMAT_VERSION}",
    ),
    "calibration-file": (
        lambda src, dst: rewrite_snapshot(
            src, dst, header_edit(lambda h: h.__setitem__("format", "probewatch-calibration"))
        ),
        "expected 'probewatch-snapshot'",
    ),
    "missing-store-vectors": (lambda src, dst: rewrite_snapshot(src, dst, _drop("store_vectors")), "malformed"),
    "missing-state-array": (lambda src, dst: rewrite_snapshot(src, dst, _drop("state_ring_nn")), "malformed"),
    "missing-reference": (lambda src, dst: rewrite_snapshot(src, dst, _drop("ref_bank")), "missing or malformed"),
    "missing-calibration-bin": (
        lambda src, dst: rewrite_snapshot(src, dst, _drop("cal_bin_3")),
        "missing or malformed",
    ),
    "wrong-vector-width": (
        lambda src, dst: rewrite_snapshot(
            src, dst, lambda a: a.__setitem__("store_vectors", a["store_vectors"][:, :10])
        ),
        "expected \\(n, 384\\)",
    ),
    "offsets-disagree": (
        lambda src, dst: rewrite_snapshot(src, dst, lambda a: a.__setitem__("store_offsets", a["store_offsets"][:-1])),
        "account tables disagree",
    ),
    "bad-config": (
        lambda src, dst: rewrite_snapshot(src, dst, header_edit(lambda h: h["config"].__setitem__("window", 3))),
        "stored configuration is invalid",
    ),
    "unknown-config-key": (
        lambda src, dst: rewrite_snapshot(src, dst, header_edit(lambda h: h["config"].__setitem__("bogus", 1))),
        "stored configuration is invalid",
    ),
    "state-shape": (
        lambda src, dst: rewrite_snapshot(
            src, dst, lambda a: a.__setitem__("state_ring_nn", a["state_ring_nn"][:, :5])
        ),
        "state array ring_nn",
    ),
    "missing-header-key": (
        lambda src, dst: rewrite_snapshot(src, dst, header_edit(lambda h: h.pop("accounts"))),
        "malformed",
    ),
    # starts with "PK" but is no zip: NumPy would try it as a pickle and advise loading it unsafely
    "pk-then-noise": (
        lambda src, dst: dst.write_bytes(b"PK" + np.random.default_rng(1).bytes(4094)),
        r"not a readable .* its first bytes are b'PK",
    ),
    "compressed-damaged": (lambda src, dst: _damaged_compressed(src, dst), "damaged or cut short"),
    "header-calibration-list": (
        lambda src, dst: rewrite_snapshot(src, dst, header_edit(lambda h: h.__setitem__("calibration", []))),
        "calibration entry is a list",
    ),
    "header-evicted-list": (
        lambda src, dst: rewrite_snapshot(src, dst, header_edit(lambda h: h.__setitem__("evicted", []))),
        "evicted entry is a list",
    ),
    "header-carried-reasons-list": (
        lambda src, dst: rewrite_snapshot(src, dst, header_edit(lambda h: h.__setitem__("carried_reasons", []))),
        "carried_reasons entry is a list",
    ),
    "header-clock-text": (
        lambda src, dst: rewrite_snapshot(src, dst, header_edit(lambda h: h.__setitem__("clock", "noon"))),
        "malformed",
    ),
    "account-id-number": (
        lambda src, dst: rewrite_snapshot(src, dst, header_edit(lambda h: h["accounts"].__setitem__(0, 7))),
        "stored account 0 has an invalid id: an account id must be a str; got int",
    ),
    "account-id-blank": (
        lambda src, dst: rewrite_snapshot(src, dst, header_edit(lambda h: h["accounts"].__setitem__(1, " "))),
        "stored account 1 has an invalid id",
    ),
    "account-id-newline": (
        lambda src, dst: rewrite_snapshot(src, dst, header_edit(lambda h: h["accounts"].__setitem__(1, "bob\n"))),
        "stored account 1 has an invalid id: .*control characters",
    ),
    "account-id-twice": (
        lambda src, dst: rewrite_snapshot(
            src, dst, header_edit(lambda h: h["accounts"].__setitem__(1, h["accounts"][0]))
        ),
        "is stored twice",
    ),
    "offsets-decrease": (
        lambda src, dst: rewrite_snapshot(src, dst, lambda a: a.__setitem__("store_offsets", np.array([0, 30, 24]))),
        "never decrease",
    ),
    # the totals agree, but the first account is given a row more than the queries it sent
    "offsets-misassigned": (
        lambda src, dst: rewrite_snapshot(
            src, dst, lambda a: a["store_offsets"].__setitem__(1, a["store_offsets"][1] + 1)
        ),
        r"has 13 stored vectors but 12 queries",
    ),
    "nan-vectors": (
        lambda src, dst: rewrite_snapshot(src, dst, lambda a: a["store_vectors"].__setitem__((3, 5), np.nan)),
        "NaN or infinity",
    ),
}


def test_a_stored_id_from_before_the_format_character_rule_still_loads(good_snapshot, tmp_path):
    """observe has refused zero-width and direction characters only since issue 11: a snapshot
    taken before then may hold such an id, and must not stop loading because of it."""
    old = tmp_path / "old-id.npz"
    rewrite_snapshot(good_snapshot, old, header_edit(lambda h: h["accounts"].__setitem__(0, "ali\u200bce")))
    engine = pw.Engine.load(old)
    assert "ali\u200bce" in engine.accounts()


def _damaged_compressed(src, dst):
    """A compressed copy of ``src`` whose header member's deflate stream starts with an invalid block."""
    with np.load(src, allow_pickle=False) as data:
        np.savez_compressed(dst, **{k: data[k] for k in data.files})
    with zipfile.ZipFile(dst) as archive:
        member = archive.getinfo("header.npy")
    raw = bytearray(dst.read_bytes())
    name_length, extra_length = np.frombuffer(raw[member.header_offset + 26 : member.header_offset + 30], "<u2")
    start = member.header_offset + 30 + int(name_length) + int(extra_length)
    raw[start : start + 4] = b"\xff" * 4  # block type 3: reserved, invalid
    dst.write_bytes(bytes(raw))


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_snapshot(vec_engine, good_snapshot, tmp_path, corruption):
    make, pattern = CORRUPTIONS[corruption]
    bad = tmp_path / f"bad-{corruption}.npz"
    make(good_snapshot, bad)
    with pytest.raises(pw.SnapshotError, match=pattern) as raised:
        pw.Engine.load(bad)
    assert "allow_pickle" not in str(raised.value) and "unsafe" not in str(raised.value)
    before = state_of(vec_engine)
    config, calibration = vec_engine.config, vec_engine.calibration
    with pytest.raises(pw.SnapshotError, match=pattern):
        vec_engine.restore(bad)
    assert state_of(vec_engine) == before
    assert vec_engine.config is config and vec_engine.calibration is calibration
    # and it keeps working exactly like a twin restored from the good snapshot
    twin = pw.Engine.load(good_snapshot)
    new = rows(2, seed=9)
    a = vec_engine.observe_embeddings(["alice", "carol"], new)
    b = twin.observe_embeddings(["alice", "carol"], new)
    assert [(v.score, v.level, v.n_queries) for v in a] == [(v.score, v.level, v.n_queries) for v in b]


def test_missing_snapshot_file(vec_engine, tmp_path):
    with pytest.raises(pw.SnapshotError, match="no probewatch-snapshot file at"):
        vec_engine.restore(tmp_path / "nope.npz")
    with pytest.raises(pw.SnapshotError, match=r"folder .* does not exist"):
        vec_engine.save(tmp_path / "no-such-dir" / "s.npz")
    with pytest.raises(pw.SnapshotError, match=r"it is a folder; give a file path"):
        vec_engine.save(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_saving_over_a_pipe_or_device_is_refused(vec_engine, tmp_path):
    """os.replace would put a file where the FIFO was (as root, over /dev/null)."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(pw.SnapshotError, match=r"not a regular file \(a pipe, socket or device\)"):
        vec_engine.save(pipe)
    with pytest.raises(pw.SnapshotError, match=r"not a regular file"):
        vec_engine.save_calibration(pipe)
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temporary file left behind


def test_bad_calibration_file(tmp_path):
    with pytest.raises(pw.CalibrationError, match="no calibration file"):
        pw.Engine(device="cpu", calibration_path=tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(pw.ProbewatchError, match="not a readable"):
        pw.Engine(device="cpu", calibration_path=tmp_path / "junk.npz")


def test_bad_config_values():
    with pytest.raises(pw.ConfigError, match="k_neighbors must be in \\[1, 32\\]; got 0"):
        pw.Engine(device="cpu", k_neighbors=0)
    with pytest.raises(pw.ConfigError, match="device must be"):
        pw.Engine(device="tpu")


@pytest.mark.parametrize(
    ("setting", "pattern"),
    [
        ({"k_neighbors": "5"}, "k_neighbors must be an int; got str '5'"),
        ({"k_neighbors": True}, "k_neighbors must be an int; got bool True"),
        ({"window": 128.0}, "window must be an int; got float 128.0"),
        ({"campaigns": 1}, r"campaigns must be a bool \(True or False\); got int 1"),
        ({"target_fpr": "0.001"}, "target_fpr must be a number; got str"),
        ({"embed_backend": 0}, "embed_backend must be a str; got int 0"),
        ({"campaign_salt": 123}, "campaign_salt must be a str or None; got int 123"),
        ({"bogus": 1}, r"unknown config keys \['bogus'\]; valid keys are \[.*'k_neighbors'"),
    ],
)
def test_config_values_of_the_wrong_type_say_what_was_expected(setting, pattern):
    """Not a bare TypeError from a comparison, and never a bool taken for a number."""
    with pytest.raises(pw.ConfigError, match=pattern):
        pw.Engine(device="cpu", **setting)


def test_config_takes_numpy_numbers_and_paths_as_plain_values(tmp_path):
    """What a snapshot stores as JSON: NumPy scalars and path objects become int, float, str."""
    from probewatch.config import EngineConfig

    config = EngineConfig(k_neighbors=np.int64(5), target_fpr=np.float32(0.002), model=tmp_path)
    assert type(config.k_neighbors) is int and config.k_neighbors == 5
    assert type(config.target_fpr) is float and config.target_fpr == pytest.approx(0.002)
    assert config.model == str(tmp_path)
    json.dumps(config.to_dict())


def test_every_config_field_has_a_type_the_check_knows():
    """A new setting typed as the check has never seen (``list[str]``, say) must fail here,
    not as a KeyError inside the message of a user's mistyped value."""
    import dataclasses

    from probewatch.config import _FIELD_TYPES, EngineConfig

    unknown = {f.name: f.type for f in dataclasses.fields(EngineConfig) if f.type not in _FIELD_TYPES}
    assert not unknown, f"teach engine/config.py's _plain_setting and _FIELD_TYPES these annotations: {unknown}"
