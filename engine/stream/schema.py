"""The JSON messages on the topics, version 1 (docs/kafka.md lists every field).

Observation (topic ``observations``, key: the account id as UTF-8)::

    {"schema_version": 1, "account": "acct-1", "prompt": "...", "ts": 1767225600.0,
     "request_id": "r-1", "meta": {"ip": "203.0.113.7"}}

``prompt`` (text, embedded by the worker) or ``embedding`` (a list of floats of the engine's
width; or ``embedding_b64``, the same as base64 of little-endian float32, which costs a worker far
less to decode) or both (the embedding is used, the prompt only for the campaign layer's template
anchors); ``ts`` (Unix seconds) is required, ``request_id`` and
``meta`` are optional. A message that breaks any rule is poison: :func:`parse_observation`
raises :class:`PoisonMessage` whose ``reason`` says what was expected and what came, and the
worker sends it to the dead-letter topic.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..campaigns.metadata import check_meta
from ..errors import InputError
from ..io.validation import check_account, check_prompt, check_timestamp
from ..types import Verdict

SCHEMA_VERSION = 1
OBSERVATION_FIELDS = frozenset(
    {"schema_version", "account", "prompt", "embedding", "embedding_b64", "ts", "request_id", "meta"}
)
MAX_REQUEST_ID_CHARS = 256
MAX_REASON_CHARS = 1000
# A dead letter keeps this much of the original key (its JSON and its Kafka key): an uncapped key
# of 180 KB of bad UTF-8 grew past the producer's 1 MB limit once escaped, and that crashed the worker.
MAX_DEAD_LETTER_KEY_BYTES = 1024


class PoisonMessage(ValueError):
    """A message the worker cannot observe; ``kind`` is a short metric label, ``reason`` the whole story."""

    def __init__(self, kind: str, reason: str):
        if len(reason) > MAX_REASON_CHARS:  # a reason may quote the message: it goes to a log line and a dead letter
            cut = f"... ({len(reason):,} characters)"
            reason = reason[: MAX_REASON_CHARS - len(cut)] + cut
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class Observation:
    account: str
    ts: float
    prompt: str | None = None
    embedding: np.ndarray | None = None
    request_id: str | None = None
    meta: dict[str, str] | None = None

    def to_json(self, binary_embedding: bool = False) -> bytes:
        """The message value; ``binary_embedding``: the embedding as ``embedding_b64``."""
        body: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "account": self.account, "ts": self.ts}
        if self.prompt is not None:
            body["prompt"] = self.prompt
        if self.embedding is not None:
            vector = np.asarray(self.embedding, dtype="<f4")
            if binary_embedding:
                body["embedding_b64"] = base64.b64encode(vector.tobytes()).decode("ascii")
            else:
                body["embedding"] = vector.tolist()
        if self.request_id is not None:
            body["request_id"] = self.request_id
        if self.meta:
            body["meta"] = self.meta
        return json.dumps(body, separators=(",", ":")).encode("utf-8")


def observation(
    account: str,
    ts: float,
    *,
    prompt: str | None = None,
    embedding: Any = None,
    request_id: str | None = None,
    meta: dict[str, str] | None = None,
    dim: int | None = None,
    max_prompt_chars: int = 16_384,
) -> Observation:
    """A checked :class:`Observation` (the publisher's side of :func:`parse_observation`)."""
    body: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "account": account, "ts": ts}
    if prompt is not None:
        body["prompt"] = prompt
    if embedding is not None:
        body["embedding"] = np.asarray(embedding, dtype=np.float64).tolist()
    if request_id is not None:
        body["request_id"] = request_id
    if meta is not None:
        body["meta"] = meta
    return check_observation(body, dim, max_prompt_chars)


def parse_observation(
    value: bytes | None, *, dim: int | None, max_bytes: int, max_prompt_chars: int, key: bytes | None = None
) -> Observation:
    """The observation a message value holds, or :class:`PoisonMessage` saying why not.
    ``key``, when given, must be the account id (records keyed otherwise land on the wrong worker)."""
    if value is None:
        raise PoisonMessage("empty", "the message has no value; expected a JSON observation object")
    if len(value) > max_bytes:
        raise PoisonMessage("oversized", f"the message is {len(value):,} bytes; at most {max_bytes:,} are accepted")
    try:
        # decoded here, not by json.loads, which would also take UTF-16 and UTF-32
        body = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError: bad JSON, or an integer past Python's 4,300-digit limit; RecursionError:
        # nesting deeper than the decoder's recursion. Either, unhandled, stopped the worker on
        # this offset at every restart.
        detail = "it nests arrays or objects too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise PoisonMessage("not_json", f"the message is not UTF-8 JSON ({detail}); expected a JSON object") from None
    obs = check_observation(body, dim, max_prompt_chars)
    if key is not None and key != obs.account.encode("utf-8"):
        raise PoisonMessage(
            "wrong_key",
            f"the message key {key[:80]!r} is not the account id {obs.account[:80]!r}; the key must be the account "
            "so each account's queries stay on one partition, in order",
        )
    return obs


