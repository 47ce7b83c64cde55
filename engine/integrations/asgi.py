"""ASGI middleware: observe OpenAI-style completion requests, block or annotate flagged accounts.

Works with vLLM's OpenAI-compatible server (``vllm serve --middleware
probewatch.integrations.asgi.ProbewatchMiddleware``, which builds it with defaults and
``PROBEWATCH_*`` settings) and with any ASGI app::

    app = ProbewatchMiddleware(app, engine=probewatch.Engine(), account_header="x-account-id")

For each POST to ``/v1/chat/completions`` or ``/v1/completions`` that carries the account
header, the newest user message (or the completion prompt) is observed before the request
reaches the app. ``mode="block"`` answers flagged accounts with 403 and an OpenAI-style JSON
error; ``mode="annotate"`` lets every request through and adds ``x-probewatch-level`` and
``x-probewatch-risk`` response headers (block mode adds them to requests it passes, too).
Requests without the header, other paths and bodies over ``max_body_bytes`` pass untouched.
When the engine fails or exceeds ``deadline_s``, ``fail_open`` decides: pass (default) or 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from ..engine import Engine
from ..errors import ProbewatchError
from .prompts import prompt_from_openai_body

log = logging.getLogger("probewatch.integrations.asgi")

DEFAULT_PATHS = ("/v1/chat/completions", "/v1/completions")


class ProbewatchMiddleware:
    def __init__(self, app, engine: Engine | None = None, *, account_header: str | None = None,
                 mode: str | None = None, paths: Iterable[str] = DEFAULT_PATHS, block_levels: Iterable[str] = ("flag",),
                 fail_open: bool = True, deadline_s: float = 2.0, max_body_bytes: int = 4 * 1024**2):
        self.app = app
        self._engine = engine
        self.account_header = (account_header or os.environ.get("PROBEWATCH_ACCOUNT_HEADER", "x-account-id")).lower().encode()
        self.mode = mode or os.environ.get("PROBEWATCH_MIDDLEWARE_MODE", "block")
        if self.mode not in ("block", "annotate"):
            raise ValueError(f"mode must be 'block' or 'annotate'; got {self.mode!r}")
        self.paths = frozenset(paths)
        self.block_levels = frozenset(block_levels)
        self.fail_open = fail_open
        self.deadline_s = deadline_s
        self.max_body_bytes = max_body_bytes

    @property
    def engine(self) -> Engine:
        if self._engine is None:  # built by a framework with no arguments: settings from env
            from ..serve.config import load_config  # noqa: PLC0415

            self._engine = Engine(config=load_config().engine)
        return self._engine

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        account = dict(scope.get("headers") or []).get(self.account_header)
        if not account:
            await self.app(scope, receive, send)
            return
        chunks, more, size = [], True, 0
        while more:  # buffer the body so we can read it and hand it on unchanged
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([], message, receive), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                break
        body = b"".join(chunks)
        replay = _replay([body], None, receive, more)
        if size > self.max_body_bytes:
            await self.app(scope, replay, send)
            return
        try:
            prompt = prompt_from_openai_body(scope["path"], json.loads(body))
        except ValueError:
            prompt = None  # not JSON: the app will answer it
        verdict = await self._observe(account.decode("utf-8", "replace"), prompt) if prompt else None
        if verdict == "unavailable":
            if not self.fail_open:
                await _json_reply(send, 503, "probewatch is unavailable; failing closed", "probewatch_unavailable")
                return
            verdict = None
        if verdict is not None and self.mode == "block" and verdict.level in self.block_levels:
            await _json_reply(send, 403, "this account's traffic looks like model extraction and is blocked",
                              "probewatch_blocked", level=verdict.level, risk=verdict.risk)
            return
        await self.app(scope, replay, _annotating(send, verdict) if verdict is not None else send)

    async def _observe(self, account: str, prompt: str):
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.engine.observe, account, prompt), self.deadline_s)
        except ProbewatchError as exc:
            log.debug("probewatch did not observe this request: %s", exc)
            return None
        except Exception:  # noqa: BLE001 - timeouts and engine failures follow the failure policy
            log.exception("probewatch could not judge this request in time")
            return "unavailable"


def _replay(chunks: list[bytes], pending: dict | None, receive, more: bool = False):
    """A receive() that hands the buffered body on first, then defers to the real one."""
    queue = [{"type": "http.request", "body": c, "more_body": more} for c in chunks]
    if pending is not None:
        queue.append(pending)

    async def replayed():
        if queue:
            return queue.pop(0)
        return await receive()

    return replayed


def _annotating(send, verdict: Any):
    async def annotated(message):
        if message["type"] == "http.response.start":
            headers = list(message.get("headers") or [])
            headers += [(b"x-probewatch-level", verdict.level.encode()),
                        (b"x-probewatch-risk", f"{verdict.risk:.4f}".encode())]
            message = {**message, "headers": headers}
        await send(message)

    return annotated


async def _json_reply(send, status: int, message: str, code: str, **details: Any) -> None:
    body = json.dumps({"error": {"message": message, "type": code, "code": status, **details}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
