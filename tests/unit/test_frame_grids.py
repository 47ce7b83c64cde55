"""Frame grids (probewatch.detect.grids): a prompt's parts, the grid-probe rule against a plain
reference over the earlier prompts, what it finds in grids and leaves alone in apps,
pipelines and conversations, and how its memory travels through snapshots. All prompts are
written here."""

from __future__ import annotations

import math
import random
import zlib

import numpy as np

from probewatch.detect.features import AccountState, QueryFacts
from probewatch.detect.grids import (
    GRID_LEVELS,
    HEAD_PARTS,
    PART_MEMORY,
    TAIL_PARTS,
    is_grid_probe,
    parts_signature,
    prompt_parts,
    remember_parts,
)

PERSONAS = [
    "You are a patient kindergarten teacher.",
    "You are a cautious corporate lawyer.",
    "You are a sarcastic stand-up comedian.",
    "You are a retired sea captain telling stories.",
    "You are a strict grammar teacher.",
    "You are an enthusiastic sports commentator.",
]
QUESTIONS = [
    "Why do leaves change colour in the autumn?",
    "How should I prepare for a job interview at a bank?",
    "What causes the tides to rise and fall each day?",
    "Write a short note thanking my neighbour for the help.",
    "Is it safe to eat raw cookie dough?",
    "How do vaccines train the immune system?",
    "What is the best way to learn a second language?",
]


def _crc(line: str) -> int:
    return zlib.crc32(line.encode()) or 1


def count_marks(prompts: list[str]) -> tuple[AccountState, list[bool]]:
    state, marks = AccountState(32, 8), []
    for text in prompts:
        mark, probe = state.note_prompt(text)
        state.update(QueryFacts(math.nan, math.nan, 0.5, 0.5, 0, mark, probe), None)
        marks.append(probe)
    return state, marks


def grid_marks(prompts: list[str]) -> list[bool]:
    """The grid rule alone over ``prompts`` (an account's other probe rules aside)."""
    ring_parts = np.zeros(PART_MEMORY, dtype=np.uint32)
    ring_owner = np.zeros(PART_MEMORY, dtype=np.uint32)
    written = np.zeros(1, dtype=np.int64)
    marks = []
    for text in prompts:
        parts = prompt_parts(text)
        marks.append(is_grid_probe(parts, ring_parts, ring_owner, int(written[0])))
        remember_parts(parts, ring_parts, ring_owner, written)
    return marks


# -- parts ---------------------------------------------------------------------------------


def test_parts_are_segments_of_three_words_or_more_case_spacing_and_punctuation_aside():
    assert prompt_parts("You are a Pirate.\n\n  Why is the   sky blue?  ") == [
        _crc("you are a pirate"),
        _crc("why is the sky blue"),
    ]
    # cut after a sentence and after a colon, with the quotes and the label around them dropped
    assert prompt_parts('Rewrite it for a child: "The cat sat down." Then stop here.') == [
        _crc("rewrite it for a child"),
        _crc("the cat sat down"),
        _crc("then stop here"),
    ]
    assert prompt_parts("Context: the council approved a park.\nWrite a headline for it.") == [
        _crc("the council approved a park"),
        _crc("write a headline for it"),
    ]
    # a code fence, a label and a two-word line are formatting, not parts
    assert prompt_parts("Fix this function:\n```python\nreturn execute\n```\nAnswer:") == []
    assert prompt_parts("One sentence only, however long it is") == []
    assert prompt_parts("") == [] and prompt_parts("\n\n\n") == []
    # one part said twice is one part: no grid of one
    assert prompt_parts("the same line here\nThe same line  here.") == []


def test_a_long_prompt_is_read_by_its_first_and_last_lines():
    lines = [f"line number {i} of a pasted document" for i in range(20)]
    kept = [_crc(line) for line in lines[:HEAD_PARTS] + lines[-TAIL_PARTS:]]
    assert prompt_parts("\n".join(lines)) == kept
    assert prompt_parts(". ".join(lines) + ".") == kept  # sentences of one line alike
    # a prompt longer than the characters read is read by its head and its tail
    middle = "filler words in the middle. " * 5000
    assert prompt_parts(". ".join(lines[:10]) + ". " + middle + ". ".join(lines[10:]) + ".") == kept


def test_odd_text_gives_parts_without_errors():
    assert len(prompt_parts("caf\u00e9 au lait please\n\ud800 lone surrogate here now")) == 2
    assert len(prompt_parts("x " * 50_000 + "\n" + "y z w " * 10)) == 2


