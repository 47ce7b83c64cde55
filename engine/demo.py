"""A small built-in scenario: five ordinary accounts and two extracting ones.

The text is written for probewatch. Ordinary users stay on a few related subjects, come
back to earlier questions and follow up; the extracting accounts map a decision boundary
the way published campaigns did, with perturbation chains around seed prompts and
one-word edits that probe where a classifier's label flips. The other strategies
(templated sweeps, chain-of-thought wrappers, random or corpus-sampled queries, split and
mixed campaigns) are in the detection benchmark, with what probewatch catches of each.
"""

from __future__ import annotations

import random

NORMAL_ACCOUNTS: dict[str, list[str]] = {
    "home-cook": [
        "What can I cook tonight with chicken thighs, rice and spinach?",
        "How long should I marinate chicken thighs in yoghurt and spices?",
        "Can I make the marinade the night before?",
        "What's a good vegetarian swap for chicken in a biryani?",
        "How do I stop basmati rice from turning mushy?",
        "Give me a quick weeknight dal recipe with red lentils.",
        "Is it fine to freeze cooked dal, and for how long?",
        "What spices go into garam masala and can I make it at home?",
        "How do I temper spices in ghee without burning them?",
        "Suggest a side salad that goes with a spicy curry.",
        "My naan dough didn't rise, what went wrong?",
        "Can I bake naan in a regular oven instead of a tandoor?",
        "How much yeast should I use for 500 g of flour?",
        "Write a shopping list for a curry dinner for six people.",
        "What dessert is easy to make after an Indian meal?",
        "How do I make mango lassi less sweet?",
        "Can I use frozen mango for lassi?",
        "What's the difference between paneer and halloumi for grilling?",
        "How do I make paneer from scratch with lemon juice?",
        "Plan a three-course Indian menu I can mostly prepare ahead.",
    ],
    "backend-dev": [
        "Why does my Python script raise 'RuntimeError: dictionary changed size during iteration'?",
        "How do I safely delete keys from a dict while looping over it?",
        "What's the idiomatic way to merge two dicts in Python 3.12?",
        "Explain the difference between a list comprehension and a generator expression.",
        "My FastAPI endpoint is slow when it calls the database; how do I profile it?",
        "How do I use asyncpg connection pools with FastAPI lifespan events?",
        "What does 'too many connections' from Postgres mean and how do I fix it?",
        "Show me how to write a pytest fixture that creates a temporary Postgres schema.",
        "How do I mock an async function in pytest?",
        "Why is my Docker image for a Python app 1.2 GB and how can I shrink it?",
        "Write a multi-stage Dockerfile for a FastAPI app using uv.",
        "How do I pass secrets to a container without baking them into the image?",
        "What is the difference between gunicorn with uvicorn workers and plain uvicorn?",
        "How many uvicorn workers should I run on a 4-core machine?",
        "Explain Python's GIL in the context of a web server.",
        "How do I add structured JSON logging to FastAPI?",
        "How do I propagate a request id through async calls for logging?",
        "Write a retry decorator with exponential backoff for flaky HTTP calls.",
        "Should I retry on HTTP 500 and 503 or only on timeouts?",
        "How do I write a health check endpoint that also checks the database?",
    ],
    "trip-planner": [
        "Plan a five-day trip to Lisbon in early May on a mid-range budget.",
        "Which Lisbon neighbourhood is best to stay in for a first visit?",
        "Is it worth taking a day trip from Lisbon to Sintra?",
        "How do I get from Lisbon airport to Alfama by public transport?",
        "What are typical Portuguese dishes I should try in Lisbon?",
        "Recommend a good pastel de nata place that isn't too touristy.",
        "How much should I budget per day for food in Lisbon?",
        "Can I use contactless cards on Lisbon trams?",
        "What's the best way to get from Lisbon to Porto, train or bus?",
        "Plan two days in Porto including a port wine cellar visit.",
        "Which port cellars in Vila Nova de Gaia offer tours in English?",
        "Is the Douro valley doable as a day trip from Porto?",
        "What should I pack for Portugal in May?",
        "Do I need to tip in restaurants in Portugal?",
        "Suggest a rainy-day plan for Lisbon.",
        "How early should I book the Sintra palaces?",
        "Are there beaches near Lisbon reachable by train?",
        "Write a packing checklist for a week in Portugal with carry-on only.",
        "What phrases in Portuguese are useful for a tourist?",
        "Rework my Lisbon itinerary so the hilly walks are in the mornings.",
    ],
    "history-student": [
        "What were the main causes of the First World War?",
        "Explain the alliance system in Europe before 1914.",
        "How did the assassination of Franz Ferdinand lead to a wider war?",
        "What was the Schlieffen Plan and why did it fail?",
        "Summarise the Battle of the Somme in a paragraph.",
        "Why did the United States enter the First World War in 1917?",
        "What role did the Zimmermann Telegram play?",
        "How did the Treaty of Versailles treat Germany?",
        "Was the Treaty of Versailles a cause of the Second World War? Give both sides.",
        "Explain the economic effects of war reparations on the Weimar Republic.",
        "What was hyperinflation in Germany in 1923 like for ordinary people?",
        "Help me outline an essay on the causes of the First World War.",
        "Give me three historians with different views on German war guilt.",
        "What is the Fischer thesis?",
        "How did trench warfare shape soldiers' daily life?",
        "What new weapons were introduced during the First World War?",
        "How did the war change the role of women in Britain?",
        "Check my thesis statement: 'Militarism, not alliances, made war inevitable in 1914.'",
        "Suggest primary sources I could quote about the July Crisis.",
        "How should I structure a conclusion for a history essay?",
    ],
    "marketing-writer": [
        "Write three subject lines for a spring sale email for a plant shop.",
        "Make the subject lines more playful and under 40 characters.",
        "Draft the body of the spring sale email, about 120 words.",
        "Rewrite the email for customers who haven't bought in a year.",
        "Suggest a call-to-action button text that isn't 'Shop now'.",
        "Write an Instagram caption for a photo of a monstera in a sunny window.",
        "Give me five hashtags for indoor plant content that aren't overused.",
        "Write a short 'about us' paragraph for a small family-run plant shop.",
        "Make the about-us text warmer and mention our rescue-plant programme.",
        "Draft a product description for a self-watering ceramic pot.",
        "How long should product descriptions be for an online plant shop?",
        "Write a FAQ answer about how we ship live plants in winter.",
        "Suggest a theme for our monthly newsletter in June.",
        "Write a customer review request email that doesn't feel pushy.",
        "Give me ideas for a loyalty programme for a small plant shop.",
        "Write a 30-second radio ad script for our weekend plant market.",
        "Rewrite the radio ad to mention free pot repotting on Saturdays.",
        "What metrics should I track for the spring sale email?",
        "Draft a reply to a customer whose plant arrived damaged.",
        "Write a blog post outline: 'Five plants that survive beginners'.",
    ],
}

