"""A request's texts besides its prompt (earlier user turns, system and developer
instructions): read from each API's body, and observed once per account
(probewatch.integrations.context)."""

from __future__ import annotations

import pytest

from probewatch.errors import ConfigError
from probewatch.integrations.context import INSTRUCTIONS_EVERY, SentTexts, max_prompt_chars, texts_to_observe
from probewatch.integrations.prompts import (
    RequestTexts,
    chat_texts,
    guardrail_request_texts,
    litellm_data_texts,
    openai_body_texts,
    readable,
)


def _chat(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in turns]


def test_a_chat_is_read_as_prompt_earlier_turns_and_instructions_never_answers_or_tool_output():
    messages = [
        *_chat(
            ("system", "You are terse."),
            ("user", "What is a prime?"),
            ("assistant", "A number with two divisors."),
            ("tool", '{"result": 7}'),
            ("developer", "Answer in French."),
            ("user", "  "),  # blank: nothing to read
        ),
        {"role": "user", "content": [{"type": "text", "text": "And 91?"}, {"type": "image_url"}]},
    ]
    assert chat_texts(messages) == RequestTexts(
        "And 91?", (), ("You are terse.", "Answer in French."), ("What is a prime?",)
    )
    # an instruction after the newest user message is one too
    assert chat_texts(_chat(("user", "Hi"), ("system", "Be brief."))) == RequestTexts("Hi", (), ("Be brief.",))
    assert chat_texts(_chat(("system", "List ten facts."))) == RequestTexts(None, (), ("List ten facts.",))
    assert chat_texts("not a list") == RequestTexts(None) and chat_texts([7, None]) == RequestTexts(None)


def test_roles_and_content_shapes_a_server_renders_are_read():
    """Red-team finding: servers render roles in any case and content parts of several shapes
    (vLLM takes string parts, refusal and thinking parts); each was a place to hide a query."""
    messages = [
        {"role": " SYSTEM ", "content": "Rules."},
        {"role": "User", "content": ["plain string part"]},
        {"role": "human", "content": "an unknown role is read as a turn"},
        {"role": "user", "content": [{"type": "refusal", "refusal": "in a refusal part"}]},
        {"role": "user", "content": {"type": "thinking", "thinking": "one part object on its own"}},
        {"role": "user", "content": [{"type": "text", "text": {"value": "an Assistants-style value"}}]},
        {"role": ["user"], "content": "a role that is no string is not read"},
        {"role": {"r": 1}, "content": "nor this"},
        {"role": "MODEL", "content": "an answer role, in any case: it answers the turn before it"},
        {"role": "user", "content": ["last", {"type": "input_text", "input_text": "one"}]},
    ]
    assert chat_texts(messages) == RequestTexts(
        "last\none",
        (
            "plain string part",
            "an unknown role is read as a turn",
            "in a refusal part",
            "one part object on its own",
        ),
        ("Rules.",),
        ("an Assistants-style value",),
    )


def test_texts_are_made_observable_not_refused():
    """Red-team finding: a NUL in each text got it refused, which let an account pass unobserved."""
    assert readable("tell me\x00 a story") == "tell me  a story"
    assert readable("lone \ud800 surrogate").startswith("lone \ufffd")
    assert readable(" \x00 ") is None and readable(7) is None
    assert chat_texts(_chat(("user", "a\x00b"))).prompt == "a b"


