"""Benign accounts: ordinary users and the hard-benign classes that look a bit like
extraction (broad, templated, repetitive or edit-heavy traffic) but are not."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field

from . import sources
from .edits import human_edit
from .model import AccountStream
from .timing import app_times, session_times

Session = tuple[tuple[str, ...], tuple[str, ...]]  # (texts in order, source unit keys)


@dataclass
class BenignPools:
    """Everything one half (calibration or test) offers benign accounts."""

    interests: dict[str, list[Session]]
    documents: dict[str, list[sources.Unit]]  # topic -> news articles (RAG, summaries)
    translation_items: list[tuple[str, str]]  # (text, unit key)
    summary_items: list[tuple[str, str]]
    support_sessions: dict[str, list[Session]]  # domain/intent -> customer turns
    edit_bases: list[tuple[str, str]]
    interest_weights: dict[str, float] = field(default_factory=dict)


# --- MultiWOZ slot filling (values are our own, in the Cambridge setting of the corpus) ----

_SLOT_VALUES = {
    "AREA": ["north", "south", "east", "west", "centre", "city centre"],
    "DAY": ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"],
    "PEOPLE": [str(i) for i in range(1, 9)],
    "STAY": [str(i) for i in range(1, 6)],
    "PRICE": ["cheap", "moderate", "expensive", "moderately priced"],
    "STARS": [str(i) for i in range(6)],
    "FOOD": [
        "italian",
        "chinese",
        "indian",
        "british",
        "thai",
        "french",
        "japanese",
        "korean",
        "turkish",
        "mediterranean",
        "vietnamese",
        "gastropub",
        "seafood",
        "spanish",
        "european",
        "lebanese",
    ],
    "DEPARTMENT": ["cardiology", "paediatrics", "neurology", "emergency department", "oncology", "urology"],
    "TIME": [f"{h:02d}:{m:02d}" for h in range(7, 23) for m in (0, 15, 30, 45)],
    "PLACE": [
        "cambridge",
        "london kings cross",
        "ely",
        "norwich",
        "stansted airport",
        "peterborough",
        "leicester",
        "bishops stortford",
        "stevenage",
        "birmingham new street",
        "broxbourne",
        "kings lynn",
    ],
    "HOTEL-NAME": [
        "the acorn guest house",
        "hamilton lodge",
        "the lensfield hotel",
        "alexander bed and breakfast",
        "the gonville hotel",
        "warkworth house",
        "city centre north b and b",
        "the cambridge belfry",
    ],
    "RESTAURANT-NAME": [
        "the golden curry",
        "pizza hut city centre",
        "la margherita",
        "the nirala",
        "curry garden",
        "the cow pizza kitchen and bar",
        "meze bar",
        "saigon city",
        "the copper kettle",
    ],
    "ATTRACTION-NAME": [
        "kettle's yard",
        "the fitzwilliam museum",
        "king's college",
        "cherry hinton water play",
        "the cambridge arts theatre",
        "byard art",
        "christ's college",
        "the junction",
    ],
    "ATTRACTION-TYPE": [
        "museum",
        "college",
        "architecture",
        "nightclub",
        "park",
        "theatre",
        "swimming pool",
        "cinema",
        "boat",
        "entertainment",
    ],
    "HOTEL-TYPE": ["guesthouse", "hotel", "guest house"],
}


def _slot_value(rng: random.Random, placeholder: str, fixed: dict[str, str]) -> str:
    parts = placeholder.strip("#").split("-")  # DOMAIN-INFORM-SLOT
    domain, slot = parts[0], parts[-1]
    if slot == "NAME":
        table = f"{domain}-NAME" if f"{domain}-NAME" in _SLOT_VALUES else "RESTAURANT-NAME"
    elif slot == "TYPE":
        table = "HOTEL-TYPE" if domain == "HOTEL" else "ATTRACTION-TYPE"
    elif slot in ("DEPART", "DEST"):
        table = "PLACE" if domain == "TRAIN" else "ATTRACTION-NAME"
    elif slot in ("LEAVE", "ARRIVE"):
        table = "TIME"
    else:
        table = slot
    if placeholder not in fixed:  # one dialogue keeps its values
        fixed[placeholder] = rng.choice(_SLOT_VALUES.get(table, ["any"]))
    return fixed[placeholder]


def fill_template(rng: random.Random, template: str, fixed: dict[str, str]) -> str:
    return re.sub(r"#[A-Z\-]+#", lambda m: _slot_value(rng, m.group(), fixed), template)


def multiwoz_sessions(rng: random.Random, units: list[sources.Unit], per_domain: int) -> dict[str, list[Session]]:
    """Synthesise task-oriented dialogues: inform turn(s), requests, then thanks or bye."""
    by_topic: dict[str, list[sources.Unit]] = {}
    for unit in units:
        by_topic.setdefault(unit.topic, []).append(unit)
    closers = by_topic.get("general:thank", []) + by_topic.get("general:bye", [])
    out: dict[str, list[Session]] = {}
    for domain in ("hotel", "restaurant", "train", "taxi", "attraction", "hospital", "police"):
        informs, requests = by_topic.get(f"{domain}:inform", []), by_topic.get(f"{domain}:request", [])
        if not informs:
            continue
        sessions = []
        for _ in range(per_domain):
            fixed: dict[str, str] = {}
            turns = rng.sample(informs, min(len(informs), rng.choice([1, 1, 2, 2, 3])))
            if requests:
                turns += rng.sample(requests, min(len(requests), rng.choice([0, 1, 1, 2])))
            if closers and rng.random() < 0.6:
                turns.append(rng.choice(closers))
            texts = tuple(fill_template(rng, u.texts[0], fixed) for u in turns)
            sessions.append((texts, tuple(u.key for u in turns)))
        out[domain] = sessions
    return out


def _grouped_sessions(rng: random.Random, units: list[sources.Unit], source: str) -> dict[str, list[Session]]:
    """Single-item sources (SNIPS, questions) become sessions of 1-4 items of one topic."""
    by_topic: dict[str, list[sources.Unit]] = {}
    for unit in units:
        by_topic.setdefault(unit.topic, []).append(unit)
    out = {}
    for topic, members in by_topic.items():
        rng.shuffle(members)
        sessions, i = [], 0
        while i < len(members):
            take = members[i : i + rng.choice([1, 1, 2, 3, 4])]
            i += len(take)
            sessions.append((tuple(u.texts[0] for u in take), tuple(u.key for u in take)))
        out[f"{source}:{topic}"] = sessions
    return out


def _capped(rng: random.Random, units: list[sources.Unit], cap: int) -> list[sources.Unit]:
    units = sorted(units, key=lambda u: u.key)
    rng.shuffle(units)
    return units[:cap]


def build_pools(rng: random.Random, half: str, caps: dict[str, int]) -> BenignPools:
    """Cap each source (the unique-text budget) and arrange it for the account builders."""

    def take(loader, name: str) -> list[sources.Unit]:
        return _capped(rng, sources.split_units(loader())[half], caps[name])

    interests: dict[str, list[Session]] = {}
    weights: dict[str, float] = {}
    chats = take(sources.sharegpt, "sharegpt")
    for unit in chats:
        interests.setdefault(f"sharegpt:{unit.topic}", []).append((unit.texts[:12], (unit.key,)))
    for name, loader in (
        ("snips", sources.snips),
        ("fanoutqa", sources.fanoutqa),
        ("freshqa", sources.freshqa),
        ("writingbench", sources.writingbench),
        ("mind2web", sources.mind2web),
        ("roleprompt", sources.role_prompts),
    ):
        interests.update(_grouped_sessions(rng, take(loader, name), name))
    woz_units = sources.split_units(sources.multiwoz_templates())[half]
    woz = multiwoz_sessions(rng, woz_units, caps["multiwoz_per_domain"])
    for domain, sessions in woz.items():
        interests[f"multiwoz:{domain}"] = sessions[: max(1, len(sessions) // 2)]
    for key, sessions in interests.items():
        # ShareGPT is what general chat traffic looks like, so most interests come from it
        weights[key] = (6.0 if key.startswith("sharegpt:") else 1.0) * math.sqrt(len(sessions))

    news = take(sources.bbc_news, "bbc") + take(sources.lee_news, "lee")
    documents: dict[str, list[sources.Unit]] = {}
    for unit in news:
        documents.setdefault(f"{unit.source}:{unit.topic}", []).append(unit)
    translation_items, summary_items = [], []
    for unit in news:
        for sentence in sources.sentences(" ".join(unit.texts[1:] if unit.source == "bbc" else unit.texts))[:3]:
            translation_items.append((sentence, unit.key))
        summary_items.append(("\n\n".join(unit.texts[: rng.randint(3, 8)]), unit.key))
    for unit in chats:
        for text in unit.texts:
            if 15 <= len(text) <= 300:
                translation_items.append((text, unit.key))
            elif len(text) >= 600:
                summary_items.append((text, unit.key))
    support = {f"multiwoz:{d}": s[len(s) // 2 :] for d, s in woz.items() if len(s) > 1}
    for key, sessions in _grouped_sessions(rng, take(sources.snips, "snips_support"), "snips").items():
        support[key] = sessions
    edit_bases = [(u.texts[0], u.key) for u in chats if 20 <= len(u.texts[0]) <= 800]
    edit_bases += [(u.texts[0], u.key) for u in take(sources.writingbench, "writingbench_edits")]
    return BenignPools(interests, documents, translation_items, summary_items, support, edit_bases, weights)


# --- account builders --------------------------------------------------------------------


def _weighted_sample(rng: random.Random, weights: dict[str, float], k: int) -> list[str]:
    keys = sorted(weights)
    chosen: list[str] = []
    while keys and len(chosen) < k:
        pick = rng.choices(keys, weights=[weights[key] for key in keys])[0]
        chosen.append(pick)
        keys.remove(pick)
    return chosen


def benign_stream(account: str, kind: str, prompts: list[str], ts: list[float], groups) -> AccountStream:
    """A label-0 account stream (no attack prompts) over the given source groups."""
    return AccountStream(
        account=account,
        label=0,
        kind=kind,
        prompts=prompts,
        ts=ts,
        is_attack=[False] * len(prompts),
        campaign=None,
        source_groups=frozenset(groups),
    )


def chat_user(
    rng: random.Random,
    pools: BenignPools,
    account: str,
    n: int,
    n_interests: int,
    kind: str = "benign:normal",
    p_retry: float = 0.03,
    p_edit: float = 0.05,
) -> AccountStream:
    """Sessions from a few interests; sometimes resends a turn or a slightly edited one."""
    interests = _weighted_sample(rng, pools.interest_weights, n_interests)
    preference = {key: rng.expovariate(1.0) + 0.05 for key in interests}
    unused = {key: list(range(len(pools.interests[key]))) for key in interests}
    sessions: list[list[str]] = []
    prompts: list[str] = []
    groups: set[str] = set()
    seen: set[str] = set()
    while len(prompts) < n and interests:
        key = rng.choices(interests, weights=[preference[k] for k in interests])[0]
        if not unused[key]:
            interests.remove(key)  # exhausted for this account: drift to a new interest
            extra = _weighted_sample(rng, {k: w for k, w in pools.interest_weights.items() if k not in unused}, 1)
            for new in extra:
                interests.append(new)
                preference[new] = rng.expovariate(1.0) + 0.05
                unused[new] = list(range(len(pools.interests[new])))
            continue
        texts, keys = pools.interests[key][unused[key].pop(rng.randrange(len(unused[key])))]
        gaps: list[str] = []
        for text in texts:
            if len(prompts) >= n:
                break
            if text in seen:  # the same turn twice in one account only as a deliberate retry
                continue
            seen.add(text)
            prompts.append(text)
            gaps.append("turn")
            if rng.random() < p_retry and len(prompts) < n:
                prompts.append(text)
                gaps.append("retry")
            if rng.random() < p_edit and len(prompts) < n:
                edited = human_edit(rng, text)
                if edited not in seen:
                    seen.add(edited)
                    prompts.append(edited)
                    gaps.append("edit")
        if gaps:
            sessions.append(gaps)
            groups.update(keys)
    return benign_stream(account, kind, prompts, session_times(rng, sessions), groups)


_RAG_TEMPLATES = [
    "Use only the context below to answer.\n\nContext:\n{context}\n\nQuestion: {question}",
    "You are a helpful assistant for our news archive. Answer from the passages.\n\n### Passages\n{context}\n\n### Question\n{question}\n\n### Answer",
    "Context information is below.\n---------------------\n{context}\n---------------------\nGiven the context and no prior knowledge, answer: {question}",
    "<documents>\n{context}\n</documents>\nAnswer the user's question using the documents. If unsure, say so.\nUser: {question}",
    "Answer the question based on the retrieved text. Cite the sentence you used.\nRetrieved: {context}\nQ: {question}\nA:",
]
_QUESTION_STEMS = [
    "What does the text say about {x}?",
    "Who is {x}?",
    "What happened with {x}?",
    "Why is {x} mentioned?",
    "Summarise the role of {x}.",
    "When did {x} happen?",
    "What is the main point about {x}?",
    "How is {x} described?",
    "what about {x}",
    "Is {x} important here? Why?",
]


def _key_phrases(text: str) -> list[str]:
    found = re.findall(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-z]+(?:\s+[A-Z][a-z]+)*)", text)
    return [p for p in found if len(p) > 3] or list(re.findall(r"[a-z]{7,}", text))[:5]


def rag_app(rng: random.Random, pools: BenignPools, account: str, n: int) -> AccountStream:
    """A retrieval app: one fixed document set, chunks as context, varied questions."""
    topic = rng.choice(sorted(pools.documents))
    docs = rng.sample(pools.documents[topic], min(len(pools.documents[topic]), rng.randint(3, 10)))
    chunks = []
    for doc in docs:
        body = sources.sentences(" ".join(doc.texts))
        for i in range(0, max(1, len(body) - 1), 2):
            chunks.append((" ".join(body[i : i + 3]), doc.key))
    template = rng.choice(_RAG_TEMPLATES)
    prompts, seen = [], set()
    for _ in range(n * 3):
        if len(prompts) >= n or not chunks:
            break
        chunk, _key = rng.choice(chunks)
        phrases = _key_phrases(chunk)
        if not phrases:
            continue
        question = rng.choice(_QUESTION_STEMS).format(x=rng.choice(phrases))
        prompt = template.format(context=chunk, question=question)
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    return benign_stream(account, "benign:rag_app", prompts, app_times(rng, len(prompts)), {d.key for d in docs})


_TRANSLATE_TEMPLATES = [
    "Translate the following text into {lang}:\n\n{text}",
    'Translate to {lang}. Keep the tone.\n"{text}"',
    "You are a professional translator. Output only the {lang} translation.\nText: {text}",
    "{lang} translation please:\n{text}",
    "Please translate this from English to {lang}: {text}",
    "[translate en->{lang}] {text}",
]
_LANGUAGES = [
    "French",
    "German",
    "Spanish",
    "Italian",
    "Portuguese",
    "Japanese",
    "Korean",
    "Chinese",
    "Dutch",
    "Polish",
    "Turkish",
]
_SUMMARY_TEMPLATES = [
    "Summarise the following article in three bullet points:\n\n{text}",
    "TL;DR this:\n{text}",
    "Write a one-paragraph summary of the text below for a busy executive.\n\n{text}",
    'Summarize:\n"""\n{text}\n"""',
    "Give me the key takeaways (max 5) from this text.\n---\n{text}",
    "You summarise documents for our newsletter. Keep it under 80 words.\nDocument: {text}",
]


def wrapper_app(rng: random.Random, pools: BenignPools, account: str, n: int, kind: str) -> AccountStream:
    """Translation or summarisation app: one fixed template around varied real text."""
    if kind == "benign:translation_app":
        items = pools.translation_items
        template = rng.choice(_TRANSLATE_TEMPLATES).replace("{lang}", rng.choice(_LANGUAGES))
    else:
        items = pools.summary_items
        template = rng.choice(_SUMMARY_TEMPLATES)
    chosen = rng.sample(items, min(n, len(items)))
    prompts = [template.format(text=text) for text, _ in chosen]
    return benign_stream(account, kind, prompts, app_times(rng, len(prompts)), {key for _, key in chosen})


_COMPANIES = [
    "CityStay",
    "Fenland Travel",
    "Granta Bookings",
    "Riverside Hospitality",
    "Camtown Rail",
    "QuickCab",
    "Harmony Voice",
    "Orbit Assistant",
    "Lumen Home",
]
_SUPPORT_PREFIXES = [
    "You are the customer support assistant for {company}. Be polite and brief.\nCustomer: {turn}",
    "System: {company} helpdesk bot. Resolve bookings and answer questions.\nUser message: {turn}",
    "[{company} support] Conversation so far omitted. Latest customer message:\n{turn}\nReply as the agent.",
    "### Role\nFriendly {company} agent\n### Customer says\n{turn}\n### Your reply",
    "As {company}'s virtual assistant, respond to: {turn}",
]


def support_bot(rng: random.Random, pools: BenignPools, account: str, n: int) -> AccountStream:
    """A customer-support bot: a fixed system-ish prefix around live customer turns from a
    few domains (MultiWOZ bookings or SNIPS voice-assistant requests)."""
    template = rng.choice(_SUPPORT_PREFIXES).replace("{company}", rng.choice(_COMPANIES))
    families = sorted({k.split(":")[0] for k in pools.support_sessions})
    family = rng.choice(families)
    domains = [k for k in sorted(pools.support_sessions) if k.startswith(family + ":")]
    domains = rng.sample(domains, min(len(domains), rng.randint(1, 3)))
    candidates = [s for d in domains for s in pools.support_sessions[d]]
    rng.shuffle(candidates)
    prompts, sessions, groups, seen = [], [], set(), set()
    for texts, keys in candidates:
        gaps = []
        for text in texts:
            prompt = template.format(turn=text)
            if len(prompts) < n and prompt not in seen:
                seen.add(prompt)
                prompts.append(prompt)
                gaps.append("turn")
        if gaps:
            sessions.append(gaps)
            groups.update(keys)
        if len(prompts) >= n:
            break
    # many customers in parallel: dialogue turns keep their order, starts follow the app's rhythm
    ts = sorted(app_times(rng, len(prompts)))
    return benign_stream(account, "benign:support_bot", prompts, ts, groups)


def edit_resender(rng: random.Random, pools: BenignPools, account: str, n: int) -> AccountStream:
    """Re-sends its own prompt again and again with small edits (prompt iteration)."""
    prompts, sessions, groups, seen = [], [], set(), set()
    for text, key in rng.sample(pools.edit_bases, min(len(pools.edit_bases), n)):
        if len(prompts) >= n:
            break
        gaps, current = [], text
        for step in range(rng.randint(3, 9)):
            if len(prompts) >= n:
                break
            if step and rng.random() < 0.2:
                gap = "retry"  # exact resend after an error or a bad answer
            else:
                if step:
                    current = human_edit(rng, current)
                gap = "edit"
                if current in seen:
                    continue
            seen.add(current)
            prompts.append(current)
            gaps.append(gap)
        if gaps:
            sessions.append(gaps)
            groups.add(key)
    return benign_stream(account, "benign:edit_resender", prompts, session_times(rng, sessions), groups)
