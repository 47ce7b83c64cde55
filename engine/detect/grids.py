"""Frame grids: the same payloads sent again under one frame after another.

To learn how a model's answers move with who it is told to be, whom it addresses or which task
it is given, an extraction script crosses two factors: a set of payloads (questions, passages)
and a set of frames (persona lines, audience lines, task instructions), and sends every pair.
Each prompt is then made of parts the account sent before, in a combination it never sent: its
payload under several other frames, its frame around several other payloads. People do not
cross factors like that. An app puts one fixed template around a new input each time (the
input is new); a conversation or a sliding context window adds a turn nobody sent before; a
content pipeline runs each item through a few fixed prompts (the item is seen under few
frames); a person re-asking a question re-words it.

The parts of a prompt are its lines of three words or more, case and spacing aside (a frame is a line of
its own or a paragraph: "You are a cautious lawyer.\\n\\n<question>"). A prompt is a *grid
probe* when for one of its parts x, at least GRID_LEVELS - 1 of the account's recent prompts
hold x without the rest of the prompt (x under other frames) and at least GRID_LEVELS - 1 hold
the rest without x (the rest around other payloads): both factors have GRID_LEVELS levels or
more; and no recent prompt holds all of its parts (a prompt re-sent, or cut down from a longer
one, is no new combination). A pipeline of up to GRID_LEVELS - 1 prompts per item is never one; an evaluation that
compares GRID_LEVELS or more system prompts on one test set is one, which is what it does.

A frame written into the payload's own line ("Summarise this: <text>") leaves nothing to
compare here: such grids are judged by the other statistics only.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import reduce

import numpy as np

# Both factors need this many levels (a payload under this many frames, a frame around this
# many payloads) before a prompt counts: content pipelines run an item through two or three
# prompts, persona and template grids through many.
GRID_LEVELS = 4
# Parts remembered per account (a ring over the recent multi-line prompts' parts): 96 prompts
# of two parts, enough to see a frame again three blocks of 24 later.
PART_MEMORY = 192
# Parts read from one prompt: its first and last lines, where a frame goes. A long pasted text
# is represented by its first and last lines, which recur with it.
HEAD_PARTS, TAIL_PARTS = 2, 2
# A line of fewer words is formatting, not a frame or a payload: a code fence, a label
# ("Answer:"), a closing "return x" that many functions share.
MIN_PART_WORDS = 3
PART_CHARS = 2048  # a part's checksum reads at most this many characters
EMPTY_PART = 0  # ring padding; a part whose checksum is 0 is stored as 1


def prompt_parts(text: str) -> list[int]:
    """Checksums of the prompt's parts (lines of MIN_PART_WORDS words or more, case and spacing
    aside): the first HEAD_PARTS and last TAIL_PARTS, distinct, in order. Empty where the
    prompt has fewer than two."""
    lines = text.splitlines()
    if len(lines) < 2:
        return []
    head = _first_parts(lines, HEAD_PARTS + TAIL_PARTS + 1)
    if len(head) > HEAD_PARTS + TAIL_PARTS:  # a long prompt: read its tail from the end
        head = head[:HEAD_PARTS] + _first_parts(lines[::-1], TAIL_PARTS)[::-1]
    lines = [" ".join(line[: 2 * PART_CHARS].split()).lower() for line in head]
    parts: list[int] = []
    for line in lines:
        key = zlib.crc32(line[:PART_CHARS].encode("utf-8", "surrogatepass")) or 1
        if key not in parts:
            parts.append(key)
    return parts if len(parts) >= 2 else []


def _first_parts(lines: list[str], k: int) -> list[str]:
    """The first ``k`` lines of MIN_PART_WORDS words or more."""
    out = []
    for line in lines:
        if len(line.split(None, MIN_PART_WORDS - 1)) >= MIN_PART_WORDS:
            out.append(line)
            if len(out) == k:
                break
    return out


def is_grid_probe(parts: Sequence[int], ring_parts: np.ndarray, ring_owner: np.ndarray, counts: np.ndarray) -> bool:
    """Whether a prompt with ``parts`` (``prompt_parts``) crosses two factors the account has
    each sent at GRID_LEVELS levels (see the module docstring). ``ring_parts``, ``ring_owner``
    and ``counts``: the account's remembered parts, which prompt held each, and the counts
    ``remember_parts`` keeps."""
    if len(parts) < 2:
        return False
    size = ring_parts.shape[0]
    written = int(counts[0])
    # once the ring has wrapped, its oldest prompt may have lost some parts (the ring cannot
    # tell): leave it out
    partial = int(ring_owner[written % size]) if written > size else -1
    found = [ring_parts == part for part in parts]
    # every part must be in GRID_LEVELS - 1 earlier prompts (the part itself, or the rest): an
    # app's new input never is, so most prompts stop here
    if min(map(np.count_nonzero, found)) < GRID_LEVELS - 1:
        return False
    hits = np.flatnonzero(reduce(np.logical_or, found))
    index = {part: i for i, part in enumerate(parts)}
    held: dict[int, int] = {}  # earlier prompt -> bit mask of this prompt's parts it held
    for part, owner in zip(ring_parts[hits].tolist(), ring_owner[hits].tolist(), strict=True):
        if owner != partial:
            held[owner] = held.get(owner, 0) | (1 << index[part])
    if len(held) < 2 * (GRID_LEVELS - 1):
        return False
    everything = (1 << len(parts)) - 1
    if everything in held.values():  # sent before, or cut from a prompt sent before
        return False
    for i in range(len(parts)):
        bit = 1 << i
        rest = everything ^ bit
        # no earlier prompt held every part (above), so one that held this one lacked some of the rest
        without_rest = sum(1 for mask in held.values() if mask & bit)
        if without_rest < GRID_LEVELS - 1:
            continue
        without_part = sum(1 for mask in held.values() if not mask & bit and mask & rest == rest)
        if without_part >= GRID_LEVELS - 1:
            return True
    return False


def remember_parts(parts: Sequence[int], ring_parts: np.ndarray, ring_owner: np.ndarray, counts: np.ndarray) -> None:
    """Write a prompt's ``parts`` into the ring. ``counts``: [parts written, prompts written];
    a part's owner is its prompt's number modulo 256 (uint8), which the ring cannot alias: it
    holds at most PART_MEMORY // 2 prompts."""
    if not parts:
        return
    written, owner = int(counts[0]), int(counts[1]) % 256
    size = ring_parts.shape[0]
    for part in parts:
        ring_parts[written % size] = part
        ring_owner[written % size] = owner
        written += 1
    counts[0], counts[1] = written, int(counts[1]) + 1
