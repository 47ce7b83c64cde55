"""Shared templates: the fixed frame around a prompt's varying payload.

Extraction campaigns wrap each payload (a dataset item, a question to harvest reasoning
for) in the same instruction: "Think step by step ... {q}", "{q} Explain your thought
process ...", "Plan the browser actions to: {x}. List each click". Whatever the payload,
the frame's ends stay fixed, so the first and last few words of a long enough prompt (its
*anchors*) identify the frame. Two accounts that send prompts with one anchor use one
template; how much that means is left to group judging (:mod:`.scoring`): a popular
framework's default prompt is shared by thousands of unrelated users.

Only prompts long enough to hold a payload between the anchors get them: a short prompt's
"anchor" would be the whole prompt, and exact repeats of short prompts ("thanks",
"continue") are shared by everybody.

>>> [label for _, label in template_anchors("Think step by step and show your reasoning. What is 17 * 23 exactly?")]
['think step by step and show', 'is # * # exactly ?']
>>> template_anchors("hello there")
[]
"""

from __future__ import annotations

import hashlib
import re

ANCHOR_TOKENS = 6
# An anchored prompt holds at least this many tokens besides its two anchors (the payload).
MIN_PAYLOAD_TOKENS = 2
MIN_ANCHORED_TOKENS = 2 * ANCHOR_TOKENS + MIN_PAYLOAD_TOKENS

# Words and single punctuation marks; tags such as <thinking> become "<", "thinking", ">".
_TOKEN = re.compile(r"\w+|[^\w\s]")
_DIGITS = re.compile(r"\d+")


def tokens(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens, every run of digits as ``#``."""
    return _TOKEN.findall(_DIGITS.sub("#", text.lower()))


def anchor_key(position: str, words: list[str]) -> str:
    digest = hashlib.blake2b(" ".join(words).encode("utf-8"), digest_size=8).hexdigest()
    return f"template:{position}:{digest}"


def template_anchors(text: str) -> list[tuple[str, str]]:
    """``[(key, anchor words)]`` for the prompt's head and tail anchors; empty when the
    prompt is too short to carry a payload between them."""
    words = tokens(text)
    if len(words) < MIN_ANCHORED_TOKENS:
        return []
    head, tail = words[:ANCHOR_TOKENS], words[-ANCHOR_TOKENS:]
    return [(anchor_key("head", head), " ".join(head)), (anchor_key("tail", tail), " ".join(tail))]
