"""Queries hidden in a chat's context, and honest chats that resend their history.

A client writes the whole message list. An extractor can put its queries in made-up earlier
user turns (or in the system message) and end each request with a harmless, varied message
("answer each question above"); the model answers them all. The integrations observed only the
newest user message until 0.17.4; now they also observe each context text an account has not
sent before (``probewatch.integrations.context.SentTexts``). The risk of that change is the
other side: an honest chat resends its system prompt and history with every request.

Both sides, on the shipped calibration (``Engine()``, campaign layer off), each account new:

* **hidden**: per strategy, ``--attackers`` accounts each send ``--requests`` requests; each
  request holds ``--hidden`` extraction queries as made-up user turns (``turns``), or at most 8
  of them each under a made-up answer (``answered turns``: as many as an app's few-shot
  examples, which are not observed unless the request's last message is one the account sent
  before), or as one numbered list in the system message (``system
  list``: a new system text is observed once every 16 requests of its account, so this one is
  sampled), and a last user message drawn from real ShareGPT turns. Flagged share with the
  newest message only, and with context.
* **honest chats**: ``--accounts`` accounts, each a fixed system prompt and 3-6 real ShareGPT
  conversations (test half, 6+ user turns) sent turn by turn with the whole history. Flagged
  share with the newest message only, with context, and with context after a restart in the
  middle of each account (the memory of sent texts is lost, so the history is observed again).
* **honest apps**: ``--apps`` accounts each of an app that rotates 4 few-shot examples (made-up
  answered turns) from its pool of 60, and of one that sends two retrieved passages as a user
  message of their own before each question (unanswered turns: observed, the known cost).

    python -m bench.hidden_context [--accounts 40] [--attackers 10] [--requests 12] [--hidden 10] [--apps 10] [--seed 2]
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Sequence

import numpy as np

from bench.traffic import attacks, sources
from probewatch.cli.args import at_least
from probewatch.integrations.context import FEW_SHOT_TURNS, SentTexts, texts_to_observe
from probewatch.integrations.prompts import chat_texts

STRATEGIES = ("cot_elicitation", "corpus_sentences", "template_sweep", "random_words")
PLACEMENTS = ("turns", "answered turns", "system list")
APP_KINDS = ("few-shot", "rag message")
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are ChatGPT, a large language model. Answer as concisely as possible.",
    "You are a friendly assistant for a marketing agency. Keep answers practical.",
    "You are an expert software engineer. Prefer short code examples.",
    "You are a patient tutor. Explain step by step and check understanding.",
    "You are a writing assistant. Keep the user's voice and fix grammar only when asked.",
)
ASKS = (
    "Please answer each of the questions above, in order.",
    "Go through everything I asked above and answer it all.",
    "Now reply to all of my earlier messages, one answer each.",
)
Request = list[dict]  # a chat's messages


def honest_accounts(conversations: list[list[str]], n: int, rng: random.Random) -> list[list[Request]]:
    """Each account: a system prompt and 3-6 conversations, one request per user turn, each
    request carrying the conversation so far (assistant turns stand in for the answers)."""
    accounts = []
    for _ in range(n):
        system = {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}
        requests = []
        for turns in rng.sample(conversations, rng.randint(3, 6)):
            history: list[dict] = [system]
            for turn in turns[:16]:
                history.append({"role": "user", "content": turn})
                requests.append(list(history))
                history.append({"role": "assistant", "content": "(the model's answer)"})
        accounts.append(requests)
    return accounts


APP_REQUESTS = 30  # requests per honest app account


def honest_app_accounts(
    kind: str, chat_turns: list[str], passages: list[str], n: int, rng: random.Random
) -> list[list[Request]]:
    """Honest apps that send more than the question: ``few-shot`` rotates 4 examples (made-up
    earlier turns, each with its answer) from a pool of 60 per account; ``rag message`` sends
    two retrieved passages as a user message of their own before the question."""
    accounts = []
    for _ in range(n):
        examples = rng.sample(chat_turns, 60)
        requests = []
        for _ in range(APP_REQUESTS):
            question = {"role": "user", "content": rng.choice(chat_turns)}
            if kind == "few-shot":
                shots = []
                for example in rng.sample(examples, 4):
                    shots += [{"role": "user", "content": example}, {"role": "assistant", "content": "(its answer)"}]
                requests.append([{"role": "system", "content": "Answer like the examples."}, *shots, question])
            else:
                context = "Use these passages:\n" + "\n---\n".join(p[:500] for p in rng.sample(passages, 2))
                requests.append([{"role": "user", "content": context}, question])
        accounts.append(requests)
    return accounts


def hiding_accounts(
    strategy: str, placement: str, pools, chat_turns: list[str], args, rng: random.Random
) -> list[list[Request]]:
    """``args.attackers`` accounts of ``strategy``, its queries hidden in each request's context."""
    accounts = []
    for _ in range(args.attackers):
        hidden = [text for text, _ in attacks.queries(strategy, rng, pools, args.requests * args.hidden)]
        requests = []
        for r in range(args.requests):
            batch = hidden[r * args.hidden : (r + 1) * args.hidden]
            last = {"role": "user", "content": f"{rng.choice(chat_turns)}\n\n{rng.choice(ASKS)}"}
            if placement == "system list":
                listed = "\n".join(f"{i + 1}. {q}" for i, q in enumerate(batch))
                requests.append([{"role": "system", "content": f"Answer these first:\n{listed}"}, last])
            elif placement == "answered turns":  # each under a made-up answer, as many as examples may be
                turns = []
                for q in batch[:FEW_SHOT_TURNS]:
                    turns += [{"role": "user", "content": q}, {"role": "assistant", "content": "Noted."}]
                requests.append([*turns, last])
            else:
                requests.append([*({"role": "user", "content": q} for q in batch), last])
        accounts.append(requests)
    return accounts


