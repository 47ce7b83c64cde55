"""End to end with the real bundled model and the shipped default calibration.

Two extraction patterns must be flagged (a perturbation chain around one seed prompt and a
template swept over many items); three topically coherent normal users must not be. All
prompts are written here. The model loads once per session (``embedder`` fixture).
"""

from __future__ import annotations

import collections
import random

import pytest

SEED_PROMPT = (
    "Explain in simple terms why the sky looks blue during the day but turns red and orange "
    "at sunset, and mention what role the atmosphere plays"
)
FILLERS = ["really", "please", "briefly", "clearly", "exactly", "also", "actually", "just", "quickly", "carefully"]
SWAPS = {
    "Explain": ["Describe", "Tell me", "Clarify"],
    "simple": ["easy", "plain", "basic"],
    "sky": ["heaven", "sky overhead", "daytime sky"],
    "blue": ["azure", "bluish", "light blue"],
    "red": ["crimson", "reddish", "scarlet"],
    "orange": ["golden", "amber", "orangey"],
    "sunset": ["dusk", "evening", "sundown"],
    "atmosphere": ["air", "atmospheric gases", "air layer"],
    "mention": ["say", "note", "include"],
    "role": ["part", "function", "job"],
}


def perturbation_chain(n: int = 60, seed: int = 13) -> list[str]:
    """A seed prompt walked by word swaps, insertions and deletions (each step edits the last)."""
    rng = random.Random(seed)
    words = SEED_PROMPT.split()
    out = []
    for _ in range(n):
        op = rng.choice(["swap", "swap", "insert", "delete"])
        if op == "swap":
            i = rng.randrange(len(words))
            base = words[i].strip(",")
            if base in SWAPS:
                words[i] = rng.choice(SWAPS[base]) + ("," if words[i].endswith(",") else "")
            else:
                j = rng.randrange(len(words))
                words[i], words[j] = words[j], words[i]
        elif op == "insert":
            words.insert(rng.randrange(len(words) + 1), rng.choice(FILLERS))
        elif len(words) > 12:
            del words[rng.randrange(len(words))]
        out.append(" ".join(words))
    return out


REVIEWS = [
    "The battery lasts two full days and charges fast.",
    "Arrived broken and support never answered my emails.",
    "Decent blender, a bit loud, but it crushes ice well.",
    "Best pizza place in town, the crust is perfect.",
    "The hotel room smelled of smoke and the sheets were stained.",
    "I fell asleep halfway through the movie.",
    "These running shoes are light and very comfortable.",
    "The app crashes every time I open the camera.",
    "Friendly staff, quick check-in, great breakfast buffet.",
    "The novel's ending felt rushed and unsatisfying.",
    "Sound quality is crisp, bass is deep, worth every penny.",
    "Paint started peeling after one week.",
    "Our tour guide was funny and knew so much history.",
    "The soup was cold and the waiter ignored us.",
    "This vacuum picks up pet hair like magic.",
    "Too expensive for what you get.",
    "The concert was unforgettable, the band played for three hours.",
    "The jacket ripped at the seam on the first wear.",
    "Setup took five minutes and the printer just works.",
    "The plot of this game is boring but the graphics are stunning.",
    "Delivery was two weeks late with no explanation.",
    "My kids love this board game, we play it every weekend.",
    "The coffee tastes burnt and bitter.",
    "Gym is clean, modern equipment, never crowded in the morning.",
    "The headphones hurt my ears after an hour.",
    "A charming little bookshop with a cozy reading corner.",
    "The laptop overheats when I run more than two programs.",
    "Excellent customer service, they replaced it the same day.",
    "The museum exhibit was small and overpriced.",
    "This knife stays sharp after months of daily use.",
    "The flight attendants were rude and the seats cramped.",
    "Lovely garden, the roses smell wonderful in June.",
    "The mattress sags in the middle after a month.",
    "Easy recipe book, every dish we tried turned out great.",
    "The phone case cracked when I dropped it once.",
    "Spa day was relaxing and the massage therapist was skilled.",
    "The tent leaked during the first light rain.",
    "I love how fast this website loads.",
    "Customer support kept me on hold for an hour.",
    "The sushi was fresh and beautifully presented.",
    "The smartwatch loses connection to my phone constantly.",
    "A heartwarming film that made the whole family cry.",
    "The rental car had a flat tire and no spare.",
    "Great value, this backpack holds everything I need.",
    "The dentist was gentle and explained every step.",
    "The course videos are outdated and hard to follow.",
    "Beautiful beach, clear water, but too many tourists.",
    "The keyboard keys feel mushy and unresponsive.",
    "The bakery's croissants are flaky and buttery.",
    "My order was missing two items.",
    "The yoga class was calming and well paced.",
    "The charger stopped working after three days.",
    "Stunning mountain views from every window of the cabin.",
    "The podcast host interrupts guests constantly.",
    "This plant arrived healthy and has already doubled in size.",
    "The train was clean, quiet and on time.",
    "The moisturizer gave me a rash.",
    "Fantastic seafood pasta, generous portions.",
    "The instructions were missing pages.",
    "Comfortable sofa, though the color is darker than pictured.",
]

