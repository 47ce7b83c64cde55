"""Probes split across accounts (probewatch.campaigns.split_probes): the indexed neighbourhood
against its brute-force definition, what counts as an uncentred probe, memory bounds, forget,
and state (save at t, reload, continue)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from probewatch.campaigns import split_probes
from probewatch.campaigns.split_probes import NEIGHBOURS, SplitProbes, shares_half, text_digest
from probewatch.detect import probes
from tests.support import PROBE_FILLERS, counterfactual_variants, mixed_probe_stream, probe_seed


def brute_force(history: list[tuple[int, str, str]], account: str, text: str) -> list[int]:
    """The definition: serials of the NEIGHBOURS prompts of other accounts (other texts) that
    share the most of the query's words, at least half of the smaller sketch; latest first on ties."""
    hashes = frozenset(probes.word_hashes(text)[0])
    found = []
    for serial, other_account, other_text in history:
        other = frozenset(probes.word_hashes(other_text)[0])
        shared = len(hashes & other)
        if other_account != account and other_text != text and shares_half(shared, len(hashes), len(other)):
            found.append((shared, serial))
    found.sort(reverse=True)
    return [serial for _, serial in found[:NEIGHBOURS]]


@pytest.mark.parametrize("memory", [1_000, 40])
def test_without_a_retrieval_cut_the_index_is_the_brute_force_neighbourhood(memory, monkeypatch):
    # CANDIDATES and PER_WORD only bound the work: past the history's size nothing is cut
    monkeypatch.setattr(split_probes, "CANDIDATES", 100_000)
    monkeypatch.setattr(split_probes, "PER_WORD", 100_000)
    index = SplitProbes(memory)
    history: list[tuple[int, str, str]] = []
    checked = 0
    for account, text in mixed_probe_stream(random.Random(7), 220):
        hashes = frozenset(probes.word_hashes(text)[0])
        found = index.neighbourhood(account, hashes, text_digest(text, index.salt))
        assert found == brute_force(history[-memory:], account, text)
        checked += bool(found)
        index.observe(account, text)
        history.append((index.serial - 1, account, text))
    assert checked > 100  # most queries had a neighbourhood to compare


def test_the_default_cut_still_finds_a_seeds_variants_among_many_prompts():
    rng = random.Random(3)
    index = SplitProbes(10_000)
    for i in range(3_000):  # prompts that share common words with everything
        index.observe(f"busy-{i % 50}", " ".join(["the", "a", "of", "to", *rng.sample(PROBE_FILLERS, 6)]))
    seed = probe_seed(rng)
    variants = counterfactual_variants(rng, seed, 10)
    for i, text in enumerate(variants[:-1]):
        index.observe(f"member-{i}", text)
    last = variants[-1]
    found = index.neighbourhood("member-last", frozenset(probes.word_hashes(last)[0]), text_digest(last))
    assert {index.accounts[s % index.memory] for s in found} == {f"member-{i}" for i in range(len(variants) - 1)}


def test_variants_of_an_unsent_seed_dealt_to_different_accounts_link_them():
    rng = random.Random(11)
    index = SplitProbes(1_000)
    linked = []
    for s in range(6):
        for i, text in enumerate(counterfactual_variants(rng, probe_seed(rng), 10)):
            partners = index.observe(f"member-{(s + i) % 10}", text)
            if partners:
                linked.append((f"member-{(s + i) % 10}", partners))
    assert len(linked) >= 6 * 5  # all but the first few variants of each seed
    for account, partners in linked:
        assert all(p != account and p.startswith("member-") for p, _ in partners)
        assert [serial for _, serial in partners] == sorted(serial for _, serial in partners)


def test_a_popular_prompt_pasted_and_edited_is_centred():
    """People paste a popular prompt as it is and edit it now and then: the edits have the
    prompt itself, sent by two or more accounts, among their near neighbours."""
    rng = random.Random(5)
    seed = probe_seed(rng)
    index = SplitProbes(1_000)
    for i in range(4):
        assert index.observe(f"paster-{i}", " ".join(seed)) == ()
    for i, text in enumerate(counterfactual_variants(rng, seed, 10)):
        assert index.observe(f"editor-{i}", text) == ()


def test_an_edit_someone_else_sent_verbatim_is_centred():
    rng = random.Random(9)
    variants = counterfactual_variants(rng, probe_seed(rng), 10)
    index = SplitProbes(1_000)
    for i, text in enumerate(variants[:6]):
        index.observe(f"member-{i}", text)
    assert index.observe("member-x", variants[6])  # uncentred: linked
    assert index.observe("member-y", variants[6]) == ()  # the same text from another account


