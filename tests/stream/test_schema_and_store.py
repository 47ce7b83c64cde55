"""The message schema, the checkpoint store (file:// and an fsspec URL) and the worker settings, without a broker."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

import probewatch as pw
from probewatch.errors import ConfigError
from probewatch.stream.checkpoints import CheckpointStore
from probewatch.stream.config import WorkerConfig, load_worker_config
from probewatch.stream.schema import PoisonMessage, observation, parse_observation
from tests.support import unit_rows

DIM = 8
GOOD = {"schema_version": 1, "account": "acct-1", "ts": 1_767_225_600.0, "embedding": [0.5] * DIM}

WITHOUT_LIST = {k: v for k, v in GOOD.items() if k != "embedding"}


def b64(values) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


def parse(body, **kw):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_observation(raw, dim=DIM, max_bytes=kw.pop("max_bytes", 10_000), max_prompt_chars=100, **kw)


def test_a_good_observation_parses_both_ways():
    obs = parse({**GOOD, "request_id": "r-1", "meta": {"ip": "203.0.113.7"}}, key=b"acct-1")
    assert obs.account == "acct-1" and obs.request_id == "r-1" and obs.meta == {"ip": "203.0.113.7"}
    assert obs.embedding.shape == (DIM,) and obs.embedding.dtype == np.float32
    again = parse(obs.to_json())
    assert again.account == obs.account and np.array_equal(again.embedding, obs.embedding)
    text = parse({"schema_version": 1, "account": "a", "ts": 5, "prompt": "hello"})
    assert text.prompt == "hello" and text.embedding is None and text.ts == 5.0
    both = parse({**GOOD, "prompt": "for the campaign templates"})  # the embedding is used, the prompt kept
    assert both.prompt and both.embedding is not None
    vector = unit_rows(np.random.default_rng(0).standard_normal((1, DIM)))[0]
    binary = observation("acct-1", 1.0, embedding=vector, dim=DIM).to_json(binary_embedding=True)
    assert b'"embedding_b64"' in binary and b'"embedding"' not in binary
    decoded = parse(binary)
    assert decoded.embedding.dtype == np.float32 and np.array_equal(decoded.embedding, vector)
    assert np.array_equal(parse(observation("acct-1", 1.0, embedding=vector).to_json()).embedding, vector)


@pytest.mark.parametrize(
    ("body", "kind", "says"),
    [
        (b"\xff\xfe", "not_json", "not UTF-8 JSON"),
        ([1, 2], "bad_field", "expected a JSON object; got list"),
        ({**GOOD, "schema_version": 2}, "bad_version", "schema_version must be 1; got 2"),
        ({k: v for k, v in GOOD.items() if k != "account"}, "missing_field", "'account' is missing"),
        ({k: v for k, v in GOOD.items() if k != "embedding"}, "missing_field", "got neither"),
        ({**GOOD, "embedding": [0.5] * 3}, "wrong_dim", "has 3 numbers; the engine expects 8"),
        ({**GOOD, "embedding": [0.0] * DIM}, "bad_embedding", "all zeros"),
        ({**GOOD, "embedding": ["a"] * DIM}, "bad_embedding", "only numbers"),
        ({**GOOD, "ts": "yesterday"}, "bad_field", "timestamp must be a number"),
        ({**GOOD, "ts": 1.7e12}, "bad_field", "milliseconds?"),
        ({**GOOD, "account": ""}, "bad_field", "non-empty"),
        ({**GOOD, "meta": {"colour": "red"}}, "bad_field", "unknown meta key 'colour'"),
        ({**GOOD, "extra": 1}, "bad_field", "unknown fields ['extra']"),
        ({**GOOD, "request_id": 7}, "bad_field", "request_id must be a string"),
        ({**GOOD, "embedding": [True] + [0.5] * (DIM - 1)}, "bad_embedding", "only numbers"),
        ({**GOOD, "embedding": [None] + [0.5] * (DIM - 1)}, "bad_embedding", "only numbers"),
        ({**GOOD, "embedding_b64": b64([0.5] * DIM)}, "bad_field", "not both"),
        ({**WITHOUT_LIST, "embedding_b64": "not base64!"}, "bad_embedding", "not base64"),
        (
            {**WITHOUT_LIST, "embedding_b64": b64([0.5] * 3)},
            "wrong_dim",
            "holds 3 float32 values; the engine expects 8",
        ),
        ({**WITHOUT_LIST, "embedding_b64": "AAAAAAA="}, "bad_embedding", "holds 5 bytes"),
        ({**WITHOUT_LIST, "embedding_b64": b64([float("nan")] * DIM)}, "bad_embedding", "NaN or infinity"),
        ({**WITHOUT_LIST, "embedding_b64": b64([0.0] * DIM)}, "bad_embedding", "all zeros"),
        ({**WITHOUT_LIST, "embedding_b64": 7}, "bad_embedding", "must be a base64 string"),
    ],
)
def test_each_kind_of_bad_message_is_poison_with_a_reason(body, kind, says):
    with pytest.raises(PoisonMessage) as caught:
        parse(body)
    assert caught.value.kind == kind and says in caught.value.reason


def _raw_good(**replace: str) -> bytes:
    """GOOD as JSON text with some values spelt by hand (numbers json.dumps would not write)."""
    fields = {"schema_version": "1", "account": '"acct-1"', "ts": "1767225600.0", "embedding": json.dumps([0.5] * DIM)}
    fields.update(replace)
    return ("{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}").encode()


@pytest.mark.parametrize(
    ("value", "kind", "says"),
    [
        # each of these once escaped parse_observation and stopped the worker on its offset at every restart
        (b"[" * 10_000 + b"]" * 10_000, "not_json", "nests arrays or objects too deeply"),
        (_raw_good(ts="1" * 5000), "not_json", "4300"),
        (
            _raw_good(embedding="[1" + "0" * 309 + "," + ",".join(["0.1"] * (DIM - 1)) + "]"),
            "bad_embedding",
            "too large",
        ),
        # and these were taken, or said as something they are not
        (b"\xef\xbb\xbf" + _raw_good(), "not_json", "BOM"),
        (json.dumps(GOOD).encode("utf-16"), "not_json", "not UTF-8"),
        (_raw_good(schema_version="true"), "bad_version", "got True"),
        (_raw_good(request_id='"\\ud800"'), "bad_field", "request_id must be"),
        (_raw_good(embedding=json.dumps([1e300] * DIM)), "bad_embedding", "too large to normalise"),
        (_raw_good(embedding="[NaN" + ",0.5" * (DIM - 1) + "]"), "bad_embedding", "NaN"),
        (json.dumps({**GOOD, "schema_version": "\u00e9" * 200_000}).encode(), "bad_version", "characters)"),
    ],
    ids=[
        "deep",
        "huge-int",
        "int-past-float",
        "bom",
        "utf-16",
        "version-true",
        "surrogate-request-id",
        "overflowing-norm",
        "nan",
        "long-reason",
    ],
)
def test_poison_that_once_stopped_the_worker_or_was_taken(value, kind, says):
    with pytest.raises(PoisonMessage) as caught:
        parse_observation(value, dim=DIM, max_bytes=2**22, max_prompt_chars=100)
    assert caught.value.kind == kind and says in caught.value.reason, caught.value.reason[:200]
    assert len(caught.value.reason) <= 1000


def test_a_dead_letter_keeps_a_bounded_key():
    from probewatch.stream.schema import MAX_DEAD_LETTER_KEY_BYTES, dead_letter_message

    poison = PoisonMessage("wrong_key", "x")
    letter = json.loads(dead_letter_message(poison, "t", 0, 5, b"\xff" * 180_000, b"{}"))
    assert len(letter["key"]) == MAX_DEAD_LETTER_KEY_BYTES  # one U+FFFD per bad byte kept


def test_size_and_key_rules():
    with pytest.raises(PoisonMessage, match="at most 100 are accepted") as caught:
        parse(GOOD, max_bytes=100)
    assert caught.value.kind == "oversized"
    with pytest.raises(PoisonMessage, match="is not the account id") as caught:
        parse(GOOD, key=b"acct-2")
    assert caught.value.kind == "wrong_key"
    with pytest.raises(PoisonMessage, match="no value"):
        parse_observation(None, dim=DIM, max_bytes=100, max_prompt_chars=10)


def test_the_publisher_side_checks_too():
    with pytest.raises(PoisonMessage, match="expects 8"):
        observation("a", 1.0, embedding=[1.0] * 4, dim=DIM)
    assert observation("a", 1.0, prompt="hi").prompt == "hi"


def _engine(seed: int) -> pw.Engine:
    rng = np.random.default_rng(seed)
    accounts = [f"b{i % 30}" for i in range(600)]
    engine = pw.Engine.from_benign_embeddings(accounts, unit_rows(rng.standard_normal((600, DIM))), device="cpu")
    engine.observe_embeddings(["x"] * 20, unit_rows(rng.standard_normal((20, DIM))))
    return engine


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_checkpoint_store_keeps_the_newest_and_falls_back_past_a_bad_one(tmp_path, scheme):
    url = f"file://{tmp_path}/state" if scheme == "file" else f"memory://probewatch-test-{tmp_path.name}"
    store = CheckpointStore(url, keep=2)
    engine = _engine(1)
    for offset in (10, 20, 30):
        assert store.save("g", "obs", 3, offset, engine) > 1000
    assert store.offsets("g", "obs", 3) == [30, 20]  # keep=2 pruned the oldest
    assert store.offsets("g", "obs", 4) == [] and store.load_newest("g", "obs", 4) is None
    loaded = store.load_newest("g", "obs", 3)
    assert loaded.offset == 30 and not loaded.skipped
    assert loaded.engine.report("x").n_queries == 20
    # the newest is damaged: the one before is used and the skip is reported
    if scheme == "file":
        path = store.path("g", "obs", 3, 30)
        with open(path, "r+b") as fh:
            fh.truncate(100)
    else:
        store._fs.pipe_file(store.path("g", "obs", 3, 30), b"not a snapshot")
    loaded = store.load_newest("g", "obs", 3)
    assert loaded.offset == 20 and len(loaded.skipped) == 1 and "00000000000000000030.npz" in loaded.skipped[0]


def test_the_default_store_url_is_a_folder_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = CheckpointStore(WorkerConfig().state_url)
    store.save("g", "obs", 0, 5, _engine(2))
    assert (tmp_path / "probewatch-state" / "g" / "obs" / "p00000" / f"{5:020d}.npz").is_file()


def test_bad_store_urls_say_what_is_expected():
    with pytest.raises(ConfigError, match="file:///abs/path"):
        CheckpointStore("file://somehost/state")
    with pytest.raises(ConfigError, match="cannot be opened by fsspec"):
        CheckpointStore("nosuchprotocol://bucket/state")


def test_worker_settings_layer_like_the_sidecars(tmp_path):
    path = tmp_path / "worker.yaml"
    path.write_text(
        "group_id: from-file\nmax_batch_size: 64\nkafka:\n  security.protocol: SSL\n  sasl.password: hunter2\nengine:\n  device: cpu\n"
    )
    config = load_worker_config(path, env={"PROBEWATCH_MAX_BATCH_SIZE": "128"}, group_id="from-flag")
    assert (config.group_id, config.max_batch_size, config.engine.device) == ("from-flag", 128, "cpu")
    assert config.public_dict()["kafka"] == {"security.protocol": "SSL", "sasl.password": "<set>"}
    path.write_text("max_batch_sise: 64\n")
    with pytest.raises(ConfigError, match=r"unknown settings \['max_batch_sise'\]"):
        load_worker_config(path, env={})
    with pytest.raises(ConfigError, match="setting checkpoint_interval_s"):
        load_worker_config(env={"PROBEWATCH_CHECKPOINT_INTERVAL_S": "0"})
    with pytest.raises(ConfigError, match="topics must differ"):
        WorkerConfig(verdicts_topic="same", dead_letter_topic="same")
    with pytest.raises(ConfigError, match="set by the worker itself"):
        WorkerConfig(kafka={"enable.auto.commit": "true"})
