"""Frame grids: the same payloads sent again under one frame after another.

To learn how a model's answers move with who it is told to be, whom it addresses or which task
it is given, an extraction script crosses two factors: a set of payloads (questions, passages)
and a set of frames (persona lines, audience lines, task instructions), and sends every pair.
Each prompt is then made of parts the account sent before, in a combination it never sent: its
payload under several other frames, its frame around several other payloads. People do not
cross factors like that. An app puts one fixed template around a new input each time (the
input is new); a conversation or a sliding context window adds a turn nobody sent before; a
content pipeline runs each item through a few fixed prompts (the item is seen under few
frames); a person editing a prompt changes a sentence here and there, and retries it.

The parts of a prompt are its *segments*: its lines, cut again after each sentence and after a
colon ("Summarise this: <text>", "Context: <text>"), case, spacing and the quotes or
punctuation around them aside, kept where they have MIN_PART_WORDS words or more (a label, a
code fence or a closing "return x" is formatting, not a frame). A long prompt is read by its
first HEAD_PARTS and last TAIL_PARTS segments, where a frame goes.

A prompt is a *grid probe* when, for one of its parts x, at least GRID_LEVELS - 1 distinct
recent prompts of the account held x without all the rest of it (x under other frames) and at
least GRID_LEVELS - 1 distinct ones held all the rest without x (the rest around other
payloads); and no recent prompt held all of its parts (a prompt re-sent, or cut down from a
longer one, is no new combination). Recent prompts are told apart by their whole set of parts,
so a prompt retried three times is one level, not three. Both factors then have GRID_LEVELS
levels or more, whatever else the prompts share: a fixed wrapper around every prompt, or
worked examples that several frames have in common. A pipeline of up to GRID_LEVELS - 1
prompts per item is never a grid probe; an evaluation that compares GRID_LEVELS or more system
prompts on one test set is one, which is what it does.

A frame woven into the payload's own sentence ("As a pirate, why is the sky blue?") leaves
no part to compare: such grids are judged by the other statistics only.
"""

from __future__ import annotations

import re
import zlib
from array import array
from collections.abc import Sequence
from functools import reduce

import numpy as np

# Both factors need this many levels (a payload under this many frames, a frame around this
# many payloads) before a prompt counts: content pipelines run an item through two or three
# prompts, persona and template grids through many.
GRID_LEVELS = 4
# Parts remembered per account (a ring over the recent prompts' parts, each with a checksum of
# the whole set of parts of the prompt it came from): 128 prompts of two parts, or 42 of six.
# 0 marks an empty slot, so a checksum of 0 is stored as 1.
PART_MEMORY = 256
# Segments read from a prompt: its first and last ones, where a frame goes. A long pasted text
# is represented by its first and last sentences, which recur with it.
HEAD_PARTS, TAIL_PARTS = 3, 3
# A segment of fewer words is formatting, not a frame or a payload: a code fence, a label
# ("Answer:"), a closing "return x" that many functions share.
MIN_PART_WORDS = 3
PART_CHARS = 2048  # a part's checksum reads at most this many characters
TEXT_CHARS = 16384  # a prompt's head and tail are cut into segments from at most this many characters each
# where a segment ends: a sentence's end (a closing quote or bracket may follow it) or a colon,
# then whitespace; the punctuation goes with the break (a part is compared without it anyway)
_SEGMENT_END = re.compile(r"[.!?:][\"'\u201d\u2019)]?\s+")
_U32 = "I" if array("I").itemsize == 4 else "L"  # a C unsigned type of 4 bytes, as NumPy's uint32
_AROUND = " \t\"'`\u201c\u201d\u2018\u2019()[]{}<>*_-\u2013\u2014.,;:!?"  # quotes and punctuation around a segment


def _segments(lines: list[str], k: int, from_end: bool) -> list[str]:
    """The first (or last) ``k`` segments of MIN_PART_WORDS words or more, normalised."""
    out: list[str] = []
    for line in reversed(lines) if from_end else lines:
        pieces = _SEGMENT_END.split(line)
        for piece in reversed(pieces) if from_end else pieces:
            if len(piece.split(None, MIN_PART_WORDS - 1)) >= MIN_PART_WORDS:
                out.append(" ".join(piece[: 2 * PART_CHARS].split()).lower().strip(_AROUND))
                if len(out) == k:
                    return out[::-1] if from_end else out
    return out[::-1] if from_end else out