_PERTURBATION_SEEDS = (
    "Is it safe to take ibuprofen together with a glass of red wine in the evening?",
    "Write a polite email asking my landlord to repair the broken heating this week.",
    "Which is better for a beginner, learning Spanish with an app or with a tutor?",
)
_FILLER_WORDS = ("really", "please", "quickly", "actually", "maybe", "just", "kindly", "exactly", "today", "now")
_SEED_REVIEWS = (
    "The food was great but the service was slow.",
    "I loved the hotel room and the view was amazing.",
    "The product broke after two days, very disappointed.",
    "Delivery was on time and the packaging was neat.",
)
_SENTIMENT_WORDS = ("great", "terrible", "okay", "amazing", "awful", "fine", "slow", "fast", "rude", "friendly",
                    "cheap", "expensive")


def _perturb(text: str, rng: random.Random) -> str:
    words = text.split()
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(("swap", "insert", "delete"))
        i = rng.randrange(len(words))
        if op == "swap" and len(words) > 1:
            j = min(i + 1, len(words) - 1)
            words[i], words[j] = words[j], words[i]
        elif op == "insert":
            words.insert(i, rng.choice(_FILLER_WORDS))
        elif len(words) > 4:
            del words[i]
    return " ".join(words)


def extracting_accounts(seed: int = 7) -> dict[str, list[str]]:
    """Two decision-boundary mappers: perturbation chains around seed prompts, and a prober
    that swaps one word of seed reviews to find where a sentiment label flips."""
    rng = random.Random(seed)
    chains = []
    for seed_prompt in _PERTURBATION_SEEDS:
        current = seed_prompt
        for _ in range(20):
            current = _perturb(current if rng.random() < 0.7 else seed_prompt, rng)
            chains.append(current)
    probes = []
    for _ in range(150):
        words = rng.choice(_SEED_REVIEWS).split()
        words[rng.randrange(len(words))] = rng.choice(_SENTIMENT_WORDS)
        probes.append("Classify the sentiment of this review as positive or negative: " + " ".join(words))
    return {"perturb-bot": chains, "boundary-prober": probes}


def demo_traffic(seed: int = 7) -> list[tuple[str, str, float]]:
    """(account, prompt, ts) interleaved across accounts in time order."""
    rng = random.Random(seed)
    streams = dict(NORMAL_ACCOUNTS)
    streams.update(extracting_accounts(seed))
    events = []
    for account, prompts in streams.items():
        t = rng.uniform(0, 60)
        rate = 4.0 if account in NORMAL_ACCOUNTS else 1.0  # extractors send faster
        for prompt in prompts:
            t += rng.expovariate(1.0 / rate) * 10
            events.append((t, account, prompt))
    events.sort()
    return [(a, p, t) for t, a, p in events]


EXTRACTING = ("perturb-bot", "boundary-prober")