# -- the rule against a plain reference ------------------------------------------------------


def _reference(parts: list[int], earlier: list[set[int]]) -> bool:
    """The definition as it reads: for some part x, GRID_LEVELS - 1 distinct earlier prompts
    held x and not all the rest, and GRID_LEVELS - 1 held all the rest and not x; and no
    earlier prompt held every part."""
    mine = set(parts)
    distinct = {frozenset(held) for held in earlier}
    if any(mine <= held for held in distinct):
        return False
    for x in parts:
        rest = mine - {x}
        under_other = sum(1 for held in distinct if x in held and not rest <= held)
        around_other = sum(1 for held in distinct if x not in held and rest <= held)
        if under_other >= GRID_LEVELS - 1 and around_other >= GRID_LEVELS - 1:
            return True
    return False


def test_the_rule_matches_the_reference_on_random_prompts_including_a_wrapped_ring():
    rng = random.Random(7)
    marked = 0
    for trial in range(60):
        universe = [rng.getrandbits(32) | 1 for _ in range(rng.randint(3, 10))]
        ring_parts = np.zeros(PART_MEMORY, dtype=np.uint32)
        ring_owner = np.zeros(PART_MEMORY, dtype=np.uint32)
        written = np.zeros(1, dtype=np.int64)
        history: list[tuple[int, list[int]]] = []  # (first ring entry, parts) of each prompt
        for _ in range(rng.choice((40, 150, 400))):
            parts = rng.sample(universe, rng.randint(2, min(4, len(universe))))
            count = int(written[0])
            # the earlier prompts wholly in the ring; once it has wrapped, not its oldest (which
            # may have lost parts) nor any prompt with the same parts as that one
            whole = [(start, p) for start, p in history if count <= PART_MEMORY or start >= count - PART_MEMORY]
            if count > PART_MEMORY:
                oldest = next(p for start, p in reversed(history) if start <= count - PART_MEMORY)
                whole = [(start, p) for start, p in whole if set(p) != set(oldest)]
            got = is_grid_probe(parts, ring_parts, ring_owner, count)
            assert got == _reference(parts, [set(p) for _, p in whole]), (trial, parts)
            marked += got
            history.append((count, parts))
            remember_parts(parts, ring_parts, ring_owner, written)
        assert int(written[0]) == sum(len(p) for _, p in history)
    assert marked > 20  # the random prompts do cross factors now and then


def test_the_ring_and_signatures_are_written_as_entry_by_entry_writes_of_numpy_signatures_would():
    """Snapshots hold the ring and each part's signature: the slice writes and the array-module
    signature must store exactly what one write per part of NumPy's sorted-uint32 checksum did."""
    rng = random.Random(3)
    ring_parts = np.zeros(PART_MEMORY, dtype=np.uint32)
    ring_owner = np.zeros(PART_MEMORY, dtype=np.uint32)
    written = np.zeros(1, dtype=np.int64)
    plain_parts, plain_owner, count = ring_parts.copy(), ring_owner.copy(), 0
    for _ in range(500):  # 2-6 parts a prompt: the ring wraps several times, some prompts across its end
        parts = [rng.getrandbits(32) or 1 for _ in range(rng.randint(2, 6))]
        expected = zlib.crc32(np.sort(np.asarray(parts, dtype=np.uint32)).tobytes()) or 1
        assert parts_signature(parts) == expected
        remember_parts(parts, ring_parts, ring_owner, written)
        for part in parts:
            plain_parts[count % PART_MEMORY], plain_owner[count % PART_MEMORY] = part, expected
            count += 1
        assert int(written[0]) == count
        assert np.array_equal(ring_parts, plain_parts) and np.array_equal(ring_owner, plain_owner)
    assert parts_signature([0xFFFFFFFF, 1]) == parts_signature([1, 0xFFFFFFFF])  # order aside, full 32-bit range


def test_a_prompt_retried_is_one_level_not_several():
    frame, other = "Answer as a strict grammar teacher.", "Answer as a sleepy cat."
    payloads = [f"Question {w} is about something else entirely." for w in ("one", "two", "three", "four")]
    asked = "Why do leaves change colour in the autumn?"
    prompts = [f"{frame}\n{p}" for p in payloads] + [f"{other}\n{asked}"] * 3 + [f"{frame}\n{asked}"]
    assert not any(grid_marks(prompts))
    # three distinct frames around it make it a level each
    frames = ["Answer as a sleepy cat.", "Answer as a busy chef.", "Answer as a tired pilot."]
    prompts = [f"{frame}\n{p}" for p in payloads] + [f"{f}\n{asked}" for f in frames] + [f"{frame}\n{asked}"]
    assert grid_marks(prompts)[-1]
    assert parts_signature([3, 1, 2]) == parts_signature([1, 2, 3]) != parts_signature([1, 2])