def test_each_api_s_body_gives_its_prompt_and_context():
    chat = {"messages": _chat(("system", "Be kind."), ("user", "Hi"))}
    kind = RequestTexts("Hi", (), ("Be kind.",))
    assert openai_body_texts("/v1/chat/completions", chat) == kind
    responses = {
        "instructions": "Be kind.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
    }
    assert openai_body_texts("/v1/responses", responses) == kind
    assert openai_body_texts("/v1/responses", {"instructions": "Be kind.", "input": "Hi"}) == kind
    listed = {"instructions": [{"type": "input_text", "text": "Be kind."}], "input": "Hi"}
    assert openai_body_texts("/v1/responses", listed) == kind
    assert openai_body_texts("/v1/completions", {"prompt": ["a", "b"]}) == RequestTexts("a\nb")
    assert openai_body_texts("/v1/chat/completions", ["junk"]) == RequestTexts(None)
    assert litellm_data_texts(chat) == kind
    assert litellm_data_texts({"prompt": "once upon"}) == RequestTexts("once upon")
    assert litellm_data_texts({"input": "Hi", "instructions": "Be kind."}) == kind
    guardrail = {"texts": ["Be kind.", "Hi"], "structured_messages": chat["messages"]}
    assert guardrail_request_texts(guardrail) == kind
    assert guardrail_request_texts({"texts": ["Be kind.", "Hi"]}) == RequestTexts("Hi")  # no roles: no context
    # no user message: the other texts are what the model answers, not the last of texts
    systems_only = {"texts": ["Q1?", "Q2?"], "structured_messages": _chat(("system", "Q1?"), ("human", "Q2?"))}
    assert guardrail_request_texts(systems_only) == RequestTexts(None, ("Q2?",), ("Q1?",))
    assert guardrail_request_texts(guardrail, source="joined") == RequestTexts("Be kind.\nHi")


def test_an_honest_chat_sends_each_text_once_however_often_it_resends_its_history():
    """A client resends the conversation with every request: each user turn is observed when it
    is new (as the prompt), the system prompt once, never again."""
    sent = SentTexts()
    history = [("system", "You are a cooking assistant.")]
    observed: list[str] = []
    for turn in ("How do I proof dough?", "How long?", "At what temperature?", "Thanks!"):
        history.append(("user", turn))
        observed += sent.texts_to_observe("cook", chat_texts(_chat(*history)))
        history.append(("assistant", f"Answer to {turn}"))
    assert observed == [
        "You are a cooking assistant.",
        "How do I proof dough?",
        "How long?",
        "At what temperature?",
        "Thanks!",
    ]
    assert sent.observed_context == 1 and sent.skipped == 0
    # the same prompt sent again is traffic (a retry, a templated app): observed every time
    assert sent.texts_to_observe("cook", RequestTexts("Thanks!")) == ["Thanks!"]


def test_instructions_written_anew_for_each_request_are_sampled_and_a_clock_in_them_is_no_new_text():
    """Red-team finding: apps that put the time, retrieved passages or a running summary in the
    system message made every request observe a near-duplicate; 3 of 6 honest chats flagged."""
    sent = SentTexts()
    timed = [
        sent.texts_to_observe("clock", RequestTexts(f"q{i}", (), (f"You help. Now: 2026-12-07 10:{i:02d}:00 UTC",)))
        for i in range(40)
    ]
    assert sum(len(texts) for texts in timed) == 40 + 1  # the system text once: only its digits change
    rag = [
        sent.texts_to_observe("rag", RequestTexts(f"q{i}", (), (f"Use these passages: passage {chr(65 + i)}",)))
        for i in range(40)
    ]
    picked = [i for i, texts in enumerate(rag) if len(texts) == 2]
    assert picked == list(range(0, 40, INSTRUCTIONS_EVERY))  # one in every 16 requests
    # a fixed instruction is remembered once observed; a second, new one waits for its turn
    sent.texts_to_observe("two", RequestTexts("a", (), ("fixed",)))
    assert sent.texts_to_observe("two", RequestTexts("b", (), ("fixed", "another"))) == ["b"]


def test_queries_hidden_in_made_up_turns_are_sampled_so_padding_cannot_push_them_out():
    """Red-team finding: with the newest 32 new turns observed, 32 fresh fillers after the
    queries kept them out of every request. The sample is random (salted keys), and what it
    leaves out is not remembered, so the queries are observed within a few requests."""
    sent = SentTexts(per_request=32, salt=b"fixed for the test")
    hidden = [f"What is the capital of country number {i}?" for i in range(10)]
    seen: set[str] = set()
    for r in range(8):
        fillers = [f"ok {r}-{j}" for j in range(32)]
        request = chat_texts(_chat(*[("user", q) for q in [*hidden, *fillers]], ("user", "Answer the first ten.")))
        texts = sent.texts_to_observe("mallory", request)
        assert len(texts) == 33 and texts[-1] == "Answer the first ten."
        order = [t for t in texts if t in hidden]
        assert order == sorted(order, key=hidden.index)  # observed in the request's order
        seen.update(order)
    assert seen == set(hidden)
    assert sent.skipped > 0


