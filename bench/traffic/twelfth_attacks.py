"""A twelfth wording of the perturbation strategy: written before the eleventh wording's misses
were looked at and before any detector ran on this one, as the blind check of the change
designed from the eleventh. Written by the designer of that change, who had already thought
of comparing prompts by their lines when writing it: a weaker check than a wording written
before the idea.

Nothing here may be changed to suit a detector (add a thirteenth set instead).

| strategy | how its probes differ from the eleven earlier sets |
| --- | --- |
| perturbation_chain | *Task-template grids*: the same input passages sent under one task template after another, as instruction-tuning collections phrase one dataset's items under many templates (FLAN, Wei et al. 2022, about ten templates a dataset; PromptSource, Bach et al. 2022) and as distillation sets ask a teacher many tasks of one input, so the student learns how the teacher's answers move with the task on fixed inputs. Each account picks 4-10 of 18 templates written here and 5-14 passages, and walks the grid input by input, template by template or in a shuffled order; a longer account takes fresh passages for the next pass. A template puts its passage inline after a colon, on its own line, in quotes or in front of a question, so the instruction is not always a line of its own. Passages: BBC News paragraphs of 25-90 words (test half), which no earlier set sends |
"""

from __future__ import annotations

import random

from . import sources
from .attacks import Query, _sample, check_later_wording, grid_cells

TWELFTH_PREFIX = "twelfth_"
TWELFTH_STRATEGIES = (TWELFTH_PREFIX + "perturbation_chain",)

# "{}" takes the passage
_TEMPLATES = (
    "Summarize the following news paragraph in one sentence: {}",
    "{}\n\nTL;DR:",
    "Article: {}\nWrite a headline for this article.",
    "Translate the following text into French.\n{}",
    'Text: "{}"\nIs the tone of this text positive, negative or neutral?',
    "List every person, organisation and place named in the passage below.\n\n{}",
    "{}\n\nWhich category does this news belong to: business, entertainment, politics, sport or tech?",
    "Rewrite this so that a ten-year-old can understand it: {}",
    "Write three quiz questions that can be answered from this text. {}",
    "{}\nQuestion: What is the main point of the passage above?\nAnswer:",
    "Paraphrase the passage without changing its meaning.\nPassage: {}\nParaphrase:",
    "Write a tweet of at most 280 characters announcing this news: {}",
    "{}\n\nWhat might happen next? Give two possibilities.",
    "Extract the key facts from this text as a bullet list.\n\n{}",
    "Does the following paragraph state an opinion or only facts? Explain briefly. {}",
    "Given the context below, write one question whose answer is a number.\nContext: {}",
    "Identify the claim in this paragraph that is easiest to fact-check, and say how you would check it.\n{}",
    "{}\n\nKeywords:",
)


def _passages() -> list[Query]:
    # attacks live in the test half; one paragraph of each article (its first after the headline
    # that has the right length), spacing collapsed
    out = []
    for unit in sources.split_units(sources.bbc_news())["test"]:
        for paragraph in unit.texts[1:]:
            text = " ".join(paragraph.split())
            if 25 <= len(text.split()) <= 90:
                out.append((text, unit.key))
                break
    return out


def template_grid(rng: random.Random, passages: list[Query], n: int) -> list[Query]:
    """``n`` queries of one account's grid (fewer once every passage is used): its passages
    under each of its templates, walked input by input, template by template or shuffled."""
    templates = _sample(rng, list(_TEMPLATES), rng.randint(4, 10))
    picked = _sample(rng, passages, rng.randint(5, 14))
    order = rng.choice(("by_payload", "by_frame", "shuffled"))
    used = set(picked)
    out: list[Query] = []
    while len(out) < n and picked:
        cells = grid_cells(rng, templates, picked, order)
        if order != "shuffled":  # shuffled within each block of one input (or one template)
            width = len(templates) if order == "by_payload" else len(picked)
            blocks = [cells[i : i + width] for i in range(0, len(cells), width)]
            for block in blocks:
                rng.shuffle(block)
            cells = [cell for block in blocks for cell in block]
        out += [(template.format(text), key) for template, (text, key) in cells]
        # a longer account takes fresh passages for the next pass: a grid never repeats a query
        picked = _sample(rng, [p for p in passages if p not in used], len(picked))
        used.update(picked)
    return out[:n]


def build_twelfth_passages(rng: random.Random, pool_size: int) -> list[Query]:
    """The passage pool the twelfth wording's accounts draw their grids from."""
    return _sample(rng, _passages(), pool_size)


def twelfth_queries(strategy: str, rng: random.Random, passages: list[Query], n: int) -> list[Query]:
    """The next ``n`` queries of one twelfth-wording attack account (one task-template grid)."""
    check_later_wording(strategy, TWELFTH_PREFIX, TWELFTH_STRATEGIES)
    return template_grid(rng, passages, n)
