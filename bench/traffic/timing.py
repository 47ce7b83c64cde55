"""Arrival times: humans work in sessions, apps send a steady stream with batch bursts,
extraction scripts send fast batches separated by pauses (or trickle to stay under limits).
All times are seconds; streams start at a random point of a 30-day window."""

from __future__ import annotations

import math
import random

EPOCH = 1_735_689_600.0  # 2025-01-01T00:00:00Z, so timestamps look like real ones
WINDOW = 30 * 86400.0
DAY = 86400.0


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma))


def _waking_hour(rng: random.Random, day_start: float) -> float:
    # Most human sessions start between 08:00 and 23:00 of the account's local day.
    return day_start + rng.uniform(8, 23) * 3600.0 if rng.random() < 0.9 else day_start + rng.uniform(0, 24) * 3600.0


def session_times(rng: random.Random, sessions: list[list[str]]) -> list[float]:
    """One timestamp per prompt of ``sessions`` (gap kinds: 'turn', 'retry', 'edit').

    Sessions start on random waking hours over an active period that grows with the number
    of sessions; turns inside a session follow reading-and-typing gaps, retries come fast.
    """
    start = EPOCH + rng.uniform(0, WINDOW * 0.5)
    active_days = max(1.0, min(60.0, _lognormal(rng, 1.5 + 0.7 * len(sessions), 0.6)))
    starts = sorted(_waking_hour(rng, start + math.floor(rng.uniform(0, active_days)) * DAY) for _ in sessions)
    times: list[float] = []
    previous_end = start
    for session_start, gaps in zip(starts, sessions, strict=True):
        t = max(session_start, previous_end + 60.0)
        for i, gap in enumerate(gaps):
            if i:
                if gap == "retry":
                    t += rng.uniform(2.0, 20.0)
                elif gap == "edit":
                    t += _lognormal(rng, 25.0, 0.7)
                else:
                    t += _lognormal(rng, 45.0, 0.9)
            times.append(t)
        previous_end = t
    return times


def app_times(rng: random.Random, n: int) -> list[float]:
    """A backend app: Poisson arrivals at an account-specific rate, daily rhythm, and
    occasional batch jobs (many requests a fraction of a second apart)."""
    mean_gap = _lognormal(rng, 600.0, 1.0)
    t = EPOCH + rng.uniform(0, WINDOW * 0.3)
    times = []
    while len(times) < n:
        if rng.random() < 0.03:
            for _ in range(min(n - len(times), rng.randint(5, 40))):
                t += rng.uniform(0.1, 2.0)
                times.append(t)
            continue
        hour = (t % DAY) / 3600.0
        busy = 1.0 + 0.8 * math.sin((hour - 9.0) / 24.0 * 2 * math.pi)  # quieter at night
        t += rng.expovariate(busy / mean_gap)
        times.append(t)
    return times


def script_times(rng: random.Random, n: int, profile: str | None = None) -> list[float]:
    """An extraction script: 'burst' (fast batches, pauses between), 'steady' (a constant
    rate just under typical limits) or 'slow' (low-and-slow trickle over days)."""
    profile = profile or rng.choice(["burst", "burst", "steady", "slow"])
    t = EPOCH + rng.uniform(0, WINDOW * 0.5)
    times = []
    if profile == "burst":
        while len(times) < n:
            for _ in range(min(n - len(times), rng.randint(10, 120))):
                t += _lognormal(rng, 1.5, 0.5)
                times.append(t)
            t += _lognormal(rng, 1800.0, 1.0)
    elif profile == "steady":
        gap = rng.uniform(3.0, 20.0)
        for _ in range(n):
            t += gap * rng.uniform(0.8, 1.2)
            times.append(t)
    else:
        for _ in range(n):
            t += _lognormal(rng, 900.0, 1.0)
            times.append(t)
    return times
