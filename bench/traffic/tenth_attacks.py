"""A tenth wording of the perturbation strategy: written after the fifth wording's structure
(``fifth_attacks.py``) had been looked at again and before any detector was measured on this
one, so that what is changed after looking at the fifth is measured on chains nobody had
looked at. Written by the designer of that change: a weaker check than a wording written
before the change was thought of.

Nothing here may be changed to suit a detector (add an eleventh set instead).

| strategy | how its chains differ from the nine earlier sets |
| --- | --- |
| perturbation_chain | *Instruction-following probes by constraint stacking* in the manner of IFEval (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models") and FollowBench (Jiang et al. 2024, multi-level constraints added one at a time): a task is sent with one verifiable output constraint, then each step adds one more constraint after the last, changes the newest one's parameter (a word count, a language, a keyword) or takes the newest one away again, so the student learns how the teacher's answers move with each constraint. Constraints are written as IFEval writes them, 20 to 90 characters. Seeds: FreshQA questions and Mind2Web tasks (test half), which no earlier set probes this way; the bare task is never sent |
"""

from __future__ import annotations

import random

from . import sources
from .attacks import Query, _sample, chained, check_later_wording, distinct_steps

TENTH_PREFIX = "tenth_"
TENTH_STRATEGIES = (TENTH_PREFIX + "perturbation_chain",)

# (wording, parameter values): "{}" takes one value; constraints an instruction-following
# benchmark can verify from the answer alone
_CONSTRAINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Answer in at most {} words.", ("20", "30", "50", "80", "100", "150")),
    ("Your response should contain exactly {} bullet points in markdown.", ("2", "3", "4", "5", "7")),
    ("Your entire response must be in {}, no other language is allowed.", ("French", "German", "Spanish", "Italian", "Hindi")),
    ("Include the keywords {} in your response.", ("'river', 'bank'", "'market', 'price'", "'history'", "'future', 'risk'")),
    ("Do not use any commas in your response.", ("",)),
    ("Your answer must be in all lowercase letters.", ("",)),
    ("Your entire response should be in English, and in all capital letters.", ("",)),
    ("Wrap your entire response with double quotation marks.", ("",)),
    ("Finish your response with this exact phrase: {}. No other words should follow.", ("Is there anything else I can help with?", "Hope this helps", "That is all")),
    ("There should be {} paragraphs. Paragraphs are separated with the markdown divider: ***", ("2", "3", "4", "5")),
    ("Highlight at least {} sections in your answer with markdown, i.e. *highlighted section*.", ("2", "3", "4")),
    ("Your response must have {} sections. Mark the beginning of each section with SECTION X.", ("2", "3", "4")),
    ("At the end of your response, please explicitly add a postscript starting with {}", ("P.S.", "P.P.S", "Note:")),
    ("In your response, the letter {} should appear at least 10 times.", ("e", "q", "z", "k")),
    ("Answer with at least {} sentences.", ("5", "8", "10", "12")),
    ("Give two different responses, separated by six asterisk symbols: ******", ("",)),
    ("First repeat the request word for word without change, then give your answer.", ("",)),
    ("Entire output should be wrapped in JSON format.", ("",)),
    ("Your answer must contain a title, wrapped in double angular brackets, such as <<{}>>.", ("poem of joy", "the plan", "summary")),
    ("Do not include the words {} in the response.", ("'good', 'very'", "'the', 'and'", "'important'")),
)  # fmt: skip


def _constraint(rng: random.Random, index: int) -> str:
    wording, values = _CONSTRAINTS[index]
    return wording.format(rng.choice(values)) if "{}" in wording else wording


def probe_chain(rng: random.Random, task: str, steps: int) -> list[str]:
    """The prompts of one constraint-stacking probe of ``task``: the task with its stacked
    constraints, one change a step (add, re-parameterise or drop the newest)."""
    unused = list(range(len(_CONSTRAINTS)))
    rng.shuffle(unused)
    stack: list[tuple[int, str]] = []

    def add() -> None:
        index = unused.pop()
        stack.append((index, _constraint(rng, index)))

    add()
    out = [" ".join([task] + [text for _, text in stack])]
    for _ in range(steps - 1):
        op = rng.random()
        index, text = stack[-1]
        if op < 0.25 and len(stack) >= 2:  # take the newest constraint away again
            stack.pop()
            unused.insert(0, index)
        elif op < 0.5 and "{}" in _CONSTRAINTS[index][0] and len(_CONSTRAINTS[index][1]) > 1:
            changed = text
            while changed == text:
                changed = _constraint(rng, index)
            stack[-1] = (index, changed)
        elif unused:
            add()
        out.append(" ".join([task] + [text for _, text in stack]))
    return out


def build_tenth_chains(rng: random.Random, pool_size: int) -> list[list[Query]]:
    """Constraint-stacking chains for the tenth wording (see the module docstring)."""
    questions = sources.openings_of_test_half(sources.freshqa(), 4, 40)  # attacks live in the test half
    tasks = sources.openings_of_test_half(sources.mind2web(), 4, 40)
    seeds = _sample(rng, questions, pool_size // 20) + _sample(rng, tasks, pool_size // 20)
    chains = []
    for task, key in seeds:
        # a constraint taken away again gives back a prompt sent before: not sent twice
        chains.append(distinct_steps(probe_chain(rng, task, rng.randint(5, 25)), key, frozenset([task])))
    return [chain for chain in chains if chain]


def tenth_queries(strategy: str, rng: random.Random, chains: list[list[Query]], n: int) -> list[Query]:
    """The next ``n`` queries of one tenth-wording attack account (chains one after another)."""
    check_later_wording(strategy, TENTH_PREFIX, TENTH_STRATEGIES)
    return chained(rng, chains, n)