def flagged_share(
    accounts: list[list[Request]], vectors_of: Callable[[list[str]], np.ndarray], mode: str
) -> tuple[float, float, int]:
    """(flag share, watch-or-above share, texts observed) of ``accounts``, each new to the
    shipped calibration. ``mode``: "prompt" (newest user message), "context", or "restart"
    (context, its memory lost halfway through each account)."""
    import probewatch as pw

    engine = pw.Engine(device="cpu", campaigns=False, population_update_every=0)
    flagged = watched = observed = 0
    for i, requests in enumerate(accounts):
        account = f"acct-{i}"
        sent = SentTexts() if mode != "prompt" else None
        levels = []
        for r, messages in enumerate(requests):
            if mode == "restart" and r == len(requests) // 2:
                sent = SentTexts()
            texts = texts_to_observe(sent, account, chat_texts(messages))
            if not texts:
                continue
            observed += len(texts)
            read = engine.read_prompts([account] * len(texts), texts)  # as observe_batch would embed them
            verdicts = engine.observe_embeddings([account] * len(texts), vectors_of(read), prompts=texts, read=read)
            levels.append(verdicts[-1].level)
        peak = max(levels, key=lambda lv: ("ok", "watch", "flag").index(lv.value))
        flagged += peak.value == "flag"
        watched += peak.value in ("watch", "flag")
        engine.forget(account)
    n = len(accounts)
    return flagged / n, watched / n, observed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=at_least(1), default=40, help="honest chat accounts")
    parser.add_argument("--attackers", type=at_least(1), default=10, help="accounts per strategy and placement")
    parser.add_argument("--requests", type=at_least(1), default=12, help="requests per attacker")
    parser.add_argument("--hidden", type=at_least(1, at_most=32), default=10, help="queries hidden per request")
    parser.add_argument("--apps", type=at_least(1), default=10, help="honest app accounts per kind")
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    import probewatch as pw
    from bench.embedcache import EmbeddingCache

    rng = random.Random(args.seed)
    units = [u for u in sources.split_units(sources.sharegpt())["test"] if len(u.texts) >= 6]
    conversations = [list(u.texts) for u in units]
    chat_turns = [t for u in units for t in u.texts if 10 <= len(t) <= 200]
    pools = attacks.build_attack_pools(rng, 60 * args.attackers, 0)
    honest = honest_accounts(conversations, args.accounts, rng)
    hiding = {
        (strategy, placement): hiding_accounts(strategy, placement, pools, chat_turns, args, rng)
        for strategy in STRATEGIES
        for placement in PLACEMENTS
    }
    passages = [p for u in sources.wikipedia() for p in u.texts if len(p) > 300]
    apps = {kind: honest_app_accounts(kind, chat_turns, passages, args.apps, rng) for kind in APP_KINDS}

    def every_text(accounts: list[list[Request]]) -> set[str]:
        out: set[str] = set()
        for requests in accounts:
            for messages in requests:
                request = chat_texts(messages)
                out.update(request.context + request.instructions + request.answered)
                out.update([request.prompt] if request.prompt else [])
        return out

    texts = sorted(every_text(honest).union(*(every_text(a) for a in [*hiding.values(), *apps.values()])))
    print(f"embedding {len(texts)} distinct texts ...", flush=True)
    cache = EmbeddingCache(pw.Embedder(device="cpu"))
    vector_of = dict(zip(texts, np.asarray(cache.embed(texts), dtype=np.float32), strict=True))

    def vectors_of(batch: list[str]) -> np.ndarray:
        """Rows for ``batch``; a text read without its boilerplate is embedded when first met."""
        missing = [t for t in dict.fromkeys(batch) if t not in vector_of]
        if missing:
            vector_of.update(zip(missing, np.asarray(cache.embed(missing), dtype=np.float32), strict=True))
        return np.stack([vector_of[t] for t in batch])

    print(f"\n{args.requests} requests an account, {args.hidden} queries hidden in each")
    print("\n| attack | placement | accounts | % flag / % watch or flag, newest message only | with context |")
    print("| --- | --- | --- | --- | --- |")
    for (strategy, placement), accounts in hiding.items():
        before = flagged_share(accounts, vectors_of, "prompt")
        after = flagged_share(accounts, vectors_of, "context")
        print(
            f"| {strategy} | {placement} | {len(accounts)} | {100 * before[0]:.0f} / {100 * before[1]:.0f} "
            f"| {100 * after[0]:.0f} / {100 * after[1]:.0f} |"
        )

    requests = sum(len(a) for a in honest)
    print(f"\nhonest chats: {len(honest)} accounts, {requests} requests")
    print("\n| honest chats | texts observed | % flag | % watch or flag |")
    print("| --- | --- | --- | --- |")
    for mode, label in (
        ("prompt", "newest message only"),
        ("context", "with context"),
        ("restart", "with context, restart halfway"),
    ):
        flag, watch, observed = flagged_share(honest, vectors_of, mode)
        print(f"| {label} | {observed} | {100 * flag:.1f} | {100 * watch:.1f} |")

    print(f"\nhonest apps: {args.apps} accounts each, {APP_REQUESTS} requests an account")
    print(
        "\n| honest app | % flag / % watch or flag, newest message only | with context | texts observed, with context |"
    )
    print("| --- | --- | --- | --- |")
    for kind, accounts in apps.items():
        before = flagged_share(accounts, vectors_of, "prompt")
        after = flagged_share(accounts, vectors_of, "context")
        print(
            f"| {kind} | {100 * before[0]:.0f} / {100 * before[1]:.0f} | {100 * after[0]:.0f} / {100 * after[1]:.0f} "
            f"| {after[2]} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