COOKING = [
    "How long should I roast a whole chicken at 200 degrees Celsius?",
    "What can I use instead of buttermilk in pancakes?",
    "My bread dough didn't rise overnight, what went wrong?",
    "Give me a simple weeknight pasta recipe with spinach and garlic.",
    "How do I keep homemade pizza crust from getting soggy?",
    "What's the difference between baking soda and baking powder?",
    "How do I make a roux for gravy without lumps?",
    "Which herbs go well with roasted carrots?",
    "Can I freeze leftover risotto?",
    "How do I cook rice so it isn't sticky?",
    "What temperature should salmon reach to be safely cooked?",
    "Suggest a vegetarian chili recipe for six people.",
    "Why did my cookies spread so much in the oven?",
    "How can I make a quick tomato sauce from canned tomatoes?",
    "Is it safe to marinate chicken overnight in lemon juice?",
    "How do I sharpen a kitchen knife with a whetstone?",
    "What's a good side dish for grilled lamb chops?",
    "How do I caramelize onions properly?",
    "My soup is too salty, how can I fix it?",
    "What's the best way to store fresh basil?",
    "How long do hard-boiled eggs last in the fridge?",
    "Give me an easy chocolate cake recipe without eggs.",
    "How do I make crispy roast potatoes?",
    "What spices do I need for a basic curry?",
    "Can I substitute olive oil for butter in muffins?",
]

PYTHON_DEBUG = [
    "Why does my Python script raise KeyError when I access a dictionary key?",
    "How do I fix 'ModuleNotFoundError: No module named requests'?",
    "My for loop over a list skips elements when I remove items, why?",
    "What does 'TypeError: 'NoneType' object is not subscriptable' mean?",
    "How can I print the full traceback of an exception in Python?",
    "Why is my pandas DataFrame merge producing duplicate rows?",
    "How do I debug a Python program with pdb breakpoints?",
    "Why does modifying a default list argument persist between function calls?",
    "My recursive function hits RecursionError, how do I fix it?",
    "How do I fix 'IndentationError: unexpected indent'?",
    "Why does 0.1 + 0.2 not equal 0.3 in Python?",
    "How can I find which line of my Python code is slow?",
    "Why does my asyncio code say 'coroutine was never awaited'?",
    "How do I fix UnicodeDecodeError when reading a CSV file?",
    "My virtual environment doesn't see packages I installed with pip, why?",
    "Why do I get 'AttributeError: module has no attribute' after naming my file json.py?",
    "How do I check why a pytest test is failing only in CI?",
    "Why is my multiprocessing Pool hanging on Windows?",
    "How do I fix 'SyntaxError: f-string expression part cannot include a backslash'?",
    "My Flask app returns 404 for a route I defined, what's wrong?",
    "Why does json.dumps fail with 'Object of type datetime is not JSON serializable'?",
    "How can I see the value of variables when my Python script crashes?",
    "Why does my class attribute change for all instances?",
    "How do I fix a circular import between two Python modules?",
    "Why is my numpy array comparison raising 'truth value of an array is ambiguous'?",
]

TRAVEL = [
    "Plan a five-day itinerary for Lisbon in early May.",
    "What's the cheapest way to get from Lisbon airport to the city center?",
    "Which neighborhoods in Lisbon are best to stay in for first-time visitors?",
    "Is a day trip from Lisbon to Sintra worth it?",
    "How many days do I need to see Porto?",
    "What's the best way to travel between Lisbon and Porto?",
    "What local dishes should I try in Portugal?",
    "Do I need to book the Belem Tower tickets in advance?",
    "What should I pack for Portugal in May?",
    "Are there good beaches near Lisbon reachable by train?",
    "How much should I budget per day for food in Lisbon?",
    "Is tipping expected in restaurants in Portugal?",
    "Recommend a scenic drive in the Douro Valley.",
    "What are some good wineries to visit near Porto?",
    "How do I use the Lisbon public transport card?",
    "Is it safe to walk around Lisbon at night?",
    "What day trips can I take from Porto?",
    "Can I visit the Algarve coast in two days from Lisbon?",
    "Which fado houses in Lisbon are authentic and not touristy?",
    "Do I need a car to explore the Algarve?",
    "What's the best viewpoint in Lisbon for sunset?",
    "How early should I arrive at Lisbon airport for an international flight?",
    "Suggest a rainy-day plan for Porto.",
    "What are the opening hours of the Livraria Lello bookstore?",
    "Give me a packing checklist for a week in Portugal with a carry-on only.",
]


