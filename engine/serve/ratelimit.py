"""Per-client token buckets: each client may observe ``rate`` items a second on average and
``burst`` at once; past that it is told to come back later (HTTP 429 with ``Retry-After``).

A client is who calls the sidecar, never the account being observed: the value of the
client header (``rate_limit_client_header``, a key id the caller chooses) or, without it,
the bearer token (every caller holding the one token shares a bucket). Buckets are kept for
at most :data:`MAX_CLIENTS` clients, least recently seen dropped first (a dropped client
starts again with a full bucket).

>>> buckets = TokenBuckets(rate=2.0, burst=4)
>>> buckets.take("gw-1", 4, now=0.0), buckets.take("gw-1", 1, now=0.0)
(0.0, 0.5)
>>> buckets.take("gw-2", 1, now=0.0)  # another client has its own bucket
0.0
"""

from __future__ import annotations

import time
from collections import OrderedDict

MAX_CLIENTS = 10_000


class TokenBuckets:
    """One token bucket per client id; ``rate`` 0 means no limit."""

    def __init__(self, rate: float, burst: int, max_clients: int = MAX_CLIENTS):
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, client: str, cost: float, now: float | None = None) -> float:
        """Take ``cost`` tokens from ``client``'s bucket: 0.0 when they were there, else the
        seconds until they will be (nothing is taken then)."""
        if not self.enabled:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (min(cost, self.burst) - tokens) / self.rate
        self._buckets[client] = (tokens, now)  # most recently seen last
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait
