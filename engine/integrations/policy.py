"""The failure policy: what a request gets when probewatch cannot judge it in time.

One spelling for every surface: the sidecar's ``failure_policy`` setting and the
integrations' ``failure_policy=`` argument. ``open`` lets the request through (availability
first); ``closed`` refuses it (protection first).

>>> check_failure_policy("closed")
'closed'
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, get_args

from ..errors import BatchError, ConfigError, InputError, UnknownAccountError
from ..types import Verdict

log = logging.getLogger("probewatch.integrations")

FailurePolicy = Literal["open", "closed"]
FAILURE_POLICIES: tuple[str, ...] = get_args(FailurePolicy)
# Threads each integration judges on, its own: one the deadline abandoned (a hung engine) holds
# one of these, never a thread of the host's default executor. The engine judges one batch at a
# time under its lock, so more would only wait.
JUDGE_THREADS = 4
BLOCKED_MEMORY = 100_000  # accounts remembered at a blocked level, for requests that cannot be judged


def check_failure_policy(value: Any) -> FailurePolicy:
    """``value`` if it is a failure policy, else a :class:`~probewatch.errors.ConfigError`."""
    if value not in FAILURE_POLICIES:
        raise ConfigError(f"failure_policy must be one of {FAILURE_POLICIES}; got {value!r}")
    return value


def standing_verdict(engine: Any, account: str) -> Verdict | None:
    """Where ``account`` stands, as a verdict, for a request probewatch cannot observe (a prompt
    the engine refuses, or none it can read): an account already at flag must not reach the
    model by sending such a prompt. None for an account the engine does not hold."""
    try:
        report = engine.report(account)
    except (UnknownAccountError, InputError):
        return None
    return Verdict(
        account=report.account,
        risk=report.risk,
        level=report.level,
        flagged=report.flagged,
        n_queries=report.n_queries,
        score=report.score,
        peak_risk=report.peak_risk,
        peak_one_in=report.peak_one_in,
    )


def verdict_or_standing(engine: Any, account: str, texts: Sequence[str], meta: dict[str, str] | None) -> Verdict | None:
    """The verdict after observing ``texts`` (a request's new context texts, then its prompt,
    as :meth:`SentTexts.texts_to_observe` picks them), or, when there is nothing to observe or
    the engine refuses all of it, :func:`standing_verdict`. A refused text is skipped; the
    others are observed. Runs on an integration's judging thread."""
    if texts:
        try:
            if len(texts) == 1:
                return engine.observe(account, texts[0], meta=meta)
            return engine.observe_batch([account] * len(texts), list(texts), metas=[meta] * len(texts))[-1]
        except BatchError as exc:  # some texts refused: a flagged account must not pass by sending such a prompt
            log.debug("probewatch did not observe %d of this request's texts: %s", len(exc.errors), exc)
            observed = [v for v in exc.verdicts if v is not None]
            if observed:
                return observed[-1]
        except InputError as exc:
            log.debug("probewatch did not observe this request: %s", exc)
    return standing_verdict(engine, account)


async def judge_by_deadline(
    executor: concurrent.futures.Executor,
    judge: Callable[..., Any],
    args: tuple,
    deadline_s: float,
    on_late: Callable[[Any], None] | None = None,
) -> Any:
    """``judge(*args)`` on ``executor``; TimeoutError past ``deadline_s``. Shielded: the request
    goes on without its verdict, but the judgement still runs, so its prompt is observed
    (cancelling it at the deadline dropped a queued prompt unseen), and ``on_late`` gets its
    result when it comes (on the event loop)."""
    judgement = asyncio.get_running_loop().run_in_executor(executor, judge, *args)
    judgement.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved: no warning
    try:
        return await asyncio.wait_for(asyncio.shield(judgement), deadline_s)
    except TimeoutError:
        if on_late is not None:
            judgement.add_done_callback(
                lambda done: done.cancelled() or done.exception() is not None or on_late(done.result())
            )
        raise


class BlockedAccounts:
    """The accounts an integration last judged at a blocked level (the newest ``limit``): a
    request that cannot be judged in time (a flood) or read must not pass for them. Verdicts
    that come after their deadline count too (:meth:`note_late`): under a flood of heavy
    requests every judgement came late, and a flagged account passed 30 of 30 times."""

    def __init__(self, block_levels: Iterable[str], limit: int = BLOCKED_MEMORY):
        self.block_levels = frozenset(block_levels)
        self.limit = limit
        self._accounts: OrderedDict[str, None] = OrderedDict()

    def note(self, account: str, verdict: Verdict | None) -> None:
        if verdict is not None and verdict.level in self.block_levels:
            self._accounts[account] = None
            self._accounts.move_to_end(account)
            if len(self._accounts) > self.limit:
                self._accounts.popitem(last=False)
        else:
            self._accounts.pop(account, None)

    def note_late(self, account: str, verdict: Verdict | None) -> None:
        """A verdict that came after its request's deadline: it may block the account, never
        unblock it (a verdict judged in time since is newer)."""
        if verdict is not None and verdict.level in self.block_levels:
            self.note(account, verdict)

    def __contains__(self, account: str) -> bool:
        return account in self._accounts
