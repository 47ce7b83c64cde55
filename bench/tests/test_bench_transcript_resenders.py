"""bench.transcript_resenders builds what it says: accounts of growing transcripts, each prompt
repeating the last one of its conversation and adding a turn, which the engine marks."""

from __future__ import annotations

import numpy as np

from bench.transcript_resenders import transcript_accounts
from probewatch.detect.features import CONTINUES, FRESH, AccountState, QueryFacts


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
        expected = np.where(np.isin(np.arange(len(prompts)), starts), FRESH, CONTINUES)
        # a turn shorter than the minimum addition is not a continuation
        added = [len(p) - len(prompts[i - 1]) if i not in starts else 0 for i, p in enumerate(prompts)]
        assert all(m == e or (e == CONTINUES and a < 8) for m, e, a in zip(marks, expected, added, strict=True))