def test_short_template_fills_are_no_probes():
    """An app template whose fill is one or two words: prompts under MIN_WORDS distinct words
    are never probes, and the template's words are its seed, which every fill keeps."""
    rng = random.Random(2)
    index = SplitProbes(1_000)
    places = ["kitchen", "hall", "garage", "office", "bedroom", "porch", "attic", "cellar"]
    for i in range(40):
        assert index.observe(f"user-{i}", f"turn on the {rng.choice(places)} lights") == ()
        assert index.observe(f"user-{i}", "lights off") == ()


def test_memory_is_bounded_and_old_prompts_are_no_neighbours():
    rng = random.Random(4)
    seed = probe_seed(rng)
    variants = counterfactual_variants(rng, seed, 10)
    index = SplitProbes(16)
    for i, text in enumerate(variants[:5]):
        index.observe(f"member-{i}", text)
    for i in range(16):  # pushes the variants out of memory
        index.observe(f"other-{i}", " ".join(rng.sample(PROBE_FILLERS, 8)))
    assert index.observe("member-late", variants[5]) == ()
    assert len(index.senders) <= 16
    assert index.first == index.serial - 16
    for i in range(200):
        index.observe(f"other-{i}", " ".join(rng.sample(PROBE_FILLERS, 8)))
    # every `memory` prompts, the lists of words no remembered prompt has are dropped
    cleaned_at = index.serial // 16 * 16
    assert all(serials[-1] >= cleaned_at - 16 for serials in index.postings.values())
    assert len(index.postings) <= 2 * 16 * 8
    assert index.posted == sum(len(serials) for serials in index.postings.values())


def test_rows_are_allocated_as_they_fill(monkeypatch):
    monkeypatch.setattr(split_probes, "FIRST_ROWS", 4)
    index = SplitProbes(10)
    empty = index.nbytes()
    allocated = []
    for i in range(25):
        index.observe(f"a{i}", f"prompt number {i} with some words in it")
        allocated.append(len(index.words))
    assert allocated[:4] == [4] * 4 and allocated[4:8] == [8] * 4 and set(allocated[8:]) == {10}
    assert index.nbytes() > empty
    assert [index.accounts[s % 10] for s in range(15, 25)] == [f"a{i}" for i in range(15, 25)]


def test_forget_takes_an_accounts_prompts_out():
    rng = random.Random(6)
    variants = counterfactual_variants(rng, probe_seed(rng), 10)
    index = SplitProbes(1_000)
    for text in variants[:4]:
        index.observe("member-a", text)
    index.observe("member-b", variants[4])
    index.forget("member-a")
    assert "member-a" not in index.accounts
    assert not any("member-a" in senders for senders in index.senders.values())
    assert index.observe("member-c", variants[5]) == ()  # one neighbour left: no probe


def test_save_at_t_reload_and_continue_equals_uninterrupted():
    events = mixed_probe_stream(random.Random(8), 400)
    rng = random.Random(12)
    for s in range(5):  # and some split probes, so there is something to link
        events += [
            (f"member-{(s + i) % 9}", t) for i, t in enumerate(counterfactual_variants(rng, probe_seed(rng), 10))
        ]
    random.Random(1).shuffle(events)
    straight = SplitProbes(64)
    expected = [straight.observe(a, t) for a, t in events]
    assert sum(map(bool, expected)) >= 10
    t = len(events) // 2
    first = SplitProbes(64)
    for a, text in events[:t]:
        first.observe(a, text)
    first.forget("a3")
    straight_after = SplitProbes(64)
    for a, text in events[:t]:
        straight_after.observe(a, text)
    straight_after.forget("a3")
    state = first.state_dict()
    again = SplitProbes(64)
    again.load_state(state)
    assert [again.observe(a, x) for a, x in events[t:]] == [straight_after.observe(a, x) for a, x in events[t:]]
    assert again.serial == straight_after.serial
    np.testing.assert_array_equal(again.sketches, straight_after.sketches)
    np.testing.assert_array_equal(again.live, straight_after.live)
    np.testing.assert_array_equal(again.signatures, straight_after.signatures)  # rebuilt from the sketches
    assert list(again.senders.items()) == list(straight_after.senders.items())