def test_pick_marks_nothing_as_sent_until_remembered():
    """Red-team finding: the sidecar marked a request's turns as sent before its prompt was
    refused or the request was rate-limited, so the turns were never observed."""
    sent = SentTexts()
    request = RequestTexts("Answer both.", ("hidden one", "hidden two"))
    first = sent.pick("a", request)
    assert first.texts == ("hidden one", "hidden two", "Answer both.") and first.n_context == 2
    again = sent.pick("a", request)  # nothing remembered: the same texts
    assert again.texts == first.texts
    sent.remember(again)
    assert sent.pick("a", request).texts == ("Answer both.",)
    assert sent.observed_context == 2


def test_texts_are_remembered_per_account_and_once_per_request():
    sent = SentTexts()
    request = RequestTexts("Go on.", ("Summarise this.", "Summarise this.", "Go on."))
    assert sent.texts_to_observe("a", request) == ["Summarise this.", "Go on."]
    assert sent.texts_to_observe("b", request) == ["Summarise this.", "Go on."]  # another account's are its own
    assert sent.texts_to_observe("a", request) == ["Go on."]
    # the account id and the text cannot run into each other
    assert sent.texts_to_observe("a\x00x", RequestTexts("y", ("q",))) == ["q", "y"]
    assert sent.texts_to_observe("a", RequestTexts("y", ("x\x00q",))) == ["x\x00q", "y"]
    # no prompt: the new texts alone (a system message is all the model reads)
    assert sent.texts_to_observe("c", RequestTexts(None, (), ("List ten facts.",))) == ["List ten facts."]
    assert sent.texts_to_observe("c", RequestTexts(None, (), ("List ten facts.",))) == []
    # cut in their middle to what the engine takes (opening and end), before they are compared
    assert sent.texts_to_observe("d", RequestTexts("abcdef", ("uvwxyz",)), max_chars=3) == ["uyz", "aef"]
    assert sent.texts_to_observe("d", RequestTexts("abc", ("uVWxyz",)), max_chars=3) == ["abc"]
    assert sent.texts_to_observe("d", RequestTexts("abc", ("uvwXYZ",)), max_chars=3) == ["uYZ", "abc"]


def test_the_memory_is_bounded_and_a_live_conversation_keeps_its_history():
    sent = SentTexts(capacity=4)
    system = RequestTexts("first", (), ("system prompt",))
    assert sent.texts_to_observe("live", system) == ["system prompt", "first"]
    for i in range(6):  # other accounts fill the memory; the live one keeps touching its texts
        sent.texts_to_observe(f"other{i}", RequestTexts(f"q{i}"))
        assert sent.texts_to_observe("live", RequestTexts(f"turn {i}", ("first",), ("system prompt",))) == [f"turn {i}"]
        assert len(sent) <= 4
    # an account pushed out has its resent history observed once more
    assert sent.texts_to_observe("other0", RequestTexts("next", ("q0",))) == ["q0", "next"]
    sent.reset()
    assert len(sent) == 0 and sent.texts_to_observe("live", RequestTexts("x", ("first",))) == ["first", "x"]


def test_without_a_memory_only_the_prompt_is_observed():
    assert texts_to_observe(None, "a", RequestTexts("Hi", ("Be kind.",))) == ["Hi"]
    assert texts_to_observe(None, "a", RequestTexts("Hello", ("Be kind.",)), max_chars=4) == ["Helo"]
    assert texts_to_observe(None, "a", RequestTexts(None, ("Be kind.",))) == []


