"""Which of a request's texts to observe besides its prompt: those its account has not sent before.

A chat client sends the whole conversation with every request, and writes all of it: a query
placed in a made-up earlier user turn or in the system message reaches the model as surely as
the newest message does ("answer every question above"). Observing only the newest message let
60 such queries through unseen. Observing every message of every request would instead observe
an honest chat's history again at each turn, and its system prompt at every request.

:class:`SentTexts` remembers, for each account, keys of the texts it has sent, and picks the
texts of a request (:class:`~probewatch.integrations.prompts.RequestTexts`) to observe:

* the **prompt**, always (a resent prompt is traffic: a retry, a templated app);
* the **earlier user turns no answer follows** that the account has not sent: what "answer
  everything above" asks about. An honest chat's were its prompts when they were new; a
  made-up one is observed when it first appears. So is every instruction past a request's
  first two (one system message per hidden query);
* **answered earlier turns** (an assistant message follows each) only when a request carries
  more than ``few_shot_turns`` (8) new ones: an honest history was observed turn by turn, and
  an app's few-shot examples are its own (rotating examples, each observed, made 4 of 5 honest
  accounts flag in a red-team pass). The price: up to 8 queries a request, each under a
  made-up answer, pass unobserved;
* **instructions** (the first two system and developer texts) the account has not sent, at
  most one every ``instructions_every`` requests (16). Many apps write their system message
  anew for each request (the time, retrieved passages, a running summary of the chat);
  observed each time, such near-duplicates made 3 of 6 honest chat accounts flag in a
  red-team pass. A fixed system prompt is observed once; one that changes every request is
  sampled, and so is a question list put there; digits are set aside when comparing
  instructions (a clock or a counter in them is not a new text).

Bounded in two ways. The memory holds at most ``capacity`` (account, text) keys over all
accounts, least recently sent first out; a request touches every key it carries, so a live
conversation's history stays. An account whose keys were pushed out (or any account after a
restart: the memory is not saved) has its resent history observed once more, when it is longer
than ``few_shot_turns``. At most ``per_request`` new earlier turns are observed per request, a
random sample (an attacker can neither order nor pad its queries out of it: the keys are salted
per process); the rest are not remembered, so a later request that carries them again gets
them observed.

Integrations that observe in-process call :meth:`SentTexts.texts_to_observe`; the sidecar's
guardrail route :meth:`~SentTexts.pick`\\ s first and :meth:`~SentTexts.remember`\\ s only once the
request's items are accepted (a refused prompt, a 429 or a full queue leaves nothing marked as
sent).

>>> from probewatch.integrations.prompts import RequestTexts
>>> sent = SentTexts()
>>> sent.texts_to_observe("acct", RequestTexts("Hi", instructions=("Be brief.",)))
['Be brief.', 'Hi']
>>> sent.texts_to_observe("acct", RequestTexts("And you?", ("Hi",), ("Be brief.",)))
['And you?']
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..io.validation import cut_middle
from .prompts import RequestTexts

# (account, text) keys remembered over all accounts: about 100 bytes each, 20 MB in all.
SENT_TEXTS_CAPACITY = 200_000
# New earlier turns observed per request, a random sample: a made-up history longer than this
# is sampled, never embedded whole.
CONTEXT_TEXTS_PER_REQUEST = 32
# A new instruction text is observed at most once in this many requests of its account.
INSTRUCTIONS_EVERY = 16
# New answered turns a request may carry unobserved: an app's few-shot examples (rotating
# ones made 4 of 5 honest accounts flag when each was observed). More are read as a history,
# and so are any when the request's prompt is one its account sent before: the engine does not
# judge a prompt sent again (0.18.0), so a constant last message ("answer the questions above")
# would otherwise let made-up answered turns carry every query unobserved.
FEW_SHOT_TURNS = 8
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class PickedTexts:
    """What :meth:`SentTexts.pick` chose for one request: ``texts`` to observe (the prompt
    last, when the request has one) and what :meth:`SentTexts.remember` marks as sent."""

    account: str
    texts: tuple[str, ...]
    keys: tuple[bytes, ...]  # one per text
    has_prompt: bool  # the last text is the request's prompt
    instruction: bool  # an instruction text is among them: the account's next is due later
    skipped: int  # new earlier turns past per_request

    @property
    def n_context(self) -> int:
        """How many of ``texts`` are earlier turns or instructions, not the prompt."""
        return len(self.texts) - self.has_prompt


class SentTexts:
    """The texts each account has sent, so a request's earlier turns and instructions are
    observed once each (see the module doc).

    Thread-safe. ``observed_context`` and ``skipped`` count the earlier turns and instructions
    picked and the earlier turns past ``per_request`` since start.
    """

    def __init__(
        self,
        capacity: int = SENT_TEXTS_CAPACITY,
        per_request: int = CONTEXT_TEXTS_PER_REQUEST,
        instructions_every: int = INSTRUCTIONS_EVERY,
        few_shot_turns: int = FEW_SHOT_TURNS,
        salt: bytes | None = None,
    ):
        for name, value, least in (
            ("capacity", capacity, 1),
            ("per request", per_request, 0),
            ("instructions every", instructions_every, 1),
            ("few-shot turns", few_shot_turns, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"sent texts: {name} must be an integer >= {least}; got {value!r}")
        self.capacity = capacity
        self.per_request = per_request
        self.instructions_every = instructions_every
        self.few_shot_turns = few_shot_turns
        self.observed_context = 0
        self.skipped = 0
        # keys are salted per process, so which new turns a request's sample takes cannot be
        # steered (a fixed ``salt`` makes it reproducible, for tests)
        self._salt = secrets.token_bytes(16) if salt is None else bytes(salt)[:64]
        self._keys: OrderedDict[bytes, None] = OrderedDict()
        # per account: [requests remembered, the request count when an instruction was last observed]
        self._clocks: OrderedDict[str, list[int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def _key(self, account: str, kind: str, text: str) -> bytes:
        raw = f"{len(account)}:{account}\0{kind}\0{text}".encode("utf-8", "surrogatepass")
        return hashlib.blake2b(raw, key=self._salt, digest_size=12).digest()

    def pick(self, account: str, request: RequestTexts, max_chars: int | None = None) -> PickedTexts:
        """The texts of ``request`` to observe, each cut to ``max_chars``: new instructions (one,
        when the account's is due), new earlier turns (at most ``per_request``, sampled), then
        the prompt. Marks nothing as sent; the texts it knows are touched."""

        def cut(text: str) -> str:
            return text if max_chars is None else cut_middle(text, max_chars)

        new_turns: dict[bytes, str] = {}
        new_instructions: dict[bytes, str] = {}
        prompt = None if request.prompt is None else cut(request.prompt)
        prompt_key = None if prompt is None else self._key(account, "turn", prompt)
        with self._lock:
            for text in map(cut, request.instructions):
                key = self._key(account, "instruction", _DIGITS.sub("0", text))
                if key in self._keys:
                    self._keys.move_to_end(key)
                else:
                    new_instructions[key] = text
            new_answered: dict[bytes, str] = {}
            # unanswered first: a text sent both ways is an unanswered one (observed)
            for texts, new in ((request.context, new_turns), (request.answered, new_answered)):
                for text in map(cut, texts):
                    key = self._key(account, "turn", text)
                    if key in self._keys:
                        self._keys.move_to_end(key)
                    elif key != prompt_key and key not in new_turns:
                        new[key] = text  # a text sent twice in one request is observed once
            sent_before = prompt_key is not None and prompt_key in self._keys
            if len(new_answered) > self.few_shot_turns or sent_before:  # a history to read
                new_turns = {**new_answered, **new_turns}
            clock = self._clocks.get(account)
            due = clock is None or clock[0] - clock[1] >= self.instructions_every
        chosen: list[bytes] = [min(new_instructions)] if new_instructions and due else []
        sample = sorted(new_turns)[: self.per_request]  # salted keys: a random sample
        skipped = len(new_turns) - len(sample)
        sampled = set(sample)
        chosen += [key for key in new_turns if key in sampled]  # in the request's order
        texts = [new_instructions.get(key) or new_turns[key] for key in chosen]
        if prompt is not None and prompt_key is not None:  # (both or neither)
            texts.append(prompt)
            chosen.append(prompt_key)
        instruction = bool(new_instructions) and due
        return PickedTexts(account, tuple(texts), tuple(chosen), prompt is not None, instruction, skipped)

    def remember(self, picked: PickedTexts) -> None:
        """Mark ``picked``'s texts as sent by its account (call once they are accepted)."""
        with self._lock:
            for key in picked.keys:
                self._keys[key] = None
                self._keys.move_to_end(key)
            while len(self._keys) > self.capacity:
                self._keys.popitem(last=False)
            clock = self._clocks.setdefault(picked.account, [0, -self.instructions_every])
            self._clocks.move_to_end(picked.account)
            if picked.instruction:
                clock[1] = clock[0]
            clock[0] += 1
            while len(self._clocks) > self.capacity:
                self._clocks.popitem(last=False)
            self.skipped += picked.skipped
            self.observed_context += picked.n_context

    def texts_to_observe(self, account: str, request: RequestTexts, max_chars: int | None = None) -> list[str]:
        """:meth:`pick`, then :meth:`remember`: for callers that observe what they pick."""
        picked = self.pick(account, request, max_chars)
        self.remember(picked)
        return list(picked.texts)

    def reset(self) -> None:
        """Forget every account's texts (each account's next request observes its context again)."""
        with self._lock:
            self._keys.clear()
            self._clocks.clear()


def max_prompt_chars(engine_or_config: Any) -> int | None:
    """The longest prompt ``engine_or_config`` (an Engine or an EngineConfig) takes; None when
    it does not say (an engine stand-in)."""
    config = getattr(engine_or_config, "config", engine_or_config)
    value = getattr(config, "max_prompt_chars", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def texts_to_observe(
    sent: SentTexts | None, account: str, request: RequestTexts, max_chars: int | None = None
) -> list[str]:
    """What to observe for ``request``: as :meth:`SentTexts.texts_to_observe`, or only its
    prompt where context is not observed (``sent`` is None)."""
    if sent is not None:
        return sent.texts_to_observe(account, request, max_chars)
    if request.prompt is None:
        return []
    return [request.prompt if max_chars is None else cut_middle(request.prompt, max_chars)]
