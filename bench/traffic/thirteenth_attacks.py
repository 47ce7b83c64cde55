"""A thirteenth wording of the perturbation strategy: written after 0.16.0's grid probes were
measured and before the twelfth wording's misses were looked at, and committed before any
detector ran on it, as the blind check of whatever is changed after looking at the twelfth.

Nothing here may be changed to suit a detector (add a fourteenth set instead).

| strategy | how its probes differ from the twelve earlier sets |
| --- | --- |
| perturbation_chain | *Demonstration grids*: a classification task asked in context, the same query items sent again under one set of worked examples after another (other examples, the same examples in another order, more or fewer of them), so the student learns how the teacher's labels move with the demonstrations: the in-context sensitivity probes of Zhao et al. 2021 ("Calibrate Before Use"), Lu et al. 2022 ("Fantastically Ordered Prompts") and Min et al. 2022 ("Rethinking the Role of Demonstrations"), asked of a teacher to map its decision boundary. Each account takes one task (the topic of a BBC News headline, or the intent of a SNIPS voice command; test half), 5-12 query items and 4-9 demonstration sets of 2-6 labelled examples from a pool of 8-20, in one of four layouts written here (an instruction and a block per example, one line per example, examples as a numbered list, all in one line), and walks item by item, set by set or shuffled; a longer account takes fresh items for the next pass |
"""

from __future__ import annotations

import random

from . import sources
from .attacks import Query, _sample, check_later_wording, grid_cells

THIRTEENTH_PREFIX = "thirteenth_"
THIRTEENTH_STRATEGIES = (THIRTEENTH_PREFIX + "perturbation_chain",)

Labelled = tuple[str, str, str]  # (text, label, unit key)

_TASKS = {
    "news": (
        "headline",
        "Classify the news headline into one of: business, entertainment, politics, sport, tech.",
        {"business": "business", "entertainment": "entertainment", "politics": "politics", "sports": "sport", "tech": "tech"},
    ),
    "intent": (
        "command",
        "Which intent does the voice command have? Answer with one of: weather, restaurant, music, creative work, playlist, book rating, screening.",
        {
            "GetWeather": "weather",
            "BookRestaurant": "restaurant",
            "PlayMusic": "music",
            "SearchCreativeWork": "creative work",
            "AddToPlaylist": "playlist",
            "RateBook": "book rating",
            "SearchScreeningEvent": "screening",
        },
    ),
}  # fmt: skip


def _pool(task: str) -> list[Labelled]:
    """Labelled test-half items of one task: BBC headlines with their section, or SNIPS commands
    of 4-16 words with their intent."""
    labels = _TASKS[task][2]
    if task == "news":
        units = sources.split_units(sources.bbc_news())["test"]
        return [(" ".join(u.texts[0].split()), labels[u.topic], u.key) for u in units if u.topic in labels]
    units = sources.split_units(sources.snips())["test"]
    return [(u.texts[0], labels[u.topic], u.key) for u in units if 4 <= len(u.texts[0].split()) <= 16]


def _prompt(layout: int, task: str, demos: list[Labelled], item: Labelled) -> str:
    noun, instruction, _ = _TASKS[task]
    text = item[0]
    if layout == 0:  # an instruction, then one block per example
        blocks = [f"{noun.capitalize()}: {d}\nLabel: {label}" for d, label, _ in demos]
        return "\n\n".join([instruction, *blocks, f"{noun.capitalize()}: {text}\nLabel:"])
    if layout == 1:  # one line per example
        lines = [f"{d} => {label}" for d, label, _ in demos]
        return "\n".join([*lines, f"{text} =>"])
    if layout == 2:  # a numbered list of examples, then the question
        lines = [f'{i}. "{d}" -> {label}' for i, (d, label, _) in enumerate(demos, 1)]
        return "\n".join([f"{instruction} Examples:", *lines, f'Now label this {noun}: "{text}"'])
    examples = "; ".join(f'"{d}" is {label}' for d, label, _ in demos)  # all in one line
    return f'{instruction} For example, {examples}. What about "{text}"?'


def demonstration_grid(rng: random.Random, pools: dict[str, list[Labelled]], n: int) -> list[Query]:
    """``n`` queries of one account's grid (fewer once its pool runs dry): its items under each
    of its demonstration sets, item by item, set by set or shuffled."""
    task = rng.choice(sorted(pools))
    pool = list(pools[task])
    rng.shuffle(pool)
    demo_pool, items = pool[: rng.randint(8, 20)], pool[20:]
    layout = rng.randrange(4)
    sets: list[list[Labelled]] = []
    wanted = rng.randint(4, 9)
    while len(sets) < wanted:
        change = rng.random()
        if sets and change < 0.3:  # the same examples in another order
            reordered = sets[-1][:]
            rng.shuffle(reordered)
            if reordered != sets[-1]:
                sets.append(reordered)
        else:  # other examples, or more or fewer of them
            sets.append(_sample(rng, demo_pool, rng.randint(2, 6)))
    picked = items[: rng.randint(5, 12)]
    used = set(picked)
    order = rng.choice(("by_payload", "by_frame", "shuffled"))
    out: list[Query] = []
    while len(out) < n and picked:
        cells = grid_cells(rng, sets, picked, order)
        out += [(_prompt(layout, task, demos, item), item[2]) for demos, item in cells]
        # a longer account takes fresh items for the next pass
        picked = [item for item in items if item not in used][: len(picked)]
        used.update(picked)
    texts, queries = set(), []
    for text, key in out[:n]:
        if text not in texts:  # two sets can coincide; a grid never sends a query twice
            texts.add(text)
            queries.append((text, key))
    return queries


def build_thirteenth_pools(rng: random.Random, pool_size: int) -> dict[str, list[Labelled]]:
    """The labelled pools the thirteenth wording's accounts draw tasks, examples and items from."""
    return {task: _sample(rng, _pool(task), pool_size) for task in sorted(_TASKS)}


def thirteenth_queries(strategy: str, rng: random.Random, pools: dict[str, list[Labelled]], n: int) -> list[Query]:
    """The next ``n`` queries of one thirteenth-wording attack account (one demonstration grid)."""
    check_later_wording(strategy, THIRTEENTH_PREFIX, THIRTEENTH_STRATEGIES)
    return demonstration_grid(rng, pools, n)