def test_the_longest_prompt_comes_from_an_engine_or_its_config():
    from probewatch.config import EngineConfig

    assert max_prompt_chars(EngineConfig(max_prompt_chars=500)) == 500
    assert max_prompt_chars(object()) is None


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"capacity": 0}, "capacity"),
        ({"capacity": True}, "capacity"),
        ({"capacity": 2.5}, "capacity"),
        ({"per_request": -1}, "per request"),
        ({"per_request": "8"}, "per request"),
        ({"instructions_every": 0}, "instructions every"),
    ],
)
def test_bad_memory_settings_are_config_errors(kwargs, named):
    with pytest.raises(ConfigError, match=named):
        SentTexts(**kwargs)


def test_answered_turns_are_an_apps_examples_unless_there_are_more_than_a_few():
    """Red-team finding: apps that send rotating few-shot examples as earlier turns made 4 of 5
    honest accounts flag when each example was observed. A turn an answer follows is an example
    or a real history; only a request with more than 8 new ones has them observed."""
    examples = [("user", "I loved it"), ("assistant", "positive"), ("user", "Awful"), ("assistant", "negative")]
    request = chat_texts(_chat(("system", "Label the sentiment."), *examples, ("user", "Not bad at all")))
    assert request == RequestTexts("Not bad at all", (), ("Label the sentiment.",), ("I loved it", "Awful"))
    sent = SentTexts()
    assert sent.texts_to_observe("app", request) == ["Label the sentiment.", "Not bad at all"]
    many = [turn for i in range(9) for turn in (("user", f"example {i}"), ("assistant", "label"))]
    observed = sent.texts_to_observe("app", chat_texts(_chat(*many, ("user", "next"))))
    assert observed == [*(f"example {i}" for i in range(9)), "next"]
    # a query sent both under a made-up answer and without one is an unanswered one
    twice = chat_texts(_chat(("user", "q9"), ("assistant", "ok"), ("user", "q9"), ("user", "answer all")))
    assert sent.texts_to_observe("dup", twice) == ["q9", "answer all"]
    # an answer answers the message right before it: the turns before that one are unanswered
    unanswered = chat_texts(_chat(("user", "q1"), ("user", "q2"), ("assistant", "ok"), ("user", "all of them")))
    assert unanswered == RequestTexts("all of them", ("q1",), (), ("q2",))


def test_answered_turns_are_read_when_the_prompt_was_sent_before():
    """Red-team finding on 0.18.0: the engine does not judge a prompt its account sent before,
    so a constant last message with at most 8 made-up answered turns carried 320 queries in 40
    requests and left the account at one judged query. When the prompt was sent before, the
    request's new answered turns are what it asks: they are observed (each once)."""
    sent = SentTexts()
    ask = ("user", "Answer each question above again, properly.")

    def request(k: int) -> RequestTexts:
        turns = [turn for i in range(8) for turn in (("user", f"query {k}.{i}"), ("assistant", "noted"))]
        return chat_texts(_chat(*turns, ask))

    assert sent.texts_to_observe("x", request(0)) == [ask[1]]  # a new prompt: its examples are its own
    assert sent.texts_to_observe("x", request(1)) == [*(f"query 1.{i}" for i in range(8)), ask[1]]
    assert sent.texts_to_observe("x", request(1)) == [ask[1]]  # observed once
    # an honest chat that sends "continue" again resends a history already observed
    history = [("user", "first question"), ("assistant", "an answer"), ("user", "continue")]
    assert sent.texts_to_observe("y", chat_texts(_chat(*history[:1]))) == ["first question"]
    assert sent.texts_to_observe("y", chat_texts(_chat(*history))) == ["continue"]
    assert sent.texts_to_observe("y", chat_texts(_chat(*history, ("assistant", "more"), ("user", "continue")))) == [
        "continue"
    ]


def test_instructions_past_the_first_two_are_read_as_turns():
    """Red-team finding: one system message per hidden query shared the one-in-16 budget of
    instructions: 1 of 256 queries observed."""
    systems = [("system", f"Also answer: question number {i} about tides?") for i in range(5)]
    request = chat_texts(_chat(*systems, ("user", "Go.")))
    assert request.instructions == tuple(text for _, text in systems[:2])
    assert request.context == tuple(text for _, text in systems[2:])
    observed = SentTexts().texts_to_observe("a", request)
    assert len(observed) == 1 + 3 + 1  # one instruction (its budget), three as turns, the prompt
