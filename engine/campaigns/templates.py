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
# A long prompt's anchors are read from this many characters at each end, not from all of it
# (prompts may be 200,000 characters; the anchors are twelve tokens).
EDGE_CHARS = 256
# Tokens an end window must hold: those before its cut are the whole text's own, and they
# must give the anchor and, with the other end's, the tokens an anchored prompt needs.
_EDGE_TOKENS = max(ANCHOR_TOKENS, -(-MIN_ANCHORED_TOKENS // 2)) + 1


def _tokens_of_lowered(low: str) -> list[str]:
    return _TOKEN.findall(_DIGITS.sub("#", low))


def tokens(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens, every run of digits as ``#``."""
    return _tokens_of_lowered(text.lower())


def anchor_key(position: str, words: list[str]) -> str:
    digest = hashlib.blake2b(" ".join(words).encode("utf-8"), digest_size=8).hexdigest()
    return f"template:{position}:{digest}"


def template_anchors(text: str) -> list[tuple[str, str]]:
    """``[(key, anchor words)]`` for the prompt's head and tail anchors; empty when the
    prompt is too short to carry a payload between them."""
    low = text.lower()  # all of it: lower-casing a capital sigma looks at its neighbours
    if len(low) > 2 * EDGE_CHARS:
        # Only the token a window's cut falls in can differ from the whole text's tokens, so
        # a window's tokens before (after) its cut are the text's first (last) ones.
        head, tail = _tokens_of_lowered(low[:EDGE_CHARS]), _tokens_of_lowered(low[-EDGE_CHARS:])
        if len(head) >= _EDGE_TOKENS and len(tail) >= _EDGE_TOKENS:
            return _anchors(head[:ANCHOR_TOKENS], tail[-ANCHOR_TOKENS:])
    words = _tokens_of_lowered(low)
    if len(words) < MIN_ANCHORED_TOKENS:
        return []
    return _anchors(words[:ANCHOR_TOKENS], words[-ANCHOR_TOKENS:])


def _anchors(head: list[str], tail: list[str]) -> list[tuple[str, str]]:
    return [(anchor_key("head", head), " ".join(head)), (anchor_key("tail", tail), " ".join(tail))]