def test_the_near_neighbour_shortcut_changes_no_answer(monkeypatch):
    # Common words (cut posting lists: the shortcut cannot decide), rare words (it decides),
    # split probes around seeds of rare words (partners to report), repeats and a forget.
    rng = random.Random(21)
    events = mixed_probe_stream(rng, 3000)
    for s in range(40):
        rare_seed = [f"r{s}x{i}" for i in range(10)]
        events += [(f"member-{(s + i) % 7}", t) for i, t in enumerate(counterfactual_variants(rng, rare_seed, 8))]
        events += [(f"user-{s}", " ".join(rng.sample(rare_seed, 6) + rng.sample(PROBE_FILLERS, 3)))]
    random.Random(5).shuffle(events)
    decided = {True: 0, False: 0}
    shortcut = SplitProbes(2_000)
    search = SplitProbes(2_000)
    original = SplitProbes._no_near_neighbour

    def counted(self, *args):
        out = original(self, *args)
        decided[out] += 1
        return out

    monkeypatch.setattr(shortcut, "_no_near_neighbour", counted.__get__(shortcut))
    monkeypatch.setattr(search, "_no_near_neighbour", lambda *args: False)  # always the whole search
    got, expected = [], []
    for i, (account, text) in enumerate(events):
        if i == len(events) // 2:
            shortcut.forget("member-3")
            search.forget("member-3")
        got.append(shortcut.observe(account, text))
        expected.append(search.observe(account, text))
    assert got == expected
    assert sum(map(bool, expected)) >= 40  # partners were reported
    assert decided[True] >= 300 and decided[False] >= 300, decided  # both ways were taken, often
    assert max(len(lst) for lst in shortcut.postings.values()) >= split_probes.PER_WORD  # lists were cut


def _says_none_near(index: SplitProbes, account: str, text: str) -> bool:
    kept, _ = probes.word_hashes(text)
    return index._no_near_neighbour(account, frozenset(kept), text_digest(text, index.salt))


def _reachable_near(index: SplitProbes, account: str, text: str) -> bool:
    """Brute force: is any prompt the search reads (each word's latest PER_WORD) near ``text``?"""
    kept, _ = probes.word_hashes(text)
    query, digest = frozenset(kept), text_digest(text, index.salt)
    reached = {s for h in query for s in index.postings.get(h, [])[-split_probes.PER_WORD :]}
    for serial in reached:
        row = serial % index.memory
        if serial < index.first or not index.live[row] or index.accounts[row] == account:
            continue
        if int(index.digests[row]) != digest and split_probes.is_near(query, index._hashes(row)):
            return True
    return False


def test_the_shortcut_never_says_none_near_while_the_search_can_reach_a_near_prompt():
    seed = [f"s{i}" for i in range(10)]
    index = SplitProbes(5_000)
    index.observe("a", " ".join(seed))
    # four new words added: their lists are the shortest (empty); the fifth witness holds the seed
    assert not _says_none_near(index, "b", " ".join([*seed, "new1", "new2", "new3", "new4"]))
    assert _says_none_near(index, "b", "entirely other words about something else")
    assert not _says_none_near(index, "b", " ".join([*seed[:9], "other"]))  # one word swapped
    assert _says_none_near(index, "a", " ".join([*seed[:9], "other"]))  # its own prompt is no neighbour
    # every seed word used 600 times since, five at a time (no flood prompt is near): the seed's
    # row is cut from every list of its words, out of the search's reach and the shortcut's
    rng = random.Random(2)
    for i in range(1_200):
        index.observe(f"flood-{i % 50}", " ".join(rng.sample(seed, 5) + [f"f{i}x{j}" for j in range(6)]))
    assert min(len(index.postings[h]) for h in probes.word_hashes(" ".join(seed))[0]) >= split_probes.PER_WORD
    edit = " ".join([*seed[:9], "other"])
    assert not _reachable_near(index, "b", edit) and _says_none_near(index, "b", edit)
    index.observe("c", " ".join([*seed[:8], "fresh", "again"]))  # a near prompt within reach again
    assert _reachable_near(index, "b", edit) and not _says_none_near(index, "b", edit)


def _fill(index: SplitProbes, words: list[str], times: int, tag: str) -> None:
    """``times`` prompts of other accounts with ``words`` and six words of their own (none near)."""
    for i in range(times):
        index.observe(f"{tag}-{i % 40}", " ".join([*words, *(f"{tag}{i}y{j}" for j in range(6))]))