@pytest.fixture(scope="module")
def results(text_engine_factory):
    """One engine, all five accounts interleaved in one stream, verdicts per account."""
    engine = text_engine_factory(device="cpu")
    streams = {
        "perturb": perturbation_chain(),
        "sweep": [f"Classify the sentiment of this review: {r}" for r in REVIEWS],
        "cook": COOKING,
        "pydebug": PYTHON_DEBUG,
        "travel": TRAVEL,
    }
    rng = random.Random(5)
    items = [(a, i) for a, prompts in streams.items() for i in range(len(prompts))]
    rng.shuffle(items)
    # keep each account's own order after the shuffle
    cursor = dict.fromkeys(streams, 0)
    ordered = []
    for a, _ in items:
        ordered.append((a, streams[a][cursor[a]]))
        cursor[a] += 1
    last = {}
    for s in range(0, len(ordered), 16):
        chunk = ordered[s : s + 16]
        for v in engine.observe_batch([a for a, _ in chunk], [p for _, p in chunk]):
            last[v.account] = v
    return engine, last


def _describe(engine, account):
    rep = engine.report(account).to_dict()
    return (
        f"{account}: level={rep['level']} peak_risk={rep['peak_risk']:.4f} score={rep['score']:.2f} "
        f"flag_threshold={engine.detector.flag_threshold:.2f} reasons={rep['reasons']}"
    )


def test_stream_sizes():
    assert len(perturbation_chain()) == 60 and len(set(perturbation_chain())) > 50
    assert len(REVIEWS) == 60 and len(COOKING) == len(PYTHON_DEBUG) == len(TRAVEL) == 25


@pytest.mark.slow
def test_perturbation_chain_is_flagged(results):
    engine, last = results
    # a prompt that repeats one of the account's last 16 prompts that were not repeats is not
    # judged again: the chain's few exact repeats are not counted
    memory: collections.deque[str] = collections.deque(maxlen=16)
    judged = 0
    for prompt in perturbation_chain():
        if prompt not in memory:
            memory.append(prompt)
            judged += 1
    assert last["perturb"].n_queries == judged < 60
    assert last["perturb"].flagged, _describe(engine, "perturb")
    assert last["perturb"].reasons or engine.report("perturb").reasons


@pytest.mark.slow
def test_template_sweep_outranks_users_whose_topics_the_calibration_covers(results):
    # 60 queries of one classification template are what a benign classification app's user
    # sends: the shipped calibration has such apps, so this sweep stays below watch at a 0.1 %
    # budget (the benchmark's template_sweep row measures the trade). It still ranks above
    # ordinary users of topics the calibration corpora cover (code, travel). The cook ranks
    # higher still: cooking is a topic none of the calibration corpora hold, so its queries
    # are off-reference; providers' own traffic teaches that (learning the provider's normal).
    engine, last = results
    sweep = engine.report("sweep").to_dict()
    assert last["sweep"].n_queries == 60
    assert sweep["level"] != "flag", _describe(engine, "sweep")
    for account in ("pydebug", "travel"):
        assert sweep["peak_risk"] > engine.report(account).peak_risk, _describe(engine, account)


@pytest.mark.slow
@pytest.mark.parametrize("account", ["cook", "pydebug", "travel"])
def test_normal_users_are_not_flagged(results, account):
    engine, last = results
    assert last[account].n_queries == 25
    assert not last[account].flagged, _describe(engine, account)


@pytest.mark.slow
def test_demo_scenario_flags_the_perturbation_bot_and_ranks_both_extractors_first(text_engine_factory):
    """`probewatch demo`'s own traffic, batched as the CLI batches it."""
    from probewatch.cli.demo import EXTRACTING, NORMAL_ACCOUNTS, demo_traffic

    engine = text_engine_factory(device="cpu")
    events = demo_traffic()
    for s in range(0, len(events), 16):
        chunk = events[s : s + 16]
        engine.observe_batch([a for a, _, _ in chunk], [p for _, p, _ in chunk], [t for _, _, t in chunk])
    # The perturbation bot is flagged. The sentiment prober (150 one-word edits of a few
    # reviews in one classification template) is not: since the calibration holds
    # classification-app backends (shared keys) and the topic-return statistic shares the
    # benign budget with the look-alike score (issue 10), its peak sits near 1 in 100 benign
    # accounts. Both rank above every ordinary account, which is what the demo checks.
    assert engine.report("perturb-bot").level == "flag", _describe(engine, "perturb-bot")
    ordinary_peak = max(engine.report(account).peak_one_in for account in NORMAL_ACCOUNTS)
    for account in EXTRACTING:
        assert engine.report(account).peak_one_in > ordinary_peak, _describe(engine, account)
    for account in NORMAL_ACCOUNTS:
        assert engine.report(account).level != "flag", _describe(engine, account)
