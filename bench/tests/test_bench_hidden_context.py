"""bench.hidden_context builds what it says: attackers whose queries sit in each request's
context, honest chats that resend their system prompt and history; and the integrations'
reading of both observes what the benchmark counts."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest

from bench.hidden_context import (
    APP_REQUESTS,
    ASKS,
    PLACEMENTS,
    flagged_share,
    hiding_accounts,
    honest_accounts,
    honest_app_accounts,
)
from bench.traffic import attacks
from probewatch.integrations.context import SentTexts
from probewatch.integrations.prompts import chat_texts


@pytest.fixture(scope="module")
def pools():
    return attacks.build_attack_pools(random.Random(0), 400, 0)


def test_hidden_queries_sit_in_made_up_turns_or_a_system_list_under_a_harmless_last_message(pools):
    args = SimpleNamespace(attackers=2, requests=3, hidden=10)
    turns = ["How do I water a cactus?", "Is rye bread healthy?"]
    for placement in PLACEMENTS:
        accounts = hiding_accounts("corpus_sentences", placement, pools, turns, args, random.Random(1))
        assert len(accounts) == 2 and all(len(requests) == 3 for requests in accounts)
        for requests in accounts:
            sent = SentTexts()
            prompts: set[str] = set()
            for r, messages in enumerate(requests):
                request = chat_texts(messages)
                assert any(request.prompt.endswith(ask) for ask in ASKS)
                hidden = {"turns": request.context, "answered turns": request.answered}.get(
                    placement, request.instructions
                )
                assert len(hidden) == {"turns": 10, "answered turns": 8}.get(placement, 1)
                observed = sent.texts_to_observe("a", request)
                # examples' worth of answered turns are read only under a last message sent before
                # (the engine does not judge that one again); a system list is sampled
                read = placement == "turns" or (placement == "system list" and r == 0)
                if read or (placement == "answered turns" and request.prompt in prompts):
                    assert observed == [*hidden, request.prompt]  # every hidden turn is new
                else:
                    assert observed == [request.prompt]
                prompts.add(request.prompt)


def test_honest_chats_resend_their_history_and_observe_each_turn_once():
    conversations = [[f"conversation {c}, turn {t}?" for t in range(7)] for c in range(8)]
    accounts = honest_accounts(conversations, 3, random.Random(2))
    for requests in accounts:
        systems = {messages[0]["content"] for messages in requests}
        assert len(systems) == 1 and requests[0][0]["role"] == "system"
        sent, observed = SentTexts(), []
        for messages in requests:
            observed += sent.texts_to_observe("a", chat_texts(messages))
        users = [m["content"] for messages in requests for m in messages[-1:]]
        assert observed == [*systems, *users]  # the system prompt once, each user turn once


def test_flagged_share_counts_what_each_mode_observes():
    """Texts observed per mode on a toy account: the system prompt once with context, and once
    more after the halfway restart."""
    rows: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)

    def vectors_of(texts):
        for t in texts:
            rows.setdefault(t, rng.normal(size=384).astype(np.float32))
        return np.stack([rows[t] for t in texts])

    conversations = [[f"turn {t} of chat {c} about sourdough starters?" for t in range(8)] for c in range(6)]
    requests = honest_accounts(conversations, 1, random.Random(3))[0][:8]  # one conversation's 8 turns
    counts = {mode: flagged_share([requests], vectors_of, mode)[2] for mode in ("prompt", "context", "restart")}
    assert counts["prompt"] == 8 and counts["context"] == 9
    # at request 4 the memory is lost: the system prompt again; turns 0-3 are answered, as
    # few as an app's examples, so they are not read again
    assert counts["restart"] == 9 + 1


def test_honest_apps_send_examples_as_answered_turns_and_passages_as_their_own_message():
    turns = [f"user turn number {i}?" for i in range(80)]
    passages = [f"passage {i} " + "text " * 80 for i in range(10)]
    few_shot = honest_app_accounts("few-shot", turns, passages, 2, random.Random(4))
    rag = honest_app_accounts("rag message", turns, passages, 2, random.Random(4))
    assert all(len(requests) == APP_REQUESTS for requests in few_shot + rag)
    sent = SentTexts()
    known: set[str] = set()  # the texts observed so far (prompts and examples alike)
    read_examples = 0
    for r, messages in enumerate(few_shot[0]):
        request = chat_texts(messages)
        assert len(request.answered) == 4 and not request.context
        observed = sent.texts_to_observe("app", request)
        # examples are read only when the question is one the account sent before, each once
        examples = [t for t in request.answered if t not in known and t != request.prompt]
        examples = examples if request.prompt in known else []
        assert observed == ([*request.instructions] if r == 0 else []) + examples + [request.prompt]
        known.update([*examples, request.prompt])
        read_examples += len(examples)
    assert read_examples < 4 * APP_REQUESTS / 2
    for messages in rag[0]:
        request = chat_texts(messages)
        assert len(request.context) == 1 and request.context[0].startswith("Use these passages:")
