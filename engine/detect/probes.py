"""Neighbourhood probes: prompts that leave out words a neighbourhood of recent prompts shares.

An explainer or a label-only boundary search around a seed sends the seed's neighbourhood: the
seed with one word left out or masked, random subsets of its words, a word swapped. Each such
probe is a small edit of the seed *and* of the other probes around it, and the words it lacks
are the seed's words, which most of those prompts still have. A person reworking a prompt
builds on their last version, so an edit is a small edit of one or two earlier prompts, rarely
of three; and the prompts of one app template differ only in their slots, so a fill lacks
nothing but the other fills' own slot values, each in one prompt. Judged on words, not
embeddings: an app template's prompts sit close together in embedding space whatever fills them.

A counterfactual grid or a behavioural test suite never sends its seed, and two of its probes
changed at different places differ in two words or more, so neither is a small edit of the
other. What they share is the seed: the words at least two thirds of a prompt's near neighbours
have (``is_seed_probe``). A probe lacks one or two of those seed words, and the neighbours around
it lack *other* seed words while keeping the one it changed, since every probe starts again from
the seed. A person's edits pile up instead: each version lacks what the last one lacked, so the
earlier versions lack nothing the newest still has. A template's fills lack no seed word at all
(the template is the seed), and one fill value most prompts use is one seed word, not three.

A prompt is summarised by a *word sketch*: the distinct lower-case words of its first
TEXT_CHARS characters, hashed (CRC-32, so sketches are the same in every process and can be
snapshotted), the SKETCH_WORDS smallest hashes kept, with the number of distinct words. Two
prompts compare exactly where both have at most SKETCH_WORDS distinct words, and on the
smallest hashes of their union (a bottom-k sample) where either has more, up to
COMPARED_MAX_WORDS. Longer prompts are never edits or probes of each other: a sample that
small cannot tell a word left out from a new request in a long fixed frame (an agent's tool
list, a few-shot prompt's examples), since the request's own words mostly fall outside it.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Sequence
from functools import reduce
from operator import or_

import numpy as np

SKETCH_WORDS = 32  # hashes kept per prompt (32 x 4 bytes); prompts this short compare exactly
TEXT_CHARS = 4096  # words are read from a prompt's head: a pasted document costs no more than this
# Below this many distinct words, a one-word difference is another request, not a small edit.
MIN_WORDS = 4
# The most distinct words a prompt may have to be compared at all (see the module docstring).
# At twice SKETCH_WORDS a sketch holds half a prompt's words, so a request adding five words of
# its own to a frame shows at least one of them in all but (1/2)^5 = 3 % of comparisons; at
# 165 words (a tool list and a short question) it was missed in (1 - 32/165)^5 = 34 %.
COMPARED_MAX_WORDS = 2 * SKETCH_WORDS
# A query is a probe where it is a small edit of at least MIN_RELATED distinct recent prompts and
# lacks a word that at least MIN_SHARED_MISSING of those prompts have (their shared seed's word).
MIN_RELATED = 3
MIN_SHARED_MISSING = 2
# Around an unsent seed (is_seed_probe): a prompt adds at most NEAR_ADDED words to a near
# neighbour and lacks at most NEAR_DROPPED of its words; the seed's words are those at least
# SEED_SHARE_NUM / SEED_SHARE_DEN of the prompt and its near neighbours have; between them they
# vary at least MIN_SEED_WORDS_VARIED seed words, and at least MIN_VARIED_ELSEWHERE neighbours
# vary one the prompt keeps.
NEAR_ADDED = 4
NEAR_DROPPED = 2
SEED_SHARE_NUM, SEED_SHARE_DEN = 2, 3
MIN_SEED_WORDS_VARIED = 3
MIN_VARIED_ELSEWHERE = 2
EMPTY = np.uint32(0xFFFFFFFF)  # sketch padding (sorts last)
SIGNATURE_BITS = 63  # a prompt's word signature: one bit per word hash modulo this (fits an int64)
_BIT, _MODULUS = 1, SIGNATURE_BITS

_WORD = re.compile(r"\w+")


def word_hashes(text: str) -> tuple[list[int], int]:
    """The SKETCH_WORDS smallest hashes of the prompt's distinct words, sorted, and the number
    of distinct words. (``\\w`` never matches a lone surrogate, so every word encodes.)"""
    hashes = set(map(zlib.crc32, map(str.encode, set(_WORD.findall(text[:TEXT_CHARS].lower())))))
    hashes.discard(int(EMPTY))  # the padding value cannot be a word
    return sorted(hashes)[:SKETCH_WORDS], len(hashes)


def signature(hashes: Sequence[int]) -> int:
    """One bit per hash (modulo SIGNATURE_BITS): a 63-bit summary of a prompt's words. Where a
    prompt is a small edit of another, at most one of its bits is missing from the other's
    (one word swapped; none for words left out), so most unrelated pairs are ruled out
    without comparing sets."""
    return reduce(or_, map(_BIT.__lshift__, map(_MODULUS.__rmod__, hashes)), 0)  # C-level loops


def store_sketch(row: np.ndarray, kept: Sequence[int]) -> None:
    """Write a prompt's kept hashes (``word_hashes``) into a stored sketch ``row`` of
    SKETCH_WORDS uint32, padded with EMPTY: the form ``sketch_set`` reads."""
    row[: len(kept)] = kept
    row[len(kept) :] = EMPTY


def word_sketch(text: str) -> tuple[np.ndarray, int]:
    """(SKETCH_WORDS,) uint32 sorted hashes of the prompt's distinct words (``word_hashes``),
    padded with EMPTY, and the number of distinct words."""
    kept, words = word_hashes(text)
    sketch = np.empty(SKETCH_WORDS, dtype=np.uint32)
    store_sketch(sketch, kept)
    return sketch, words


def missing_words(
    query: frozenset[int], query_words: int, earlier: frozenset[int], earlier_words: int
) -> frozenset[int] | None:
    """Where a prompt (its sketch's hashes and distinct word count) is a small word-level edit
    of an earlier one, the earlier prompt's words it lacks (hashes); else None. A small edit
    has as many distinct words with exactly one of them different (a word swapped or masked),
    or fewer words, at least half as many, all of them the earlier prompt's (words left out). A
    prompt with the same words is a repeat, not an edit; a longer one adds words (a
    continuation, or a new request built on the old one); one of more than COMPARED_MAX_WORDS
    distinct words is not compared."""
    if query_words < MIN_WORDS or query_words > earlier_words or 2 * query_words < earlier_words:
        return None
    if earlier_words > COMPARED_MAX_WORDS:
        return None
    if query == earlier:
        return None
    if query_words > SKETCH_WORDS or earlier_words > SKETCH_WORDS:
        # bottom-k: both sets cut at the SKETCH_WORDS-th smallest hash of their union
        union = sorted(query | earlier)
        cut = union[min(SKETCH_WORDS, len(union)) - 1]
        query = frozenset(h for h in query if h <= cut)
        earlier = frozenset(h for h in earlier if h <= cut)
        if query_words == earlier_words:
            edited = query != earlier and len(query - earlier) <= 1 and len(earlier - query) <= 1
        else:
            edited = query <= earlier
    elif query_words == earlier_words:
        edited = len(query - earlier) == 1
    else:
        edited = query <= earlier
    return earlier - query if edited else None


def is_small_edit(query: frozenset[int], query_words: int, earlier: frozenset[int], earlier_words: int) -> bool:
    """Whether :func:`missing_words` finds a small edit."""
    return missing_words(query, query_words, earlier, earlier_words) is not None


def sketch_set(sketch: np.ndarray, words: int) -> frozenset[int]:
    """The hashes a stored sketch holds."""
    return frozenset(sketch[: min(words, SKETCH_WORDS)].tolist())


def related_slots(
    query_signature: int, words: int, recent_signatures: Sequence[int], recent_words: Sequence[int]
) -> tuple[list[int], list[int]]:
    """(edits, near): the recent prompts (slots) a prompt can be a small edit of, and those that
    can be its near neighbours (``near_slots``), in one pass. Edits: by distinct word counts
    (as many, up to twice as many) and, where both compare exactly, by signature: at most one
    of its bits missing from theirs."""
    if words < MIN_WORDS or words > COMPARED_MAX_WORDS:
        return [], []
    edits, near = [], []
    exact = words <= SKETCH_WORDS
    for j, (n, bits) in enumerate(zip(recent_words, recent_signatures, strict=True)):
        if n > COMPARED_MAX_WORDS:
            continue
        edit_size = words <= n <= 2 * words
        near_size = n >= MIN_WORDS and words - NEAR_ADDED <= n <= words + NEAR_DROPPED
        if not (edit_size or near_size):
            continue
        added = (query_signature & ~bits).bit_count()  # bits of the prompt's words the other lacks
        if edit_size and (n > SKETCH_WORDS or added <= 1):
            edits.append(j)
        if near_size and (
            not exact
            or n > SKETCH_WORDS
            or (added <= NEAR_ADDED and (bits & ~query_signature).bit_count() <= NEAR_DROPPED)
        ):
            near.append(j)
    return edits, near


def is_neighbourhood_probe(query: frozenset[int], words: int, candidates: Sequence[tuple[frozenset[int], int]]) -> bool:
    """Whether a prompt (its sketch's hashes and distinct word count) is a small edit of at
    least MIN_RELATED distinct ``candidates`` among the recent prompts ((hashes, distinct words)
    each; see ``related_slots``) and lacks a word that at least MIN_SHARED_MISSING of them have."""
    if words < MIN_WORDS or len(candidates) < MIN_RELATED:
        return False
    related: set[frozenset[int]] = set()  # a prompt sent twice is one neighbour
    lacked: Counter[int] = Counter()
    for earlier, n in candidates:
        if earlier in related:
            continue
        missing = missing_words(query, words, earlier, n)
        if missing is not None:
            related.add(earlier)
            lacked.update(missing)
    return len(related) >= MIN_RELATED and max(lacked.values(), default=0) >= MIN_SHARED_MISSING


def near_slots(
    query_signature: int, words: int, recent_signatures: Sequence[int], recent_words: Sequence[int]
) -> list[int]:
    """The recent prompts (slots) that can be near neighbours of a prompt (``is_seed_probe``):
    at least MIN_WORDS distinct words, NEAR_DROPPED more to NEAR_ADDED fewer than it and, where
    both compare exactly, signatures that allow it (a bit of one missing from the other needs a
    word of the one missing from the other, so this never rules a neighbour out;
    ``related_slots``' second list)."""
    return related_slots(query_signature, words, recent_signatures, recent_words)[1]


def _cut(sets: Sequence[tuple[frozenset[int], int]]) -> int | None:
    """The largest hash every one of ``sets`` (hashes, distinct words) holds all its words up
    to: the smallest last kept hash of those cut at SKETCH_WORDS; None where none is cut."""
    cuts = [max(s) for s, n in sets if n > SKETCH_WORDS and s]
    return min(cuts) if cuts else None


def _below(hashes: frozenset[int], cut: int | None) -> frozenset[int]:
    return hashes if cut is None else frozenset(h for h in hashes if h <= cut)


def _near(query: frozenset[int], earlier: frozenset[int]) -> bool:
    """A near neighbour: the prompt adds at most NEAR_ADDED words to it and lacks at most
    NEAR_DROPPED of its words, and they share at least twice as many words as either differs by."""
    added, dropped = len(query - earlier), len(earlier - query)
    return added <= NEAR_ADDED and dropped <= NEAR_DROPPED and len(query & earlier) >= 2 * max(added, dropped)


def is_seed_probe(query: frozenset[int], words: int, candidates: Sequence[tuple[frozenset[int], int]]) -> bool:
    """Whether a prompt (its sketch's hashes and distinct word count) is a probe around a seed
    that need not have been sent: it has at least MIN_RELATED distinct near neighbours among
    ``candidates`` (see ``near_slots``); the seed is the words at least two thirds of it and its
    neighbours have; it lacks one to NEAR_DROPPED seed words and adds at most NEAR_ADDED; it and
    the neighbours that are such edits of the seed too lack at least MIN_SEED_WORDS_VARIED
    distinct seed words between them, and at least MIN_VARIED_ELSEWHERE of those neighbours lack
    a seed word the prompt keeps. Prompts of more than SKETCH_WORDS distinct words compare on
    the bottom-k sample of their sketches; of more than COMPARED_MAX_WORDS, not at all."""
    if words < MIN_WORDS or words > COMPARED_MAX_WORDS or len(candidates) < MIN_RELATED:
        return False
    near: list[tuple[frozenset[int], int]] = []
    seen: set[frozenset[int]] = {query}  # a repeat is not a neighbour; a prompt sent twice is one
    for earlier, n in candidates:
        if earlier in seen or not MIN_WORDS <= n <= COMPARED_MAX_WORDS:
            continue
        seen.add(earlier)
        cut = _cut([(query, words), (earlier, n)])
        if _near(_below(query, cut), _below(earlier, cut)):
            near.append((earlier, n))
    if len(near) < MIN_RELATED:
        return False
    cut = _cut([(query, words), *near])
    members = [_below(s, cut) for s, _ in near]
    probe = _below(query, cut)
    counts = Counter(h for s in (*members, probe) for h in s)
    need = SEED_SHARE_NUM * (len(members) + 1)
    seed = frozenset(h for h, c in counts.items() if SEED_SHARE_DEN * c >= need)
    lacked = seed - probe
    if not lacked or len(lacked) > NEAR_DROPPED or len(probe - seed) > NEAR_ADDED:
        return False
    varied, elsewhere = set(lacked), 0
    for member in members:
        missing = seed - member
        if len(missing) <= NEAR_DROPPED and len(member - seed) <= NEAR_ADDED:
            varied |= missing
            elsewhere += bool(missing - lacked)
    return len(varied) >= MIN_SEED_WORDS_VARIED and elsewhere >= MIN_VARIED_ELSEWHERE
