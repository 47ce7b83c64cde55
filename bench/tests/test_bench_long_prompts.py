"""bench.long_prompts builds what it says: benign apps whose prompts share a frame longer than
the model's window, each ending in a request of its own."""

from __future__ import annotations

import random

from bench.long_prompts import AGENT_FRAME, agent_accounts, dated, few_shot_frame_and_inputs
from probewatch.backend.embedder import bundled_model_path
from probewatch.detect.boilerplate import read_texts


def token_count(text: str) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(bundled_model_path()))(text)["input_ids"])


def test_the_agent_frame_is_longer_than_the_window_and_each_account_is_one_users_requests():
    assert token_count(AGENT_FRAME) > 256  # cut at its end, every prompt of the app is one vector
    accounts = agent_accounts(random.Random(0), 3, 20)
    assert [len(a) for a in accounts] == [20, 20, 20]
    assert not set(accounts[0]) & set(accounts[1])  # no request shared between accounts
    assert all(r.strip() for a in accounts for r in a)


def test_the_few_shot_frame_holds_labelled_examples_and_the_inputs_are_new():
    frame, inputs = few_shot_frame_and_inputs(random.Random(0))
    lines = frame.splitlines()
    examples = [line.removeprefix("Utterance: ") for line in lines[:-1] if line.startswith("Utterance: ")]
    labels = [line.removeprefix("Intent: ") for line in lines if line.startswith("Intent: ")]
    assert len(examples) == len(labels) >= 10 and lines[-1] == "Utterance: "
    assert not set(examples) & set(inputs)
    assert len(inputs) > 1000


def test_the_dated_agent_app_opens_each_prompt_differently_and_keeps_the_frame():
    prompts = [dated(3, k, "What is on my calendar?") for k in range(60)]
    assert len({p.split("\n", 1)[0] for p in prompts}) == 60  # no two first lines alike
    assert all(AGENT_FRAME + "What is on my calendar?" in p for p in prompts)
    assert dated(3, 0, "x") != dated(4, 0, "x")  # each account its own user
    # the engine reads each later prompt as its request alone: the time line is left out with the frame
    requests = ["Tell me about dogs.", "Tell me about the moon.", "What is 12 + 30?"]
    read = read_texts([dated(3, k, r) for k, r in enumerate(requests)])
    assert [text.strip() for text in read[1:]] == requests[1:]