# -- what it finds and what it leaves alone ------------------------------------------------


def _grid(by_persona: bool, in_front: bool = True) -> list[str]:
    cells = (
        [(p, q) for p in PERSONAS for q in QUESTIONS] if by_persona else [(p, q) for q in QUESTIONS for p in PERSONAS]
    )
    return [f"{p}\n\n{q}" if in_front else f"{q}\n\n{p}" for p, q in cells]


def test_a_persona_grid_is_marked_once_both_factors_have_enough_levels():
    for by_persona in (True, False):
        for in_front in (True, False):
            prompts = _grid(by_persona, in_front)
            _, marks = count_marks(prompts)
            # from the fourth level of each factor on, every cell: (6 - 3) x (7 - 3) of 42
            assert sum(marks) == (len(PERSONAS) - GRID_LEVELS + 1) * (len(QUESTIONS) - GRID_LEVELS + 1)


def test_an_app_template_around_new_inputs_is_never_marked():
    template = (
        "You are the assistant of Acme Bank. Answer politely and briefly.\nCustomer message: {}\nReply in English."
    )
    prompts = [template.format(f"my card number {i} was declined at the shop today") for i in range(80)]
    assert sum(grid_marks(prompts)) == 0


def test_a_pipeline_of_three_prompts_per_item_is_never_marked_and_one_of_four_is():
    steps = [
        "Summarise this article in two sentences.",
        "Write a headline for this article.",
        "List the people named in this article.",
        "Write a tweet announcing this article.",
    ]
    towns = ["Leeds", "Bath", "York", "Hull", "Ely", "Wells", "Derby", "Ripon", "Truro", "Exeter"]
    items = [
        f"The council of {t} approved a new park, plan {k} of {n}." for t in towns for k, n in ((1, 3), (2, 3), (3, 3))
    ]
    three = [f"{step}\n{item}" for item in items for step in steps[:3]]
    assert sum(grid_marks(three)) == 0
    four = [f"{step}\n{item}" for item in items for step in steps]
    # each item's fourth prompt, from the fourth item on (the fourth step needs three other items)
    assert sum(grid_marks(four)) == len(items) - (GRID_LEVELS - 1)


def test_conversations_and_editing_are_never_marked():
    rng = random.Random(3)
    words = [
        "river",
        "budget",
        "castle",
        "engine",
        "violin",
        "harbour",
        "garden",
        "ticket",
        "winter",
        "museum",
        "rocket",
        "pepper",
    ]
    turns = [f"Can you tell me about the {' '.join(rng.sample(words, 3))} question {i}?" for i in range(40)]
    system = "You are a helpful assistant for a travel agency."
    # a sliding context window: the system prompt and the last four turns
    window = ["\n".join([system, *turns[max(0, i - 3) : i + 1]]) for i in range(len(turns))]
    assert sum(grid_marks(window)) == 0
    # re-sending one prompt, and editing its lines one at a time, dropping and restoring them
    base = [
        "Please review my cover letter below.",
        "I am applying for a nursing job.",
        "I have five years of experience.",
    ]
    edits = ["\n".join(base)] * 5
    for i in range(12):
        lines = list(base)
        lines[i % 3] = lines[i % 3].replace(".", f" (version {i}).")
        edits.append("\n".join(lines))
        edits.append("\n".join(line for j, line in enumerate(base) if j != i % 3))
    assert sum(grid_marks(edits)) == 0


def test_a_grid_through_a_fixed_wrapper_with_overlapping_frames_is_marked():
    """A wrapper line around every prompt, and frames that share some of their lines (worked
    examples drawn from one pool), leave both factors in place."""
    wrapper = "You answer questions for the quiz night of the Red Lion pub."
    examples = [
        "The Nile flows north into the sea.",
        "Mount Everest is the tallest peak.",
        "The Amazon carries the most water.",
        "Lake Baikal is the deepest lake.",
        "The Sahara is a hot desert.",
    ]
    frames = [examples[i : i + 2] for i in range(4)]  # neighbouring frames share an example
    prompts = ["\n".join([wrapper, *frame, q]) for q in QUESTIONS for frame in frames]
    marks = grid_marks(prompts)
    # from the fourth question on, each question's fourth frame (and later ones in turn)
    assert sum(marks) >= len(QUESTIONS) - GRID_LEVELS + 1
    assert not any(marks[: (GRID_LEVELS - 1) * len(frames)])


