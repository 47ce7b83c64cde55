"""Hydra campaigns: cross-account extraction traffic, with benign look-alike crowds.

The 2026 distillation campaigns ran their extraction through thousands of light accounts at
once ("hydra clusters" behind proxy networks): every account stayed under per-account
thresholds, some carried real customer traffic around the extraction, and attribution came
from what the accounts shared (infrastructure, request metadata, coordination) rather than
from any one account. This module builds labelled traffic to measure a cross-account
campaign layer: whole campaigns of light member accounts, benign crowds that share a
template or infrastructure without coordinating, and per-request metadata for both.

    from bench.traffic import build_hydra
    hydra = build_hydra(size="quick", seed=0)
    for ts, account, prompt, meta, stream in hydra.events(): ...

Everything is real text from the same data packages as ``build_traffic`` (test half for the
test scenarios, calibration half for calibration), deterministic for ``(size, seed)`` and
the embedder. See README.md ("Hydra campaigns") for the scenarios, metadata and sizes.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import numpy as np

from . import (
    attacks,
    benign,
    eighth_attacks,
    fifth_attacks,
    fourth_attacks,
    ninth_attacks,
    seventh_attacks,
    sixth_attacks,
    sources,
    third_attacks,
)
from .build import SIZES, _account_id, _attack_stream, _rng, build_traffic
from .edits import human_edit
from .model import AccountStream, distinct_texts, text_table
from .timing import DAY, EPOCH, app_times, session_times

Query = tuple[str, str]  # (text, source unit key)
Event = tuple[float, str, str, dict[str, str] | None, AccountStream]

META_KEYS = ("ip", "network", "user_agent", "org", "payment", "key_created")
HYDRA_ATTACKS = ("hydra_cot", "hydra_blend", "hydra_kcenter", "hydra_grid", "hydra_relay")
HYDRA_SCENARIOS = tuple(name for base in HYDRA_ATTACKS for name in (base, f"{base}_meta"))
HYDRA_CROWDS = ("crowd_rag", "crowd_json", "crowd_agent", "eval_harness", "nat", "class_assignment")
# Test-only crowds: hard benign populations the calibration has no example of, to see whether
# what the calibration learnt of benign crowds generalises.
HYDRA_UNSEEN_CROWDS = ("class_rewrite",)
HYDRA_BENIGN = ("ordinary", *HYDRA_CROWDS, *HYDRA_UNSEEN_CROWDS)

PERIOD_START = 1_769_990_400.0  # 2026-02-02T00:00:00Z, a Monday: the test period starts here
HOUR = 3600.0


@dataclass(frozen=True)
class HydraSizeSpec:
    period_days: int  # the test period; calibration covers the same length just before it
    campaigns: int  # campaigns per attack scenario
    members: tuple[int, int]  # member accounts per hydra_cot / hydra_kcenter campaign
    member_queries: tuple[float, float, int, int]  # log-normal (median, sigma), clipped to [lo, hi]
    campaign_days: tuple[float, float]  # how long one campaign runs
    blend_members: tuple[int, int]
    blend_queries: tuple[float, float, int, int]  # all prompts of a blend account
    blend_share: tuple[float, float]  # extraction share of a blend account
    blend_p_edit: float  # customers' small edits (new texts), kept low for the budget
    kcenter_subset: float  # share of the shared pool each campaign selects from
    kcenter_wrapped: float  # share of pool sentences sent with a light wrapper
    crowd_accounts: int  # accounts per test crowd (rag, json, agent)
    calibration_crowd_accounts: int
    crowd_queries: tuple[float, float, int, int]
    harness_runs: int
    calibration_harness_runs: int
    harness_accounts: tuple[int, int]  # accounts per run, all sending the same items
    harness_items: int
    nat_users: int
    calibration_nat_users: int
    nat_queries: tuple[float, float, int, int]
    classes: int
    calibration_classes: int
    class_size: int
    class_sheet: tuple[int, int]  # questions on the assignment sheet
    proxy_ips: tuple[int, int]  # _meta: proxy addresses per campaign
    shared_payments: tuple[int, int]  # _meta: payment fingerprints per campaign
    woz_per_domain: int  # MultiWOZ dialogues synthesised per domain and half


HYDRA_SIZES = {
    "quick": HydraSizeSpec(
        period_days=7,
        campaigns=2,
        members=(25, 27),
        member_queries=(12, 0.45, 5, 50),
        campaign_days=(2.0, 3.5),
        blend_members=(25, 27),
        blend_queries=(45, 0.4, 30, 150),
        blend_share=(0.05, 0.30),
        blend_p_edit=0.02,
        kcenter_subset=0.9,
        kcenter_wrapped=0.3,
        crowd_accounts=30,
        calibration_crowd_accounts=10,
        crowd_queries=(3, 0.5, 2, 20),
        harness_runs=2,
        calibration_harness_runs=1,
        harness_accounts=(3, 4),
        harness_items=12,
        nat_users=30,
        calibration_nat_users=12,
        nat_queries=(8, 0.7, 2, 40),
        classes=1,
        calibration_classes=1,
        class_size=30,
        class_sheet=(6, 8),
        proxy_ips=(6, 12),
        shared_payments=(2, 4),
        woz_per_domain=40,
    ),
    "default": HydraSizeSpec(
        period_days=14,
        campaigns=3,
        members=(500, 550),
        member_queries=(12, 0.45, 5, 50),
        campaign_days=(3.0, 6.0),
        blend_members=(500, 540),
        blend_queries=(55, 0.45, 30, 150),
        blend_share=(0.05, 0.30),
        blend_p_edit=0.01,
        kcenter_subset=0.9,
        kcenter_wrapped=0.3,
        crowd_accounts=500,
        calibration_crowd_accounts=120,
        crowd_queries=(3, 0.55, 2, 30),
        harness_runs=4,
        calibration_harness_runs=2,
        harness_accounts=(3, 6),
        harness_items=120,
        nat_users=300,
        calibration_nat_users=100,
        nat_queries=(12, 0.9, 2, 200),
        classes=2,
        calibration_classes=1,
        class_size=30,
        class_sheet=(6, 8),
        proxy_ips=(12, 40),
        shared_payments=(3, 8),
        woz_per_domain=400,
    ),
}


# --- the traffic --------------------------------------------------------------------------


@dataclass
class HydraTraffic:
    """Calibration accounts (benign only), benign test scenarios and hydra attack scenarios.

    Every stream carries ``meta``. ``events()`` interleaves the test traffic of the chosen
    scenarios in time, as a cross-account detector sees it. The ``<name>_meta`` scenarios are
    clones of ``<name>`` (same prompts and times, other accounts and metadata): replay a
    plain scenario and its ``_meta`` twin in separate runs, each with the benign scenarios.
    """

    size: str
    seed: int
    calibration: list[AccountStream]
    test_benign: dict[str, list[AccountStream]]
    attacks: dict[str, list[AccountStream]]
    period: tuple[float, float] = (0.0, 0.0)  # test period [start, end) in seconds
    calibration_period: tuple[float, float] = (0.0, 0.0)

    def test_streams(self, scenarios: list[str] | tuple[str, ...] | None = None) -> list[AccountStream]:
        """Test accounts of the named scenarios (benign and attack), all when ``None``."""
        known = {**self.test_benign, **self.attacks}
        names = list(known) if scenarios is None else list(scenarios)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown scenarios {unknown}; expected some of {list(known)}")
        return [s for name in names for s in known[name]]

    def all_streams(self) -> list[AccountStream]:
        return list(self.calibration) + self.test_streams()

    def events(self, scenarios: list[str] | tuple[str, ...] | None = None) -> list[Event]:
        """Every prompt of the chosen test scenarios as ``(ts, account, prompt, meta, stream)``,
        in one global time order (ties by account, then position in the account)."""
        return _merge(self.test_streams(scenarios))

    def calibration_events(self) -> list[Event]:
        return _merge(self.calibration)

    def campaigns(self) -> dict[str, list[AccountStream]]:
        """Campaign id -> member accounts, over all attack scenarios."""
        out: dict[str, list[AccountStream]] = {}
        for streams in self.attacks.values():
            for stream in streams:
                if stream.campaign:
                    out.setdefault(stream.campaign, []).append(stream)
        return out

    def all_texts(self) -> list[str]:
        """Every distinct prompt once, in first-seen order (embed these once)."""
        return distinct_texts(self.all_streams())

    def describe(self) -> str:
        """Plain-text table per section and kind: accounts, campaigns, prompts, attack prompts,
        median and max prompts per account, distinct texts."""
        rows: list[tuple] = []

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
                        len({s.campaign for s in group if s.campaign}),
                        sum(lengths),
                        sum(sum(s.is_attack) for s in group),
                        lengths[len(lengths) // 2],
                        lengths[-1],
                        len({t for s in group for t in s.prompts}),
                    )
                )

        add("calibration", self.calibration)
        for name, streams in self.test_benign.items():
            add(name, streams)
        for name, streams in self.attacks.items():
            add(name, streams)
        header = ("section", "kind", "accounts", "campaigns", "prompts", "attack", "median", "max", "unique")
        lines = text_table(header, rows)
        streams = self.all_streams()
        kinds = Counter("attack" if s.label else "benign" for s in streams)
        days = (self.period[1] - self.period[0]) / DAY
        lines.append(
            f"total: {len(streams)} accounts ({kinds['benign']} benign, {kinds['attack']} extraction in "
            f"{len(self.campaigns())} campaigns), {sum(len(s) for s in streams)} prompts, "
            f"{len(self.all_texts())} unique texts; test period {days:.0f} days "
            f"[size={self.size}, seed={self.seed}]"
        )
        return "\n".join(lines)


def _merge(streams: list[AccountStream]) -> list[Event]:
    keyed = [
        (t, s.account, i, p, s.meta[i] if s.meta is not None else None, s)
        for s in streams
        for i, (t, p) in enumerate(zip(s.ts, s.prompts, strict=True))
    ]
    keyed.sort(key=lambda e: (e[0], e[1], e[2]))
    return [(t, account, prompt, meta, stream) for t, account, _, prompt, meta, stream in keyed]


# --- small helpers ------------------------------------------------------------------------


def _hrng(size: str, seed: int, purpose: str) -> random.Random:
    return random.Random(f"probewatch-hydra/{size}/{seed}/{purpose}")


def _opaque(prefix: str, *parts: object) -> str:
    return prefix + hashlib.sha256("/".join(map(str, (prefix, *parts))).encode()).hexdigest()[:16]


def _campaign_id(size: str, seed: int, scenario: str, index: int) -> str:
    return "campaign-" + hashlib.sha256(f"{size}/{seed}/hydra/{scenario}/{index}".encode()).hexdigest()[:10]


def _lognormal_int(rng: random.Random, spec: tuple[float, float, int, int]) -> int:
    median, sigma, lo, hi = spec
    return int(min(hi, max(lo, round(median * math.exp(rng.gauss(0.0, sigma))))))


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fill(template: str, **values: str) -> str:
    # str.replace, not str.format: templates hold literal JSON braces, payloads hold anything
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


# --- time ---------------------------------------------------------------------------------


def _session_ids(ts: list[float], gap: float = 1800.0) -> list[int]:
    ids, current = [], 0
    for i, t in enumerate(ts):
        if i and t - ts[i - 1] > gap:
            current += 1
        ids.append(current)
    return ids


def fit_to_period(rng: random.Random, ts: list[float], start: float, days: float) -> list[float]:
    """Move a stream's times into ``[start, start + days)``: sessions (runs of prompts less
    than 20 minutes apart) keep their inner gaps and their hour of the day; the days they
    fall on are shifted to a random place in the period, or squeezed when the stream spans
    more days than the period has."""
    if not ts:
        return []
    ids = _session_ids(ts, 1200.0)
    sessions: list[list[float]] = []
    for sid, t in zip(ids, ts, strict=True):
        if sid == len(sessions):
            sessions.append([])
        sessions[-1].append(t)
    t0 = ts[0]
    day_of = [math.floor((s[0] - t0 + ((t0 - EPOCH) % DAY)) / DAY) for s in sessions]
    hour_of = [(s[0] - EPOCH) % DAY for s in sessions]
    span = day_of[-1] + 1
    whole = max(1, int(days))
    if span <= whole - 1:
        first = rng.randrange(0, whole - span)
        new_day = [first + d for d in day_of]
    else:
        squeeze = (whole - 2) / max(1, span - 1)
        new_day = [math.floor(d * squeeze) for d in day_of]
    out: list[float] = []
    previous_end = -math.inf
    for session, day, hour in zip(sessions, new_day, hour_of, strict=True):
        begin = max(start + day * DAY + hour, previous_end + 60.0)
        out.extend(begin + (t - session[0]) for t in session)
        previous_end = out[-1]
    return out


def member_times(rng: random.Random, n: int, start: float, end: float) -> list[float]:
    """A light campaign member: starts somewhere in the first part of the campaign window and
    sends its few queries as a trickle, as short sessions, or a handful a day; squeezed to
    end inside the window."""
    profile = rng.choice(["trickle", "sessions", "daily"])
    offsets, t = [], 0.0
    if profile == "trickle":
        for _ in range(n):
            offsets.append(t)
            t += 1500.0 * math.exp(rng.gauss(0.0, 0.7))
    elif profile == "sessions":
        while len(offsets) < n:
            for _ in range(min(n - len(offsets), rng.randint(2, 6))):
                offsets.append(t)
                t += 40.0 * math.exp(rng.gauss(0.0, 0.5))
            t += 4 * HOUR * math.exp(rng.gauss(0.0, 0.8))
    else:
        while len(offsets) < n:
            for _ in range(min(n - len(offsets), rng.randint(1, 4))):
                offsets.append(t)
                t += rng.uniform(60.0, 3 * HOUR)
            t += rng.uniform(12 * HOUR, 30 * HOUR)
    first = rng.uniform(start, start + 0.6 * (end - start))
    room = end - first
    scale = min(1.0, room / offsets[-1]) if offsets[-1] > 0 else 1.0
    return [first + o * scale for o in offsets]


# --- request metadata ---------------------------------------------------------------------

# Real-world-looking network names ("ASN NAME"); addresses are synthetic but fall in a few
# fixed /16 prefixes per network, so subnet correlation has something to find.
_RESIDENTIAL = (
    ("AS7922 COMCAST-7922", 14),
    ("AS7018 ATT-INTERNET4", 10),
    ("AS20115 CHARTER-20115", 8),
    ("AS701 UUNET", 6),
    ("AS22773 ASN-CXA-ALL-CCI-22773-RDC", 5),
    ("AS3320 DTAG", 7),
    ("AS2856 BT-UK-AS", 5),
    ("AS5089 NTL", 4),
    ("AS3215 FRANCE-TELECOM", 5),
    ("AS12322 PROXAD", 3),
    ("AS3352 TELEFONICA-DATA-ESPANA", 3),
    ("AS1221 ASN-TELSTRA", 3),
    ("AS4766 KIXS-AS-KR", 4),
    ("AS9299 IPG-AS-AP", 3),
    ("AS28573 CLARO S.A.", 4),
    ("AS812 ROGERS-COMMUNICATIONS", 3),
    ("AS55836 RELIANCEJIO-IN", 6),
    ("AS4134 CHINANET-BACKBONE", 2),
)
_MOBILE = ("AS21928 T-MOBILE-AS21928", "AS22394 CELLCO", "AS20057 ATT-MOBILITY-LLC", "AS25135 VODAFONE_UK_ASN")
_CLOUD = (
    "AS16509 AMAZON-02",
    "AS14618 AMAZON-AES",
    "AS15169 GOOGLE",
    "AS396982 GOOGLE-CLOUD-PLATFORM",
    "AS8075 MICROSOFT-CORP-MSN-AS-BLOCK",
    "AS14061 DIGITALOCEAN-ASN",
    "AS24940 HETZNER-AS",
    "AS16276 OVH",
)
_BUSINESS = ("AS3356 LEVEL3", "AS174 COGENT-174", "AS6461 ZAYO-6461", "AS1299 TWELVE99", "AS6830 LIBERTY-GLOBAL")
_ACADEMIC = ("AS786 JANET", "AS11537 INTERNET2-RESEARCH-EDU", "AS680 DFN", "AS1103 SURFNET-NL")
_PROXY_HOSTING = ("AS9009 M247", "AS62240 CLOUVIDER", "AS60068 CDN77", "AS206092 IPXO", "AS212238 DATACAMP")

# Popular API clients and browsers, weighted: most accounts share one of these.
_POPULAR_UAS = (
    ("OpenAI/Python 1.66.3", 18),
    ("Anthropic/Python 0.49.0", 14),
    ("python-requests/2.32.3", 12),
    ("python-httpx/0.28.1", 9),
    ("OpenAI/JS 4.86.1", 8),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/133.0.0.0 Safari/537.36",
        8,
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/133.0.0.0 Safari/537.36",
        6,
    ),
    ("axios/1.8.1", 5),
    ("node-fetch/1.0 (+https://github.com/bitinn/node-fetch)", 3),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.3 Safari/605.1.15",
        3,
    ),
    ("curl/8.7.1", 3),
    ("Go-http-client/2.0", 2),
    ("okhttp/4.12.0", 2),
    ("Java-http-client/21.0.6", 1),
)
_OCTETS = [o for o in range(24, 224) if o not in (100, 127, 169, 172, 192, 198, 203)]


def _prefixes(network: str) -> list[str]:
    digest = hashlib.sha256(network.encode()).digest()
    return [f"{_OCTETS[digest[2 * i] % len(_OCTETS)]}.{digest[2 * i + 1]}" for i in range(8)]


def _ip(rng: random.Random, network: str) -> str:
    return f"{rng.choice(_prefixes(network))}.{rng.randrange(256)}.{rng.randint(1, 254)}"


def _weighted(rng: random.Random, table) -> str:
    return rng.choices([v for v, _ in table], weights=[w for _, w in table])[0]


def _residential(rng: random.Random) -> tuple[str, str]:
    network = _weighted(rng, _RESIDENTIAL)
    return _ip(rng, network), network


def _popular_ua(rng: random.Random, favourite: str | None = None) -> str:
    # crowds of one framework lean on that framework's client
    if favourite and rng.random() < 0.6:
        return favourite
    return _weighted(rng, _POPULAR_UAS)


def _rare_ua(rng: random.Random) -> str:
    """A user agent nobody else sends: an odd build of a headless browser or an unknown client."""
    style = rng.randrange(3)
    if style == 0:
        return (
            f"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            f"HeadlessChrome/{rng.randint(104, 121)}.0.{rng.randint(5000, 6200)}.{rng.randint(10, 250)} Safari/537.36"
        )
    if style == 1:
        return f"python-httpx/0.{rng.randint(13, 22)}.{rng.randint(0, 9)} relaykit/{rng.randint(0, 3)}.{rng.randint(0, 40)}"
    return f"Dalvik/2.1.0 (Linux; U; Android {rng.randint(7, 11)}; SM-{rng.choice('AGNT')}{rng.randint(100, 999)}F Build/{rng.choice(['QP1A', 'RP1A', 'SP1A'])}.{rng.randint(190000, 240000)}.0{rng.randint(10, 99)})"


def _key_created_before(rng: random.Random, first: float) -> str:
    # a fifth of ordinary accounts are new; the rest made their key months to two years ago
    if rng.random() < 0.2:
        back = rng.uniform(0.1, 30) * DAY
    else:
        back = min(730.0, 30 + 120 * math.exp(rng.gauss(0.0, 0.8))) * DAY
    return _iso(first - back)


def _compose(
    ts: list[float],
    place: Callable[[int], tuple[str, str]],
    user_agent: Callable[[int], str],
    org: str,
    payment: str,
    key_created: str,
    per_request: bool = False,
) -> list[dict[str, str]]:
    """One meta dict per prompt; ``place`` and ``user_agent`` are asked once per session (or
    per request), and the prompts of one session share one dict."""
    out: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = -1
    for i, session in enumerate(_session_ids(ts)):
        unit = i if per_request else session
        if unit != last:
            ip, network = place(unit)
            current = {
                "ip": ip,
                "network": network,
                "user_agent": user_agent(unit),
                "org": org,
                "payment": payment,
                "key_created": key_created,
            }
            last = unit
        out.append(current)
    return out


def person_meta(rng: random.Random, stream: AccountStream, favourite_ua: str | None = None) -> list[dict[str, str]]:
    """An ordinary user: a home connection (one or two addresses of one ISP), now and then a
    phone or another network; one popular client (a tenth switch between two); own org,
    own payment fingerprint, a key made before the first prompt."""
    home_ip, network = _residential(rng)
    second = _ip(rng, network) if rng.random() < 0.3 else None
    agents = [_popular_ua(rng, favourite_ua)]
    if rng.random() < 0.1:
        agents.append(_weighted(rng, _POPULAR_UAS))

    def place(_session: int) -> tuple[str, str]:
        roll = rng.random()
        if roll < 0.12:
            mobile = rng.choice(_MOBILE)
            return _ip(rng, mobile), mobile
        if second and roll < 0.3:
            return second, network
        return home_ip, network

    return _compose(
        stream.ts,
        place,
        lambda session: agents[session % len(agents)],
        _opaque("org-", "person", stream.account),
        _opaque("pm_", "person", stream.account),
        _key_created_before(rng, stream.ts[0]),
    )


def app_meta(rng: random.Random, stream: AccountStream, favourite_ua: str | None = None) -> list[dict[str, str]]:
    """A deployed app (or its developer's laptop): one cloud or home address, one client."""
    if rng.random() < 0.6:
        network = rng.choice(_CLOUD)
        addresses = [_ip(rng, network) for _ in range(rng.choice([1, 1, 2]))]
    else:
        ip, network = _residential(rng)
        addresses = [ip]
    agent = _popular_ua(rng, favourite_ua)
    return _compose(
        stream.ts,
        lambda session: (addresses[session % len(addresses)], network),
        lambda _session: agent,
        _opaque("org-", "app", stream.account),
        _opaque("pm_", "app", stream.account),
        _key_created_before(rng, stream.ts[0]),
    )


def _fresh_member_key(rng: random.Random, window_start: float) -> str:
    # fraudulent accounts are made in the weeks before the campaign, at unremarkable times
    return _iso(window_start - rng.uniform(0.5, 60) * DAY)


def rotating_proxy_meta(rng: random.Random, stream: AccountStream, window_start: float) -> list[dict[str, str]]:
    """A plain hydra member: every request leaves from a fresh residential address (rotating
    proxies), one popular client, own org and payment, a key made some weeks before."""
    agent = _weighted(rng, _POPULAR_UAS)
    return _compose(
        stream.ts,
        lambda _request: _residential(rng),
        lambda _request: agent,
        _opaque("org-", "member", stream.account),
        _opaque("pm_", "member", stream.account),
        _fresh_member_key(rng, window_start),
        per_request=True,
    )


@dataclass
class _SharedInfrastructure:
    """What the members of one ``_meta`` campaign have in common."""

    addresses: list[tuple[str, str]]
    user_agent: str
    payments: list[str]
    key_hour: float


def _infrastructure(
    rng: random.Random, spec: HydraSizeSpec, campaign: str, window_start: float
) -> _SharedInfrastructure:
    networks = rng.sample(_PROXY_HOSTING, rng.choice([1, 1, 2]))
    addresses = []
    for _ in range(rng.randint(*spec.proxy_ips)):
        network = rng.choice(networks)
        addresses.append((_ip(rng, network), network))
    payments = [_opaque("pm_", "shared", campaign, i) for i in range(rng.randint(*spec.shared_payments))]
    key_hour = window_start - rng.uniform(1, 20) * DAY
    return _SharedInfrastructure(addresses, _rare_ua(rng), payments, key_hour)


def shared_infrastructure_meta(
    rng: random.Random, stream: AccountStream, infra: _SharedInfrastructure
) -> list[dict[str, str]]:
    """A ``_meta`` hydra member: requests from a small proxy pool, the campaign's one rare
    client, one of a few shared payment fingerprints, a key made in the same hour as the
    other members' keys; own org."""
    payment = rng.choice(infra.payments)
    key_created = _iso(infra.key_hour + rng.uniform(0, 3599))
    return _compose(
        stream.ts,
        lambda _request: rng.choice(infra.addresses),
        lambda _request: infra.user_agent,
        _opaque("org-", "member", stream.account),
        payment,
        key_created,
        per_request=True,
    )


# --- supply of real text, one half at a time -----------------------------------------------

_MATH = re.compile(
    r"\b(solve|equation|integral|derivative|probability|prove|theorem|algebra|polynomial|factorial|"
    r"percentage|arithmetic|geometry|calculus|how many|sum of|average of|square root|divisible|"
    r"fraction|ratio|interest rate|compound)\b",
    re.I,
)
_CODEISH = re.compile(r"\b(error|import|python|code|function|javascript|sql|class|api)\b|[{};=]", re.I)
_ASK = re.compile(
    r"\s*(explain|describe|what|how|why|compare|tell me|list|give me|summari[sz]e|define|who|when|where|which|"
    r"can you|could you|is it|are there|should)\b",
    re.I,
)
_WRITE_REQUEST = re.compile(r"\s*(write|rewrite|compose|draft|create|generate|give me|make)\b", re.I)


class _Supply:
    """The real text of one half, by kind. Each text is handed out at most once, so no two
    scenarios or accounts get the same payload; ``exclusive_units`` also hands each source
    unit (article, conversation, template) of a kind to one taker only (a user's own
    documents)."""

    def __init__(self, half: str, size: str, seed: int, woz_per_domain: int):
        self.half = half
        self.size = size
        self.seed = seed
        self.woz_per_domain = woz_per_domain
        self.taken: set[str] = set()
        self.taken_units: dict[str, set[str]] = {}  # kind -> units handed out exclusively
        self._items: dict[str, list[Query]] = {}
        self._cursor: dict[str, int] = {}
        self._docs: dict[str, list[sources.Unit]] | None = None
        self._units: dict[str, list[sources.Unit]] = {}

    def units(self, loader) -> list[sources.Unit]:
        name = loader.__name__
        if name not in self._units:
            self._units[name] = sources.split_units(loader())[self.half]
        return self._units[name]

    def _rng(self, kind: str) -> random.Random:
        return random.Random(f"probewatch-hydra-supply/{self.size}/{self.seed}/{self.half}/{kind}")

    def _load(self, kind: str) -> list[Query]:
        sharegpt = (
            [(t, u.key, u.topic) for u in self.units(sources.sharegpt) for t in u.texts]
            if kind in ("code", "math", "question", "grade", "pasted")
            else []
        )
        ordered = False
        if kind == "code":
            items = [
                (t, k)
                for t, k, topic in sharegpt
                if topic == "code"
                and 40 <= len(t) <= 1500
                and len(t.split()) >= 6
                and not t.lower().startswith("continue")
            ]
        elif kind == "math":
            items = [
                (t, k)
                for t, k, topic in sharegpt
                if topic != "non_english" and 20 <= len(t) <= 800 and _MATH.search(t) and not _CODEISH.search(t)
            ]
        elif kind == "question":  # questions, and requests phrased like one ("explain ...", "what is ...")
            items = [
                (t, k)
                for t, k, topic in sharegpt
                if topic not in ("code", "non_english")
                and 20 <= len(t) <= 400
                and (t.rstrip().endswith("?") or _ASK.match(t))
            ]
            items += [(u.texts[0], u.key) for u in self.units(sources.fanoutqa) + self.units(sources.freshqa)]
        elif kind == "grade":
            items = [(u.texts[0], u.key) for u in self.units(sources.writingbench)]
            items += [
                (t, k)
                for t, k, topic in sharegpt
                if topic == "writing" and 60 <= len(t) <= 1500 and _WRITE_REQUEST.match(t)
            ]
        elif kind == "task":
            items = [(u.texts[0], u.key) for u in self.units(sources.mind2web) + self.units(sources.snips)]
        elif kind == "pasted":  # long texts people paste to have them processed
            items = [
                (t, k)
                for t, k, topic in sharegpt
                if topic in ("business", "writing", "chat") and 200 <= len(t) <= 1500 and not _CODEISH.search(t[:200])
            ]
        elif kind == "news":  # article paragraphs, for extraction
            items = [(p, u.key) for u in self.units(sources.bbc_news) for p in u.texts[1:] if 150 <= len(p) <= 1200]
            items += [(" ".join(sources.sentences(u.texts[0])[:4]), u.key) for u in self.units(sources.lee_news)]
        elif kind == "natural":  # raw sentences of four corpora, interleaved so none dominates
            corpora = [
                [(s, u.key) for u in self.units(sources.wikipedia) for p in u.texts for s in sources.sentences(p)],
                [(s, u.key) for u in self.units(sources.bbc_news) for s in sources.sentences(" ".join(u.texts[1:]))],
                [(s, u.key) for u in self.units(sources.lee_news) for s in sources.sentences(u.texts[0])],
                [(p, u.key) for u in self.units(sources.shakespeare) for p in u.texts],
            ]
            rng = self._rng(kind)
            for corpus in corpora:
                rng.shuffle(corpus)
            items = [c[i] for i in range(max(map(len, corpora))) for c in corpora if i < len(c)]
            ordered = True  # already mixed; keep the interleaving
        elif kind.startswith("snips:"):
            items = [(u.texts[0], u.key) for u in self.units(sources.snips) if u.topic == kind.split(":", 1)[1]]
        elif kind.startswith("woz:"):
            rng = self._rng("multiwoz")
            woz = benign.multiwoz_sessions(rng, self.units(sources.multiwoz_templates), self.woz_per_domain)
            for domain, sessions in woz.items():
                flat = [(t, k) for texts, keys in sessions for t, k in zip(texts, keys, strict=True) if len(t) >= 15]
                self._store(f"woz:{domain}", flat, ordered=False)
            return self._items.setdefault(kind, [])
        elif kind.startswith("bench:"):  # a benchmark in its own order, as a harness runs it
            loader = {
                "fanoutqa": sources.fanoutqa,
                "freshqa": sources.freshqa,
                "snips": sources.snips,
                "writingbench": sources.writingbench,
                "mind2web": sources.mind2web,
            }[kind.split(":", 1)[1]]
            items = sorted(((u.texts[0], u.key) for u in self.units(loader)), key=lambda q: q[1])
            ordered = True
        elif kind.startswith("sweep:"):  # a dataset a sweep walks in order
            name = kind.split(":", 1)[1]
            if name == "snips":
                items = [(u.texts[0], u.key) for u in self.units(sources.snips)]
            elif name == "headline":
                items = [(u.texts[0], u.key) for u in self.units(sources.bbc_news) if 15 <= len(u.texts[0]) <= 200]
            else:  # article paragraphs, article by article
                items = [
                    (p, f"{u.key}#{i:03d}")
                    for u in self.units(sources.bbc_news)
                    for i, p in enumerate(u.texts[1:])
                    if 150 <= len(p) <= 1200
                ]
            items.sort(key=lambda q: q[1])
            items = [(text, key.split("#", 1)[0]) for text, key in items]
            ordered = True
        elif kind.startswith("topic:"):  # FanOutQA questions of one category
            items = [(u.texts[0], u.key) for u in self.units(sources.fanoutqa) if u.topic == kind.split(":", 1)[1]]
        else:
            raise KeyError(kind)
        return self._store(kind, items, ordered)

    def _store(self, kind: str, items: list[Query], ordered: bool) -> list[Query]:
        unique: dict[str, str] = {}
        for text, key in items:
            unique.setdefault(text, key)
        listed = list(unique.items())
        if not ordered:
            listed.sort()
            self._rng(kind).shuffle(listed)
        self._items[kind] = listed
        self._cursor[kind] = 0
        return listed

    def items(self, kind: str) -> list[Query]:
        return self._items[kind] if kind in self._items else self._load(kind)

    def take(self, kind: str, n: int, exclusive_units: bool = False) -> list[Query]:
        """The next ``n`` untaken items of ``kind`` (fewer when it runs out)."""
        items = self.items(kind)
        owned = self.taken_units.setdefault(kind, set())
        out: list[Query] = []
        i = self._cursor[kind]
        while len(out) < n and i < len(items):
            text, key = items[i]
            i += 1
            if text in self.taken:
                continue
            if exclusive_units and key in owned:
                continue  # passed over for good: its unit belongs to another taker
            self.taken.add(text)
            if exclusive_units:
                owned.add(key)
            out.append((text, key))
        self._cursor[kind] = i
        return out

    def remaining(self, kind: str) -> int:
        items = self.items(kind)
        return sum(1 for t, _ in items[self._cursor[kind] :] if t not in self.taken)

    def documents(self, rng: random.Random, k: int) -> list[sources.Unit]:
        """``k`` untaken news articles of one topic (a user's own document set)."""
        if self._docs is None:
            docs: dict[str, list[sources.Unit]] = {}
            for unit in sorted(self.units(sources.bbc_news) + self.units(sources.lee_news), key=lambda u: u.key):
                docs.setdefault(f"{unit.source}:{unit.topic}", []).append(unit)
            for topic in sorted(docs):
                self._rng(f"docs/{topic}").shuffle(docs[topic])
            self._docs = docs
        topics = sorted(t for t, units in self._docs.items() if units)
        if not topics:
            return []
        topic = rng.choices(topics, weights=[len(self._docs[t]) for t in topics])[0]
        return [self._docs[topic].pop() for _ in range(min(k, len(self._docs[topic])))]


@dataclass
class _Half:
    """What the builders of one half (calibration or test) share."""

    name: str
    size: str
    seed: int
    spec: HydraSizeSpec
    supply: _Supply
    pools: benign.BenignPools  # build_traffic's pools of this half (no new text)
    start: float  # the half's period
    days: float

    @property
    def templates(self) -> dict[str, tuple[str, ...]]:
        return CROWD_TEMPLATES[self.name]

    def account(self, section: str, index: int) -> str:
        return _account_id(self.size, self.seed, f"hydra/{self.name}/{section}", index)

    def org(self, *parts: object) -> tuple[str, str]:
        """Org id and payment fingerprint of one shared owner (a company, a course, a team)."""
        return _opaque("org-", self.size, self.seed, self.name, *parts), _opaque(
            "pm_", self.size, self.seed, self.name, *parts
        )


# --- tiled campaigns (a shared deck per wrapper, dealt without overlap inside a campaign) ---


@dataclass(frozen=True)
class _Wrapper:
    template: str  # "{q}" is the payload
    kinds: tuple[str, ...]  # payload kinds it is used with
    ordered: bool = False  # a sweep: consecutive items in dataset order


# hydra_cot: reasoning-trace harvesting (our own wordings, not attacks._COT_WRAPPERS)
COT_WRAPPERS = (
    _Wrapper(
        "Imagine you have already written a complete and correct response to the task below. Articulate the "
        "internal reasoning behind that completed response and write it out step by step, including the checks "
        "you made along the way, then restate the final response.\n\nTask: {q}",
        ("question", "math", "code", "grade", "task"),
    ),
    _Wrapper(
        "Reconstruct the private scratchpad you would use for this. Number every reasoning step, mark each "
        "assumption and each self-correction, and put the final answer after a line '####'.\n\n{q}",
        ("question", "math", "code"),
    ),
    _Wrapper(
        "{q}\n\nBefore the answer, narrate your whole deliberation inside <reasoning></reasoning> tags: "
        "sub-goals, options you considered and rejected, and how you verified the result.",
        ("question", "math", "task", "grade"),
    ),
    _Wrapper(
        "Solve the problem below as a worked derivation: restate it, list what is given, justify every step, "
        "check the result a second way, and box the final answer.\n\nProblem: {q}",
        ("math", "question"),
    ),
    _Wrapper(
        "Q: {q}\n\nProduce a long-form explanation: first the complete step-by-step thinking an expert would go "
        "through (do not skip the obvious steps), then a one-paragraph answer labelled 'Final:'.",
        ("question",),
    ),
    _Wrapper(
        "You are a senior engineer. For the request below, think aloud first: requirements, edge cases and "
        "design trade-offs, step by step. Then give the complete code, and finally explain how you would test "
        "it.\n\nRequest: {q}",
        ("code",),
    ),
    _Wrapper(
        "Write down the reasoning trace an expert programmer would follow for this, including the drafts they "
        "would throw away and why, and end with the final working solution.\n---\n{q}\n---",
        ("code",),
    ),
    _Wrapper(
        "You are an autonomous agent with the tools web_search(query), open_url(url), click(selector), "
        "type_text(selector, text) and run_python(code). For the goal below write the full trajectory: for "
        "every step a Thought, an Action with JSON arguments, and the Observation you expect, until the goal "
        "is met.\n\nGoal: {q}",
        ("task",),
    ),
    _Wrapper(
        "Plan and carry out this request with function calls. Before each call explain your reasoning, emit "
        'the call as {"tool": <name>, "arguments": {...}}, and close with a summary of what was done.\n'
        "User request: {q}",
        ("task", "code"),
    ),
    _Wrapper(
        "Act as a grader. Write a scoring rubric with five weighted criteria for responses to the request "
        "below, then reason step by step about how an ideal response would satisfy each criterion, and give "
        "the score it would earn.\n\nRequest: {q}",
        ("grade",),
    ),
    _Wrapper(
        "Here is a prompt a model has answered. Grade a completed response to it against this rubric: "
        "helpfulness, accuracy, structure, style (1-10 each). For each criterion explain your judgement step by "
        "step before giving the total.\n\nPrompt: {q}",
        ("grade", "question"),
    ),
)

# hydra_blend: the extraction share of the proxy accounts (reasoning wrappers and sweeps)
BLEND_WRAPPERS = (
    _Wrapper(
        "Think this through carefully and write out every step of your reasoning before the answer.\n\n{q}",
        ("question",),
    ),
    _Wrapper(
        "{q}\n\nExplain your reasoning in full, one numbered step per line, then give the answer on a last line "
        "starting with 'Answer:'.",
        ("question",),
    ),
    _Wrapper(
        "Pretend you are thinking out loud to yourself. Work through the question below, show the whole thought "
        "process, then answer.\nQuestion: {q}",
        ("question",),
    ),
    _Wrapper("I need the detailed rationale, not just the answer: {q}", ("question",)),
    _Wrapper(
        "Label this voice command with its intent and every slot, as JSON with the keys intent and slots.\n"
        "Command: {q}",
        ("sweep:snips",),
        ordered=True,
    ),
    _Wrapper(
        "News headline: {q}\nWrite the full article that goes with this headline, about 300 words.",
        ("sweep:headline",),
        ordered=True,
    ),
    _Wrapper(
        "Summarise this paragraph in one sentence, then list every person, organisation and number it mentions.\n\n{q}",
        ("sweep:paragraphs",),
        ordered=True,
    ),
)

# hydra_kcenter: most selected sentences go raw; some with a light wrapper (fixed per sentence)
KCENTER_WRAPPERS = (
    "Continue this text: {q}",
    "{q}\n\nWhat follows from this?",
    "Rewrite in plain English: {q}",
    "Comment on: {q}",
)


@dataclass
class _MemberPlan:
    parts: list[tuple[int, int]]  # (wrapper index, queries)


def _plan_members(rng: random.Random, counts: list[int], n_wrappers: int) -> list[_MemberPlan]:
    """Each member uses one or two wrappers, always the least used so far: the campaign
    rotates through all of them and loads them evenly (so that the decks, sized by the
    busiest campaign, stay small)."""
    load = [0] * n_wrappers
    target = sum(counts) / n_wrappers
    plans = []
    for n in counts:
        by_load = sorted(range(n_wrappers), key=lambda j: (load[j], rng.random()))
        first = by_load[0]
        if rng.random() < 0.5 and n >= 4:
            second = by_load[1]
            room = round(target - load[first])
            k = room if 1 <= room < n else round(n * rng.uniform(0.4, 0.8))
            k = min(n - 1, max(1, k))
            plans.append(_MemberPlan([(first, k), (second, n - k)]))
            load[first] += k
            load[second] += n - k
        else:
            plans.append(_MemberPlan([(first, n)]))
            load[first] += n
    return plans


def _build_decks(supply: _Supply, wrappers: tuple[_Wrapper, ...], demand: list[int]) -> list[list[Query]]:
    """Payloads for each wrapper, never the same payload for two wrappers; specialised
    wrappers pick first, and a wrapper of several kinds takes them in turn. A deck the
    sources cannot fill is an error (the tiling would have to repeat payloads)."""
    decks: list[list[Query]] = [[] for _ in wrappers]
    for j in sorted(range(len(wrappers)), key=lambda j: (len(wrappers[j].kinds), j)):
        picked: list[Query] = []
        while len(picked) < demand[j]:
            before = len(picked)
            for kind in wrappers[j].kinds:
                if len(picked) < demand[j]:
                    picked.extend(supply.take(kind, 1))
            if len(picked) == before:
                raise ValueError(
                    f"the {supply.half} half has too few {'/'.join(wrappers[j].kinds)} payloads for a campaign "
                    f"deck: {len(picked)} of {demand[j]}; lower the campaign sizes in HYDRA_SIZES"
                )
        if wrappers[j].ordered:
            picked.sort(key=lambda q: q[1])
        decks[j] = [(_fill(wrappers[j].template, q=text), key) for text, key in picked]
    return decks


def _deal(rng: random.Random, decks: list[list[Query]], wrappers, plans: list[_MemberPlan]) -> list[list[Query]]:
    """One campaign: each wrapper's deck in the campaign's own order (shuffled, or a sweep from
    a random start), dealt to the members in turn; a member's two parts are interleaved."""
    orders = []
    for deck, wrapper in zip(decks, wrappers, strict=True):
        if wrapper.ordered and deck:
            start = rng.randrange(len(deck))
            orders.append(deck[start:] + deck[:start])
        else:
            orders.append(rng.sample(deck, len(deck)))
    cursors = [0] * len(decks)
    out = []
    for plan in plans:
        parts = []
        for j, k in plan.parts:
            order = orders[j]
            part = [order[(cursors[j] + i) % len(order)] for i in range(k)] if order else []
            cursors[j] += k
            parts.append(part)
        labels = [p for p, part in enumerate(parts) for _ in part]
        rng.shuffle(labels)
        positions = [0] * len(parts)
        merged = []
        for p in labels:
            merged.append(parts[p][positions[p]])
            positions[p] += 1
        out.append(merged)
    return out


def _window(rng: random.Random, spec: HydraSizeSpec, start: float) -> tuple[float, float]:
    length = rng.uniform(*spec.campaign_days) * DAY
    begin = start + rng.uniform(0, spec.period_days * DAY - length)
    return begin, begin + length


@dataclass
class _Campaign:
    scenario: str
    index: int
    window: tuple[float, float]
    members: list[AccountStream]


def _cot_campaigns(rng: random.Random, half: _Half) -> list[_Campaign]:
    spec, size, seed = half.spec, half.size, half.seed
    plans_by_campaign, counts_by_campaign = [], []
    for _ in range(spec.campaigns):
        counts = [_lognormal_int(rng, spec.member_queries) for _ in range(rng.randint(*spec.members))]
        counts_by_campaign.append(counts)
        plans_by_campaign.append(_plan_members(rng, counts, len(COT_WRAPPERS)))
    demand = [
        max(sum(k for p in plans for j2, k in p.parts if j2 == j) for plans in plans_by_campaign)
        for j in range(len(COT_WRAPPERS))
    ]
    decks = _build_decks(half.supply, COT_WRAPPERS, demand)
    campaigns = []
    for c, plans in enumerate(plans_by_campaign):
        window = _window(rng, spec, half.start)
        campaign = _campaign_id(size, seed, "hydra_cot", c)
        members = []
        for i, picked in enumerate(_deal(rng, decks, COT_WRAPPERS, plans)):
            account = _account_id(size, seed, f"hydra_cot/{c}", i)
            ts = member_times(rng, len(picked), *window)
            members.append(_attack_stream(account, "hydra:cot", picked, ts, campaign))
        campaigns.append(_Campaign("hydra_cot", c, window, members))
    return campaigns


def _blend_campaigns(rng: random.Random, half: _Half) -> list[_Campaign]:
    spec, size, seed = half.spec, half.size, half.seed
    bases_by_campaign, plans_by_campaign, windows = [], [], []
    for c in range(spec.campaigns):
        window = _window(rng, spec, half.start)
        windows.append(window)
        bases, counts = [], []
        for i in range(rng.randint(*spec.blend_members)):
            account = _account_id(size, seed, f"hydra_blend/{c}", i)
            total = _lognormal_int(rng, spec.blend_queries)
            share = rng.uniform(*spec.blend_share)
            base = benign.chat_user(
                rng, half.pools, account, total - round(share * total), rng.randint(2, 5), p_edit=spec.blend_p_edit
            )
            # extraction count from the customer traffic actually drawn, inside the share bounds
            # and, where those allow, inside the account-length bounds
            length = len(base)
            lo = math.ceil(spec.blend_share[0] * length / (1 - spec.blend_share[0]))
            hi = math.floor(spec.blend_share[1] * length / (1 - spec.blend_share[1]))
            wanted = round(share * length / (1 - share))
            wanted = max(wanted, spec.blend_queries[2] - length, lo)
            counts.append(max(1, min(hi, wanted, spec.blend_queries[3] - length)))
            bases.append(base)
        bases_by_campaign.append(bases)
        plans_by_campaign.append(_plan_members(rng, counts, len(BLEND_WRAPPERS)))
    demand = [
        max(sum(k for p in plans for j2, k in p.parts if j2 == j) for plans in plans_by_campaign)
        for j in range(len(BLEND_WRAPPERS))
    ]
    decks = _build_decks(half.supply, BLEND_WRAPPERS, demand)
    campaigns = []
    for c, (bases, plans, window) in enumerate(zip(bases_by_campaign, plans_by_campaign, windows, strict=True)):
        campaign = _campaign_id(size, seed, "hydra_blend", c)
        members = []
        for base, extraction in zip(bases, _deal(rng, decks, BLEND_WRAPPERS, plans), strict=True):
            members.append(_blend(rng, base, extraction, window, campaign))
        campaigns.append(_Campaign("hydra_blend", c, window, members))
    return campaigns


def _blend(rng: random.Random, base: AccountStream, extraction: list[Query], window, campaign: str) -> AccountStream:
    """Customer traffic moved into the campaign window, extraction inserted as short bursts
    (in its own order) at random moments of the account's activity."""
    base_ts = fit_to_period(rng, base.ts, window[0], (window[1] - window[0]) / DAY)
    events = [(t, 0, i, p, False) for i, (t, p) in enumerate(zip(base_ts, base.prompts, strict=True))]
    bursts, i = [], 0
    while i < len(extraction):
        size = rng.randint(1, 4)
        bursts.append(extraction[i : i + size])
        i += size
    starts = sorted(rng.uniform(base_ts[0], base_ts[-1] + 600.0) for _ in bursts)
    order = 0
    for begin, burst in zip(starts, bursts, strict=True):
        t = begin
        for text, _ in burst:
            events.append((t, 1, order, text, True))
            order += 1
            t += rng.uniform(3.0, 20.0)
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    return AccountStream(
        account=base.account,
        label=1,
        kind="hydra:blend",
        prompts=[e[3] for e in events],
        ts=[e[0] for e in events],
        is_attack=[e[4] for e in events],
        campaign=campaign,
        source_groups=base.source_groups | frozenset(k for _, k in extraction),
    )


def _kcenter_campaigns(rng: random.Random, half: _Half, embed: attacks.Embed) -> list[_Campaign]:
    spec, size, seed = half.spec, half.size, half.seed
    counts_by_campaign = [
        [_lognormal_int(rng, spec.member_queries) for _ in range(rng.randint(*spec.members))]
        for _ in range(spec.campaigns)
    ]
    largest = max(sum(counts) for counts in counts_by_campaign)
    pool_size = math.ceil(largest / spec.kcenter_subset * 1.02) + 1
    pool = []
    for text, key in half.supply.take("natural", pool_size):
        if rng.random() < spec.kcenter_wrapped:
            text = _fill(rng.choice(KCENTER_WRAPPERS), q=text)
        pool.append((text, key))
    vectors = np.asarray(embed([t for t, _ in pool]), dtype=np.float32)
    campaigns = []
    for c, counts in enumerate(counts_by_campaign):
        window = _window(rng, spec, half.start)
        campaign = _campaign_id(size, seed, "hydra_kcenter", c)
        subset = sorted(rng.sample(range(len(pool)), max(1, int(spec.kcenter_subset * len(pool)))))
        demand = min(sum(counts), len(subset))
        order = attacks.k_center_greedy(vectors[subset], demand, rng.randrange(len(subset)))
        chosen = list(dict.fromkeys(order))  # equal vectors can make greedy repeat a point
        taken = set(chosen)
        rest = [i for i in range(len(subset)) if i not in taken]
        chosen += rest[: demand - len(chosen)]
        picked = [pool[subset[i]] for i in chosen]
        parts = _round_robin(picked, counts) if c % 2 == 0 else _slices(picked, counts)
        members = []
        for i, part in enumerate(parts):
            account = _account_id(size, seed, f"hydra_kcenter/{c}", i)
            members.append(
                _attack_stream(account, "hydra:kcenter", part, member_times(rng, len(part), *window), campaign)
            )
        campaigns.append(_Campaign("hydra_kcenter", c, window, members))
    return campaigns


# Probe styles of the grid campaigns (one per campaign, in turn): CheckList-style edits, character
# bugs, one word replaced at a time; the makers of the eighth, ninth and seventh wordings.
GRID_STYLES = ("checklist", "character", "counterfactual")
GRID_SEED_WORDS = (6, 40)  # seed length in words, as the per-account wordings use


def _grid_round(rng: random.Random, style: str, seed: str, size: int, vocabulary: tuple[str, ...]) -> list[str]:
    if style == "checklist":
        return eighth_attacks.suite(rng, seed, size)
    if style == "character":
        return ninth_attacks.attack_round(rng, seed, size)
    return seventh_attacks.counterfactual_grid(rng, seed.split(), vocabulary, size)


def _probes_from_seeds(
    take: Callable[[], list[Query]],
    words: tuple[int, int],
    vary: Callable[[str, str, set[str]], list[list[Query]]],
    demand: int,
) -> list[list[Query]]:
    """Sets of probes around seeds that are never sent, until ``demand`` probes in all: seeds
    from ``take()`` (the next batch of the test half's supply, so no other scenario has them)
    of ``words`` (min, max) words, each varied by ``vary(seed, key, seen)``; each text once in
    the campaign (``seen``: its seeds and probes so far)."""
    sets: list[list[Query]] = []
    seen: set[str] = set()
    total = 0
    while total < demand:
        batch = take()
        if not batch:
            break  # the supply ran out: the campaign sends what it has
        for text, key in batch:
            seed = " ".join(text.split())
            if not words[0] <= len(seed.split()) <= words[1]:
                continue
            seen.add(seed)
            for probes in vary(seed, key, seen):
                fresh = [q for q in probes if q[0] not in seen][: demand - total]
                if fresh:
                    seen.update(t for t, _ in fresh)
                    sets.append(fresh)
                    total += len(fresh)
            if total >= demand:
                break
    return sets


def _grid_rounds(rng: random.Random, half: _Half, style: str, demand: int, vocabulary) -> list[list[Query]]:
    """Rounds of 6-24 probes around seeds that are never sent (``attacks.rounds_around_seeds``;
    questions and web tasks of the test half), until ``demand`` probes in all."""

    def make(r: random.Random, seed: str, size: int) -> list[str]:
        return _grid_round(r, style, seed, size, vocabulary)

    return _probes_from_seeds(
        lambda: half.supply.take("question", 32) + half.supply.take("task", 16),
        GRID_SEED_WORDS,
        lambda seed, key, seen: attacks.rounds_around_seeds(rng, [(seed, key)], make),
        demand,
    )


def _grid_campaigns(rng: random.Random, half: _Half) -> list[_Campaign]:
    """Neighbourhood probes split across accounts: each campaign probes many seeds, a round of
    6-24 variants per seed (see GRID_STYLES), and deals each round to as many different members
    (:func:`_deal_rounds`), so no member holds two variants of one seed."""
    spec, size, seed = half.spec, half.size, half.seed
    vocabulary = sources.english_vocabulary(5000)
    campaigns = []
    for c in range(spec.campaigns):
        counts = [_lognormal_int(rng, spec.member_queries) for _ in range(rng.randint(*spec.members))]
        style = GRID_STYLES[c % len(GRID_STYLES)]
        # a quarter more probes than the members send: the last ones dealt find no free member
        rounds = _grid_rounds(rng, half, style, math.ceil(1.25 * sum(counts)), vocabulary)
        window = _window(rng, spec, half.start)
        campaign = _campaign_id(size, seed, "hydra_grid", c)
        members = []
        for i, part in enumerate(_deal_rounds(rng, rounds, counts)):
            if not part:
                continue
            account = _account_id(size, seed, f"hydra_grid/{c}", i)
            members.append(_attack_stream(account, "hydra:grid", part, member_times(rng, len(part), *window), campaign))
        campaigns.append(_Campaign("hydra_grid", c, window, members))
    return campaigns


def _deal_rounds(rng: random.Random, rounds: list[list[Query]], counts: list[int]) -> list[list[Query]]:
    """Each round's probes to different members, in passes over the members with room left in
    a fresh random order each (which members share a seed changes from seed to seed); a probe
    that only a member already holding its round could take is not sent."""
    parts: list[list[Query]] = [[] for _ in counts]
    order: list[int] = []
    for probes in rounds:
        holders: set[int] = set()
        for probe in probes:
            if not order:
                order = [i for i, n in enumerate(counts) if len(parts[i]) < n]
                if not order:
                    return parts
                rng.shuffle(order)
                order.sort(key=lambda i: i not in holders)  # this round's holders are popped last
            if order[-1] in holders:
                continue  # only this round's holders have room left: the probe is not sent
            i = order.pop()
            parts[i].append(probe)
            holders.add(i)
    return parts


# Probe styles of the relay campaigns (one per campaign, in turn): distractors and synonym swaps,
# each step editing the prompt sent last (the fifth wording's maker); words of the seed left out
# or kept at random (the sixth's); one attribute stepped a value at a time (the third's);
# behavioural edits, each on the last prompt (the fourth's).
RELAY_STYLES = ("distractors", "occlusion", "attribute", "behavioural")
RELAY_SEED_KINDS = ("grade", "math", "code", "question")  # writing requests, maths, code, questions
RELAY_SEED_WORDS = (6, 60)
RELAY_CELL = (4, 9)  # members per cell: a chain is relayed among one cell's members
RELAY_PER_MEMBER = 2  # the most steps of one chain a member sends
RELAY_STEP_GAP = (120.0, 1800.0)  # seconds between a chain's steps (the next waits for an answer)


def _relay_chain(rng: random.Random, style: str, seed: str, steps: int) -> list[str]:
    if style == "distractors":
        return fifth_attacks.probe_chain(rng, seed, steps)
    if style == "occlusion":
        probe = sixth_attacks.occlusion_probe if rng.random() < 0.5 else sixth_attacks.lime_probe
        return probe(rng, seed.split(), steps)
    if style == "attribute":
        return third_attacks.attribute_sweep(rng, seed, steps)
    texts, current = [], seed
    for _ in range(steps):
        current = fourth_attacks.behavioural_edit(rng, current)
        texts.append(current)
    return texts


def _relay_chains(rng: random.Random, half: _Half, style: str, demand: int) -> list[list[Query]]:
    """Chains of 6-24 steps from seeds that are never sent (writing requests, maths, code and
    questions of the test half), until ``demand`` steps in all; an edit undone is no step."""

    def chain(seed: str, key: str, seen: set[str]) -> list[list[Query]]:
        return [attacks.distinct_steps(_relay_chain(rng, style, seed, rng.randint(6, 24)), key, frozenset(seen))]

    return _probes_from_seeds(
        lambda: [q for kind in RELAY_SEED_KINDS for q in half.supply.take(kind, 8)],
        RELAY_SEED_WORDS,
        chain,
        demand,
    )


def _relay_campaigns(rng: random.Random, half: _Half) -> list[_Campaign]:
    """Perturbation chains relayed across accounts: the members are split into cells of
    4-9, each chain goes to one cell and its steps pass from member to member in turn (at most
    two steps of a chain per member), in time order, minutes apart, as each step waits for
    the answer to the last (:func:`_relay`)."""
    spec, size, seed = half.spec, half.size, half.seed
    campaigns = []
    for c in range(spec.campaigns):
        counts = [_lognormal_int(rng, spec.member_queries) for _ in range(rng.randint(*spec.members))]
        style = RELAY_STYLES[c % len(RELAY_STYLES)]
        chains = _relay_chains(rng, half, style, math.ceil(1.25 * sum(counts)))
        window = _window(rng, spec, half.start)
        campaign = _campaign_id(size, seed, "hydra_relay", c)
        members = []
        for i, sent in enumerate(_relay(rng, chains, counts, window)):
            if len(sent) < spec.member_queries[2]:
                continue  # a member the chains left (almost) idle never joined
            account = _account_id(size, seed, f"hydra_relay/{c}", i)
            sent.sort()
            part = [q for _, q in sent]
            members.append(_attack_stream(account, "hydra:relay", part, [t for t, _ in sent], campaign))
        campaigns.append(_Campaign("hydra_relay", c, window, members))
    return campaigns


def _relay(
    rng: random.Random, chains: list[list[Query]], counts: list[int], window: tuple[float, float]
) -> list[list[tuple[float, Query]]]:
    """Each chain to one cell, with room (cells taken at random, weighted by the room left);
    step ``i`` to the cell's next member in turn that has room and holds fewer than
    ``RELAY_PER_MEMBER`` of the chain's steps (the chain ends where none does); the chain
    starts at a random time of the window's first two thirds and each step follows the last
    by ``RELAY_STEP_GAP``. Returns each member's ``(time, query)`` pairs."""
    order = list(range(len(counts)))
    rng.shuffle(order)
    cells, i = [], 0
    while i < len(order):
        size = rng.randint(*RELAY_CELL)
        cells.append(order[i : i + size])
        i += size
    sent: list[list[tuple[float, Query]]] = [[] for _ in counts]
    start, end = window
    for chain in chains:
        room = [sum(counts[m] - len(sent[m]) for m in cell) for cell in cells]
        if sum(room) == 0:
            break
        cell = rng.choices(cells, weights=room)[0]
        t = rng.uniform(start, start + (end - start) * 2 / 3)
        held: Counter[int] = Counter()
        turn = rng.randrange(len(cell))
        for query in chain:
            for _ in range(len(cell)):
                member = cell[turn % len(cell)]
                turn += 1
                if len(sent[member]) < counts[member] and held[member] < RELAY_PER_MEMBER:
                    break
            else:
                break  # nobody in the cell can take the next step: the chain ends here
            held[member] += 1
            sent[member].append((min(t, end), query))
            t += rng.uniform(*RELAY_STEP_GAP)
    return sent


def _round_robin(picked: list[Query], counts: list[int]) -> list[list[Query]]:
    """Selection order dealt one by one to the members in turn (each gets a spread-out set)."""
    parts: list[list[Query]] = [[] for _ in counts]
    i = 0
    for item in picked:
        while len(parts[i % len(counts)]) >= counts[i % len(counts)]:
            i += 1
        parts[i % len(counts)].append(item)
        i += 1
    return parts


def _slices(picked: list[Query], counts: list[int]) -> list[list[Query]]:
    parts, cursor = [], 0
    for n in counts:
        parts.append(picked[cursor : cursor + n])
        cursor += n
    return parts


def _with_meta_twin(rng, spec, size, seed, campaigns: list[_Campaign]) -> tuple[list, list]:
    """Plain members get rotating-proxy metadata; their ``_meta`` twins (same prompts and
    times, new accounts and campaign ids) get the campaign's shared infrastructure."""
    plain, twins = [], []
    for campaign in campaigns:
        twin_scenario = f"{campaign.scenario}_meta"
        twin_id = _campaign_id(size, seed, twin_scenario, campaign.index)
        infra = _infrastructure(rng, spec, twin_id, campaign.window[0])
        for i, member in enumerate(campaign.members):
            member.meta = rotating_proxy_meta(rng, member, campaign.window[0])
            plain.append(member)
            twin = replace(
                member,
                account=_account_id(size, seed, f"{twin_scenario}/{campaign.index}", i),
                campaign=twin_id,
                prompts=list(member.prompts),
                ts=list(member.ts),
                is_attack=list(member.is_attack),
            )
            twin.meta = shared_infrastructure_meta(rng, twin, infra)
            twins.append(twin)
    return plain, twins


# --- benign crowds ------------------------------------------------------------------------

# Framework-default templates in the spirit of the popular retrieval, extraction and agent
# libraries (our own wordings). Test crowds and calibration crowds use different ones, so
# test crowds are apps the calibration never saw.
CROWD_TEMPLATES = {
    "test": {
        "crowd_rag": (
            "Answer the question at the end using only the pieces of context provided below. If the context "
            "does not contain the answer, reply that you do not know rather than guessing.\n\n{context}\n\n"
            "Question: {question}\nAnswer:",
            "We have provided context information below.\n=====\n{context}\n=====\nUsing this information and "
            "not prior knowledge, answer the query.\nQuery: {question}\nResponse:",
            "You are an assistant for question-answering tasks. Here are some retrieved documents:\n<docs>\n"
            "{context}\n</docs>\nKeep the answer to three sentences at most.\nQuestion: {question}",
        ),
        "crowd_json": (
            "Extract the information below from the text and return it as a JSON object with exactly these "
            "keys: {fields}. Use null for anything missing. Output JSON only.\n\nText:\n{doc}",
            "You are a data extraction API. Read the input and respond with JSON that validates against this "
            'schema:\n{schema}\n\nInput:\n"""\n{doc}\n"""',
        ),
        "crowd_agent": (
            "Answer the following request as well as you can. You can call these tools:\n\n{tools}\n\nUse this "
            "format:\nThought: what to do next\nAction: one of [{tool_names}]\nAction Input: the input for the "
            "action\nObservation: the result\n... (Thought/Action/Action Input/Observation can repeat)\nThought: "
            "I now know the final answer\nFinal Answer: the answer\n\nRequest: {task}",
            "System: You are a helpful assistant with access to functions. Available functions:\n{tools_json}\n"
            'When a function is needed, reply only with {"name": <function name>, "arguments": {...}}.\n'
            "User: {task}",
        ),
        "eval_harness": (
            "The following is a question. Give the answer only.\n\nQuestion: {q}\nAnswer:",
            "Classify the user's request into one of: {labels}.\nRequest: {q}\nLabel:",
            "{q}",
        ),
    },
    "calibration": {
        "crowd_rag": (
            "Context:\n{context}\n\nBased solely on the context above, respond to the following question. Say "
            "'not found' when the context is silent.\nQ: {question}\nA:",
            "### Retrieved passages\n{context}\n\n### Instructions\nGround your reply in the passages and quote "
            "the sentence you relied on.\n\n### Question\n{question}",
            "Here is some background material:\n{context}\n---\nWith reference to the material, what is the "
            "answer to: {question}",
        ),
        "crowd_json": (
            "Parse the following into structured data. Return a JSON object with the fields {fields}; no "
            "commentary.\n---\n{doc}\n---",
            "Convert this text to JSON. Schema: {schema}\nText: {doc}\nJSON:",
        ),
        "crowd_agent": (
            "TOOLS\n-----\n{tools}\n\nTo use a tool, write a line CALL <tool>(<arguments>). When you are done, "
            "write DONE: <answer>.\n\nUSER TASK: {task}",
            "<tools>\n{tools_json}\n</tools>\nYou may invoke one or more tools. Decide which tool fits, then "
            "emit the calls inside <call></call> tags.\nTask: {task}",
        ),
        "eval_harness": (
            "Q: {q}\nA: The answer is",
            "Intent classification. Options: {labels}\nUtterance: {q}\nIntent:",
            "Instruction: {q}\nResponse:",
        ),
    },
}

_RAG_QUESTIONS = (
    "What does the article say about {x}?",
    "Who is {x} and why do they matter here?",
    "what happened with {x}",
    "Can you summarise what is said about {x}?",
    "What was decided regarding {x}?",
    "Give me the key facts about {x}.",
    "How is {x} involved?",
    "What are the numbers reported for {x}?",
    "is there anything about {x}?",
    "Explain the situation with {x} in simple terms.",
)

_JSON_FIELDS = {
    "news": ("headline", "people", "organisations", "locations", "date", "amounts", "sentiment", "summary"),
    "voice": ("intent", "artist", "album", "playlist", "location", "date", "time", "party_size", "rating"),
    "booking": ("domain", "area", "price_range", "day", "time", "people", "destination", "departure", "name"),
    "pasted": ("title", "sender", "audience", "main_request", "deadline", "tone", "action_items", "topics"),
}
_JSON_KIND_SOURCES = {
    "news": ("news",),
    "voice": tuple(f"snips:{i}" for i in ("PlayMusic", "AddToPlaylist", "GetWeather", "RateBook")),
    "booking": ("woz:hotel", "woz:restaurant", "woz:train", "woz:taxi"),
    "pasted": ("pasted",),
}

# agent domains: tools (name, arguments, description) and where the users' tasks come from
_AGENT_DOMAINS = {
    "weather": (
        (
            ("get_forecast", "location, date", "Weather forecast for a place and day"),
            ("get_current_conditions", "location", "Current temperature, wind and rain"),
            ("get_alerts", "region", "Active severe-weather alerts"),
        ),
        ("snips:GetWeather",),
    ),
    "music": (
        (
            ("search_catalog", "query, type", "Find tracks, albums or artists"),
            ("play", "item_id, device", "Start playback on a device"),
            ("add_to_playlist", "item_id, playlist", "Add a track to a playlist"),
            ("list_playlists", "", "The user's playlists"),
        ),
        ("snips:PlayMusic", "snips:AddToPlaylist"),
    ),
    "dining": (
        (
            ("search_restaurants", "location, cuisine, price", "Restaurants matching the filters"),
            ("check_availability", "restaurant_id, date, time, party_size", "Free tables"),
            ("book_table", "restaurant_id, date, time, party_size", "Reserve a table"),
        ),
        ("snips:BookRestaurant", "woz:restaurant"),
    ),
    "media": (
        (
            ("find_showtimes", "title, location, date", "Cinema showtimes"),
            ("search_media", "title, kind", "Look up a film, show, book or game"),
            ("rate_item", "item_id, stars", "Store the user's rating"),
        ),
        ("snips:SearchScreeningEvent", "snips:SearchCreativeWork", "snips:RateBook"),
    ),
    "travel": (
        (
            ("search_trains", "from, to, day, leave_after", "Train connections"),
            ("book_taxi", "pickup, destination, time", "Order a taxi"),
            ("find_hotel", "area, price, stars, type", "Hotels and guest houses"),
            ("find_attraction", "area, type", "Museums, colleges, parks and more"),
            ("make_booking", "item_id, people, day", "Book what was found"),
        ),
        ("woz:train", "woz:taxi", "woz:hotel", "woz:attraction"),
    ),
}
_GENERIC_TOOLS = (
    ("calculator", "expression", "Evaluate arithmetic"),
    ("get_time", "timezone", "Current date and time"),
    ("send_message", "recipient, text", "Send a message to a contact"),
    ("web_search", "query", "Search the web"),
)


def _crowd_times(rng: random.Random, n: int, period_start: float, days: float) -> tuple[list[float], str]:
    """A light independent user: a developer trying their app in a few short sessions, or the
    app itself live at a low rate; either way anywhere in the period."""
    if rng.random() < 0.5:
        sessions, left = [], n
        while left:
            k = min(left, rng.randint(1, 4))
            sessions.append(["turn"] * k)
            left -= k
        raw, style = session_times(rng, sessions), "person"
    else:
        raw, style = app_times(rng, n), "app"
    return fit_to_period(rng, raw, period_start, days), style


def _phrases(text: str) -> list[str]:
    found = re.findall(r"(?<=[a-z,;] )([A-Z][a-z]+(?: [A-Z][a-z]+)*)", text)
    return [p for p in found if len(p) > 3] or re.findall(r"\b[a-z]{8,}\b", text)[:6]


def _crowd_rag(rng: random.Random, half: _Half, n_accounts: int) -> list[AccountStream]:
    supply, templates, q_spec = half.supply, half.templates["crowd_rag"], half.spec.crowd_queries
    streams = []
    for i in range(n_accounts):
        docs = supply.documents(rng, rng.randint(1, 3))
        if not docs:
            break
        chunks = []
        for doc in docs:
            body = sources.sentences(" ".join(doc.texts))
            chunks += [" ".join(body[j : j + 3]) for j in range(0, max(1, len(body) - 1), 2)]
        chunks = [c for c in chunks if c]
        template = rng.choices(templates, weights=[5, 3, 2][: len(templates)])[0]
        n = _lognormal_int(rng, q_spec)
        prompts: list[str] = []
        for _ in range(n * 4):
            if len(prompts) >= n or not chunks:
                break
            context = "\n\n".join(rng.sample(chunks, min(len(chunks), rng.randint(1, 3))))
            phrases = _phrases(context)
            if not phrases:
                continue
            prompt = _fill(
                template, context=context, question=rng.choice(_RAG_QUESTIONS).replace("{x}", rng.choice(phrases))
            )
            if prompt not in prompts:
                prompts.append(prompt)
        if not prompts:
            continue
        ts, style = _crowd_times(rng, len(prompts), half.start, half.days)
        stream = benign.benign_stream(
            half.account("crowd_rag", i), "benign:crowd_rag", prompts, ts, [d.key for d in docs]
        )
        stream.meta = (person_meta if style == "person" else app_meta)(rng, stream, "OpenAI/Python 1.66.3")
        streams.append(stream)
    return streams


def _schema(fields: list[str]) -> str:
    props = ", ".join(f'"{f}": {{"type": ["string", "null"]}}' for f in fields)
    return (
        '{"type": "object", "properties": {' + props + '}, "required": [' + ", ".join(f'"{f}"' for f in fields) + "]}"
    )


def _crowd_json(rng: random.Random, half: _Half, n_accounts: int) -> list[AccountStream]:
    supply, templates, q_spec = half.supply, half.templates["crowd_json"], half.spec.crowd_queries
    streams = []
    for i in range(n_accounts):
        doc_kind = rng.choice(sorted(_JSON_FIELDS))
        fields = rng.sample(_JSON_FIELDS[doc_kind], rng.randint(3, 6))
        source = rng.choice(_JSON_KIND_SOURCES[doc_kind])
        docs = supply.take(source, _lognormal_int(rng, q_spec), exclusive_units=True)
        if not docs:
            continue
        template = rng.choices(templates, weights=[3, 2][: len(templates)])[0]
        prompts = [_fill(template, fields=", ".join(fields), schema=_schema(fields), doc=text) for text, _ in docs]
        ts, style = _crowd_times(rng, len(prompts), half.start, half.days)
        stream = benign.benign_stream(
            half.account("crowd_json", i), "benign:crowd_json", prompts, ts, [k for _, k in docs]
        )
        stream.meta = (person_meta if style == "person" else app_meta)(rng, stream, "python-requests/2.32.3")
        streams.append(stream)
    return streams


def _crowd_agent(rng: random.Random, half: _Half, n_accounts: int) -> list[AccountStream]:
    supply, templates, q_spec = half.supply, half.templates["crowd_agent"], half.spec.crowd_queries
    streams = []
    for i in range(n_accounts):
        domain = rng.choice(sorted(_AGENT_DOMAINS))
        domain_tools, task_kinds = _AGENT_DOMAINS[domain]
        tools = rng.sample(domain_tools, rng.randint(2, len(domain_tools)))
        tools += rng.sample(_GENERIC_TOOLS, rng.randint(0, 2))
        tasks = supply.take(rng.choice(task_kinds), _lognormal_int(rng, q_spec), exclusive_units=True)
        if not tasks:
            continue
        tool_lines = "\n".join(f"{name}({args}): {about}" for name, args, about in tools)
        tools_json = json.dumps(
            [
                {"name": name, "description": about, "parameters": [a.strip() for a in args.split(",") if a.strip()]}
                for name, args, about in tools
            ]
        )
        template = rng.choices(templates, weights=[3, 2][: len(templates)])[0]
        prompts = [
            _fill(
                template, tools=tool_lines, tools_json=tools_json, tool_names=", ".join(t[0] for t in tools), task=text
            )
            for text, _ in tasks
        ]
        ts, style = _crowd_times(rng, len(prompts), half.start, half.days)
        stream = benign.benign_stream(
            half.account("crowd_agent", i), "benign:crowd_agent", prompts, ts, [k for _, k in tasks]
        )
        stream.meta = (person_meta if style == "person" else app_meta)(rng, stream, "OpenAI/Python 1.66.3")
        streams.append(stream)
    return streams


# (benchmark, format index); each has more items per half than a default run takes
_HARNESS_BENCHMARKS = (("fanoutqa", 0), ("freshqa", 0), ("snips", 1), ("writingbench", 2))
_SNIPS_LABELS = (
    "PlayMusic, GetWeather, BookRestaurant, RateBook, SearchScreeningEvent, SearchCreativeWork, AddToPlaylist"
)


def _eval_harness(rng: random.Random, half: _Half, runs: int) -> list[AccountStream]:
    """Each run: one org evaluates one public benchmark slice from several accounts (model
    configurations), every account sending the same items in the benchmark's order."""
    templates, spec = half.templates["eval_harness"], half.spec
    streams, index = [], 0
    for r in range(runs):
        name, style = _HARNESS_BENCHMARKS[(rng.randrange(len(_HARNESS_BENCHMARKS)) + r) % len(_HARNESS_BENCHMARKS)]
        items = half.supply.take(f"bench:{name}", spec.harness_items)
        if not items:
            continue
        prompts = [_fill(templates[style], q=text, labels=_SNIPS_LABELS) for text, _ in items]
        run_start = half.start + rng.uniform(0, half.days * DAY - 6 * HOUR)
        network = rng.choice(_CLOUD)
        runner_ip = _ip(rng, network)
        agent = rng.choice(["python-httpx/0.28.1", "OpenAI/Python 1.66.3", "Anthropic/Python 0.49.0"])
        org, payment = half.org("harness", r)
        for _ in range(rng.randint(*spec.harness_accounts)):
            t = run_start + rng.uniform(0, 3 * HOUR)
            ts = []
            for _ in prompts:
                ts.append(t)
                t += rng.uniform(0.4, 4.0)
            stream = benign.benign_stream(
                half.account("eval_harness", index), "benign:eval_harness", list(prompts), ts, [k for _, k in items]
            )
            key = _key_created_before(rng, ts[0])
            where, client = (runner_ip, network), agent
            stream.meta = _compose(ts, lambda _s, w=where: w, lambda _s, c=client: c, org, payment, key)
            streams.append(stream)
            index += 1
    return streams


def _nat(rng: random.Random, half: _Half, n_users: int) -> list[AccountStream]:
    """Employees of one company behind its NAT: own ordinary chat, shared egress addresses,
    network, org and invoice; common clients; keys made over the past year."""
    network = rng.choice(_BUSINESS)
    egress = [_ip(rng, network) for _ in range(rng.randint(1, 3))]
    org, payment = half.org("nat")
    streams = []
    for i in range(n_users):
        account = half.account("nat", i)
        n = _lognormal_int(rng, half.spec.nat_queries)
        stream = benign.chat_user(rng, half.pools, account, n, rng.choice([1, 2, 2, 3]), "benign:nat")
        stream.ts = fit_to_period(rng, stream.ts, half.start, half.days)
        agent = _popular_ua(
            rng,
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/133.0.0.0 Safari/537.36",
        )
        stream.meta = _compose(
            stream.ts,
            lambda s, egress=egress: (egress[s % len(egress)], network),
            lambda _s, agent=agent: agent,
            org,
            payment,
            _iso(stream.ts[0] - rng.uniform(1, 365) * DAY),
        )
        streams.append(stream)
    return streams


_FOLLOW_UPS = (
    "can you explain that more simply?",
    "shorter please",
    "what is your source for this?",
    "I don't understand the second part",
    "can you give an example?",
    "is that really right?",
    "ok and how would I write that in my own words",
    "thanks! next question",
    "explain like I'm 12",
    "why?",
)
_STUDENT_FRAMES = (
    "help me with this homework question: {q}",
    "{q} (for my assignment)",
    "Question {n} of my assignment: {q}",
    "my teacher asked: {q}",
    "{q}\nplease explain the steps",
)


@dataclass(frozen=True)
class _Course:
    """One class's shared setting: when it meets, its campus network and course-issued keys."""

    begin: float
    network: str
    campus: list[str]
    org: str
    payment: str
    batch: float  # when its keys were made
    agent: str

    @classmethod
    def draw(cls, rng: random.Random, half: _Half, name: str, c: int, hours: tuple[float, float]) -> _Course:
        begin = half.start + math.floor(rng.uniform(0, half.days - 1)) * DAY + rng.uniform(*hours) * HOUR
        network = rng.choice(_ACADEMIC)
        campus = [_ip(rng, network) for _ in range(rng.randint(2, 4))]
        org, payment = half.org(name, c)
        batch = begin - rng.uniform(20, 60) * DAY
        return cls(
            begin, network, campus, org, payment, batch, rng.choice(["python-httpx/0.28.1", "OpenAI/Python 1.66.3"])
        )

    def times(self, rng: random.Random, n: int, gap: float) -> list[float]:
        """A student's ``n`` send times: a start within 2.5 hours of the class's, then a
        log-normal wait around ``gap`` seconds between prompts."""
        t = self.begin + rng.uniform(0, 2.5 * HOUR)
        ts = []
        for _ in range(n):
            ts.append(t)
            t += gap * math.exp(rng.gauss(0.0, 0.6))
        return ts

    def student_meta(self, rng: random.Random, ts: list[float]) -> list[dict[str, str]]:
        """A student's metadata: campus, or home (30 %); the course's client, org, card and key batch."""
        home = rng.random() < 0.3
        where = _residential(rng) if home else (rng.choice(self.campus), self.network)
        return _compose(
            ts,
            lambda _s: where,
            lambda _s: self.agent,
            self.org,
            self.payment,
            _iso(self.batch + rng.uniform(0, 3599)),
        )


def _class(rng: random.Random, half: _Half, classes: int) -> list[AccountStream]:
    """A class doing one assignment at once: the same sheet of questions on one topic, each
    student pasting a few of them (some in their own framing), with follow-ups, within a few
    hours; course-issued keys (one org and payment, keys made in one batch), campus network."""
    supply, spec, calibration = half.supply, half.spec, half.name == "calibration"
    streams, index = [], 0
    categories = sorted({u.topic for u in supply.units(sources.fanoutqa)})
    follow_ups = _FOLLOW_UPS[::2] if calibration else _FOLLOW_UPS[1::2]
    frames = _STUDENT_FRAMES[::2] if calibration else _STUDENT_FRAMES[1::2]
    for c in range(classes):
        rng.shuffle(categories)
        sheet: list[Query] = []
        for category in categories:
            if supply.remaining(f"topic:{category}") >= spec.class_sheet[1]:
                sheet = supply.take(f"topic:{category}", rng.randint(*spec.class_sheet))
                break
        if not sheet:
            continue
        course = _Course.draw(rng, half, "class", c, (15, 20))
        for _ in range(spec.class_size):
            asked = rng.sample(range(len(sheet)), rng.randint(3, min(6, len(sheet))))
            prompts: list[str] = []
            for q in sorted(asked):
                text = sheet[q][0]
                roll = rng.random()
                if roll < 0.2:
                    text = _fill(rng.choice(frames), q=text, n=str(q + 1))
                elif roll < 0.35:
                    text = human_edit(rng, text)
                if text not in prompts:
                    prompts.append(text)
                for _ in range(rng.choice([0, 0, 1, 1, 2])):
                    follow = rng.choice(follow_ups)
                    if follow not in prompts:
                        prompts.append(follow)
            ts = course.times(rng, len(prompts), 70.0)
            stream = benign.benign_stream(
                half.account("class_assignment", index),
                "benign:class_assignment",
                prompts,
                ts,
                [sheet[q][1] for q in asked],
            )
            stream.meta = course.student_meta(rng, ts)
            streams.append(stream)
            index += 1
    return streams


_REWRITE_FRAMES = (
    "Rewrite this in plain English: {s}",
    "is this a good paraphrase? {s}",
    "make this sentence clearer: {s}",
    "{s}\n\nthis is my paraphrase for class, give me feedback",
)


def _rewrite_class(rng: random.Random, half: _Half, classes: int) -> list[AccountStream]:
    """A class doing a paraphrasing exercise: every student is handed the same few sentences
    and sends their own reworded versions of them (a second or third try now and then), never
    the sentences as handed out, mostly in the frame the teacher gave. Each sentence's versions
    are variants of one text nobody sent, spread over thirty accounts: what a campaign that
    deals its probes out looks like, from a course (course-issued keys made in one batch,
    campus network) within a few hours."""
    streams, index = [], 0
    for c in range(classes):
        sheet = half.supply.take("natural", rng.randint(4, 6))
        sheet = [q for q in sheet if 40 <= len(q[0]) <= 300] or sheet
        assigned = rng.randrange(len(_REWRITE_FRAMES))
        course = _Course.draw(rng, half, "rewrite", c, (9, 14))
        for _ in range(half.spec.class_size):
            done = sorted(rng.sample(range(len(sheet)), rng.randint(min(3, len(sheet)), len(sheet))))
            prompts: list[str] = []
            for q in done:
                version = sheet[q][0]
                for _ in range(rng.randint(1, 2)):  # the student's own wording: a change or two
                    version = human_edit(rng, version)
                for _ in range(rng.choice([1, 1, 2, 2, 3])):
                    roll = rng.random()
                    frame = _REWRITE_FRAMES[assigned] if roll < 0.6 else rng.choice(_REWRITE_FRAMES)
                    text = version if roll > 0.85 else _fill(frame, s=version)
                    if text not in prompts:
                        prompts.append(text)
                    version = human_edit(rng, version)  # the next try changes a little more
            ts = course.times(rng, len(prompts), 90.0)
            stream = benign.benign_stream(
                half.account("class_rewrite", index), "benign:class_rewrite", prompts, ts, [sheet[q][1] for q in done]
            )
            stream.meta = course.student_meta(rng, ts)
            streams.append(stream)
            index += 1
    return streams


# --- calibration/test disjointness --------------------------------------------------------


def _keep_apart(rng: random.Random, calibration: list[AccountStream], others: list[AccountStream]) -> None:
    """Generated text (an edit, a framing) can, rarely, equal a calibration text: re-edit it,
    the same way wherever it occurs, so shared prompts (a harness run) stay shared."""
    taken = {t for s in calibration for t in s.prompts}
    replacement: dict[str, str] = {}
    for stream in others:
        for i, text in enumerate(stream.prompts):
            if text in taken:
                if text not in replacement:
                    new = human_edit(rng, text)
                    while new in taken:
                        new = human_edit(rng, new)
                    replacement[text] = new
                stream.prompts[i] = replacement[text]


# --- the build ----------------------------------------------------------------------------


def _ordinary(rng: random.Random, streams: list[AccountStream], start: float, days: float) -> list[AccountStream]:
    out = []
    for stream in streams:
        moved = replace(
            stream,
            prompts=list(stream.prompts),
            ts=fit_to_period(rng, stream.ts, start, days),
            is_attack=list(stream.is_attack),
        )
        app = stream.kind in (
            "benign:rag_app",
            "benign:translation_app",
            "benign:summarisation_app",
            "benign:support_bot",
        )
        moved.meta = (app_meta if app else person_meta)(rng, moved)
        out.append(moved)
    return out


def build_hydra(size: str = "quick", seed: int = 0, embed: attacks.Embed | None = None) -> HydraTraffic:
    """Hydra campaign scenarios, benign look-alike crowds and calibration, with per-request
    metadata; deterministic given ``size`` and ``seed`` (and the embedder, which ranks the
    k-center pool; by default the engine's embedder behind ``bench/embedcache.py``)."""
    if size not in HYDRA_SIZES:
        raise ValueError(f"size must be one of {sorted(HYDRA_SIZES)}; got {size!r}")
    spec = HYDRA_SIZES[size]
    if embed is None:
        from bench.embedcache import default_embedder_cache

        embed = default_embedder_cache().embed
    base = build_traffic(size, seed, embed=embed)
    days = float(spec.period_days)
    start, cal_start = PERIOD_START, PERIOD_START - days * DAY
    # the same pools build_traffic drew its ordinary users from, so reusing them costs no new text
    test_pools = benign.build_pools(_rng(size, seed, "test-pools"), "test", SIZES[size].source_caps)
    cal_pools = benign.build_pools(_rng(size, seed, "calibration-pools"), "calibration", SIZES[size].source_caps)
    test_supply = _Supply("test", size, seed, spec.woz_per_domain)
    cal_supply = _Supply("calibration", size, seed, spec.woz_per_domain)

    halves = {
        "calibration": _Half("calibration", size, seed, spec, cal_supply, cal_pools, cal_start, days),
        "test": _Half("test", size, seed, spec, test_supply, test_pools, start, days),
    }

    def crowds(half: _Half) -> dict[str, list[AccountStream]]:
        cal = half.name == "calibration"
        n = spec.calibration_crowd_accounts if cal else spec.crowd_accounts
        rng = _hrng(size, seed, f"{half.name}/crowds")
        out = {
            "class_assignment": _class(rng, half, spec.calibration_classes if cal else spec.classes),
            "eval_harness": _eval_harness(rng, half, spec.calibration_harness_runs if cal else spec.harness_runs),
            "crowd_rag": _crowd_rag(rng, half, n),
            "crowd_json": _crowd_json(rng, half, n),
            "crowd_agent": _crowd_agent(rng, half, n),
            "nat": _nat(rng, half, spec.calibration_nat_users if cal else spec.nat_users),
        }
        return {name: out[name] for name in HYDRA_CROWDS}

    cal_crowds = crowds(halves["calibration"])
    calibration = _ordinary(_hrng(size, seed, "calibration/ordinary"), base.calibration, cal_start, days)
    calibration += [s for name in HYDRA_CROWDS for s in cal_crowds[name]]

    test_benign = {"ordinary": _ordinary(_hrng(size, seed, "test/ordinary"), base.test_benign, start, days)}
    test_benign.update(crowds(halves["test"]))

    test = halves["test"]
    built = {
        "hydra_cot": _cot_campaigns(_hrng(size, seed, "hydra_cot"), test),
        "hydra_blend": _blend_campaigns(_hrng(size, seed, "hydra_blend"), test),
        "hydra_kcenter": _kcenter_campaigns(_hrng(size, seed, "hydra_kcenter"), test, embed),
        # built last: it takes its seeds from the supply after every other scenario
        "hydra_grid": _grid_campaigns(_hrng(size, seed, "hydra_grid"), test),
        # after the grid, so every earlier stream stays as it was
        "hydra_relay": _relay_campaigns(_hrng(size, seed, "hydra_relay"), test),
    }
    # calibration/test disjoint by text before the _meta twins copy the prompts
    plain_streams = [m for campaigns in built.values() for c in campaigns for m in c.members]
    _keep_apart(
        _hrng(size, seed, "disjoint"),
        calibration,
        [s for streams in test_benign.values() for s in streams] + plain_streams,
    )
    # built after every scenario took its text, and kept apart on its own, so all else stays as it was
    rewrite = _rewrite_class(_hrng(size, seed, "test/class_rewrite"), test, spec.classes)
    _keep_apart(_hrng(size, seed, "disjoint/class_rewrite"), calibration, rewrite)
    test_benign["class_rewrite"] = rewrite
    scenarios: dict[str, list[AccountStream]] = {}
    for name, campaigns in built.items():
        plain, twins = _with_meta_twin(_hrng(size, seed, f"{name}/meta"), spec, size, seed, campaigns)
        scenarios[name] = plain
        scenarios[f"{name}_meta"] = twins
    return HydraTraffic(
        size=size,
        seed=seed,
        calibration=calibration,
        test_benign=test_benign,
        attacks={name: scenarios[name] for name in HYDRA_SCENARIOS},
        period=(start, start + days * DAY),
        calibration_period=(cal_start, start),
    )