@pytest.mark.parametrize("case", ["trimmed lists are short", "old prompts sit deep in long lists"])
def test_the_witnesses_are_the_lists_reaching_furthest_back(case):
    # o is within the search's reach only through some of its words; the shortcut must find it
    w = [f"w{i}" for i in range(8)]
    o, q = " ".join(w), " ".join([*w[:7], "x"])  # q: one word of o swapped
    index = SplitProbes(5_000)
    if case == "trimmed lists are short":
        # w0-w4 used 520 times after o (their lists cut, o gone from them, ~264 long); w5, w6
        # 300 times before o and 200 after (501 long, never cut: o among their latest 256)
        _fill(index, w[5:7], 300, "pre")
        index.observe("a", o)
        _fill(index, w[:5], 520, "cut")
        _fill(index, w[5:7], 200, "post")
    else:
        # w0-w3 first used long before o and 300 times after it (o deep in their lists); w4-w6
        # first used later, 100 times after o (o among their latest 256)
        _fill(index, w[:4], 150, "early")
        _fill(index, w[4:7], 200, "late")
        index.observe("a", o)
        _fill(index, w[:4], 300, "after")
        _fill(index, w[4:7], 100, "then")
    assert _reachable_near(index, "b", q)
    assert not _says_none_near(index, "b", q)


def test_the_shortcut_agrees_with_a_brute_force_reach_over_a_stream_of_cut_lists():
    rng = random.Random(9)
    events = mixed_probe_stream(rng, 2_500)  # sixty common words: their lists are cut
    for s in range(30):
        seed = probe_seed(rng, 8) + [f"rare{s}x{i}" for i in range(rng.randint(0, 3))]
        events += [(f"m{(s + i) % 9}", t) for i, t in enumerate(counterfactual_variants(rng, seed, 6))]
    random.Random(4).shuffle(events)
    index = SplitProbes(3_000)
    said = {True: 0, False: 0}
    reachable = 0
    for account, text in events:
        _, words = probes.word_hashes(text)
        if words >= probes.MIN_WORDS:
            none_near = _says_none_near(index, account, text)
            reach = _reachable_near(index, account, text)
            assert not (none_near and reach), text
            said[none_near] += 1
            reachable += reach
        index.observe(account, text)
    assert said[True] >= 500 and reachable >= 300, (said, reachable)
    assert max(len(lst) for lst in index.postings.values()) >= split_probes.PER_WORD


def _batch_events(seed: int) -> list[tuple[str, str]]:
    """Common words (cut lists), rare seeds whose variants are dealt to different accounts
    (partners within a batch and across batches), repeats, prompts too short to ask, and long
    ones compared on their sketches' bottom-k."""
    rng = random.Random(seed)
    events = mixed_probe_stream(rng, 1_500)
    for s in range(30):
        rare_seed = [f"r{s}x{i}" for i in range(rng.choice([6, 10, 40]))]
        events += [(f"member-{(s + i) % 7}", t) for i, t in enumerate(counterfactual_variants(rng, rare_seed, 8))]
    events += [(f"short-{i % 3}", "two words") for i in range(20)]
    random.Random(seed + 1).shuffle(events)
    return events


@pytest.mark.parametrize(("memory", "seed"), [(2_000, 3), (2_000, 4), (150, 5)])
def test_a_batch_gets_the_answers_of_its_prompts_one_at_a_time(memory, seed):
    # batches of 1 to 1,100 prompts (more than a memory of 150: the batch evicts its own first
    # prompts; more than one screened chunk), an account forgotten between two of them, repeats
    # inside a batch
    events = _batch_events(seed)
    rng = random.Random(seed)
    one_at_a_time, batched = SplitProbes(memory), SplitProbes(memory)
    expected, got, start, batches = [], [], 0, 0
    while start < len(events):
        size = rng.choice([1, 2, 7, 64, 256, 600, 1_100])
        chunk = events[start : start + size]
        expected += [one_at_a_time.observe(a, t) for a, t in chunk]
        sketches = [probes.word_hashes(t) for _, t in chunk] if batches % 2 else None  # given or not
        got += batched.observe_batch([a for a, _ in chunk], [t for _, t in chunk], sketches)
        start, batches = start + size, batches + 1
        if batches == 5:
            one_at_a_time.forget("member-2")
            batched.forget("member-2")
    assert got == expected
    assert sum(map(bool, expected)) >= 5  # partners were reported (9 with the small memory)
    assert batched.serial == one_at_a_time.serial
    np.testing.assert_array_equal(batched.sketches, one_at_a_time.sketches)
    np.testing.assert_array_equal(batched.signatures, one_at_a_time.signatures)
    assert list(batched.senders.items()) == list(one_at_a_time.senders.items())
    assert {h: list(v) for h, v in batched.postings.items()} == {h: list(v) for h, v in one_at_a_time.postings.items()}