def test_frames_after_a_colon_or_a_sentence_count_and_frames_woven_into_the_sentence_do_not():
    inline = [f"{p} {q}" for p in PERSONAS for q in QUESTIONS]
    colon = [f"{p.rstrip('.')}: {q}" for p in PERSONAS for q in QUESTIONS]
    expected = (len(PERSONAS) - GRID_LEVELS + 1) * (len(QUESTIONS) - GRID_LEVELS + 1)
    assert sum(grid_marks(inline)) == sum(grid_marks(colon)) == expected
    woven = [f"Speaking as {p[8:].rstrip('.')}, {q[0].lower()}{q[1:]}" for p in PERSONAS for q in QUESTIONS]
    assert sum(grid_marks(woven)) == 0


# -- snapshots -------------------------------------------------------------------------------


def test_snapshots_keep_the_parts_and_give_the_same_marks(tmp_path):
    """Saved at t and restored, an engine marks the rest of a grid as it would have without
    the snapshot; an engine that never saw the first half marks none of the rest."""
    import probewatch as pw

    prompts = _grid(by_persona=True)
    split = 3 * len(QUESTIONS) + 2
    vectors = np.random.default_rng(3).normal(size=(len(prompts), 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def probes_after(engine) -> int:
        before = int(engine.pipeline.states["grid"].probes[1]) if "grid" in engine.pipeline.states else 0
        engine.observe_embeddings(["grid"] * (len(prompts) - split), vectors[split:], prompts=prompts[split:])
        return int(engine.pipeline.states["grid"].probes[1]) - before

    straight = pw.Engine(device="cpu", campaigns=False)
    saved = pw.Engine(device="cpu", campaigns=False)
    for engine in (straight, saved):
        engine.observe_embeddings(["grid"] * split, vectors[:split], prompts=prompts[:split])
    path = tmp_path / "snapshot.npz"
    saved.save(path)
    restored = pw.Engine.load(path)
    state = restored.pipeline.states["grid"]
    assert int(state.parts_written[0]) == 2 * split and state.part_owners.dtype == np.uint32
    expected = probes_after(straight)
    assert expected >= (len(PERSONAS) - GRID_LEVELS + 1) * (len(QUESTIONS) - GRID_LEVELS + 1)
    assert probes_after(restored) == expected
    assert probes_after(pw.Engine(device="cpu", campaigns=False)) < expected


def test_a_snapshot_of_0_16_0_loads_with_no_parts_remembered(tmp_path):
    """0.16.0 kept whole lines in arrays named grid_*; 0.16.1 reads none of them and starts each
    account's part memory empty, so its marks are those of a fresh memory."""
    import probewatch as pw

    prompts = _grid(by_persona=True)
    vectors = np.random.default_rng(4).normal(size=(len(prompts), 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    split = 3 * len(QUESTIONS)
    engine = pw.Engine(device="cpu", campaigns=False)
    engine.observe_embeddings(["grid"] * split, vectors[:split], prompts=prompts[:split])
    engine.save(tmp_path / "now.npz")
    with np.load(tmp_path / "now.npz", allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files if not name.startswith("state_part")}
    arrays["state_grid_parts"] = np.ones((1, 192), dtype=np.uint32)
    arrays["state_grid_owner"] = np.zeros((1, 192), dtype=np.uint8)
    arrays["state_grid_counts"] = np.array([[384, 192]], dtype=np.int64)
    np.savez(tmp_path / "old.npz", **arrays)
    old = pw.Engine.load(tmp_path / "old.npz")
    state = old.pipeline.states["grid"]
    assert int(state.parts_written[0]) == 0 and not state.part_ring.any()
    now = pw.Engine.load(tmp_path / "now.npz")
    counts = []
    for engine in (now, old):
        before = int(engine.pipeline.states["grid"].probes[1])
        engine.observe_embeddings(["grid"] * (len(prompts) - split), vectors[split:], prompts=prompts[split:])
        counts.append(int(engine.pipeline.states["grid"].probes[1]) - before)
    # with the memory, every cell from the fourth persona and the fourth question on; without
    # it, none of the remaining three personas' cells (a fresh memory sees three levels only)
    assert sum(grid_marks(prompts[split:])) == 0
    assert counts[0] - counts[1] == (len(PERSONAS) - GRID_LEVELS + 1) * (len(QUESTIONS) - GRID_LEVELS + 1)
