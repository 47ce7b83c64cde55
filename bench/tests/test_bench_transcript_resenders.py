"""bench.transcript_resenders builds what it says: accounts of growing transcripts, each prompt
repeating the last one of its conversation and adding a turn, which the engine marks."""

from __future__ import annotations

import re

from bench.transcript_resenders import transcript_accounts
from probewatch.detect.features import AccountState, QueryFacts
from probewatch.detect.prompt_memory import CONTINUATION_MIN_ADDED, CONTINUES, FRESH


def test_each_account_is_conversations_sent_as_growing_transcripts():
    accounts = transcript_accounts(5, seed=3)
    assert len(accounts) == 5
    for prompts in accounts:
        starts = [i for i, p in enumerate(prompts) if i == 0 or not p.startswith(prompts[i - 1])]
        assert 3 <= len(starts) <= 6  # one start per conversation
        for i in range(1, len(prompts)):
            if i not in starts:
                assert prompts[i].startswith(prompts[i - 1] + "\n\n")
        state = AccountState(128, 4)
        marks = []
        for text in prompts:
            marks.append(state.note_prompt(text)[0])
            state.update(QueryFacts(0.5, 0.5, 0.5, 0.5, 0, marks[-1]), None)
        # every turn continues the transcript before it, but a turn shorter than the minimum
        # addition (then it may continue an older prompt), and a turn the user added before
        # (asked again, as people do; case, spacing and digits aside), which is judged as
        # an edit (0.15.0)
        added = [
            " ".join(re.sub("[0-9]+", "0", p[len(prompts[i - 1]) :].lower()).split()) if i not in starts else ""
            for i, p in enumerate(prompts)
        ]
        for i, mark in enumerate(marks):
            if i in starts:
                assert mark == FRESH
            elif mark != CONTINUES:
                short = len(prompts[i]) - len(prompts[i - 1]) < CONTINUATION_MIN_ADDED
                assert short or added[i] in added[:i]
        assert marks.count(CONTINUES) >= 0.9 * (len(prompts) - len(starts))