@pytest.mark.parametrize(("memory", "batch"), [(3_000, 128), (150, 600)])
def test_the_batch_screen_never_skips_a_search_that_could_reach_a_near_prompt(monkeypatch, memory, batch):
    # every prompt a brute-force reach finds near must be searched: the screen may only skip
    # prompts with nothing near within reach, and it must skip nearly all of those (with a
    # memory of 150 a batch of 600 evicts prompts, and texts from the senders table, as it goes).
    # Among those: variants of an account's own seed (its own prompts are no neighbours) and
    # variants of seeds whose only other variants came from accounts forgotten since.
    rng = random.Random(7)
    base = _batch_events(6)
    half = len(base) // 2
    own, gone, late = [], [], []
    for s in range(30):
        own += [(f"self-{s}", t) for t in counterfactual_variants(rng, [f"o{s}x{i}" for i in range(9)], 8)]
        variants = counterfactual_variants(rng, [f"g{s}x{i}" for i in range(9)], 9)
        gone += [(f"gone-{s % 5}", t) for t in variants[:6]]
        late += [(f"late-{s}", t) for t in variants[6:]]
    first_part, second_part = base[:half] + gone, base[half:] + own + late
    random.Random(8).shuffle(first_part)
    random.Random(9).shuffle(second_part)
    index = SplitProbes(memory)
    searched: list[tuple[str, int]] = []
    original = SplitProbes._partners

    def recording(self, account, hashes, words, digest):
        searched.append((account, self.serial))  # the serial the prompt is about to get
        return original(self, account, hashes, words, digest)

    monkeypatch.setattr(index, "_partners", recording.__get__(index))
    reachable = unreachable = 0
    batches = [first_part[i : i + batch] for i in range(0, len(first_part), batch)]
    forget_before = len(batches)
    batches += [second_part[i : i + batch] for i in range(0, len(second_part), batch)]
    for number, chunk in enumerate(batches):
        if number == forget_before:
            for k in range(5):
                index.forget(f"gone-{k}")
        # what each prompt could reach at its turn: replayed one at a time on a copy
        shadow = SplitProbes(memory)
        shadow.load_state(index.state_dict())
        must_search = set()
        for account, text in chunk:
            _, words = probes.word_hashes(text)
            digest = text_digest(text, shadow.salt)
            if words >= probes.MIN_WORDS and not shadow._sent_by_another(account, digest):
                if _reachable_near(shadow, account, text):
                    must_search.add((account, shadow.serial))
                else:
                    unreachable += 1
            shadow.observe(account, text)
        before = len(searched)
        index.observe_batch([a for a, _ in chunk], [t for _, t in chunk])
        assert must_search <= set(searched[before:])
        reachable += len(must_search)
    searched_without_need = len(searched) - reachable
    assert reachable >= 100 and unreachable >= 300, (reachable, unreachable)
    assert searched_without_need <= 0.05 * unreachable, (searched_without_need, unreachable)


@pytest.mark.parametrize("serial", [0, 7, 99, 100, 101, 250, 1_000_003])
def test_rows_by_subtraction_are_serials_modulo_memory(serial):
    index = SplitProbes(100)
    index.serial = serial  # only the position matters here
    live = np.arange(index.first, serial, dtype=np.int64)
    np.testing.assert_array_equal(index._rows_of(live), live % 100)
    older = np.arange(max(0, index.first - 300), index.first, dtype=np.int64)
    rows = index._rows_of(older)
    assert rows.size == 0 or (rows.min() >= 0 and rows.max() < 100)  # any row, never out of range


def test_a_batch_needs_one_account_per_prompt():
    with pytest.raises(ValueError, match="one account"):
        SplitProbes(10).observe_batch(["a"], ["one prompt", "two prompts"])


def test_popcount_counts_set_bits_with_and_without_bitwise_count(monkeypatch):
    values = np.array([0, 1, 3, 2**62, 2**63 - 1, 0x5555_5555_5555_5555], dtype=np.int64)
    expected = [bin(int(v)).count("1") for v in values]
    assert split_probes.popcount64(values).tolist() == expected
    monkeypatch.delattr(np, "bitwise_count", raising=False)  # NumPy before 2.0
    assert split_probes.popcount64(values).tolist() == expected


def test_text_digests_are_keyed():
    text = "a prompt somebody sent"
    assert text_digest(text, b"k" * 16) != text_digest(text, b"j" * 16) != text_digest(text)
    index = SplitProbes(8, salt=b"k" * 16)
    index.observe("a", text)
    assert int(index.digests[0]) == text_digest(text, b"k" * 16)


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="memory >= 1"):
        SplitProbes(0)
    big = SplitProbes(128)
    big.observe("a", "one two three four five")
    with pytest.raises(ValueError, match="campaign_probe_memory"):
        SplitProbes(64).load_state(big.state_dict())