def check_observation(body: Any, dim: int | None, max_prompt_chars: int) -> Observation:
    if not isinstance(body, dict):
        raise PoisonMessage("bad_field", f"expected a JSON object; got {type(body).__name__}")
    version = body.get("schema_version")
    if isinstance(version, bool) or version != SCHEMA_VERSION:  # true == 1 in Python
        raise PoisonMessage(
            "bad_version", f"schema_version must be {SCHEMA_VERSION}; got {version!r} (a newer publisher?)"
        )
    unknown = sorted(set(body) - OBSERVATION_FIELDS)
    if unknown:
        raise PoisonMessage("bad_field", f"unknown fields {unknown}; expected some of {sorted(OBSERVATION_FIELDS)}")
    for name in ("account", "ts"):
        if name not in body:
            raise PoisonMessage("missing_field", f"the field {name!r} is missing")
    has_prompt, has_list = body.get("prompt") is not None, body.get("embedding") is not None
    has_binary = body.get("embedding_b64") is not None
    if has_list and has_binary:
        raise PoisonMessage("bad_field", "give one of 'embedding' and 'embedding_b64', not both")
    has_embedding = has_list or has_binary
    if not (has_prompt or has_embedding):
        raise PoisonMessage("missing_field", "one of 'prompt' and 'embedding' must be given; got neither")
    try:
        account = check_account(body["account"])
        if isinstance(body["ts"], bool) or body["ts"] is None:
            raise InputError(f"ts must be Unix seconds (a number); got {body['ts']!r}")
        ts = check_timestamp(body["ts"])
        prompt = check_prompt(body["prompt"], max_prompt_chars) if has_prompt else None
        meta = check_meta(body.get("meta"))
    except InputError as exc:
        raise PoisonMessage("bad_field", str(exc)) from None
    if has_binary:
        embedding = _binary_embedding(body["embedding_b64"], dim)
    else:
        embedding = _embedding(body["embedding"], dim) if has_list else None
    request_id = body.get("request_id")
    if request_id is not None and (
        not isinstance(request_id, str) or len(request_id) > MAX_REQUEST_ID_CHARS or not _encodable(request_id)
    ):
        raise PoisonMessage(
            "bad_field",
            f"request_id must be a string of at most {MAX_REQUEST_ID_CHARS} characters; got {request_id!r:.80}",
        )
    return Observation(account, float(ts), prompt, embedding, request_id, meta)


def _encodable(text: str) -> bool:
    """Whether ``text`` has a UTF-8 form (JSON can escape lone surrogates, which have none)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _direction_problem(arr: np.ndarray, name: str) -> str | None:
    """Why finite ``arr`` has no direction the engine can take, or None."""
    if not np.any(arr):
        return f"{name} is all zeros (it has no direction)"
    with np.errstate(over="ignore"):
        if not math.isfinite(float(np.dot(arr.astype(np.float64), arr))):
            return f"{name} holds numbers too large to normalise (its squared length overflows)"
    return None


def _binary_embedding(value: Any, dim: int | None) -> np.ndarray:
    if not isinstance(value, str):
        raise PoisonMessage("bad_embedding", f"embedding_b64 must be a base64 string; got {type(value).__name__}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PoisonMessage("bad_embedding", f"embedding_b64 is not base64 ({exc})") from None
    if not raw or len(raw) % 4:
        raise PoisonMessage(
            "bad_embedding",
            f"embedding_b64 holds {len(raw)} bytes; expected little-endian float32 values (4 bytes each)",
        )
    if dim is not None and len(raw) // 4 != dim:
        raise PoisonMessage(
            "wrong_dim", f"embedding_b64 holds {len(raw) // 4} float32 values; the engine expects {dim}"
        )
    arr = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.isfinite(arr).all():
        raise PoisonMessage("bad_embedding", "embedding_b64 holds NaN or infinity")
    problem = _direction_problem(arr, "embedding_b64")
    if problem is not None:
        raise PoisonMessage("bad_embedding", problem)
    return arr


def _embedding(value: Any, dim: int | None) -> np.ndarray:
    if not isinstance(value, list) or not value:
        raise PoisonMessage(
            "bad_embedding", f"embedding must be a non-empty list of numbers; got {type(value).__name__}"
        )
    if dim is not None and len(value) != dim:
        raise PoisonMessage("wrong_dim", f"embedding has {len(value)} numbers; the engine expects {dim}")
    try:
        arr = np.asarray(value, dtype=np.float64)  # one C pass; per-item checks cost as much as the engine
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past float's range
        arr = None
    # JSON true/false convert to 1.0/0.0 and null to nan: where those values appear, check item by item
    if arr is None or arr.ndim != 1 or not np.isfinite(arr).all() or ((arr == 0) | (arr == 1)).any():
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in value):
            raise PoisonMessage("bad_embedding", "embedding must hold only numbers")
        try:
            arr = np.asarray(value, dtype=np.float64)
        except OverflowError:
            raise PoisonMessage("bad_embedding", "embedding holds an integer too large for a float") from None
    if not np.isfinite(arr).all():
        raise PoisonMessage("bad_embedding", "embedding holds NaN, or a number too large for a float")
    problem = _direction_problem(arr, "embedding")
    if problem is not None:
        raise PoisonMessage("bad_embedding", problem)
    return arr.astype(np.float32)


def verdict_message(verdict: Verdict, obs: Observation, partition: int, offset: int) -> bytes:
    """The value written to the verdicts topic (key: the account): the latest verdict of the account."""
    body = {
        "schema_version": SCHEMA_VERSION,
        "account": verdict.account,
        "request_id": obs.request_id,
        "ts": obs.ts,
        "partition": partition,
        "offset": offset,
        "verdict": verdict.to_dict(),
    }
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def dead_letter_message(
    reason: PoisonMessage, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
) -> bytes:
    """The value written to the dead-letter topic: why, where from, and the original bytes as text
    (undecodable bytes replaced; the original value is cut at 64 KiB)."""
    original = None if value is None else value[: 64 * 1024].decode("utf-8", "replace")
    body = {
        "schema_version": SCHEMA_VERSION,
        "kind": reason.kind,
        "reason": reason.reason,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": None if key is None else key[:MAX_DEAD_LETTER_KEY_BYTES].decode("utf-8", "replace"),
        "value": original,
    }
    return json.dumps(body, separators=(",", ":")).encode("utf-8")
