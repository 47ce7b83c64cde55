"""What an account remembers of its recent prompts' text, and what that tells about each new one.

Four rules read a query's prompt (only where the caller passes it, as ``observe_batch`` does),
all against the account's own recent prompts:

* **continuation**: a prompt that repeats a recent one whole and adds text is a conversation's
  next turn (an app that sends the transcript so far), not an edit;
* **neighbourhood probes** (``probewatch.detect.probes``): a small word-level edit of several
  recent prompts that lacks a word they share, or one of many variants of a seed never sent;
* **grid probes** (``probewatch.detect.grids``): recent payloads crossed with recent frames;
* **frame threads**: the queries sent under one frame the account took up after it started,
  judged for topic return as an account of their own (a blended account's extraction bursts).

Before them, the **sent memory** (SENT_MEMORY) decides whether a prompt is new at all: one the
account sent before, character for character, is a repeat and is not judged anew
(``probewatch.detect.stream.repeated_prompts``).

``PromptMemory`` holds the arrays those rules need (bounded rings, so snapshots are exact and
an account's memory is bounded) and ``AccountState`` inherits them with the rest of an account's
running statistics. ``note_prompt`` is called once per prompt judged as new, before the query
is counted.
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib

import numpy as np

from ..backend.device import int8_codes, int8_step
from .grids import GRID_LEVELS, PART_MEMORY, is_grid_probe, prompt_parts, remember_parts
from .probes import EMPTY as EMPTY_HASH
from .probes import (
    MIN_RELATED,
    SKETCH_WORDS,
    is_neighbourhood_probe,
    is_seed_probe,
    related_slots,
    signature,
    sketch_set,
    store_sketch,
    word_hashes,
)

# A prompt that repeats one of the account's last CONTINUATION_MEMORY prompts whole and adds at
# least CONTINUATION_MIN_ADDED characters *continues* it: an app that sends the conversation so
# far with each request (a completion endpoint, a history pasted into one message, an agent's
# growing scratchpad). Each such prompt is a small step from the last, each further from the
# first turn, so its chain looks like an edit walk; it is a conversation, never a walk-away step.
# Judged on the text, so only where the caller passes prompts (observe_batch does).
CONTINUATION_MEMORY = 16
CONTINUATION_MIN_ADDED = 8
# A conversation grows one way: each turn extends the prompt before it, once, with text nobody
# appended before. A prompt that extends a prompt already extended (a branch: a constraint
# changed or taken back and another added) or that appends the same text as one of the
# account's last APPENDED_MEMORY additions did (digits aside: one distractor or one constraint
# stacked onto seed after seed, a parameter swept) is an edit, not a turn, and is judged as
# one. Robustness and instruction-following probes build their chains by appending.
APPENDED_MEMORY = 64
# Prompts are compared by a checksum of their first characters before the whole prefix is hashed.
CONTINUATION_HEAD_CHARS = 64
# A query's continuation mark (QueryFacts.continues, AccountState.ring_continues). A deep-path
# walk-away step (WALK_DEEP_DEPTH) needs the text to rule continuation out: a query without a
# prompt is judged by the distance-and-density rule alone, as before 0.12.5.
UNKNOWN_TEXT, FRESH, CONTINUES = -1, 0, 1
# Frame threads (PromptMemory.note_prompt): the queries of an account that share one part
# (``grids.prompt_parts``) which became recurrent after the account's start, judged for topic
# return as if they were an account of their own. A blended account's extraction bursts put one
# frame around independently drawn payloads; among an ordinary user's traffic their few returns
# are diluted away, while as a thread of their own they show. A part starts a thread when it is
# in FRAME_MIN_PROMPTS distinct recent prompts (the grid ring's), this one included, and in at
# most half of the prompts the ring spans, with parts or without (an app's own template is in
# all of them: the account-level statistic already judges that stream). A prompt joins at most
# one thread.
FRAME_THREADS = 2
FRAME_MIN_PROMPTS = 4
# Each thread keeps its latest FRAME_MEMORY vectors as int8 codes (the int8 storage's grid;
# allocated with the first thread): a return is a query at least RETURN_SIMILARITY to one
# of them. Widening float16 rows cost about 20 us a query here, int8 codes about 4 us.
FRAME_MEMORY = 32
# A thread that no prompt extended in this many prompts may be replaced by a new one.
FRAME_IDLE_PROMPTS = 64
# Threads with fewer queries are not reported (the detector scores no account this short).
FRAME_MIN_QUERIES = 10
# An account's sent memory: 128-bit digests of the last SENT_MEMORY prompts it sent that were
# judged as new (64 KiB at most; 16 bytes a prompt until then). A prompt it holds, sent again
# character for character, is a repeat: a retry, a health check, a script re-running its job
# asks the model nothing it has not answered, so it is not judged anew (Verdict.repeat). It can
# then neither add evidence (one point sent all day is no account's window) nor fake it: a
# prompt sent again would otherwise be a topic return, the statistic people are told by.
SENT_MEMORY = 4096
SENT_DIGEST_BYTES = 16
# A prompt longer than this is always judged, never a repeat: the sidecar cuts prompts in their
# middle at its max_prompt_chars (16,384 by default) and the integrations at the engine's, so two
# long prompts that differ only where the cut fell would otherwise read as one prompt sent twice.
REPEAT_MAX_CHARS = 4096


class PromptMemory:
    """An account's recent prompts as the text rules read them (see the module docstring).

    ``RETURN_SIMILARITY`` is the similarity at which a frame thread's query returns to an
    earlier one: the subclass sets it to the topic-return feature's, so a thread is judged
    as an account would be."""

    __slots__ = (
        "appended",
        "frame_counts",
        "frame_parts",
        "frame_vectors",
        "part_noted",
        "part_owners",
        "part_ring",
        "parts_written",
        "probes",
        "prompt_continued",
        "prompt_digests",
        "prompt_heads",
        "prompt_lengths",
        "prompt_signatures",
        "prompt_sketches",
        "prompt_words",
        "sent_count",
        "sent_digests",
    )
    RETURN_SIMILARITY: float

    def _init_prompt_memory(self) -> None:
        """Allocate the arrays, empty: no prompt noted yet."""
        # the last CONTINUATION_MEMORY prompts as (length in characters, head checksum, digest);
        # length 0: empty
        self.prompt_lengths = np.zeros(CONTINUATION_MEMORY, dtype=np.int64)
        self.prompt_heads = np.zeros(CONTINUATION_MEMORY, dtype=np.int64)
        self.prompt_digests = np.zeros((CONTINUATION_MEMORY, 16), dtype=np.uint8)
        # whether each of those prompts was already continued once, and [additions noted, then
        # the checksums of the last APPENDED_MEMORY texts continuations appended, a ring (0: empty)]
        self.prompt_continued = np.zeros(CONTINUATION_MEMORY, dtype=np.bool_)
        self.appended = np.zeros(APPENDED_MEMORY + 1, dtype=np.uint32)
        # the same prompts' word sketches and distinct word counts (0: no prompt), and
        # [prompts remembered, neighbourhood probes found] (see probewatch.detect.probes). The
        # prompt count, not n, picks the slot: a batch notes all its prompts before any of its
        # queries is counted in n.
        self.prompt_sketches = np.full((CONTINUATION_MEMORY, SKETCH_WORDS), EMPTY_HASH, dtype=np.uint32)
        self.prompt_words = np.zeros(CONTINUATION_MEMORY, dtype=np.int32)
        self.probes = np.zeros(2, dtype=np.int64)
        self.prompt_signatures = np.zeros(CONTINUATION_MEMORY, dtype=np.int64)  # see probes.signature
        # the parts (segments) of recent prompts, the signature of the prompt each came from, and
        # how many were written (see probewatch.detect.grids)
        self.part_ring = np.zeros(PART_MEMORY, dtype=np.uint32)
        self.part_owners = np.zeros(PART_MEMORY, dtype=np.uint32)
        self.parts_written = np.zeros(1, dtype=np.int64)
        # the number (among the account's noted prompts) of the prompt each part came from: how
        # many prompts, with parts or without, the ring spans
        self.part_noted = np.zeros(PART_MEMORY, dtype=np.uint32)
        # frame threads: each live thread's part (0: none) and [queries, returns, number of the
        # prompt that last extended it]; their latest vectors, allocated with the first thread
        # (most accounts never start one)
        self.frame_parts = np.zeros(FRAME_THREADS, dtype=np.uint32)
        self.frame_counts = np.zeros((FRAME_THREADS, 3), dtype=np.int64)
        self.frame_vectors: np.ndarray | None = None
        # the sent memory: how many prompts were judged as new, and the digests of the latest
        # SENT_MEMORY of them, a ring allocated and grown as they come (see SENT_MEMORY)
        self.sent_count = np.zeros(1, dtype=np.int64)
        self.sent_digests: np.ndarray | None = None

    def note_prompt(
        self, text: str, sketch: tuple[list[int], int] | None = None, vector: np.ndarray | None = None
    ) -> tuple[int, bool]:
        """(mark, probe): the mark is CONTINUES if ``text`` continues one of the account's recent
        prompts as a conversation does (it starts with the whole of one and adds at least
        CONTINUATION_MIN_ADDED characters; that prompt was not continued before and the text
        added is none the account added lately: see APPENDED_MEMORY), else FRESH; probe is
        whether a fresh prompt is a neighbourhood probe (``is_neighbourhood_probe``,
        ``is_seed_probe``, or a cell of a grid: ``grids.is_grid_probe``). Then remember it.
        Call once per query that has a prompt, before :meth:`update` counts it; both go into
        its QueryFacts (a batch notes all its prompts before its first update, so nothing here
        may count what update counts). ``sketch``: the text's ``word_hashes``, where the caller
        has them; ``vector``: the query's unit vector (host), where the caller has it, for
        the account's frame threads."""
        continues = FRESH
        noted = int(self.probes[0])
        longest = len(text) - CONTINUATION_MIN_ADDED  # the longest prompt text can continue
        if longest > 0:
            lengths = self.prompt_lengths.tolist()
            stored_heads = None
            heads: dict[int, int] = {}  # head length -> checksum of text's head of that length
            for back in range(1, CONTINUATION_MEMORY + 1):  # newest first: a transcript mostly continues the last
                j = (noted - back) % CONTINUATION_MEMORY
                length = lengths[j]
                if not 0 < length <= longest:
                    continue
                size = min(length, CONTINUATION_HEAD_CHARS)
                head = heads.get(size)
                if head is None:
                    head = heads[size] = _checksum(text[:size])
                if stored_heads is None:
                    stored_heads = self.prompt_heads.tolist()
                if head == stored_heads[j] and _digest(text[:length]) == self.prompt_digests[j].tobytes():
                    if self._first_addition(j, text[length:]):
                        continues = CONTINUES
                    break
        kept, words = word_hashes(text) if sketch is None else sketch
        bits = signature(kept)
        probe = False
        if continues == FRESH:
            recent_signatures, recent_words = self.prompt_signatures.tolist(), self.prompt_words.tolist()
            query = frozenset(kept)
            edits, near = related_slots(bits, words, recent_signatures, recent_words)
            if len(edits) >= MIN_RELATED:
                probe = is_neighbourhood_probe(query, words, self._stored_sketches(edits, recent_words))
            if not probe and len(near) >= MIN_RELATED:  # around a seed that need not have been sent
                probe = is_seed_probe(query, words, self._stored_sketches(near, recent_words))
        parts = prompt_parts(text)
        if parts:
            ring = self.part_ring
            counts = [int(np.count_nonzero(ring == part)) for part in parts]  # how often each was sent lately
            # one cell of a grid of frames and payloads: every part sent before (most prompts stop here)
            if continues == FRESH and not probe and min(counts) >= GRID_LEVELS - 1:
                probe = is_grid_probe(parts, ring, self.part_owners, int(self.parts_written[0]))
            if vector is not None:  # before this prompt's parts are remembered
                self._note_frames(parts, counts, vector, noted)
            written = int(self.parts_written[0])
            remember_parts(parts, self.part_ring, self.part_owners, self.parts_written)
            for i in range(len(parts)):
                self.part_noted[(written + i) % PART_MEMORY] = noted & 0xFFFFFFFF  # wraps, as spans are taken
        digest = _digest(text)
        if len(text) <= REPEAT_MAX_CHARS:  # a longer one is always judged (see REPEAT_MAX_CHARS)
            self.remember_sent(_halves(digest))
        slot = noted % CONTINUATION_MEMORY
        self.probes[0] = noted + 1
        store_sketch(self.prompt_sketches[slot], kept)
        self.prompt_words[slot] = words
        self.prompt_signatures[slot] = bits
        self.prompt_lengths[slot] = len(text)
        self.prompt_continued[slot] = False
        self.prompt_heads[slot] = _checksum(text[:CONTINUATION_HEAD_CHARS])
        self.prompt_digests[slot] = np.frombuffer(digest, dtype=np.uint8)
        return continues, probe

    def sent_rank(self, digest: tuple[int, int]) -> int:
        """Where ``digest`` (:func:`sent_digest`) stands among the prompts the account's sent
        memory holds, oldest first (0: the oldest), or -1 when it holds none with that text."""
        count = int(self.sent_count[0])
        held = min(count, SENT_MEMORY)
        if not held:
            return -1
        rows = self.sent_digests[:held]
        hits = np.flatnonzero((rows[:, 0] == digest[0]) & (rows[:, 1] == digest[1]))
        if not hits.size:
            return -1
        oldest = count % SENT_MEMORY if count > SENT_MEMORY else 0  # the ring's next slot
        return (int(hits[-1]) - oldest) % SENT_MEMORY

    def sent_held(self) -> int:
        """How many prompts the sent memory holds."""
        return min(int(self.sent_count[0]), SENT_MEMORY)

    def remember_sent(self, digest: tuple[int, int]) -> None:
        """Add a prompt judged as new to the sent memory (the oldest goes once SENT_MEMORY are held)."""
        count = int(self.sent_count[0])
        digests = self.sent_digests
        if count < SENT_MEMORY and (digests is None or count == digests.shape[0]):
            grown = np.empty((min(SENT_MEMORY, max(16, 2 * count)), 2), dtype=np.int64)
            if count:
                grown[:count] = digests[:count]
            self.sent_digests = digests = grown
        digests[count % SENT_MEMORY] = digest
        self.sent_count[0] = count + 1

    def sent_in_order(self) -> np.ndarray:
        """The digests the sent memory holds, oldest first (what a snapshot keeps): (held, 2) int64."""
        count, held = int(self.sent_count[0]), self.sent_held()
        if not held:
            return np.zeros((0, 2), dtype=np.int64)
        if count <= SENT_MEMORY:
            return self.sent_digests[:held].copy()
        return np.roll(self.sent_digests, -(count % SENT_MEMORY), axis=0)

    def load_sent(self, ordered: np.ndarray) -> None:
        """Put back :meth:`sent_in_order` (``sent_count`` already set)."""
        count = int(self.sent_count[0])
        ordered = np.asarray(ordered, dtype=np.int64)
        if ordered.shape != (min(count, SENT_MEMORY), 2):
            raise ValueError(f"{ordered.shape} sent digests for a count of {count}")
        if not ordered.size:
            self.sent_digests = None
        elif count <= SENT_MEMORY:
            self.sent_digests = ordered.copy()
        else:
            self.sent_digests = np.roll(ordered, count % SENT_MEMORY, axis=0)

    def _note_frames(self, parts: list[int], counts: list[int], vector: np.ndarray, noted: int) -> None:
        """Extend the frame thread one of ``parts`` belongs to, or start one (see FRAME_THREADS);
        ``counts``: how many remembered parts equal each; ``noted``: the prompts noted before
        this one."""
        live = self.frame_parts.tolist()
        slot = next((j for j, part in enumerate(live) if part and part in parts), -1)
        if slot < 0:
            if max(counts) + 1 < FRAME_MIN_PROMPTS:  # no part recurs (most prompts)
                return
            slot = self._start_frame(parts, counts, noted, live, vector.shape[0])
            if slot < 0:
                return
        members, returns = int(self.frame_counts[slot, 0]), int(self.frame_counts[slot, 1])
        kept = self.frame_vectors[slot]
        filled = min(members, FRAME_MEMORY)
        step = int8_step(kept.shape[1])
        if filled and float((kept[:filled].astype(np.float32) @ vector).max()) * step >= self.RETURN_SIMILARITY:
            returns += 1
        kept[members % FRAME_MEMORY] = int8_codes(vector, step)
        self.frame_counts[slot] = (members + 1, returns, noted)

    def _start_frame(self, parts: list[int], counts: list[int], noted: int, live: list[int], dim: int) -> int:
        """The slot of a new thread around the first of ``parts`` that has become a recurring
        frame, or -1 (no such part, or no slot free or idle)."""
        written = int(self.parts_written[0])
        # the prompts the ring spans, this one included (those without parts too)
        span = noted + 1
        if written >= PART_MEMORY:
            span = (noted + 1 - int(self.part_noted[written % PART_MEMORY])) & 0xFFFFFFFF
        if span < 2 * FRAME_MIN_PROMPTS:  # no part can be in at most half of them yet
            return -1
        frame = 0
        for j, part in enumerate(parts):
            if counts[j] + 1 < FRAME_MIN_PROMPTS or 2 * (counts[j] + 1) > span:
                continue
            # distinct prompts (a retried prompt is one), told apart by their whole set of parts
            if np.unique(self.part_owners[self.part_ring == part]).size + 1 >= FRAME_MIN_PROMPTS:
                frame = part
                break
        if not frame:
            return -1
        idle = [noted - int(c) for c in self.frame_counts[:, 2].tolist()]
        free = [j for j, part in enumerate(live) if not part or idle[j] >= FRAME_IDLE_PROMPTS]
        if not free:
            return -1
        slot = max(free, key=lambda j: (not live[j], idle[j]))  # an empty slot, else the idlest
        if self.frame_vectors is None:
            self.frame_vectors = np.zeros((FRAME_THREADS, FRAME_MEMORY, dim), dtype=np.int8)
        self.frame_parts[slot] = frame
        self.frame_counts[slot] = (0, 0, noted)
        return slot

    def framed_stats(self) -> tuple[float, int]:
        """(return rate, queries) of the frame thread reported in features: of the threads with
        FRAME_MIN_QUERIES or more queries, the one that returns least (the larger on a tie);
        (NaN, 0) without one. The rate is over the thread's queries after its first."""
        best: tuple[float, int] = (math.nan, 0)
        if self.frame_vectors is None:  # never had a thread (most accounts)
            return best
        for members, returns, _ in self.frame_counts.tolist():
            if members >= FRAME_MIN_QUERIES:
                rate = returns / (members - 1)
                if best[1] == 0 or rate < best[0] or (rate == best[0] and members > best[1]):
                    best = (rate, members)
        return best

    def _first_addition(self, slot: int, added: str) -> bool:
        """Whether the prompt in ``slot``, extended by ``added``, grows as a conversation does:
        never extended before, and ``added`` (case, spacing and digits aside) none of the
        account's last APPENDED_MEMORY additions. Notes both."""
        key = _checksum(" ".join(_DIGIT_RUNS.sub("0", added.lower()).split())) or 1  # 0 marks an empty entry
        noted = int(self.appended[0])  # wraps at 2**32, a multiple of APPENDED_MEMORY
        repeated = key in self.appended[1:].tolist()
        self.appended[1 + noted % APPENDED_MEMORY] = key
        self.appended[0] = (noted + 1) & 0xFFFFFFFF
        branch = bool(self.prompt_continued[slot])
        self.prompt_continued[slot] = True
        return not (branch or repeated)

    def _stored_sketches(self, slots: list[int], words: list[int]) -> list[tuple[frozenset[int], int]]:
        """(hashes, distinct words) of the prompts remembered in ``slots``."""
        return [(sketch_set(self.prompt_sketches[j], words[j]), words[j]) for j in slots]


_DIGIT_RUNS = re.compile(r"[0-9]+")


def _checksum(text: str) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def sent_digest(text: str) -> tuple[int, int]:
    """A prompt's 128-bit digest in the sent memory, as two signed 64-bit halves (an int64 row).
    128 bits, so that no one can make a harmless prompt and a query that share one (about 2^64
    work; 64 bits would take about 2^32, seconds on a GPU, and hide the query as a repeat)."""
    return _halves(_digest(text))


def _halves(digest: bytes) -> tuple[int, int]:
    return int.from_bytes(digest[:8], "little", signed=True), int.from_bytes(digest[8:], "little", signed=True)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
