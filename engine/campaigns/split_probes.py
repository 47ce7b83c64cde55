"""Probes split across accounts: variants of other accounts' prompts around a seed nobody sent.

The account detector's probe rules (:mod:`probewatch.detect.probes`) read one account's recent
prompts. A campaign that deals each seed's variants to different accounts leaves every member
with unrelated prompts; the variants meet only across accounts. :class:`SplitProbes` asks the
same two questions (``is_neighbourhood_probe``, ``is_seed_probe``) of a query's neighbourhood
among *other* accounts' recent prompts, in arrival order.

A query's neighbourhood is the NEIGHBOURS prompts of other accounts, among the last ``memory``
prompts of all accounts, that share the most of its words, at least half of the smaller word
sketch (ties go to the latest; the same text is a repeat, not a neighbour). They are found
through an inverted index of word hashes that keeps each word's latest PER_WORD prompts (a
common word indexes only its newest uses; an older variant is still found through its rarer
words; character-level variants share mostly the common ones, so those are read too), and
the CANDIDATES prompts reached through the most of the query's words are compared exactly.

A probe is *uncentred* when nobody else has sent its text and no near neighbour of it (within
the account rules' near bounds) came from two or more accounts. People share a popular prompt
by pasting it, and edit it now and then; a probing campaign sends every variant once and never
the seed. Only uncentred probes are reported, with the accounts of their near neighbours: the
other accounts that sent variants of the same unsent seed (the query's *partners*).

Most prompts have no near prompt of another account within the search's reach, and that is
decided before the search, from a few posting lists (``SplitProbes._no_near_neighbour``); a
batch (``SplitProbes.observe_batch``, what the campaign layer calls) decides it for all its
prompts in a few array calls, against the prompts remembered before it and its own.

Memory is bounded: ``memory`` sketches (SKETCH_WORDS uint32 each) and word signatures
(allocated as they fill), the posting lists, and a table of ``memory`` text digests (the
accounts that sent each, two at most, least recently seen dropped first). About 500 bytes per
remembered prompt.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from itertools import repeat
from typing import Any

import numpy as np

from ..detect import probes
from ..detect.probes import EMPTY, SKETCH_WORDS

# Linked prompts an account needs: linked to members of a hot group (either side of each link)
# to be linked to it (campaign layer), or sent as the probe side of links, to members of a
# group or (for the benign prober rate) to anyone, to be a *prober*. One is not enough: it can
# be a person's question that a campaign happened to pick as a seed.
MIN_LINKED_PROMPTS = 2
NEIGHBOURS = 16  # as many as an account's own probe memory
PER_WORD = 256  # latest prompts indexed per word hash
CANDIDATES = 64  # prompts reached through the most of a query's words, compared exactly
FIRST_ROWS = 1024  # rows allocated at first
SCREEN_BATCH = 512  # prompts screened together (their pairs: SCREEN_BATCH^2 / 2 flags at most)
SCREEN_ROWS = 4096  # stored rows compared exactly per array call of a batch's screen (x 32 hashes)
SENDERS_KEPT = 2  # accounts kept per text: "someone else sent this" is all that is asked
# A near neighbour (``is_near``) lacks at most NEAR_ADDED of a query's words, so it holds one of
# any NEAR_ADDED + 1 of them: the posting lists of that many words, chosen as those reaching
# furthest back, hold every near prompt the search can find (see SplitProbes._no_near_neighbour).
NEAR_WITNESSES = probes.NEAR_ADDED + 1
_NO_SERIALS = array("q")  # the posting list of a word nobody sent


def text_digest(text: str, salt: bytes = b"") -> int:
    """A 64-bit keyed digest of a prompt's exact text (signed, to fit an int64 array): with a
    secret ``salt``, a snapshot cannot be searched for a known prompt."""
    raw = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=salt[:64]).digest()
    return int.from_bytes(raw, "little", signed=True)


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount64(x: np.ndarray) -> np.ndarray:
    """Set bits of each int64 (``np.bitwise_count`` where NumPy has it, 2.0 on; a byte table before)."""
    x = np.ascontiguousarray(x, dtype=np.int64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _BYTE_BITS[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.int64)


def shares_half(shared: int, query_hashes: int, other_hashes: int) -> bool:
    """Whether two word sketches of these sizes, with ``shared`` hashes in common, share at
    least half of the smaller one's."""
    return 2 * shared >= min(query_hashes, other_hashes)