def prompt_parts(text: str) -> list[int]:
    """Checksums of the prompt's parts (see the module docstring): its first HEAD_PARTS and
    last TAIL_PARTS segments, distinct, in order. Empty where it has fewer than two."""
    if len(text) > 2 * TEXT_CHARS:
        head = _segments(text[:TEXT_CHARS].splitlines(), HEAD_PARTS, False)
        segments = head + _segments(text[-TEXT_CHARS:].splitlines(), TAIL_PARTS, True)
    else:
        lines = text.splitlines()
        segments = _segments(lines, HEAD_PARTS + TAIL_PARTS + 1, False)
        if len(segments) > HEAD_PARTS + TAIL_PARTS:  # a long prompt: read its tail from the end
            segments = segments[:HEAD_PARTS] + _segments(lines, TAIL_PARTS, True)
    parts: list[int] = []
    for segment in segments:
        key = zlib.crc32(segment[:PART_CHARS].encode("utf-8", "surrogatepass")) or 1
        if key not in parts:
            parts.append(key)
    return parts if len(parts) >= 2 else []


def parts_signature(parts: Sequence[int]) -> int:
    """A checksum of a prompt's whole set of parts: which recent prompt a remembered part came
    from, with prompts of the same parts (retries) as one."""
    # an array of sorted C unsigned ints gives NumPy's sorted uint32 bytes, without NumPy's call overhead
    return zlib.crc32(array(_U32, sorted(parts)).tobytes()) or 1


def is_grid_probe(parts: Sequence[int], ring_parts: np.ndarray, ring_owner: np.ndarray, written: int) -> bool:
    """Whether a prompt with ``parts`` (``prompt_parts``) crosses two factors the account has
    each sent at GRID_LEVELS levels (see the module docstring). ``ring_parts`` and
    ``ring_owner``: the account's remembered parts and the signature of the prompt each came
    from; ``written``: parts written so far."""
    if len(parts) < 2:
        return False
    # every part must be in GRID_LEVELS - 1 earlier prompts (the part itself, or all the rest):
    # an app's new input never is, so most prompts stop here, at their first new part
    found = []
    for part in parts:
        at = ring_parts == part
        if np.count_nonzero(at) < GRID_LEVELS - 1:
            return False
        found.append(at)
    size = ring_parts.shape[0]
    # once the ring has wrapped, its oldest prompt may have lost some parts (the ring cannot
    # tell): leave it out
    partial = int(ring_owner[written % size]) if written > size else -1
    hits = np.flatnonzero(reduce(np.logical_or, found))
    index = {part: i for i, part in enumerate(parts)}
    held: dict[int, int] = {}  # earlier prompt (its signature) -> mask of this prompt's parts it held
    for part, owner in zip(ring_parts[hits].tolist(), ring_owner[hits].tolist(), strict=True):
        if owner != partial:
            held[owner] = held.get(owner, 0) | (1 << index[part])
    everything = (1 << len(parts)) - 1
    if everything in held.values():  # sent before, or cut from a prompt sent before
        return False
    levels = GRID_LEVELS - 1
    for i in range(len(parts)):
        bit = 1 << i
        rest = everything ^ bit
        # no earlier prompt held every part (above), so one that held this one lacked some of the rest
        if sum(1 for mask in held.values() if mask & bit) < levels:
            continue
        if sum(1 for mask in held.values() if not mask & bit and mask & rest == rest) >= levels:
            return True
    return False


def remember_parts(parts: Sequence[int], ring_parts: np.ndarray, ring_owner: np.ndarray, written: np.ndarray) -> None:
    """Write a prompt's ``parts`` into the ring, each with the prompt's ``parts_signature``.
    ``written``: a one-element array, the count of parts written so far."""
    if not parts:
        return
    count, size, k = int(written[0]), ring_parts.shape[0], len(parts)
    signature = parts_signature(parts)
    start = count % size
    if start + k <= size:  # one slice write, unless the parts run past the ring's end
        ring_parts[start : start + k] = parts
        ring_owner[start : start + k] = signature
    else:
        for i, part in enumerate(parts):
            ring_parts[(count + i) % size] = part
            ring_owner[(count + i) % size] = signature
    written[0] = count + k
