"""ASGI middleware: observe OpenAI-style completion requests, block or annotate flagged accounts.

Works with vLLM's OpenAI-compatible server (``vllm serve --middleware
probewatch.integrations.asgi.ProbewatchMiddleware``, which builds it with defaults and
``PROBEWATCH_*`` settings) and with any ASGI app::

    app = ProbewatchMiddleware(app, engine=probewatch.Engine(), account_header="x-account-id")

For each POST to ``/v1/chat/completions``, ``/v1/completions`` or ``/v1/responses`` (``paths``,
or ``PROBEWATCH_MIDDLEWARE_PATHS``, comma-separated) that carries the account header, the
newest user message (or the completion prompt, or the Responses API input) is observed before
the request reaches the app, with the texts its account has not sent before (earlier user
turns; system and developer messages and Responses ``instructions``, sampled): a query hidden
there reaches the model too (``observe_context``, or ``PROBEWATCH_MIDDLEWARE_OBSERVE_CONTEXT``;
see :mod:`probewatch.integrations.context`). ``mode="block"`` answers flagged accounts with 403
and an OpenAI-style JSON error; ``mode="annotate"`` lets every request through and adds
``x-probewatch-level`` and ``x-probewatch-risk`` response headers (block mode adds them to
requests it passes, too).
Requests without the header and other paths pass untouched; a body over ``max_body_bytes`` is
not read, and its request is judged by where its account stands (a flagged account is blocked).
When the engine fails or exceeds ``deadline_s``, ``failure_policy`` decides: ``"open"`` passes
the request (default), ``"closed"`` answers 503; either way an account the middleware last saw
at a blocked level stays blocked, and a judgement past its deadline still observes its prompt.

With ``request_meta=True`` (default; ``PROBEWATCH_MIDDLEWARE_REQUEST_META``) the client
address and ``User-Agent`` go to the engine as ``meta``, linking accounts that share them
into campaigns (only salted hashes are kept). Behind a reverse proxy the client address is
the proxy's unless the server rewrites it from trusted proxy headers (uvicorn
``--proxy-headers --forwarded-allow-ips``); otherwise turn it off.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Literal

from ..engine import Engine
from ..errors import ConfigError
from ..types import Verdict
from .context import CONTEXT_TEXTS_PER_REQUEST, SentTexts, max_prompt_chars, texts_to_observe
from .meta import meta_from_asgi_scope
from .policy import JUDGE_THREADS, BlockedAccounts, check_failure_policy, judge_by_deadline, verdict_or_standing
from .prompts import RequestTexts, openai_body_texts
from .settings import engine_config_from_env, env_flag

log = logging.getLogger("probewatch.integrations.asgi")

# ASGI, spelled out here so that the middleware needs no web framework.
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

DEFAULT_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
MODES = ("block", "annotate")


class ProbewatchMiddleware:
    """Observe the prompt of each completion request that names an account; see the module doc."""

    def __init__(
        self,
        app: ASGIApp,
        engine: Engine | None = None,
        *,
        account_header: str | None = None,
        mode: str | None = None,
        paths: Iterable[str] | None = None,
        block_levels: Iterable[str] = ("flag",),
        failure_policy: str = "open",
        deadline_s: float = 2.0,
        max_body_bytes: int = 4 * 1024**2,
        request_meta: bool | None = None,
        observe_context: bool | None = None,
        context_texts_per_request: int = CONTEXT_TEXTS_PER_REQUEST,
    ):
        self.app = app
        self._engine = engine
        # Settings are read now, so a missing extra or a bad setting fails at start-up; the
        # model itself loads on the first request that needs it.
        self._engine_config = engine_config_from_env("ProbewatchMiddleware") if engine is None else None
        self._engine_lock = threading.Lock()
        header = account_header or os.environ.get("PROBEWATCH_ACCOUNT_HEADER", "x-account-id")
        self.account_header = header.lower().encode()
        self.mode = mode or os.environ.get("PROBEWATCH_MIDDLEWARE_MODE", "block")
        if self.mode not in MODES:
            raise ConfigError(f"the middleware mode must be one of {MODES}; got {self.mode!r}")
        if paths is None:
            listed = os.environ.get("PROBEWATCH_MIDDLEWARE_PATHS", "")
            paths = [p.strip() for p in listed.split(",") if p.strip()] or DEFAULT_PATHS
        self.paths = frozenset(paths)
        self.block_levels = frozenset(block_levels)
        self._blocked = BlockedAccounts(self.block_levels)
        self.failure_policy = check_failure_policy(failure_policy)
        self.deadline_s = deadline_s
        self.max_body_bytes = max_body_bytes
        if request_meta is None:
            request_meta = env_flag("PROBEWATCH_MIDDLEWARE_REQUEST_META", True)
        self.request_meta = bool(request_meta)
        if observe_context is None:
            observe_context = env_flag("PROBEWATCH_MIDDLEWARE_OBSERVE_CONTEXT", True)
        self.sent_texts = SentTexts(per_request=context_texts_per_request) if observe_context else None
        # texts are cut to what the engine takes (the model reads far less): never refused for length
        self._max_chars = max_prompt_chars(engine if engine is not None else self._engine_config)
        # its own threads (see JUDGE_THREADS), not the host's default executor
        self._executor = concurrent.futures.ThreadPoolExecutor(JUDGE_THREADS, thread_name_prefix="probewatch")

    @property
    def engine(self) -> Engine:
        with self._engine_lock:  # two first requests at once must not load two models
            if self._engine is None:
                self._engine = Engine(config=self._engine_config)
            return self._engine

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        watched = scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path") in self.paths
        account = dict(scope.get("headers") or []).get(self.account_header) if watched else None
        if not account:
            await self.app(scope, receive, send)
            return
        body, replay = await _buffer_body(receive, self.max_body_bytes)
        meta = meta_from_asgi_scope(scope) if self.request_meta else None
        account_id = account.decode("utf-8", "replace")
        # a body over the limit (or a client that left) is not read: judged by its account's standing
        verdict = await self._judge(account_id, scope["path"], body, meta)
        # an account last judged at a blocked level stays blocked when it cannot be judged now
        held = verdict == "unavailable" and account_id in self._blocked
        if verdict == "unavailable":
            if self.failure_policy == "closed" and not (held and self.mode == "block"):
                await _json_reply(send, 503, "probewatch is unavailable; failing closed", "probewatch_unavailable")
                return
            verdict = None
        else:
            self._blocked.note(account_id, verdict)
        if self.mode == "block" and (held or (verdict is not None and verdict.level in self.block_levels)):
            known = {} if verdict is None else {"level": verdict.level, "risk": verdict.risk}
            await _json_reply(
                send,
                403,
                "this account's traffic looks like model extraction and is blocked",
                "probewatch_blocked",
                **known,
            )
            return
        await self.app(scope, replay, _annotating(send, verdict) if verdict is not None else send)

    async def _judge(
        self, account: str, path: str, body: bytes | None, meta: dict[str, str] | None = None
    ) -> Verdict | Literal["unavailable"] | None:
        """The verdict after observing what ``body`` gives the model to read (None: a body not
        read); when nothing can be observed (none readable, or refused), the account's standing
        one (None when it is not held); "unavailable" on failure or timeout."""
        # the engine is read inside the thread: built on first use, it loads a model, which must
        # block neither the event loop nor past the deadline, and may fail like any judgement
        try:
            return await judge_by_deadline(
                self._executor,
                self._verdict_of,
                (account, path, body, meta),
                self.deadline_s,
                on_late=lambda late: self._blocked.note_late(account, late),
            )
        except TimeoutError:  # the judgement goes on in its thread: the prompt is still observed
            log.warning(
                "probewatch did not judge this request within deadline_s (%g s): failure_policy %r applies to it. "
                "The first request waits for the model to load: warm the engine at start-up "
                "(engine.embedder.encode(['warm-up'])) to spare it",
                self.deadline_s,
                self.failure_policy,
            )
            return "unavailable"
        except Exception:  # engine failures (a model that cannot load) follow the failure policy
            log.exception("probewatch could not judge this request")
            return "unavailable"

    def _verdict_of(self, account: str, path: str, body: bytes | None, meta: dict[str, str] | None) -> Verdict | None:
        # on the judging thread: reading a large message list (a 4 MiB body of 100,000 turns
        # took 0.5 s) must not hold the event loop, and self.engine may load the model
        request = _texts_of(path, body) if body is not None else RequestTexts(None)
        texts = texts_to_observe(self.sent_texts, account, request, self._max_chars)
        return verdict_or_standing(self.engine, account, texts, meta)


def _texts_of(path: str, body: bytes) -> RequestTexts:
    try:
        return openai_body_texts(path, json.loads(body))
    except (ValueError, RecursionError):
        return RequestTexts(None)  # not JSON (or nested past the decoder's recursion): the app will answer it


async def _buffer_body(receive: Receive, limit: int) -> tuple[bytes | None, Receive]:
    """Read the whole request body so it can be judged and handed on unchanged.

    Returns ``(body, replay)``: ``replay`` is the receive() the app gets. ``body`` is None when
    the client disconnected or the body grew past ``limit`` (then the app gets it as it came).
    """
    chunks: list[bytes] = []
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None, _replay([], message, receive)
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = message.get("more_body", False)
        if size > limit:
            return None, _replay([b"".join(chunks)], None, receive, more)
    body = b"".join(chunks)
    return body, _replay([body], None, receive)


def _replay(chunks: list[bytes], pending: Message | None, receive: Receive, more: bool = False) -> Receive:
    """A receive() that hands the buffered body on first, then defers to the real one."""
    queue = [{"type": "http.request", "body": c, "more_body": more} for c in chunks]
    if pending is not None:
        queue.append(pending)

    async def replayed() -> Message:
        if queue:
            return queue.pop(0)
        return await receive()

    return replayed


def _annotating(send: Send, verdict: Verdict) -> Send:
    async def annotated(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers") or [])
            headers += [
                (b"x-probewatch-level", verdict.level.encode()),
                (b"x-probewatch-risk", f"{verdict.risk:.4f}".encode()),
            ]
            message = {**message, "headers": headers}
        await send(message)

    return annotated


async def _json_reply(send: Send, status: int, message: str, code: str, **details: Any) -> None:
    body = json.dumps({"error": {"message": message, "type": code, "code": status, **details}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
