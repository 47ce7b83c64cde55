"""The campaign layer: linking signals in, candidate groups, judged groups, campaigns out.

Fed by the same observe path as the per-account detector, after it: each query adds to
the groups of its indicators (template anchors of its text, hashed metadata values, the
payload region of a diverse account), groups are judged as they grow, and the groups at
``watch`` or ``flag`` that share members form one campaign (a campaign that rotates its
wrappers shows up as one group per wrapper, linked by the members that used two).

Memory is capped by configuration: indicator values seen by one account wait in a bounded
LRU table without vectors; groups and (group, member) sums live in bounded tables, and the
least recently updated group at ``ok`` is evicted first. A group at ``watch`` or ``flag``
is only evicted when nothing else is left, and then counted and logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..config import EngineConfig
from ..errors import UnknownCampaignError
from ..types import CampaignReport, CampaignSummary, Level
from .groups import Group, MembershipPool, member_deviation, member_focuses, member_mean_focus, pair_stats_from_sums
from .groups import fingerprint as query_fingerprint
from .metadata import COINCIDENTAL_META_KEYS, MetadataHasher
from .scoring import (
    EVIDENCE_CLIP,
    MIN_GROUP_MEMBERS,
    MIN_MEMBER_QUERIES,
    GroupCalibration,
    GroupFeatures,
    GroupJudge,
    held_score,
)
from .split_probes import MIN_LINKED_PROMPTS, SplitProbes
from .templates import template_anchors
from .topics import MAX_TOPICS, UNKNOWN

log = logging.getLogger("probewatch.campaigns")


def _json_number(value: Any) -> Any:
    """NaN is not JSON: written as None."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _from_json_number(value: Any) -> Any:
    return math.nan if value is None else value


# Judge a group after this many new queries (and on every new member while it is small).
JUDGE_EVERY = 8
MAX_FINGERPRINTS = 4096  # per group: enough to see a harness re-run, bounded
MAX_TRACKED_MEMBERS = 4096  # members with sums per group while it is at ok
# Payload regions: an account is placed when its query count reaches one of these, if it
# is unusually diverse for its size (``diverse_below``, the pipeline's benign percentile test),
# into the coarse cell of its mean vector. Coarse, because a light account's mean is noisy:
# a dealt-out pool's accounts must land together.
REGION_CHECKPOINTS = frozenset({8, 16, 32, 64, 128, 256, 512, 1024})
REGION_CELLS = 8
# Two hot groups are one campaign when they share this many active members, and at least
# this share of the smaller one's: a campaign rotating wrappers has members that used two,
# while one benign account in two groups links nothing.
LINK_MIN_SHARED = 2
# A campaign is judged as one group when one of its groups has grown this much (or by an
# eighth) since; a verdict's campaign size, risk and reasons are at most this many
# observations old (its level is always current).
CAMPAIGN_JUDGE_EVERY = 32
SUMMARY_REFRESH = 256
LINK_MIN_SHARE = 0.1
# A metadata value is only called common once this many accounts share it (see is_common).
COMMON_MIN_ACCOUNTS = 20
# A member of a hot group that bystanders can share by coincidence (see shared_by_chance)
# counts only if its mean is within this many null standard deviations of where a member
# dealt from the group's pool would be (one-sided 1 %).
MEMBER_DEVIATION_Z = 2.33
# That test needs queries to tell a bystander from a dealt member: with two, anyone sharing a
# user agent with a campaign would pass. So in those groups a member counts from this many of
# the group's queries (a payload region's first checkpoint), elsewhere from MIN_MEMBER_QUERIES
# (a rare wrapper or a shared payment instrument is evidence of its own).
MIN_TESTED_MEMBER_QUERIES = min(REGION_CHECKPOINTS)
# At 8 queries that test has little power (a bystander's deviation and a dealt member's
# overlap), so such a member is raised no higher than watch (linked to the campaign, in its
# report, on an analyst's list) until it has this many of the group's queries (a payload
# region's second checkpoint), when the test is run again and a pass raises it to the group's
# level. Template, payment and organisation groups raise their members to flag as before.
MIN_FLAGGED_MEMBER_QUERIES = sorted(REGION_CHECKPOINTS)[1]
# A bystander does not send variants of a prompt nobody sent while another member of the group
# sends other variants of it (split_probes: an uncentred probe across accounts, a *probe link*
# between the two prompts). An account with MIN_LINKED_PROMPTS of its own prompts probe-linked
# to members of a hot group is linked to it: a member is no longer held at watch, and an
# account outside the group is raised with it (a *linked account*: it fits the group's pool and
# has MIN_TESTED_MEMBER_QUERIES queries), without joining its statistics. Two prompts, because
# one prompt of a person can be the seed a campaign varies (a question from a public set).
# Where a group is hot only on its *probers'* evidence (accounts with MIN_LINKED_PROMPTS prompts
# sent as the probe side, the later prompt of a link), only probers rise past the level it has
# without them, and only they are named with its campaign: the earlier side of a link can be a
# person whose questions a campaign went on to vary. (Restricting the hold's release to probers
# too took the quick campaign benchmark's grid from 64.7 to 54.9 % of members flagged, benign
# accounts unchanged, so either side still releases it.)
# (MIN_LINKED_PROMPTS lives in split_probes: the group calibration counts benign probers by it.)
MAX_PROBE_LINKS = 64  # (own prompt, partner) links kept per account, latest last
MAX_LINKED_ACCOUNTS = 4096  # linked accounts kept per group


def shared_by_chance(group: Group) -> bool:
    """Whether bystanders can share the group's indicator with a campaign by coincidence: a
    payload region (a diverse light account in the same region of embedding space) or an
    address, network, user agent or key-creation time; not a wrapper, payment or organisation."""
    return group.kind == "payload" or (group.kind == "meta" and group.label in COINCIDENTAL_META_KEYS)


def member_min_queries(group: Group) -> int:
    """Queries a member of ``group`` needs before it counts in a hot group."""
    return MIN_TESTED_MEMBER_QUERIES if shared_by_chance(group) else MIN_MEMBER_QUERIES


def member_level(
    group: Group, queries: int, probe_linked: bool = False, plain: Level = Level.FLAG, prober: bool = False
) -> Level:
    """The level a member that fits hot ``group`` (see CampaignLayer._fitting) is raised to
    with ``queries`` of the group's queries: the group's; where bystanders can share the
    indicator by chance, held at watch below MIN_FLAGGED_MEMBER_QUERIES unless the member is
    ``probe_linked`` to members of the group (see MIN_LINKED_PROMPTS), and at ``plain`` (the
    level the group reaches without its probers as evidence) unless it is a ``prober`` itself
    (CampaignLayer.probe_prompts): a region or user agent that probers made hot says nothing of
    the others who share it."""
    level = group.level
    if shared_by_chance(group):
        if not probe_linked and queries < MIN_FLAGGED_MEMBER_QUERIES:
            level = min(level, Level.WATCH)
        if not prober:
            level = min(level, plain)
    return level


def coarse_regions(codebook: np.ndarray, k: int, iterations: int = 20) -> np.ndarray:
    """``k`` unit centres grouping the codebook's cells (spherical k-means, farthest-point
    start: deterministic for one codebook).

    >>> c = coarse_regions(np.eye(4, dtype=np.float32), 2)
    >>> c.shape, bool(np.allclose(np.linalg.norm(c, axis=1), 1.0))
    ((2, 4), True)
    """
    x = np.asarray(codebook, dtype=np.float64)
    k = min(k, x.shape[0])
    chosen = [0]
    for _ in range(k - 1):
        chosen.append(int(np.argmin((x @ x[chosen].T).max(axis=1))))
    centres = x[chosen]
    for _ in range(iterations):
        owner = np.argmax(x @ centres.T, axis=1)
        for j in range(k):
            if (owner == j).any():
                centres[j] = x[owner == j].sum(axis=0)
        centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    return centres.astype(np.float32)


