"""Neighbourhood probes across accounts, measured on the hydra traffic (the measurement the
engine's own index, ``probewatch.campaigns.split_probes``, was designed from in 0.14.0).

The engine's probe rules (``probewatch.detect.probes``: a small edit of three recent prompts
that lacks a word they share; a probe around a seed, sent or not) read one account's last 16
prompts. A campaign that deals each seed's probes to different accounts (the hydra benchmark's
``hydra_grid``) leaves every member with unrelated prompts, so per account there is nothing to
count; the probes meet only across accounts. This module asks the engine's two questions of a
*cross-account* neighbourhood, in global time order, and reports how often each hydra scenario's
accounts send such probes, so that a campaign-layer signal can be designed from measurements
(``python -m bench.cross_account_probes --size default``).

For each query of at least ``probes.MIN_WORDS`` distinct words, its neighbourhood is the
NEIGHBOURS prompts of *other* accounts, among the last ``memory`` prompts of all accounts, that
share the most of its words, at least half (word sketches as the engine makes them; ties go to
the latest; an exact repeat of the query is not a neighbour). Across accounts there is no
"recent history" of one sender, and the latest prompts that share a few common words would
crowd out the variants of the query's seed. It is a *cross-account probe* when
``is_neighbourhood_probe`` or ``is_seed_probe`` says so of that neighbourhood, and an
*uncentred* one when, besides, nobody else has sent its text and no neighbour near it (within
the engine's near bounds, ``is_near``) has come from two or more accounts: people who share a
popular prompt mostly paste it as it is, and edit it now and then, while a probing campaign
sends every variant once and never the seed.
:func:`neighbourhood_brute_force` is the definition the indexed search is tested against.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from probewatch.campaigns.split_probes import NEIGHBOURS, is_near, shares_half
from probewatch.cli.args import at_least
from probewatch.detect import probes

MEMORY = 100_000  # recent prompts of all accounts searched (a few days of the default hydra traffic)
PER_WORD = 256  # recent prompts remembered per word hash (a very common word indexes only its latest)


@dataclass
class _Sent:
    account: str
    text: str
    hashes: frozenset[int]
    words: int


def neighbourhood_brute_force(history: Sequence[_Sent], account: str, text: str, hashes: frozenset[int]) -> list[int]:
    """Indices into ``history`` (oldest first) of the query's neighbourhood: the NEIGHBOURS
    prompts of other accounts (other texts) that share the most of its words, at least half;
    most shared first, then latest first."""
    found = [
        i
        for i, sent in enumerate(history)
        if sent.account != account
        and sent.text != text
        and shares_half(len(hashes & sent.hashes), len(hashes), len(sent.hashes))
    ]
    found.sort(key=lambda i: (len(hashes & history[i].hashes), i), reverse=True)
    return found[:NEIGHBOURS]


@dataclass
class Verdict:
    probe: bool  # a cross-account probe by either rule
    uncentred: bool  # a probe, and neither its text nor a near neighbour's came from two accounts


@dataclass
class CrossAccountProbes:
    """Global time order in, one :class:`Verdict` per query out (``observe``)."""

    memory: int = MEMORY
    _history: deque = field(default_factory=deque)  # (serial, _Sent), oldest first
    _first: int = 0  # serial of the oldest prompt still remembered
    _by_hash: dict[int, deque] = field(default_factory=dict)
    # text -> up to two accounts, for every text seen: unbounded, as a measurement over a finite
    # trace can be (the engine's index keeps a bounded table)
    _senders: dict[str, set[str]] = field(default_factory=dict)

    def neighbourhood(self, account: str, text: str, hashes: frozenset[int]) -> list[_Sent]:
        """The query's neighbourhood (see the module docstring), most shared words first."""
        shared: dict[int, int] = {}
        for h in hashes:
            for serial in self._by_hash.get(h, ()):
                if serial >= self._first:
                    shared[serial] = shared.get(serial, 0) + 1
        out = []
        for serial in sorted(shared, key=lambda k: (shared[k], k), reverse=True):
            sent = self._history[serial - self._first][1]
            close = shares_half(shared[serial], len(hashes), len(sent.hashes))
            if close and sent.account != account and sent.text != text:
                out.append(sent)
                if len(out) == NEIGHBOURS:
                    break
        return out

    def observe(self, account: str, text: str) -> Verdict:
        kept, words = probes.word_hashes(text)
        hashes = frozenset(kept)
        verdict = Verdict(False, False)
        if words >= probes.MIN_WORDS:
            near = self.neighbourhood(account, text, hashes)
            candidates = [(s.hashes, s.words) for s in near]
            if probes.is_neighbourhood_probe(hashes, words, candidates) or probes.is_seed_probe(
                hashes, words, candidates
            ):
                centred = bool(self._senders.get(text, set()) - {account}) or any(
                    len(self._senders.get(s.text, ())) >= 2 for s in near if is_near(hashes, s.hashes)
                )
                verdict = Verdict(True, not centred)
        self._remember(account, text, hashes, words)
        return verdict

    def _remember(self, account: str, text: str, hashes: frozenset[int], words: int) -> None:
        serial = self._first + len(self._history)
        self._history.append((serial, _Sent(account, text, hashes, words)))
        for h in hashes:
            self._by_hash.setdefault(h, deque(maxlen=PER_WORD)).append(serial)
        senders = self._senders.setdefault(text, set())
        if len(senders) < 2:
            senders.add(account)
        while len(self._history) > self.memory:
            self._history.popleft()
            self._first += 1