def is_near(query: frozenset[int], other: frozenset[int]) -> bool:
    """Whether one word sketch is within the account rules' near-neighbour bounds of the other,
    either way round: at most ``NEAR_ADDED`` words added and ``NEAR_DROPPED`` lacked."""
    added, dropped = len(query - other), len(other - query)
    return min(added, dropped) <= probes.NEAR_DROPPED and max(added, dropped) <= probes.NEAR_ADDED


def _near_counts(query_hashes, other_hashes: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """``is_near`` from counts: sketch sizes and the hashes they share."""
    added = query_hashes - shared
    dropped = other_hashes - shared
    return (np.minimum(added, dropped) <= probes.NEAR_DROPPED) & (np.maximum(added, dropped) <= probes.NEAR_ADDED)


class SplitProbes:
    """Every prompt in arrival order in (:meth:`observe`), the partners of each uncentred
    cross-account probe out. Deterministic: the same prompts in the same order give the same
    answers, before and after :meth:`state_dict` / :meth:`load_state`."""

    def __init__(self, memory: int, salt: bytes = b""):
        if memory < 1:
            raise ValueError(f"SplitProbes needs memory >= 1 prompts; got {memory}")
        self.memory = memory
        self._age_bits = int(memory).bit_length()  # serial - first < memory fits below the hit count
        self.salt = salt  # keys the text digests; the layer passes its metadata salt
        self.reset()

    def reset(self) -> None:
        """Forget every prompt."""
        rows = min(self.memory, FIRST_ROWS)  # grown by doubling up to memory: held bytes follow use
        self.sketches = np.full((rows, SKETCH_WORDS), EMPTY, dtype=np.uint32)
        self.words = np.zeros(rows, dtype=np.int32)
        self.digests = np.zeros(rows, dtype=np.int64)
        self.signatures = np.zeros(rows, dtype=np.int64)  # probes.signature of each sketch (rebuilt on load)
        self.accounts: list[str | None] = [None] * rows
        self.live = np.zeros(rows, dtype=bool)  # rows of an account still remembered
        self.serial = 0  # serial of the next prompt; row = serial % memory
        self.postings: dict[int, array] = {}  # word hash -> serials, oldest first
        self.posted = 0  # serials held in all posting lists (for nbytes without a walk)
        self.senders: OrderedDict[int, tuple[str, ...]] = OrderedDict()  # digest -> accounts, LRU

    @property
    def first(self) -> int:
        """Serial of the oldest prompt remembered."""
        return max(0, self.serial - self.memory)

    # -- the question ---------------------------------------------------------------------
    def observe(
        self, account: str, text: str, sketch: tuple[list[int], int] | None = None
    ) -> tuple[tuple[str, int], ...]:
        """Remember the prompt (its serial is ``serial - 1`` afterwards); where it is an
        uncentred cross-account probe, its near neighbours as ``(account, serial)``, oldest
        first, else ``()``. ``sketch``: the prompt's ``probes.word_hashes``, where the caller
        has them already."""
        kept, words = probes.word_hashes(text) if sketch is None else sketch
        digest = text_digest(text, self.salt)
        bits = probes.signature(kept)
        partners = self._screened_alone(account, kept, words, digest, bits) if words >= probes.MIN_WORDS else ()
        self._remember(account, kept, words, digest, bits)
        return partners

    def observe_batch(
        self,
        accounts: Sequence[str],
        texts: Sequence[str],
        sketches: Sequence[tuple[list[int], int]] | None = None,
    ) -> list[tuple[tuple[str, int], ...]]:
        """:meth:`observe` of each prompt in order, the same answers, with the near-neighbour
        screen of the whole batch in a few array calls (:meth:`_screen_batch`) instead of a
        dozen per prompt. Returns each prompt's partners; prompt ``i``'s serial is
        ``serial - len(texts) + i`` afterwards."""
        if len(accounts) != len(texts) or (sketches is not None and len(sketches) != len(texts)):
            raise ValueError(
                f"observe_batch needs one account (and sketch) per prompt; got {len(accounts)} accounts, "
                f"{len(texts)} prompts and {'no' if sketches is None else len(sketches)} sketches"
            )
        if sketches is None:
            sketches = [probes.word_hashes(text) for text in texts]
        out: list[tuple[tuple[str, int], ...]] = []
        for start in range(0, len(texts), SCREEN_BATCH):  # the screen compares a chunk's prompts pairwise
            part = slice(start, start + SCREEN_BATCH)
            out += self._observe_chunk(accounts[part], texts[part], sketches[part])
        return out

    def _observe_chunk(self, accounts, texts, sketches) -> list[tuple[tuple[str, int], ...]]:
        digests = [text_digest(text, self.salt) for text in texts]
        signatures = [probes.signature(kept) for kept, _ in sketches]
        # Screened together: prompts long enough to ask whose text no other account sent before
        # them. Such a text is centred at its turn too, unless the senders table dropped it in
        # between; the per-prompt screen then asks at its turn (``checked_alone``).
        askers, checked_alone = [], set()
        chunk_senders: dict[int, set[str]] = {}
        for i, (account, (_, words), digest) in enumerate(zip(accounts, sketches, digests, strict=True)):
            if words >= probes.MIN_WORDS:
                if self._sent_by_another(account, digest) or chunk_senders.get(digest, {account}) - {account}:
                    checked_alone.add(i)
                else:
                    askers.append(i)
            chunk_senders.setdefault(digest, set()).add(account)
        maybe_near = self._screen_batch(accounts, sketches, digests, signatures, askers)
        out: list[tuple[tuple[str, int], ...]] = []
        for i, (account, (kept, words), digest, bits) in enumerate(
            zip(accounts, sketches, digests, signatures, strict=True)
        ):
            partners: tuple[tuple[str, int], ...] = ()
            latest_near = maybe_near[i]  # None: nothing near, too short to ask, or checked alone
            if i in checked_alone:
                partners = self._screened_alone(account, kept, words, digest, bits)
            elif latest_near is not None and latest_near >= self.first and not self._sent_by_another(account, digest):
                partners = self._partners(account, frozenset(kept), words, digest)
            self._remember(account, kept, words, digest, bits)
            out.append(partners)
        return out

    def _screened_alone(
        self, account: str, kept: list[int], words: int, digest: int, bits: int
    ) -> tuple[tuple[str, int], ...]:
        """A prompt long enough to ask, judged on its own: centred if another account sent its
        text, skipped if nothing near is within reach, else searched."""
        hashes = frozenset(kept)
        if self._sent_by_another(account, digest) or self._no_near_neighbour(account, hashes, digest, bits):
            return ()
        return self._partners(account, hashes, words, digest)

    def neighbourhood(self, account: str, hashes: frozenset[int], digest: int) -> list[int]:
        """Serials of the query's neighbourhood (module docstring), most shared words first."""
        found = [self.postings[h][-PER_WORD:] for h in hashes if h in self.postings]
        if not found:
            return []
        # each posting list is ascending, so a stable sort (a merge of runs) is several times
        # faster than np.unique's; each serial's hits are the length of its run
        reached = np.sort(np.frombuffer(b"".join(found), dtype=np.int64), kind="stable")
        starts = np.empty(reached.size, dtype=bool)
        starts[0] = True
        np.not_equal(reached[1:], reached[:-1], out=starts[1:])
        at = np.flatnonzero(starts)
        serials = reached[at]
        hits = np.empty(at.size, dtype=np.int64)
        hits[:-1] = at[1:] - at[:-1]
        hits[-1] = reached.size - at[-1]
        first = self.first
        keep = serials >= first
        keep[keep] = self.live[serials[keep] % self.memory]
        serials, hits = serials[keep], hits[keep]
        if serials.size == 0:
            return []
        if serials.size > CANDIDATES:
            # most words, then latest: one unique key per serial, so the chosen set is exact
            key = (hits << self._age_bits) | (serials - first)
            serials = serials[np.argpartition(key, -CANDIDATES)[-CANDIDATES:]]
        rows = serials % self.memory
        shared = self._shared_words(hashes, rows)
        sizes = np.minimum(self.words[rows], SKETCH_WORDS)
        close = (2 * shared >= np.minimum(len(hashes), sizes)) & (self.digests[rows] != digest)
        order = np.lexsort((-serials[close], -shared[close]))  # most shared, then latest
        out = []
        for serial in serials[close][order].tolist():
            if self.accounts[serial % self.memory] != account:
                out.append(serial)
                if len(out) == NEIGHBOURS:
                    break
        return out

    def _shared_words(self, hashes: frozenset[int], rows: np.ndarray) -> np.ndarray:
        """How many of the query's word hashes each stored row's sketch holds."""
        query = np.sort(np.fromiter(hashes, dtype=np.uint32, count=len(hashes)))
        sketches = self.sketches[rows]
        at = np.minimum(np.searchsorted(query, sketches), query.size - 1)
        return (query[at] == sketches).sum(axis=1)  # EMPTY padding is never a word hash

    def _no_near_neighbour(self, account: str, hashes: frozenset[int], digest: int, bits: int | None = None) -> bool:
        """True where no prompt the neighbourhood search can reach is near the query
        (``is_near``; another account's, another text, live): then no partner can be reported,
        whatever its neighbourhood, and the search is skipped. False where one is (the search
        then decides). ``bits``: the query's ``probes.signature``, where known.

        A near prompt lacks at most NEAR_ADDED of the query's words, so it holds one of any
        NEAR_WITNESSES of them. The witnesses are the words whose posting lists reach furthest
        back: lists never cut to PER_WORD first (a list shorter than PER_WORD never was: it
        holds every prompt with the word), then cut lists by their oldest serial. The search
        reads each word's latest PER_WORD serials; a prompt it reaches through another word is
        no older than that word's oldest serial, hence than every witness list's, so each
        witness list holds it if it has the word. The witness lists' prompts are therefore all
        the near prompts the search could find."""
        found = self._witness_serials(hashes)
        if not found:
            return True  # none of those words was ever sent by anyone: no prompt shares them
        serials = np.frombuffer(found, dtype=np.int64)  # a row in two lists is tested twice: harmless
        rows = serials[serials >= self.first] % self.memory
        # near: neither side has more than NEAR_ADDED words the other lacks, so the sizes differ by that at most
        sizes = np.minimum(self.words[rows], SKETCH_WORDS)
        keep = self.live[rows] & (np.abs(sizes - len(hashes)) <= probes.NEAR_ADDED)
        if rows.size > CANDIDATES:
            # and each side's signature has at most NEAR_ADDED bits the other's lacks (a word the
            # other lacks sets at most one of them): most rows out without reading a sketch
            keep &= self._signatures_allow(self.signatures[rows], probes.signature(hashes) if bits is None else bits)
        rows, sizes = rows[keep], sizes[keep]
        shared = self._shared_words(hashes, rows)
        near = _near_counts(len(hashes), sizes, shared) & (self.digests[rows] != digest)
        accounts = self.accounts
        return all(accounts[row] == account for row in rows[near].tolist())

    def _witness_serials(self, hashes) -> bytes:
        """The serials (int64 bytes) of the NEAR_WITNESSES posting lists of ``hashes`` that
        reach furthest back (see :meth:`_no_near_neighbour`); empty where none was sent."""
        postings = self.postings
        lists = sorted(map(postings.get, hashes, repeat(_NO_SERIALS)), key=len)
        if len(lists[min(NEAR_WITNESSES, len(lists)) - 1]) >= PER_WORD:
            # how far back a list holds every prompt with its word: all (never cut), or from its oldest
            lists.sort(key=lambda serials: len(serials) - PER_WORD if len(serials) < PER_WORD else serials[0])
        return b"".join(lists[:NEAR_WITNESSES])

    @staticmethod
    def _signatures_allow(signatures: np.ndarray, bits) -> np.ndarray:
        """Where each side's signature has at most NEAR_ADDED bits the other's lacks: the most a
        near pair can have (a word the other lacks sets at most one bit)."""
        allowed = popcount64(signatures & ~bits) <= probes.NEAR_ADDED
        allowed &= popcount64(bits & ~signatures) <= probes.NEAR_ADDED
        return allowed

    def _screen_batch(
        self,
        accounts: Sequence[str],
        sketches: Sequence[tuple[list[int], int]],
        digests: Sequence[int],
        signatures: Sequence[int],
        askers: Sequence[int],
    ) -> list[int | None]:
        """For each prompt ``askers`` names, of a batch about to be observed in order, the
        latest serial of a prompt near it (``is_near``; another account's, another text, live)
        that the neighbourhood search might reach at its turn, or None (None for the others).
        Where that serial is below ``first`` at its turn (None: always), the search can reach no
        near prompt: it is skipped.

        At prompt i's turn the search reads each word's latest PER_WORD serials: serials among
        the latest PER_WORD before the batch (a list only grows at its end) or the batch's own
        earlier prompts. Before the batch, the witness lists of :meth:`_no_near_neighbour` hold
        every near prompt of the first kind; the batch's prompts are compared with each other.
        A row the batch overwrites has a serial below ``first`` by then, and nothing is forgotten
        during a batch, so owners and live flags hold throughout."""
        n = len(sketches)
        latest: list[int | None] = [None] * n
        sizes = np.array([len(kept) for kept, _ in sketches], dtype=np.int64)
        bits = np.array(signatures, dtype=np.int64)
        text_digests = np.array(digests, dtype=np.int64)
        # -- prompts remembered before the batch: every asker's witness lists, in array calls
        found = [self._witness_serials(sketches[i][0]) for i in askers]
        counts = np.fromiter(map(len, found), dtype=np.int64, count=len(found)) // 8
        if counts.sum():
            serials = np.frombuffer(b"".join(found), dtype=np.int64)
            rows = self._rows_of(serials)
            row_sizes = np.minimum(self.words[rows], SKETCH_WORDS)
            # each asker's size and signature repeated over its serials (cheaper than gathering them)
            keep = np.abs(row_sizes - np.repeat(sizes[askers], counts)) <= probes.NEAR_ADDED
            keep &= self._signatures_allow(self.signatures[rows], np.repeat(bits[askers], counts))
            keep &= serials >= self.first
            keep &= self.live[rows]
            at = np.flatnonzero(keep)
            asker = np.asarray(askers, dtype=np.int64)[np.searchsorted(np.cumsum(counts), at, side="right")]
            serials, rows, row_sizes = serials[at], rows[at], row_sizes[at]
            shared = self._shared_words_of_many(sketches, asker, rows)
            near = _near_counts(sizes[asker], row_sizes, shared) & (self.digests[rows] != text_digests[asker])
            owners = self.accounts
            for i, serial, row in zip(asker[near].tolist(), serials[near].tolist(), rows[near].tolist(), strict=True):
                if owners[row] != accounts[i] and (latest[i] is None or serial > latest[i]):
                    latest[i] = serial
        # -- the batch's own earlier prompts: pairs (i, j < i) that may be near, then exactly
        if len(askers) and n > 1:
            pairs = np.tril(np.ones((n, n), dtype=bool), -1)[askers]
            pairs &= np.abs(sizes[askers, None] - sizes[None, :]) <= probes.NEAR_ADDED
            pairs &= self._signatures_allow(bits[None, :], bits[askers, None])
            pairs &= text_digests[askers, None] != text_digests[None, :]
            at, earlier = np.nonzero(pairs)
            first_serial = self.serial
            for i, j in zip(np.asarray(askers)[at].tolist(), earlier.tolist(), strict=True):
                if accounts[j] != accounts[i] and is_near(frozenset(sketches[i][0]), frozenset(sketches[j][0])):
                    serial = first_serial + j
                    if latest[i] is None or serial > latest[i]:
                        latest[i] = serial
        return latest

    def _rows_of(self, serials: np.ndarray) -> np.ndarray:
        """``serials % memory`` for serials at least ``first``, by subtraction (an int64 division
        per element costs several times more); any row for older ones (rule them out)."""
        rows = serials - (self.first // self.memory) * self.memory
        rows -= self.memory * (rows >= self.memory)
        return np.maximum(rows, 0, out=rows)

    def _shared_words_of_many(
        self, sketches: Sequence[tuple[list[int], int]], asker: np.ndarray, rows: np.ndarray
    ) -> np.ndarray:
        """How many of prompt ``asker[k]``'s kept hashes stored row ``rows[k]`` holds, for every k:
        one sorted key per (prompt, hash), prompt in the high bits, and one search of them all."""
        out = np.zeros(rows.size, dtype=np.int64)
        if rows.size == 0:
            return out
        lengths = np.fromiter((len(kept) for kept, _ in sketches), dtype=np.int64, count=len(sketches))
        owner = np.repeat(np.arange(len(sketches), dtype=np.int64), lengths)
        keys = (owner << 32) | np.fromiter(
            (h for kept, _ in sketches for h in kept), dtype=np.int64, count=int(lengths.sum())
        )  # each prompt's kept hashes are sorted, so keys are too
        for start in range(0, rows.size, SCREEN_ROWS):
            block = slice(start, start + SCREEN_ROWS)
            wanted = (asker[block, None] << 32) | self.sketches[rows[block]].astype(np.int64)
            at = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
            out[block] = (keys[at] == wanted).sum(axis=1)  # EMPTY padding is never a word hash
        return out

    def _sent_by_another(self, account: str, digest: int) -> bool:
        """Whether another account sent this very text: then it is centred, whatever its neighbours."""
        senders = self.senders.get(digest)  # distinct accounts, one or two
        return senders is not None and (len(senders) > 1 or senders[0] != account)

    def _partners(self, account: str, hashes: frozenset[int], words: int, digest: int) -> tuple[tuple[str, int], ...]:
        """The search and the probe rules, for a prompt no other account sent that may have a near
        neighbour (the screens are the callers')."""
        near = self.neighbourhood(account, hashes, digest)
        if len(near) < probes.MIN_RELATED:
            return ()
        rows = [serial % self.memory for serial in near]
        candidates = [(self._hashes(row), int(self.words[row])) for row in rows]
        near_ones = [is_near(hashes, other) for other, _ in candidates]
        if not any(near_ones):
            return ()  # no near neighbour, no partner: nothing to report whatever the rules say
        if not (
            probes.is_neighbourhood_probe(hashes, words, candidates) or probes.is_seed_probe(hashes, words, candidates)
        ):
            return ()
        partners = []
        for serial, row, is_near_one in zip(near, rows, near_ones, strict=True):
            if is_near_one:
                if len(self.senders.get(int(self.digests[row]), ())) >= SENDERS_KEPT:
                    return ()  # a variant of a prompt people share
                partners.append((self.accounts[row], serial))
        return tuple(sorted(partners, key=lambda p: p[1]))

    def _hashes(self, row: int) -> frozenset[int]:
        return probes.sketch_set(self.sketches[row], int(self.words[row]))

    # -- remembering ----------------------------------------------------------------------
    def _remember(self, account: str, kept: list[int], words: int, digest: int, bits: int) -> None:
        self._store_row(account, kept, words, digest, bits)
        senders = self.senders.get(digest, ())
        if account not in senders and len(senders) < SENDERS_KEPT:
            senders = (*senders, account)
        self.senders[digest] = senders
        self.senders.move_to_end(digest)
        while len(self.senders) > self.memory:
            self.senders.popitem(last=False)

    def _store_row(
        self, account: str | None, kept: list[int], words: int, digest: int, bits: int | None = None
    ) -> None:
        serial = self.serial
        row = serial % self.memory
        if row == len(self.words):
            self._grow()
        probes.store_sketch(self.sketches[row], kept)
        self.words[row] = words
        self.digests[row] = digest
        self.signatures[row] = probes.signature(kept) if bits is None else bits
        self.accounts[row] = account
        self.live[row] = account is not None
        self.serial = serial + 1
        postings = self.postings
        self.posted += len(kept)
        for h in kept:
            serials = postings.get(h)
            if serials is None:
                serials = postings[h] = array("q")
            serials.append(serial)
            if len(serials) >= 2 * PER_WORD:
                self.posted -= len(serials) - PER_WORD
                del serials[:-PER_WORD]  # only the latest PER_WORD are ever read
        if self.serial % self.memory == 0:
            # words not sent within the memory index nothing: drop their lists
            first = self.first
            for h in [h for h, serials in self.postings.items() if serials[-1] < first]:
                self.posted -= len(self.postings.pop(h))

    def _grow(self) -> None:
        rows = min(self.memory, 2 * len(self.words))
        extra = rows - len(self.words)
        self.sketches = np.concatenate([self.sketches, np.full((extra, SKETCH_WORDS), EMPTY, dtype=np.uint32)])
        self.words = np.concatenate([self.words, np.zeros(extra, dtype=np.int32)])
        self.digests = np.concatenate([self.digests, np.zeros(extra, dtype=np.int64)])
        self.signatures = np.concatenate([self.signatures, np.zeros(extra, dtype=np.int64)])
        self.live = np.concatenate([self.live, np.zeros(extra, dtype=bool)])
        self.accounts.extend([None] * extra)

    def forget(self, account: str) -> None:
        """Take an account's prompts out (its rows stop being anyone's neighbours; its texts no
        longer count as sent by it)."""
        for row, owner in enumerate(self.accounts):
            if owner == account:
                self.accounts[row] = None
                self.live[row] = False
        for digest in [d for d, senders in self.senders.items() if account in senders]:
            kept = tuple(a for a in self.senders[digest] if a != account)
            if kept:
                self.senders[digest] = kept
            else:
                del self.senders[digest]

    def nbytes(self) -> int:
        """Approximate bytes held."""
        postings = 64 * len(self.postings) + 8 * self.posted
        rows = self.sketches.nbytes + self.words.nbytes + self.digests.nbytes + self.signatures.nbytes
        rows += 9 * len(self.words)  # live flags and account references
        return rows + postings + 120 * len(self.senders)

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"header": JSON-able dict, "arrays": {name: ndarray}}``: the remembered rows in
        arrival order and the senders table, least recently seen first. The posting lists are
        rebuilt from the rows on load (only each word's latest PER_WORD are ever read)."""
        first, serial = self.first, self.serial
        rows = [s % self.memory for s in range(first, serial)]
        header = {
            "memory": self.memory,
            "serial": serial,
            "accounts": [self.accounts[r] for r in rows],
            "senders": [[d, list(a)] for d, a in self.senders.items()],
        }
        arrays = {
            "split_sketches": self.sketches[rows] if rows else np.zeros((0, SKETCH_WORDS), dtype=np.uint32),
            "split_words": self.words[rows],
            "split_digests": self.digests[rows],
        }
        return {"header": header, "arrays": arrays}

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace everything with a :meth:`state_dict` (of this memory or a smaller one)."""
        header, arrays = state["header"], state["arrays"]
        if int(header["memory"]) > self.memory:
            raise ValueError(
                f"the snapshot remembers {header['memory']} prompts across accounts; this engine keeps "
                f"{self.memory} (raise campaign_probe_memory)"
            )
        self.reset()
        kept = len(header["accounts"])
        self.serial = int(header["serial"]) - kept
        for account, sketch, words, digest in zip(
            header["accounts"], arrays["split_sketches"], arrays["split_words"], arrays["split_digests"], strict=True
        ):
            size = min(int(words), SKETCH_WORDS)
            # a forgotten account's row (no owner) stays a row that matches nothing
            kept_hashes = sketch[:size].tolist() if account is not None else []
            self._store_row(account, kept_hashes, int(words), int(digest))
        self.senders = OrderedDict((int(d), tuple(a)) for d, a in header["senders"])