class AccountLinks:
    """What the layer keeps per account: its whole-history sum (for payload regions) and
    the groups it is in."""

    __slots__ = (
        "elicitation_sum", "evidence_sum", "groups", "linked", "n", "probe_links", "probe_serials", "region",
        "sq_norm", "total",
    )  # fmt: skip

    def __init__(self, dim: int):
        self.total = np.zeros(dim, dtype=np.float32)
        self.sq_norm = 0.0
        self.n = 0
        self.evidence_sum = 0.0
        self.elicitation_sum = 0.0
        self.region: str | None = None
        self.groups: set[str] = set()
        # (own prompt's serial in split_probes, partner account) per probe link, latest last
        self.probe_links: list[tuple[int, str]] = []
        # its own serials among those that were the probe side of a link (the later prompt, sent
        # varying what its partners vary), latest last: people's prompts are linked as partners
        self.probe_serials: list[int] = []
        self.linked: set[str] = set()  # groups it is linked to without being a member


class CampaignLayer:
    """Cross-account state. Takes host NumPy unit vectors; not thread-safe on its own."""

    def __init__(
        self,
        config: EngineConfig,
        dim: int,
        calibration: GroupCalibration,
        *,
        codebook: np.ndarray | None = None,
        diverse_below: Callable[[float, int], bool] | None = None,
        elicitation=None,
        salt: bytes | None = None,
        member_spread: float | None = None,
    ):
        self.config = config
        self.dim = dim
        self.use_calibration(calibration)
        self.codebook = codebook  # sets self.regions
        self.diverse_below = diverse_below  # (mean pairwise similarity, n) -> bool
        self.elicitation = elicitation
        # null spread of member_deviation (groups.exchangeable_spread of benign queries); None: no test
        self.member_spread = member_spread
        self.hasher = MetadataHasher(salt)
        memory = config.campaign_probe_memory
        self.split_probes = SplitProbes(memory, self.hasher.salt) if memory > 0 else None
        self.pool = MembershipPool(dim, config.campaign_max_memberships)
        self.groups: OrderedDict[str, Group] = OrderedDict()  # least recently updated first
        # key -> (first account, its queries, kind, label, fingerprint of its first query)
        self.pending: OrderedDict[str, tuple[str, int, str, str, int | None]] = OrderedDict()
        self.accounts: dict[str, AccountLinks] = {}
        self.observations = 0
        self.evicted_flagged = 0
        self._campaign_of: dict[str, str] | None = None  # group key -> campaign id, rebuilt lazily
        self._relinks = 0  # how many times it was dropped for a rebuild
        # ((observations, relinks), the campaign ids that name an account) as last computed
        self._named_ids: tuple[tuple[int, int], list[str]] | None = None
        self._campaign_groups: dict[str, list[str]] = {}
        # campaign id -> (summary, observation count when built); its level is read fresh
        self._summaries: dict[str, tuple[CampaignSummary, int]] = {}

    def _hot_changed(self, relinked: bool) -> None:
        """A group at watch/flag changed. ``relinked``: campaigns may have new members or
        groups, so which groups form which campaign is recomputed at its next use. Summaries
        age either way (SUMMARY_REFRESH): rebuilding every campaign's summary each time a member
        joins a hot group cost a verdict more the bigger its campaign grew."""
        if relinked:
            self._campaign_of = None
            self._relinks += 1

    @property
    def codebook(self) -> np.ndarray | None:
        return self._codebook

    @codebook.setter
    def codebook(self, value: np.ndarray | None) -> None:
        self._codebook = value
        self.regions = None if value is None else coarse_regions(value, REGION_CELLS)

    def use_calibration(self, calibration: GroupCalibration) -> None:
        """Judge groups by ``calibration`` from their next query on."""
        share = self.config.campaign_fpr_share
        self.judge = GroupJudge(calibration, self.config.target_fpr * share, self.config.watch_fpr * share)

    # -- observing ------------------------------------------------------------------------
    def observe(
        self,
        accounts: Sequence[str],
        vectors: np.ndarray,
        texts: Sequence[str | None] | None,
        metas: Sequence[dict[str, str] | None] | None,
        ts: Sequence[float | None],
        evidence: np.ndarray,
        sketches: Sequence[tuple[list[int], int] | None] | None = None,
        read_after: Mapping[int, Sequence[str]] | None = None,
        read_back: dict[tuple[int, str], CampaignSummary | None] | None = None,
    ) -> list[tuple[CampaignSummary | None, dict[str, Level]]]:
        """Fold a batch in, in order; ``evidence`` is each item's signed per-query score from
        the account detector; ``sketches``, where the caller has them, each prompt's
        ``probes.word_hashes`` (None where it has no prompt). Per item, right after it: its
        account's campaign, and the accounts whose campaign level it raised, with the level
        (the pipeline raises their sticky levels), so a batch reads exactly like its items one
        at a time. ``read_after`` {item: accounts} fills ``read_back`` {(item, account): campaign}
        with those accounts' campaigns right after that item (for prompts sent again between
        the batch's items, which the layer does not take in)."""
        elicit = self.elicitation.probability(vectors) if self.elicitation is not None else None
        # probes split across accounts: the index's state depends only on its own prompts, in
        # order, and nothing is forgotten during a batch, so the batch goes through it first
        split: dict[int, tuple[int, tuple[tuple[str, int], ...]]] = {}  # item -> (its serial, partners)
        if self.split_probes is not None and texts is not None:
            sent = [i for i, text in enumerate(texts) if text is not None]
            first_serial = self.split_probes.serial
            found = self.split_probes.observe_batch(
                [accounts[i] for i in sent],
                [texts[i] for i in sent],
                None if sketches is None else [sketches[i] for i in sent],
            )
            split = {i: (first_serial + k, partners) for k, (i, partners) in enumerate(zip(sent, found, strict=True))}
        out: list[tuple[CampaignSummary | None, dict[str, Level]]] = []
        for i, account in enumerate(accounts):
            raised: dict[str, Level] = {}
            self.observations += 1
            x = vectors[i]
            links = self.accounts.get(account)
            if links is None:
                links = self.accounts[account] = AccountLinks(self.dim)
            keys: list[tuple[str, str, str]] = []  # (key, kind, label)
            if texts is not None and texts[i] is not None:
                keys += [(key, "template", label) for key, label in template_anchors(texts[i])]
            if metas is not None and metas[i]:
                keys += [(key, "meta", kind) for key, kind in self.hasher.indicators(metas[i])]
            fingerprint = query_fingerprint(x)
            p = float(elicit[i]) if elicit is not None else math.nan
            e = min(max(float(evidence[i]), EVIDENCE_CLIP[0]), EVIDENCE_CLIP[1])
            stamp = ts[i]
            # the account's own sum first: a payload region needs it, and its query count
            links.sq_norm += 2.0 * float(links.total @ x) + 1.0
            links.total += x
            links.n += 1
            links.evidence_sum += e
            if not math.isnan(p):
                links.elicitation_sum += p
            for key, kind, label in dict.fromkeys(keys):
                self._add(key, kind, label, account, links, x, 1, 1.0, (p, e), fingerprint, stamp, raised)
            if links.region is not None:
                self._add(links.region, "payload", "", account, links, x, 1, 1.0, (p, e), fingerprint, stamp, raised)
            elif links.n in REGION_CHECKPOINTS:
                self._place_region(account, links, stamp, raised)
            if i in split and split[i][1]:
                self._probe_link(account, links, *split[i], raised)
            for key in sorted(links.linked):
                # a linked account is raised once it has the queries to be tested
                self._raise_linked(self.groups[key], account, raised)
            out.append((self.summary_for(account), raised))
            if read_after and read_back is not None:
                for other in read_after.get(i, ()):
                    read_back[(i, other)] = self.summary_for(other)
        self._enforce_caps()
        return out

    def _place_region(self, account: str, links: AccountLinks, stamp, raised) -> None:
        """Put a diverse account into the payload region of its mean vector, whole history at once."""
        if self.codebook is None or self.diverse_below is None:
            return
        n = links.n
        mean_pairwise = (links.sq_norm - n) / (n * (n - 1))
        if not self.diverse_below(mean_pairwise, n):
            return
        cell = int(np.argmax(self.regions @ links.total))
        links.region = f"payload:{cell}"
        # the history joins as a block; its evidence and elicitation are the account's means so far
        scores = (links.elicitation_sum / n, links.evidence_sum / n)
        self._add(
            links.region,
            "payload",
            f"cell {cell}",
            account,
            links,
            links.total,
            n,
            links.sq_norm,
            scores,
            None,
            stamp,
            raised,
        )

    # -- probes split across accounts ---------------------------------------------------------
    def _probe_link(self, account: str, links: AccountLinks, serial: int, partners, raised) -> None:
        """``account``'s prompt ``serial`` is an uncentred cross-account probe whose near
        neighbours are ``partners`` ((account, serial) pairs): each pair of prompts varies one
        prompt nobody sent. The link is kept on both sides; then each side is checked against
        the hot groups the other counts in (see MIN_LINKED_PROMPTS)."""
        touched = [account]
        for partner, partner_serial in partners:
            other = self.accounts.get(partner)
            if other is None:
                continue  # forgotten since it sent its variant
            links.probe_links.append((serial, partner))
            other.probe_links.append((partner_serial, account))
            del other.probe_links[:-MAX_PROBE_LINKS]
            if partner not in touched:
                touched.append(partner)
        del links.probe_links[:-MAX_PROBE_LINKS]
        if len(touched) > 1:
            links.probe_serials.append(serial)
            del links.probe_serials[:-MAX_PROBE_LINKS]
        for one in touched:
            self._check_links(one, raised)

    def _check_links(self, account: str, raised: dict[str, Level]) -> None:
        """Link ``account`` to the hot groups its probe partners are in, where enough of its
        prompts are linked to their members (``linked_prompts``), and raise it there."""
        links = self.accounts[account]
        keys = sorted({k for _, p in links.probe_links if p in self.accounts for k in self.accounts[p].groups})
        for key in keys:
            group = self.groups.get(key)
            if group is None or group.level is Level.OK or self.is_common(group):
                continue
            if self.linked_prompts(group, account) < MIN_LINKED_PROMPTS:
                continue
            if account in group.members:
                self._raise_member(group, account, raised)
            elif account in group.linked or len(group.linked) < MAX_LINKED_ACCOUNTS:
                group.linked.add(account)
                links.linked.add(key)
                self._raise_linked(group, account, raised)

    def _relink(self, group: Group, raised: dict[str, Level]) -> None:
        """The group rose a level: its linked accounts rise with it, and probe partners of its
        members are checked for a link (they may have linked before it was hot)."""
        for account in sorted(group.linked):
            self._raise_linked(group, account, raised)
        partners = {p for m in group.members if m in self.accounts for _, p in self.accounts[m].probe_links}
        for account in sorted(partners - set(group.members) - group.linked):
            if account in self.accounts:
                self._check_links(account, raised)

    def _linked_members(self, group: Group) -> list[str]:
        """Linked accounts that count with the group: MIN_TESTED_MEMBER_QUERIES queries, a
        history that fits it (see :meth:`_raise_linked`) and, where the group is hot only on its
        probers' evidence, a prober (:meth:`_held_at_ok`)."""
        return [account for account in sorted(group.linked) if self._counts_as_linked(group, account)]

    def _counts_as_linked(self, group: Group, account: str) -> bool:
        """Whether ``account`` is one of :meth:`_linked_members` of ``group``, tested alone (a
        group can have hundreds of linked accounts; one account's verdict needs only its own)."""
        links = self.accounts.get(account)
        return (
            account in group.linked
            and links is not None
            and links.n >= MIN_TESTED_MEMBER_QUERIES
            and self._fits_from_outside(group, links)
            and not self._held_at_ok(group, account)
        )

    def linked_prompts(self, group: Group, account: str, counted: set[str] | None = None) -> int:
        """How many of the account's prompts are probe-linked to counted members of ``group``.
        ``counted``: :meth:`_counted_members` of the group, where the caller asks for many accounts."""
        links = self.accounts.get(account)
        if links is None:
            return 0
        is_counted = self._is_counted(group, counted)
        return len({serial for serial, partner in links.probe_links if partner != account and is_counted(partner)})

    def probe_prompts(self, group: Group, account: str, counted: set[str] | None = None) -> int:
        """How many of the account's prompts were sent as probes (the probe side of a link, see
        AccountLinks.probe_serials) linked to counted members of ``group`` other than itself: an
        account with MIN_LINKED_PROMPTS of them is one of the group's *probers*. ``counted`` as
        for :meth:`linked_prompts`."""
        links = self.accounts.get(account)
        if links is None or not links.probe_serials:
            return 0
        sent, is_counted = set(links.probe_serials), self._is_counted(group, counted)
        return len({s for s, partner in links.probe_links if s in sent and partner != account and is_counted(partner)})

    def _is_counted(self, group: Group, counted: set[str] | None) -> Callable[[str], bool]:
        """Membership in ``counted``, or where it is None, one account looked up in the group
        (an account has at most MAX_PROBE_LINKS partners to look up)."""
        if counted is not None:
            return counted.__contains__
        needed, members, pool_counts = member_min_queries(group), group.members, self.pool.counts

        def is_counted(partner: str) -> bool:
            slot = members.get(partner)
            return slot is not None and pool_counts[slot] >= needed

        return is_counted

    def _counted_members(self, group: Group) -> set[str]:
        """Members with the queries a member needs to count in ``group`` (:func:`member_min_queries`)."""
        accounts = list(group.members)
        slots = np.fromiter(group.members.values(), dtype=np.int64, count=len(accounts))
        enough = (self.pool.counts[slots] >= member_min_queries(group)).tolist()
        return {account for account, keep in zip(accounts, enough, strict=True) if keep}

    def _raise_linked(self, group: Group, account: str, raised: dict[str, Level]) -> None:
        """Raise a linked account (not a member) to the group's level, where it has
        MIN_TESTED_MEMBER_QUERIES queries and its history fits the group as a member's would."""
        links = self.accounts[account]
        if links.n < MIN_TESTED_MEMBER_QUERIES or raised.get(account, Level.OK) >= group.level:
            return
        if group.level > Level.OK and not self.is_common(group) and self._fits_from_outside(group, links):
            # as a member: past what the group reaches without its probers only as a prober itself
            level, plain = group.level, self._plain_level(group)
            if plain < level and self.probe_prompts(group, account) < MIN_LINKED_PROMPTS:
                level = plain
            if raised.get(account, Level.OK) < level:
                raised[account] = level

    def _fits_from_outside(self, group: Group, links: AccountLinks) -> bool:
        """:meth:`_fitting` for an account that is not a member: its whole history as if it joined."""
        n, own = float(links.n), links.total.astype(np.float64)
        within = (links.sq_norm - n) / (n * (n - 1))
        between = float(own @ group.total) / (n * group.n) if group.n else math.nan
        counts = np.array([n])
        fits = self._fit_tests(
            group, own[None, :], counts, np.array([within - between]), group.total + own, group.n + links.n
        )
        return bool(fits[0])

    def _fit_tests(self, group, own, counts, focus, total, n) -> np.ndarray:
        """The tests :meth:`_fitting` puts members through, for rows of sums ``own`` (``counts``
        queries each, member focus ``focus``) in a group whose sums are ``total`` over ``n``:
        focus no higher than the group's by more than the benign spread of small crowds and,
        where bystanders share the indicator by chance, a mean as dealt from the pool."""
        cal = self.judge.calibration
        tolerance = cal.member_focus_tolerance()
        fits = ~(focus > group.pair_stats().focus + tolerance)
        if shared_by_chance(group) and self.member_spread is not None:
            fits &= ~(member_deviation(own, counts, total, n) > 1.0 + MEMBER_DEVIATION_Z * self.member_spread)
        return fits

    def _raise_member(self, group: Group, account: str, raised: dict[str, Level]) -> None:
        """Raise a member of hot ``group`` to its member level, if it counts there and fits."""
        slot = group.members.get(account)
        if slot is None or group.level is Level.OK or self.is_common(group):
            return
        count = int(self.pool.counts[slot])
        if count < member_min_queries(group) or not self._fitting(group, np.array([slot]))[0]:
            return
        level = self._member_level(group, account, count)
        if raised.get(account, Level.OK) < level:
            raised[account] = level

    def _add(self, key, kind, label, account, links, x, count, sq_norm, scores, fingerprint, stamp, raised) -> None:
        """Add ``count`` vectors summing to ``x`` (squared norm ``sq_norm``) of ``account`` to
        the group of ``key``; ``scores`` = (elicitation probability, evidence) per vector."""
        group = self.groups.get(key)
        if group is None:
            waiting = self.pending.get(key)
            # a second account sending the very same prompt shares a prompt, not a template:
            # the value stays pending until a different prompt carries it
            if waiting is None or waiting[0] == account or (kind == "template" and waiting[4] == fingerprint):
                if waiting is None:
                    self.pending[key] = (account, count, kind, label, fingerprint)
                elif waiting[0] == account:
                    self.pending[key] = (*waiting[:1], waiting[1] + count, *waiting[2:])
                self.pending.move_to_end(key)
                return
            del self.pending[key]
            group = self.groups[key] = Group(key, kind, label, self.dim)
            first = waiting[0]
            if first in self.accounts:
                # its earlier queries were never summed (no vectors are kept while a value is
                # unshared), so it joins with none of them counted (the pending count is not
                # carried over) and qualifies as a member on its next ones. A payload region's
                # first account brings its whole history, which the layer holds.
                first_links = self.accounts[first]
                first_slot = self._join(group, first, first_links)
                if kind == "payload" and first_slot is not None:
                    self._fill_block(group, first_slot, first_links)
        self.groups.move_to_end(key)
        slot = group.members.get(account)
        if slot is None:
            if group.level is Level.OK and len(group.members) >= MAX_TRACKED_MEMBERS:
                # a popular default prompt: its first members are sample enough, and rows stay
                # for groups that matter (a hot group tracks every new member)
                return
            slot = self._join(group, account, links)
            if slot is None:
                return
        pool = self.pool
        c = int(pool.counts[slot])
        cross = float(pool.vectors[slot] @ x)
        member_sq = pool.sq_norms[slot] + 2.0 * cross + sq_norm
        group.member_sq_norms += member_sq - pool.sq_norms[slot]
        group.member_sq_counts += (c + count) ** 2 - c**2
        pool.sq_norms[slot] = member_sq
        pool.vectors[slot] += x
        pool.counts[slot] = c + count
        if math.isnan(pool.first_ts[slot]) and stamp is not None:
            pool.first_ts[slot] = stamp
        group.total += x
        group.n += count
        p, e = scores
        if not math.isnan(p):
            group.elicitation_sum += p * count
        group.evidence_sum += e * count
        if count == 1:
            group.note_topic(x)
        else:
            group.note_unseen_topics(count)
        if fingerprint is not None:
            sender = group.fingerprints.get(fingerprint)
            if sender is None:
                if len(group.fingerprints) < MAX_FINGERPRINTS:
                    group.fingerprints[fingerprint] = account
            elif sender != account:
                group.duplicates += 1
        if stamp is not None:
            group.first_ts = stamp if math.isnan(group.first_ts) else min(group.first_ts, stamp)
            group.last_ts = stamp if math.isnan(group.last_ts) else max(group.last_ts, stamp)
        group.last_seen = self.observations
        needed = member_min_queries(group)
        hot_member = group.level > Level.OK and c + count >= needed and not self.is_common(group)
        level = self._member_level(group, account, c + count) if hot_member else Level.OK
        if hot_member and raised.get(account, Level.OK) < level and self._fitting(group, np.array([slot]))[0]:
            # a member of a hot group: raised like the others once it fits, and it may link groups
            raised[account] = level
            self._hot_changed(relinked=c < needed)
        # judged as it grows by JUDGE_EVERY queries or a sixteenth, whichever is more: judging
        # reads every member, so a popular template's group costs O(1) per query, not O(members)
        due = group.n - group.judged_at >= max(JUDGE_EVERY, group.n // 16)
        if due or (c == 0 and len(group.members) <= 64):
            self._judge(group, raised)

    def _fill_block(self, group: Group, slot: int, links: AccountLinks) -> None:
        """An empty membership row takes an account's whole history (payload regions)."""
        n = links.n
        self.pool.vectors[slot] = links.total
        self.pool.counts[slot] = n
        self.pool.sq_norms[slot] = links.sq_norm
        group.total += links.total
        group.n += n
        group.member_sq_norms += links.sq_norm
        group.member_sq_counts += n * n
        group.evidence_sum += links.evidence_sum
        group.elicitation_sum += links.elicitation_sum
        group.note_unseen_topics(n)

    def _join(self, group: Group, account: str, links: AccountLinks) -> int | None:
        slot = self.pool.allocate()
        if slot is None:
            self._evict_one(protect=group.key)
            slot = self.pool.allocate()
            if slot is None:
                return None
        group.members[account] = slot
        group.accounts_seen += 1
        links.groups.add(group.key)
        return slot

    # -- judging --------------------------------------------------------------------------
    def features(self, group: Group) -> GroupFeatures:
        accounts = list(group.members)
        slots = np.fromiter(group.members.values(), dtype=np.int64, count=len(accounts))
        counts = self.pool.counts[slots]
        active = counts >= MIN_MEMBER_QUERIES
        counted = (counts >= member_min_queries(group)).tolist()
        pairs = group.pair_stats()
        starts = self.pool.first_ts[slots[active]]
        starts = starts[np.isfinite(starts)]
        spread = float(np.subtract(*np.quantile(starts, [0.75, 0.25]))) / 3600 if starts.size >= 4 else math.nan
        live = slots[active]
        focus = self._focus(
            self.pool.vectors[live], counts[active], self.pool.sq_norms[live], group.total, group.n, pairs
        )
        return GroupFeatures(
            members=int(active.sum()),
            accounts_seen=group.accounts_seen,
            queries=group.n,
            member_focus=focus,
            member_evidence=group.evidence_sum / group.n if group.n else math.nan,
            within_similarity=pairs.within,
            between_similarity=pairs.between,
            duplicate_share=group.duplicates / group.n if group.n else 0.0,
            elicitation_rate=group.elicitation_sum / group.n if group.n and self.elicitation is not None else math.nan,
            start_spread_hours=spread,
            counted_members=sum(counted),
            probe_linked_members=self._probers(group, accounts, counted),
            topics=group.topics,
        )

    def _probers(self, group: Group, accounts: list[str], counted: list[bool]) -> int:
        """How many counted members (``counted``, aligned with ``accounts``) are probers: they sent
        MIN_LINKED_PROMPTS prompts as probes linked to other counted members (:meth:`probe_prompts`)."""
        links = self.accounts
        candidates = [a for a, c in zip(accounts, counted, strict=True) if c and a in links and links[a].probe_serials]
        if not candidates:
            return 0
        members = {a for a, c in zip(accounts, counted, strict=True) if c}
        return sum(self.probe_prompts(group, a, members) >= MIN_LINKED_PROMPTS for a in candidates)

    def _focus(self, own, counts, sq_norms, total, n: int, pairs) -> float:
        """A group's member focus as its calibration measured the benign crowds: one weight per
        member (:func:`member_mean_focus`), or pooled over pairs (calibrations before 0.22.0)."""
        if self.judge.calibration.focus_weighting == "members":
            return member_mean_focus(own, counts, sq_norms, total, n)
        return pairs.focus

    def is_common(self, group: Group) -> bool:
        """A metadata value shared by more than ``campaign_common_meta_share`` of every account
        seen (a popular browser, a big ISP, a university NAT) links nobody on its own."""
        share = self.config.campaign_common_meta_share
        return (
            group.kind == "meta"
            and group.accounts_seen >= COMMON_MIN_ACCOUNTS
            and (group.accounts_seen > share * len(self.accounts))
        )

    def _judge(self, group: Group, raised: dict[str, Level]) -> None:
        group.judged_at = group.n
        features = self.features(group)
        # a group nobody joins by chance may add its two lines; one bystanders can share (a payload
        # region, an address, a user agent) needs each on its own
        joint = not shared_by_chance(group)
        common = self.is_common(group)
        score, risk = (0.0, 0.0) if common else self.judge.judge(features, joint=joint)
        # the same look without its probers as evidence: how far bystanders may rise with it
        plain = score
        if score > 0.0 and features.probe_linked_members and self.judge.calibration.probe_link_rate is not None:
            plain, _ = self.judge.judge(dataclasses.replace(features, probe_linked_members=0), joint=joint)
        held = float(held_score(score, group.score))  # a level takes two looks in a row past its line
        was_plain = self._plain_level(group)
        group.score, group.risk = score, risk
        group.plain_peak = max(group.plain_peak, float(held_score(plain, group.plain_score)))
        group.plain_score = plain
        if group.level > Level.OK:
            # a hot group that turned common (more accounts seen) links nobody any more, and one
            # that stopped being common links again: the campaign map is stale either way
            stale = self._campaign_of is not None and (group.key in self._campaign_of) == common
            self._hot_changed(relinked=stale)
        rose = False
        if held > group.peak_score:
            group.peak_score = held
            level = self.judge.level_for(held)
            if level > group.level:
                if level is Level.FLAG:
                    group.flagged_at_n = group.n
                group.level = level
                self._hot_changed(relinked=True)
                rose = True
        plain_rose = group.level > Level.OK and self._plain_level(group) > was_plain
        if plain_rose and was_plain is Level.OK:
            self._hot_changed(relinked=True)  # accounts held at ok are named with the campaign now
        if rose or plain_rose:
            counted = self._counted_members(group)
            for account in self._active_members(group):
                count = int(self.pool.counts[group.members[account]])
                member = self._member_level(group, account, count, counted)
                if raised.get(account, Level.OK) < member:
                    raised[account] = member
            self._relink(group, raised)  # linked accounts rise with it (a linked non-prober, to the plain level)
        due = group.n - group.campaign_judged_at >= max(CAMPAIGN_JUDGE_EVERY, group.n // 8)
        if group.level > Level.OK and (due or group.campaign_judged_at == 0):
            group.campaign_judged_at = group.n
            self._judge_campaign(group, raised)

    def _member_level(self, group: Group, account: str, count: int, counted: set[str] | None = None) -> Level:
        """:func:`member_level` of ``account`` with ``count`` of hot ``group``'s queries;
        ``counted``: :meth:`_counted_members` of the group, where the caller has it."""
        plain = self._plain_level(group)
        prober = (  # asked only where it changes the level
            shared_by_chance(group)
            and plain < group.level
            and self.probe_prompts(group, account, counted) >= MIN_LINKED_PROMPTS
        )
        linked = self.linked_prompts(group, account, counted) >= MIN_LINKED_PROMPTS
        return member_level(group, count, linked, plain, prober)

    def _held_at_ok(self, group: Group, account: str, counted: set[str] | None = None) -> bool:
        """Whether hot ``group`` raises ``account`` (a member or linked account that fits it) no
        higher than ok: the group is hot only on its probers' evidence (its plain level is ok)
        and the account is no prober. Such an account is not named with the group's campaign; a
        member is held so only where bystanders share the indicator by chance (member_level)."""
        if group.level is Level.OK or self._plain_level(group) is not Level.OK:
            return False
        if account in group.members and not shared_by_chance(group):
            return False
        return self.probe_prompts(group, account, counted) < MIN_LINKED_PROMPTS

    def _plain_level(self, group: Group) -> Level:
        """The level ``group`` reaches without its probers as content evidence (its held peak
        of such scores), never above its own."""
        return min(group.level, self.judge.level_for(group.plain_peak))

    def _judge_campaign(self, group: Group, raised: dict[str, Level]) -> None:
        """Judge the campaign a hot group belongs to as one group: the whole histories of the
        members of its template groups, pooled. A campaign that rotates wrappers is many groups of a few members
        each, every one a little short of the flag line; together they are not. Members rise
        with the campaign only if they themselves look dealt from its pool."""
        keys = self._campaign_groups.get(self._campaigns().get(group.key, ""), [])
        # pooled over the wrappers the members sent: a shared metadata value or a payload
        # region can hold a campaign and bystanders in one group, a rare wrapper does not
        groups = [self.groups[k] for k in keys if self.groups[k].kind == "template"]
        if len(groups) < 2 or group.kind != "template":
            return
        accounts = sorted({a for g in groups for a in self._active_members(g)})
        if len(accounts) < MIN_GROUP_MEMBERS:
            return
        links = [self.accounts[a] for a in accounts]
        totals = np.stack([x.total for x in links]).astype(np.float64)
        counts = np.array([x.n for x in links], dtype=np.float64)
        sq_norms = np.array([x.sq_norm for x in links])
        n = int(counts.sum())
        everything = totals.sum(axis=0)
        pairs = pair_stats_from_sums(everything, n, float(sq_norms.sum()), float((counts**2).sum()))
        focus = self._focus(totals, counts, sq_norms, everything, n, pairs)
        pooled = GroupFeatures(
            members=len(accounts),
            accounts_seen=len(accounts),
            queries=n,
            member_focus=focus,
            within_similarity=pairs.within,
            between_similarity=pairs.between,
            member_evidence=sum(x.evidence_sum for x in links) / n,
            duplicate_share=max(g.duplicates / g.n if g.n else 0.0 for g in groups),
            elicitation_rate=(sum(x.elicitation_sum for x in links) / n) if self.elicitation is not None else math.nan,
            start_spread_hours=math.nan,
        )
        score, _ = self.judge.judge(pooled, joint=True)  # wrapper groups only
        for g in groups:
            g.campaign_score = max(g.campaign_score, score)
        level = self.judge.level_for(score)
        if level is Level.OK:
            return
        tolerance = self.judge.calibration.member_focus_tolerance()
        for account, member_focus in zip(
            accounts, member_focuses(totals, counts, sq_norms, everything, n).tolist(), strict=True
        ):
            if not member_focus > focus + tolerance and raised.get(account, Level.OK) < level:
                raised[account] = level

    # -- campaigns ------------------------------------------------------------------------
    def _campaigns(self) -> dict[str, str]:
        """group key -> campaign id, for groups at watch or flag linked by shared members."""
        if self._campaign_of is not None:
            return self._campaign_of
        hot = [g for g in self.groups.values() if g.level > Level.OK and not self.is_common(g)]
        parent = {g.key: g.key for g in hot}

        def find(k: str) -> str:
            while parent[k] != k:
                parent[k] = parent[parent[k]]
                k = parent[k]
            return k

        owner: dict[str, list[str]] = {}
        active: dict[str, int] = {}
        for g in hot:
            members = self._active_members(g)
            active[g.key] = len(members)
            for account in members:
                owner.setdefault(account, []).append(g.key)
        shared: dict[tuple[str, str], int] = {}
        for keys in owner.values():
            for a in range(len(keys)):
                for b in range(a + 1, len(keys)):
                    pair = (keys[a], keys[b])
                    shared[pair] = shared.get(pair, 0) + 1
        for (a, b), count in shared.items():
            if count >= max(LINK_MIN_SHARED, LINK_MIN_SHARE * min(active[a], active[b])):
                parent[find(a)] = find(b)
        components: dict[str, list[str]] = {}
        for g in hot:
            components.setdefault(find(g.key), []).append(g.key)
        self._campaign_of, self._campaign_groups = {}, {}
        for keys in components.values():
            keys.sort()
            cid = "cmp-" + hashlib.blake2b(keys[0].encode(), digest_size=6).hexdigest()
            self._campaign_groups[cid] = keys
            for k in keys:
                self._campaign_of[k] = cid
        # a campaign that no longer exists (merged into another, cooled, forgotten) keeps no summary
        self._summaries = {cid: s for cid, s in self._summaries.items() if cid in self._campaign_groups}
        return self._campaign_of

    def _active_members(self, group: Group) -> list[str]:
        """Members that sent enough of the group's queries (:func:`member_min_queries`) and
        themselves look dealt from the group's pool (see :meth:`_fitting`): the campaign's
        members; in a group hot only on its probers' evidence, its probers (:meth:`_held_at_ok`)."""
        accounts = list(group.members)
        slots = np.fromiter(group.members.values(), dtype=np.int64, count=len(accounts))
        keep = self._fitting(group, slots)
        fitting = [a for a, k in zip(accounts, keep.tolist(), strict=True) if k]
        if fitting and shared_by_chance(group) and group.level > Level.OK and self._plain_level(group) is Level.OK:
            counted = self._counted_members(group)
            fitting = [a for a in fitting if not self._held_at_ok(group, a, counted)]
        return fitting

    def _counts_as_member(self, group: Group, account: str) -> bool:
        """Whether member ``account`` is one of :meth:`_active_members` of ``group``, tested alone."""
        slot = group.members.get(account)
        return (
            slot is not None
            and bool(self._fitting(group, np.array([slot]))[0])
            and not self._held_at_ok(group, account)
        )

    def _fitting(self, group: Group, slots: np.ndarray) -> np.ndarray:
        """Which members (pool rows) count: enough queries (in a hot group,
        :func:`member_min_queries`), and a member focus (own pairs
        minus pairs with the rest of the group) no higher than the group's by more than the
        benign spread of small crowds. A benign account that shares a popular user agent
        with a campaign keeps to its own topic; a campaign member does not.

        In groups that can hold a campaign and bystanders (:func:`shared_by_chance`: a diverse
        light account in the same region of embedding space, a user agent the campaign also
        sends), a member must also look dealt from the group's pool: its mean no further from
        the rest's than exchangeable draws of its size would put it (groups.member_deviation,
        whose null distribution has mean 1 at every member size). The focus test alone lets a
        light bystander through, because its few queries are diverse too."""
        pool = self.pool
        counts = pool.counts[slots].astype(np.float64)
        active = counts >= MIN_MEMBER_QUERIES
        if group.level is Level.OK or not active.any():
            return active
        active &= counts >= member_min_queries(group)
        own = pool.vectors[slots].astype(np.float64)
        focus = member_focuses(own, counts, pool.sq_norms[slots], group.total, group.n)
        return active & self._fit_tests(group, own, counts, focus, group.total, group.n)

    def suspected(self, account: str) -> bool:
        """Whether the account is in a group at ``watch`` or above (it may not teach the tables)."""
        links = self.accounts.get(account)
        if links is None:
            return False
        return any(g.level >= Level.WATCH for g in (self.groups.get(k) for k in links.groups) if g is not None)

    def elicitation_rate(self, account: str) -> float | None:
        """Mean reasoning-trace elicitation probability of an account's queries (None without a head)."""
        links = self.accounts.get(account)
        if links is None or self.elicitation is None or links.n == 0:
            return None
        return links.elicitation_sum / links.n

    def summary_for(self, account: str) -> CampaignSummary | None:
        links = self.accounts.get(account)
        if links is None:
            return None
        campaign_of = self._campaigns()
        if not campaign_of:
            return None
        # an account can sit in hundreds of template groups and few of them are hot: walk the smaller side
        keys = links.groups if len(links.groups) <= len(campaign_of) else links.groups.intersection(campaign_of)
        best = None
        for key in keys:
            cid = campaign_of.get(key)
            group = self.groups.get(key)
            if cid is None or group is None or not self._counts_as_member(group, account):
                continue
            if best is None or group.score > best[1]:
                best = (cid, group.score)
        for key in sorted(links.linked):
            cid = campaign_of.get(key)
            group = self.groups.get(key)
            if cid is None or group is None or not self._counts_as_linked(group, account):
                continue
            if best is None or group.score > best[1]:
                best = (cid, group.score)
        if best is None:
            return None
        cached = self._summaries.get(best[0])
        if cached is None or self.observations - cached[1] >= SUMMARY_REFRESH:
            cached = self._summaries[best[0]] = (self.campaign(best[0]).summary(), self.observations)
        level = self._campaign_level(best[0])
        return cached[0] if cached[0].level is level else dataclasses.replace(cached[0], level=level)

    @property
    def relinks(self) -> int:
        """How many times which groups form which campaign was dropped for a rebuild: a reader
        that keeps campaign ids (the stream aggregator's compacted verdicts) looks again when it moves."""
        return self._relinks

    def campaign_composition(self) -> dict[str, tuple[str, ...]]:
        """campaign id -> the keys of its groups, sorted, as of now."""
        self._campaigns()
        return {cid: tuple(keys) for cid, keys in self._campaign_groups.items()}

    def campaign_accounts(self, campaign_id: str) -> set[str]:
        """The accounts counted with a campaign now (its groups' members and linked accounts); empty if gone."""
        self._campaigns()
        out: set[str] = set()
        for key in self._campaign_groups.get(campaign_id, ()):
            group = self.groups[key]
            out.update(self._active_members(group))
            out.update(self._linked_members(group))
        return out

    def _campaign_level(self, campaign_id: str) -> Level:
        groups = [self.groups[k] for k in self._campaign_groups[campaign_id]]
        return max(max(g.level for g in groups), self.judge.level_for(max(g.campaign_score for g in groups)))

    def campaign_ids(self, level: Level | str | None = None) -> list[str]:
        self._campaigns()
        # the member tests read every member of every hot group: done once per state, not per
        # call (the metrics ask for both levels at every scrape)
        state = (self.observations, self._relinks)
        if self._named_ids is None or self._named_ids[0] != state:
            self._named_ids = (state, [c for c in sorted(self._campaign_groups) if self._names_accounts(c)])
        ids = list(self._named_ids[1])
        if level is None:
            return ids
        wanted = Level.parse(level)
        return [c for c in ids if max(self.groups[k].level for k in self._campaign_groups[c]) is wanted]

    def _names_accounts(self, campaign_id: str) -> bool:
        """Whether any account counts with the campaign now. Which groups form a campaign is
        cached between relinks, and a hot group can lose every counted account meanwhile
        (members forgotten, or turned away by the member tests as the group grows): such a
        campaign names nobody to act on and is not listed."""
        groups = [self.groups[k] for k in self._campaign_groups[campaign_id]]
        return any(self._active_members(g) or self._linked_members(g) for g in groups)

    def campaign(self, campaign_id: str) -> CampaignReport:
        self._campaigns()
        keys = self._campaign_groups.get(campaign_id)
        if keys is None:
            raise UnknownCampaignError(
                f"no campaign {campaign_id!r}: ids come from engine.campaigns(); a campaign whose groups "
                "were evicted or forgotten is gone"
            )
        groups = [self.groups[k] for k in keys]
        # each group's counted members, found once for the member list and the reasons
        active = {g.key: self._active_members(g) for g in groups}
        linked = {g.key: self._linked_members(g) for g in groups}
        counts: dict[str, int] = {}
        for g in groups:
            for account in active[g.key]:
                counts[account] = counts.get(account, 0) + int(self.pool.counts[g.members[account]])
        for g in groups:
            for account in linked[g.key]:
                counts.setdefault(account, self.accounts[account].n)
        if not counts:
            raise UnknownCampaignError(
                f"campaign {campaign_id!r} has no member left (forgotten, or no longer counted with its "
                "groups); engine.campaigns() lists the campaigns that name accounts"
            )
        top = max(groups, key=lambda g: max(g.score, g.campaign_score))
        top_score = max(top.score, top.campaign_score)
        indicators = []
        for g in sorted(groups, key=lambda g: -g.score):
            f = self.features(g)
            indicators.append(
                {
                    "kind": g.kind if g.kind != "meta" else f"meta:{g.label}",
                    "label": g.label if g.kind == "template" else "",
                    "level": g.level.value,
                    "score": round(g.score, 4),
                    "features": f.to_dict(),
                }
            )
        flagged = [g.flagged_at_n for g in groups if g.flagged_at_n >= 0]
        firsts = [g.first_ts for g in groups if not math.isnan(g.first_ts)]
        lasts = [g.last_ts for g in groups if not math.isnan(g.last_ts)]
        return CampaignReport(
            id=campaign_id,
            level=self._campaign_level(campaign_id),
            risk=float(1.0 - self.judge.calibration.exceedance(top_score)),
            score=top_score,
            members=tuple(sorted(counts, key=lambda a: (-counts[a], a))),
            size=len(counts),
            queries=sum(g.n for g in groups),
            indicators=tuple(indicators),
            reasons=self._reasons(groups, active, linked),
            first_ts=min(firsts) if firsts else None,
            last_ts=max(lasts) if lasts else None,
            flagged_at_queries=min(flagged) if flagged else None,
        )

    def _reasons(
        self, groups: list[Group], active: dict[str, list[str]], linked: dict[str, list[str]]
    ) -> tuple[str, ...]:
        """Sentences for a campaign's report; ``active`` and ``linked``: each group's counted
        members and linked accounts (:meth:`_active_members`, :meth:`_linked_members`)."""
        out = []

        def group_accounts(g: Group) -> list[str]:
            return [*active[g.key], *linked[g.key]]

        for g in sorted(groups, key=lambda g: -g.score)[:3]:
            f = self.features(g)
            what = {
                "template": f'share the prompt template "{g.label}"',
                "meta": f"share one {g.label} value",
                "payload": "send unusually diverse queries from one region of embedding space",
            }[g.kind]
            out.append(
                f"{f.members} accounts {what}; their queries are no more alike within an account than across "
                f"accounts (member focus {f.member_focus:.3f}), as when one pool of prompts is dealt out"
            )
            if f.topics != UNKNOWN:
                more = "+" if f.topics >= MAX_TOPICS else ""
                out.append(f"between them they asked about {f.topics}{more} distinct things (topics)")
            counted = self._counted_members(g)
            probers = [a for a in group_accounts(g) if self.probe_prompts(g, a, counted) >= MIN_LINKED_PROMPTS]
            if probers:
                out.append(
                    f"{len(probers)} accounts each sent {MIN_LINKED_PROMPTS}+ variants of prompts that other members of "
                    "this group had varied before, around prompts none of them sent: probes split across accounts"
                )
            if not math.isnan(f.elicitation_rate) and f.elicitation_rate >= 0.5:
                out.append(f"{f.elicitation_rate:.0%} of these queries ask the model to write out its reasoning")
        return tuple(dict.fromkeys(out))

    # -- forgetting, caps -------------------------------------------------------------------
    def forget(self, account: str) -> None:
        if self.split_probes is not None:
            self.split_probes.forget(account)
        links = self.accounts.pop(account, None)
        if links is None:
            return
        for partner in {p for _, p in links.probe_links}:
            other = self.accounts.get(partner)
            if other is not None:
                other.probe_links = [(s, p) for s, p in other.probe_links if p != account]
        for key in links.linked:
            self.groups[key].linked.discard(account)
        for key in list(links.groups):
            group = self.groups.get(key)
            if group is not None:
                self._leave(group, account)
        for key in [k for k, v in self.pending.items() if v[0] == account]:
            del self.pending[key]

    def _leave(self, group: Group, account: str) -> None:
        slot = group.members.pop(account)
        pool = self.pool
        c = int(pool.counts[slot])
        group.total -= pool.vectors[slot]
        group.n -= c
        group.member_sq_norms -= pool.sq_norms[slot]
        group.member_sq_counts -= c * c
        pool.release(slot)
        group.fingerprints = {f: a for f, a in group.fingerprints.items() if a != account}
        self._hot_changed(relinked=True)
        if not group.members:
            for other in group.linked:
                self.accounts[other].linked.discard(group.key)
            del self.groups[group.key]

    def _drop_group(self, key: str) -> None:
        group = self.groups.pop(key)
        for account, slot in group.members.items():
            self.pool.release(slot)
            links = self.accounts.get(account)
            if links is not None:
                links.groups.discard(key)
                if links.region == key:
                    links.region = None
        for account in group.linked:
            self.accounts[account].linked.discard(key)
        self._hot_changed(relinked=True)

    def _evict_one(self, protect: str | None = None) -> bool:
        for key, group in self.groups.items():  # least recently updated first
            if group.level is Level.OK and key != protect:
                self._drop_group(key)
                return True
        for key in self.groups:
            if key != protect:
                self.evicted_flagged += 1
                log.warning(
                    "campaign group %s at %s evicted: the group table is full of watched and flagged groups "
                    "(raise campaign_max_groups / campaign_max_memberships); its members keep their raised level",
                    key,
                    self.groups[key].level.value,
                )
                self._drop_group(key)
                return True
        return False

    def _enforce_caps(self) -> None:
        while len(self.pending) > self.config.campaign_max_pending:
            self.pending.popitem(last=False)
        while len(self.groups) > self.config.campaign_max_groups and self._evict_one():
            pass

    def nbytes(self) -> int:
        """Approximate bytes held: membership rows, group sums, and a per-entry allowance."""
        return (
            self.pool.nbytes()
            + len(self.groups) * (self.dim * 8 + 512)
            + sum(g.topic_rows.nbytes for g in self.groups.values() if g.topic_rows is not None)
            + len(self.pending) * 160
            + len(self.accounts) * (self.dim * 4 + 200)
            + (self.split_probes.nbytes() if self.split_probes is not None else 0)
        )

    # -- state ------------------------------------------------------------------------------
    GROUP_SCALARS = (
        "key", "kind", "label", "n", "member_sq_norms", "member_sq_counts", "accounts_seen", "elicitation_sum",
        "evidence_sum", "duplicates", "first_ts", "last_ts", "last_seen", "judged_at", "score", "risk",
        "peak_score", "flagged_at_n", "campaign_score", "campaign_judged_at", "plain_score", "plain_peak",
    )  # fmt: skip
    # scalars a snapshot written before 0.24.0 lacks, each read as the one beside it (without
    # probers as evidence, a group's scores were its scores)
    GROUP_SCALARS_SINCE_0_24 = (("plain_score", "score"), ("plain_peak", "peak_score"))

    def state_dict(self) -> dict[str, Any]:
        """Everything as ``{"header": JSON-able dict, "arrays": {name: ndarray}}`` (host copies)."""
        groups = list(self.groups.values())
        member_ids = [list(g.members) for g in groups]
        rows = np.array([g.members[a] for g, ids in zip(groups, member_ids, strict=True) for a in ids], dtype=np.int64)
        account_ids = list(self.accounts)
        links = [self.accounts[a] for a in account_ids]
        header = {
            "salt": self.hasher.salt.hex(),
            "observations": self.observations,
            "evicted_flagged": self.evicted_flagged,
            "groups": [
                {
                    **{name: _json_number(getattr(g, name)) for name in self.GROUP_SCALARS},
                    "level": g.level.value,
                    "members": ids,
                    "fingerprints": [[f, a] for f, a in g.fingerprints.items()],
                    "linked": sorted(g.linked),
                    "topics": g.topics,
                    "topic_rows": 0 if g.topic_rows is None else int(g.topic_rows.shape[0]),
                }
                for g, ids in zip(groups, member_ids, strict=True)
            ],
            "pending": [[k, *v] for k, v in self.pending.items()],
            "accounts": account_ids,
            "account_scalars": [[x.n, x.sq_norm, x.evidence_sum, x.elicitation_sum, x.region] for x in links],
            "account_probe_links": [[list(link) for link in x.probe_links] for x in links],
            "account_probe_serials": [list(x.probe_serials) for x in links],
        }
        d = self.dim
        arrays = {
            "group_totals": np.stack([g.total for g in groups]) if groups else np.zeros((0, d)),
            "member_vectors": self.pool.vectors[rows] if rows.size else np.zeros((0, d), dtype=np.float32),
            "member_counts": self.pool.counts[rows],
            "member_sq_norms": self.pool.sq_norms[rows],
            "member_first_ts": self.pool.first_ts[rows],
            "account_totals": np.stack([x.total for x in links]) if links else np.zeros((0, d), dtype=np.float32),
            "group_topic_rows": np.concatenate(
                [np.zeros((0, d), dtype=np.float32), *(g.topic_rows for g in groups if g.topic_rows is not None)]
            ),
        }
        if self.split_probes is not None:
            split = self.split_probes.state_dict()
            header["split_probes"] = split["header"]
            arrays.update(split["arrays"])
        return {"header": header, "arrays": arrays}

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace everything with a :meth:`state_dict` (same dimension and caps or larger)."""
        header, arrays = state["header"], state["arrays"]
        self.hasher = MetadataHasher(bytes.fromhex(header["salt"]))
        self.observations = int(header["observations"])
        self.evicted_flagged = int(header["evicted_flagged"])
        self.pool = MembershipPool(self.dim, self.config.campaign_max_memberships)
        self.groups = OrderedDict()
        self.accounts = {}
        for account, (n, sq_norm, evidence_sum, elicitation_sum, region), total in zip(
            header["accounts"], header["account_scalars"], arrays["account_totals"], strict=True
        ):
            links = self.accounts[account] = AccountLinks(self.dim)
            links.n, links.sq_norm, links.region = int(n), float(sq_norm), region
            links.evidence_sum, links.elicitation_sum = float(evidence_sum), float(elicitation_sum)
            links.total[:] = total
        # snapshots before 0.14.0 have no probe links and no split-probe index: both start empty
        for account, probe_links in zip(header["accounts"], header.get("account_probe_links") or [], strict=False):
            self.accounts[account].probe_links = [(int(serial), partner) for serial, partner in probe_links]
        # snapshots before 0.24.0 do not say which side of a link a prompt was: no prober until it probes again
        for account, serials in zip(header["accounts"], header.get("account_probe_serials") or [], strict=False):
            self.accounts[account].probe_serials = [int(serial) for serial in serials]
        if self.split_probes is not None:
            self.split_probes.salt = self.hasher.salt  # the digests in the snapshot are keyed with it
            self.split_probes.reset()
            if "split_probes" in header:
                self.split_probes.load_state({"header": header["split_probes"], "arrays": arrays})
        row = 0
        # snapshots before 0.26.0 did not count topics: their groups are never discounted for them
        topic_rows = np.asarray(arrays.get("group_topic_rows", np.zeros((0, self.dim))), dtype=np.float32)
        wanted = sum(int(entry.get("topic_rows", 0)) for entry in header["groups"])
        if topic_rows.shape != (wanted, self.dim):
            raise ValueError(
                f"the snapshot's groups hold {wanted} topic rows of {self.dim} dimensions; "
                f"group_topic_rows has shape {topic_rows.shape}"
            )
        topic_row = 0
        for entry, total in zip(header["groups"], arrays["group_totals"], strict=True):
            entry = {**{new: entry[old] for new, old in self.GROUP_SCALARS_SINCE_0_24 if new not in entry}, **entry}
            scalars = {name: _from_json_number(entry[name]) for name in self.GROUP_SCALARS}
            group = Group(dim=self.dim, total=np.array(total, dtype=np.float64), **scalars)
            group.level = Level(entry["level"])
            group.fingerprints = {int(f): a for f, a in entry["fingerprints"]}
            group.topics = int(entry.get("topics", UNKNOWN))
            held = int(entry.get("topic_rows", 0))
            if not ((group.topics == UNKNOWN and held == 0) or 0 <= held <= group.topics <= MAX_TOPICS):
                raise ValueError(
                    f"group {group.label!r} says {group.topics} topics and {held} topic rows; "
                    f"expected 0 <= rows <= topics <= {MAX_TOPICS}, or topics {UNKNOWN} (not counted)"
                )
            if held:
                group.topic_rows = np.array(topic_rows[topic_row : topic_row + held], dtype=np.float32)
                topic_row += held
            group.linked = {a for a in entry.get("linked", ()) if a in self.accounts}
            for account in group.linked:
                self.accounts[account].linked.add(group.key)
            for account in entry["members"]:
                slot = self.pool.allocate()
                if slot is None:
                    raise ValueError("the snapshot holds more memberships than campaign_max_memberships allows")
                self.pool.vectors[slot] = arrays["member_vectors"][row]
                self.pool.counts[slot] = arrays["member_counts"][row]
                self.pool.sq_norms[slot] = arrays["member_sq_norms"][row]
                self.pool.first_ts[slot] = arrays["member_first_ts"][row]
                row += 1
                group.members[account] = slot
                if account in self.accounts:
                    self.accounts[account].groups.add(group.key)
            self.groups[group.key] = group
        self.pending = OrderedDict((k, (a, int(n), kind, label, f)) for k, a, n, kind, label, f in header["pending"])
        self._hot_changed(relinked=True)