@dataclass
class AccountCounts:
    queries: int = 0
    probes: int = 0
    uncentred: int = 0


def count_probes(events: Iterable[tuple[str, str]], memory: int = MEMORY) -> dict[str, AccountCounts]:
    """Per account, its queries, cross-account probes and uncentred ones, from ``(account,
    prompt)`` pairs in global time order."""
    index = CrossAccountProbes(memory=memory)
    counts: dict[str, AccountCounts] = {}
    for account, text in events:
        verdict = index.observe(account, text)
        c = counts.setdefault(account, AccountCounts())
        c.queries += 1
        c.probes += verdict.probe
        c.uncentred += verdict.uncentred
    return counts


def scenario_table(counts: dict[str, AccountCounts], scenarios: dict[str, Sequence[str]]) -> list[dict]:
    """One row per scenario (name -> its accounts): its queries, cross-account probes and
    uncentred ones, and the share of its accounts with at least one and two uncentred probes."""
    rows = []
    for name, accounts in scenarios.items():
        mine = [counts[a] for a in accounts if a in counts and counts[a].queries]
        if not mine:
            continue
        rows.append(
            {
                "scenario": name,
                "accounts": len(mine),
                "queries": sum(c.queries for c in mine),
                "probes": sum(c.probes for c in mine),
                "uncentred": sum(c.uncentred for c in mine),
                "accounts_with_one": sum(c.uncentred >= 1 for c in mine) / len(mine),
                "accounts_with_two": sum(c.uncentred >= 2 for c in mine) / len(mine),
            }
        )
    return rows


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        f"Neighbourhood probes across accounts (`{command}`): per scenario, its queries that are "
        "probes across accounts and uncentred ones, and its accounts with at least one and two uncentred probes.",
        "",
        "| scenario | accounts | queries | probes | uncentred | accounts with 1+ uncentred | with 2+ |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['accounts']} | {r['queries']} | {r['probes']} | {r['uncentred']} | "
            f"{100 * r['accounts_with_one']:.1f} % | {100 * r['accounts_with_two']:.1f} % |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cross_account_probes", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("quick", "default"), default="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory", type=at_least(1), default=MEMORY, help="recent prompts of all accounts searched")
    args = parser.parse_args(argv)
    from bench.traffic import build_hydra

    hydra = build_hydra(args.size, args.seed)  # the hydra benchmark's traffic (its k-center picks need the model)
    scenarios = {name: [s.account for s in streams] for name, streams in hydra.test_benign.items()}
    scenarios |= {name: [s.account for s in streams] for name, streams in hydra.attacks.items() if "_meta" not in name}
    events = hydra.events(list(scenarios))  # the content run's accounts, interleaved in time
    counts = count_probes(((account, prompt) for _, account, prompt, _, _ in events), memory=args.memory)
    command = f"python -m bench.cross_account_probes --size {args.size} --seed {args.seed}"
    if args.memory != MEMORY:
        command += f" --memory {args.memory}"
    print(markdown(scenario_table(counts, scenarios), command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
