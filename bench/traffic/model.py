"""Data classes of the benchmark traffic: one stream per account, and the whole split."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from probewatch.detect.boilerplate import read_texts


def text_table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    """Aligned plain-text lines: the first two columns (section, kind) left, numbers right.

    >>> text_table(("section", "kind", "n"), [("a", "benign:normal", 12)])
    ['section  kind            n', 'a        benign:normal  12']
    """
    widths = [max(len(str(r[i])) for r in [*rows, header]) for i in range(len(header))]
    return [
        "  ".join(
            str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]


def distinct_texts(streams) -> list[str]:
    """Every distinct text the model reads of ``streams``' prompts once, in first-seen order
    (embed these once): each stream's prompts as ``probewatch.detect.boilerplate.read_texts``
    reads them, as the engine does (an account's long boilerplate is read once).

    >>> distinct_texts([AccountStream("a", 0, "k", ["x", "y", "x"], [0, 1, 2], [False] * 3)])
    ['x', 'y']
    """
    return list(dict.fromkeys(text for stream in streams for text in read_texts(stream.prompts)))


@dataclass
class AccountStream:
    """All prompts one account sent, in time order, with ground truth.

    ``label`` is 1 for an account that takes part in extraction (pure, mixed or split
    campaign), 0 for a benign account. ``is_attack`` marks the individual prompts that came
    from the extraction strategy (all of them for pure attacks, a share for mixed accounts).
    ``source_groups`` names the source units (conversation, document, dataset item) the
    prompts came from, so tests can prove calibration and test never share a source.
    ``meta`` is optional request metadata, one dict per prompt (keys among ``ip``,
    ``network``, ``user_agent``, ``org``, ``payment``, ``key_created``; all values ``str``;
    dicts may be shared between prompts, treat them as read-only), or ``None`` where the
    traffic carries none (``build_traffic`` sets none; ``build_hydra`` sets it everywhere).
    """

    account: str
    label: int
    kind: str
    prompts: list[str]
    ts: list[float]
    is_attack: list[bool]
    campaign: str | None = None
    source_groups: frozenset[str] = field(default_factory=frozenset, repr=False)
    meta: list[dict[str, str]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def attack_share(self) -> float:
        return sum(self.is_attack) / len(self.is_attack) if self.is_attack else 0.0


@dataclass
class Traffic:
    """Calibration accounts (benign only), benign test accounts and attack scenarios."""

    size: str
    seed: int
    calibration: list[AccountStream]
    test_benign: list[AccountStream]
    attacks: dict[str, list[AccountStream]]

    def all_streams(self) -> list[AccountStream]:
        streams = list(self.calibration) + list(self.test_benign)
        for accounts in self.attacks.values():
            streams.extend(accounts)
        return streams

    def all_texts(self) -> list[str]:
        """Every distinct prompt text once, in first-seen order (embed these once)."""
        return distinct_texts(self.all_streams())

    def describe(self) -> str:
        """Plain-text table: accounts, prompts, attack prompts and distinct texts per kind."""
        rows: list[tuple[str, str, int, int, int, int, int, int]] = []

        def add(section: str, streams: list[AccountStream]) -> None:
            by_kind: dict[str, list[AccountStream]] = {}
            for stream in streams:
                by_kind.setdefault(stream.kind, []).append(stream)
            for kind in sorted(by_kind):
                group = by_kind[kind]
                lengths = sorted(len(s) for s in group)
                rows.append(
                    (
                        section,
                        kind,
                        len(group),
                        sum(lengths),
                        sum(sum(s.is_attack) for s in group),
                        lengths[len(lengths) // 2],
                        lengths[-1],
                        len({t for s in group for t in s.prompts}),
                    )
                )

        add("calibration", self.calibration)
        add("test_benign", self.test_benign)
        for scenario, streams in self.attacks.items():
            add(scenario, streams)
        header = ("section", "kind", "accounts", "prompts", "attack", "median", "max", "unique")
        lines = text_table(header, rows)
        streams = self.all_streams()
        kinds = Counter("attack" if s.label else "benign" for s in streams)
        lines.append(
            f"total: {len(streams)} accounts ({kinds['benign']} benign, {kinds['attack']} extraction), "
            f"{sum(len(s) for s in streams)} prompts, {len(self.all_texts())} unique texts "
            f"[size={self.size}, seed={self.seed}]"
        )
        return "\n".join(lines)
