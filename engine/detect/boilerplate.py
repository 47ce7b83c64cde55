"""An account's boilerplate, and the part of each prompt the model and the word rules read.

Many apps wrap every request in one long fixed frame: an agent's tool list, a few-shot
classifier's labelled examples, a support bot's policy, a conversation re-sent whole with each
new turn. Once that frame fills most of the model's window, every prompt of the account embeds
as nearly the same vector: an honest app reads as one prompt sent again and again (0.18.0's
shipped calibration flagged such apps, every account), and an extractor that wraps its
queries in any long frame hides them from every embedding statistic (0.19.0 let it).

So the model reads what a prompt adds. A prompt's **boilerplate** is its segments (a segment
ends at a line break, or at ``.``, ``!``, ``?``, ``;`` or ``:`` before white space) that the
account's last long prompt also had, white space aside, and in a prompt's opening a *stamp*'s
figures aside (a frame that stamps each prompt with the time or a request id is still one
frame: :func:`numberless`); when together they are at least BOILERPLATE_MIN_CHARS characters,
the prompt is read without them, the rest in its order.
Equal segments anywhere count, not only a shared opening: a frame that starts with the date
or the user's name, or ends with a short fixed cue after the request, is still found.

A prompt that *continues* the last long prompt (starts with every one of its segments and adds
more: a chat app re-sending the conversation with each turn, an agent's growing scratchpad) is
a conversation, not a frame around a new request, and is read whole as before 0.20.0 (its
opening and its end, ``probewatch.backend.embedder``); the continuation rule of
``probewatch.detect.prompt_memory`` judges it. So is a prompt changed inside, whose new text is
followed by more than TRAILING_MAX_CHARS of the last long prompt's text: a document re-sent
with a sentence edited. A frame puts its request at the end, at most a short fixed cue after
it ("Answer:", "Intent:"); a frame with a long fixed part after the request is read whole too.

Nothing is lost: the boilerplate was read with the account's first prompt that carried it, a
prompt always keeps its last segment (no prompt reads as nothing), and short prompts (most
traffic) are read whole and change nothing. The repeat check, the continuation rule, the grid
and frame-thread rules and the campaign layer's templates still read the whole prompt; the
embedding and the word rules (``probewatch.detect.probes``) read what is left.

The rule is a pure function of one account's valid prompts in the order they came:
:class:`BoilerplateMemory` applies it as prompts arrive (``Engine.embed_batch``,
``Engine.observe_embeddings``) and keeps, per account, the segment checksums of its last long
prompt; :func:`read_texts` and :func:`read_streams` apply it to whole streams (calibration,
the benchmark), so every path reads the same texts.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

# Boilerplate shorter than this is read with the request. 1,024 characters are about 230
# MiniLM tokens, most of the model's 256-token window: past that a request's share of what is
# read falls below a third. Short app templates ("Summarize: ...", a retrieval frame's two
# lines) stay in the vector, as the calibration and the template rules expect them.
BOILERPLATE_MIN_CHARS = 1024
# A frame puts the new request at the end, or before a short fixed cue ("Answer:", "Intent:",
# "Reply in JSON."). A prompt whose new text is followed by more than this many characters the
# last long prompt also had was changed inside: a document re-sent with an edit, read whole.
TRAILING_MAX_CHARS = 256
# Only a prompt's first MAX_SEGMENTS segments, in its first MAX_COMPARED_CHARS characters,
# are compared and remembered: 2 KiB an account at most, for accounts that send long prompts
# only. What lies past them is always read.
MAX_SEGMENTS = 512
MAX_COMPARED_CHARS = 16_384
_SEGMENT_END = re.compile(r"\n|[.!?;:](?=\s)")
# A stamp (``numberless``: the time, a date, an id) is compared without what a fixed frame
# changes from prompt to prompt: in it, any word that holds a digit counts as the same word.
# A third of its visible characters digits: "2026-11-01 09:07 UTC." (60 %), a UUID (about 60 %);
# sentences with a figure in them ("The growth rate is 14%.", 7 %) and lines of prose in
# scripts written without spaces (one "word" each) stay below it.
STAMP_DIGIT_SHARE = 1 / 3
# Stamps are looked for in a prompt's opening only, where frames put them: further in, a
# segment of figures ("Budget: $11,000", a table row) changed is a document edited, read whole.
STAMP_OPENING_CHARS = 256
_WORD = re.compile(r"\S+")
_VISIBLE = re.compile(r"\S")
_DIGIT = re.compile(r"\d")


def segment_ends(text: str) -> list[int]:
    """Where each of ``text``'s compared segments ends (exclusive); the last at ``len(text)``
    when the whole text is compared.

    >>> segment_ends("one. two\\nthree")
    [4, 9, 14]
    """
    ends: list[int] = []
    for match in _SEGMENT_END.finditer(text, 0, min(len(text), MAX_COMPARED_CHARS)):
        ends.append(match.end())
        if len(ends) == MAX_SEGMENTS:
            return ends
    if len(text) <= MAX_COMPARED_CHARS and (not ends or ends[-1] < len(text)):
        ends.append(len(text))
    return ends


def numberless(segment: str) -> str:
    """``segment`` as it is compared: a *stamp* (a segment at least STAMP_DIGIT_SHARE digits,
    white space aside: the time, a date, a request or session id after its label) with each
    word that holds a digit written as ``0``, since a frame that stamps each prompt is still
    one frame; any other segment as it is, so a document re-sent with one figure changed is
    still an edit. Linear in the text.

    >>> numberless(" 2026-11-01 09:07 UTC.")
    ' 0 0 UTC.'
    >>> numberless(" The annual growth rate is 14%.")
    ' The annual growth rate is 14%.'
    """
    digits = len(_DIGIT.findall(segment))
    if not digits or digits < STAMP_DIGIT_SHARE * len(_VISIBLE.findall(segment)):
        return segment  # most segments
    return _WORD.sub(_zero_if_numbered, segment)


def _zero_if_numbered(word: re.Match) -> str:
    return "0" if _DIGIT.search(word.group()) else word.group()


def segment_checksums(text: str, ends: Sequence[int]) -> np.ndarray:
    """CRC-32 of each segment's UTF-8 bytes, white space at its ends aside and, in the prompt's
    first STAMP_OPENING_CHARS characters, a stamp's numbers as one (:func:`numberless`)
    (uint32): stable across processes, for snapshots. A turn that ended a prompt and is
    followed by a line break in the next is the same segment, and so is a frame's opening line
    that carries the time of each prompt."""
    sums = np.empty(len(ends), dtype=np.uint32)
    start = 0
    for i, end in enumerate(ends):
        segment = text[start:end].strip()
        if start < STAMP_OPENING_CHARS:
            segment = numberless(segment)
        sums[i] = zlib.crc32(segment.encode("utf-8", "surrogatepass"))
        start = end
    return sums


def read_part(text: str, last: np.ndarray | None) -> tuple[str, np.ndarray | None]:
    """(what is read of ``text``, the account's memory after it), given the segment checksums
    of the account's last long prompt (``last``; None before any)."""
    if len(text) <= BOILERPLATE_MIN_CHARS:
        return text, last  # too short to carry boilerplate worth leaving out; the memory stays
    ends = segment_ends(text)
    sums = segment_checksums(text, ends)
    if last is None or not len(last):
        return text, sums
    n = len(last)
    if len(sums) > n and np.array_equal(sums[:n], last):
        return text, sums  # it continues the last long prompt: a conversation re-sent, read as before
    starts = [0, *ends[:-1]]
    shared = np.isin(sums, last)
    segments = [text[a:b] for a, b in zip(starts, ends, strict=True)]
    if ends[-1] == len(text):  # the whole text was compared: where does its new text end?
        new = [i for i in np.flatnonzero(~shared).tolist() if not segments[i].isspace()]
        if new and len(text) - ends[new[-1]] > TRAILING_MAX_CHARS:
            return text, sums  # changed inside, with a long shared end: an edit re-sent, read whole
        shared[-1] = False  # the last segment is always read: no prompt reads as nothing
    removed = sum(len(segments[i]) for i in np.flatnonzero(shared).tolist() if not segments[i].isspace())
    if removed < BOILERPLATE_MIN_CHARS:
        return text, sums
    kept: list[str] = []
    last_read = len(segments) - 1 if ends[-1] == len(text) else -1  # always read (see above)
    for i, (segment, left_out) in enumerate(zip(segments, shared.tolist(), strict=True)):
        if i == last_read:
            kept.append(segment)
        elif segment.isspace():
            # white space separates what is read: kept once between kept text, not in runs
            if kept and not kept[-1][-1].isspace():
                kept.append(segment)
        elif not left_out:
            kept.append(segment)
    return "".join(kept) + text[ends[-1] :], sums


def read_texts(prompts: Iterable[str]) -> list[str]:
    """What is read of each of one account's prompts, in order (see the module docstring).

    >>> frame = "Tools:\\n" + "".join(f"- tool {i}: does thing {i}.\\n" for i in range(60))
    >>> [len(t) for t in read_texts([frame + "What is 2+2?", frame + "Name a colour."])]
    [1559, 14]
    """
    last: np.ndarray | None = None
    read: list[str] = []
    for text in prompts:
        part, last = read_part(text, last)
        read.append(part)
    return read


class BoilerplateMemory:
    """Each account's last long prompt's segment checksums: the state :func:`read_part` keeps.

    Thread-safe on its own lock, so ``Engine.embed_batch`` reads and updates it outside the
    engine's (a batch is embedded while the one before it is judged; batches must be embedded
    in the order they are observed). Part of the engine's snapshot; dropped with an account
    when it is forgotten or evicted (its next long prompt is then read whole, as a new
    account's first is)."""

    def __init__(self) -> None:
        self._last: dict[str, np.ndarray] = {}
        self._bytes = 0  # kept as the arrays change: the memory budget reads it every batch
        self._lock = threading.Lock()

    def read(self, accounts: Sequence[str], texts: Sequence[str | None]) -> list[str | None]:
        """What is read of each prompt (``accounts[i]`` sent ``texts[i]``, in order),
        remembering each account's long prompts. An item without a prompt (None) reads as None
        and changes nothing."""
        with self._lock:
            read: list[str | None] = []
            for account, text in zip(accounts, texts, strict=True):
                if text is None:
                    read.append(None)
                    continue
                held = self._last.get(account)
                part, last = read_part(text, held)
                if last is not held:
                    self._bytes += last.nbytes - (0 if held is None else held.nbytes)
                    self._last[account] = last
                read.append(part)
            return read

    def drop(self, accounts: Iterable[str]) -> None:
        with self._lock:
            for account in accounts:
                held = self._last.pop(account, None)
                if held is not None:
                    self._bytes -= held.nbytes

    def clear(self) -> None:
        with self._lock:
            self._last.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._last)

    def state_dict(self) -> dict[str, np.ndarray]:
        """{account: its last long prompt's segment checksums} (copies)."""
        with self._lock:
            return {account: sums.copy() for account, sums in self._last.items()}

    def load_state(self, state: dict[str, np.ndarray] | None) -> None:
        """Replace the memory with a :meth:`state_dict` (None: empty, as snapshots before 0.20.0)."""
        loaded = {str(a): np.asarray(s, dtype=np.uint32).reshape(-1) for a, s in (state or {}).items()}
        with self._lock:
            self._last = loaded
            self._bytes = sum(v.nbytes for v in loaded.values())


def read_streams(accounts: Sequence[str], texts: Sequence[str | None]) -> list[str | None]:
    """:meth:`BoilerplateMemory.read` from an empty memory: interleaved accounts' prompts in order."""
    return BoilerplateMemory().read(accounts, texts)


__all__ = [
    "BOILERPLATE_MIN_CHARS",
    "MAX_COMPARED_CHARS",
    "MAX_SEGMENTS",
    "STAMP_DIGIT_SHARE",
    "STAMP_OPENING_CHARS",
    "TRAILING_MAX_CHARS",
    "BoilerplateMemory",
    "numberless",
    "read_part",
    "read_streams",
    "read_texts",
    "segment_checksums",
    "segment_ends",
]
