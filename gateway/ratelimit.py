"""Per-client rate limits for the endpoints anyone can call without paying (session
challenges and activations, per client address) and for the facilitator API (per API
key): a token bucket per client, in memory.

Each instance limits on its own; behind a load balancer the effective limit is the sum
over instances, which is enough to stop one client from flooding the store with nonces.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from gateway.errors import RateLimited
from store.clock import Clock


class RateLimiter:
    def __init__(self, per_minute: int, clock: Clock, max_clients: int = 100_000) -> None:
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = float(per_minute)
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, client: str) -> None:
        """Take one token for `client` or raise RateLimited (429) with Retry-After."""
        if self.rate <= 0:
            return
        now = self.clock.now()
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            wait = math.ceil((1 - tokens) / self.rate)
            raise RateLimited("too many requests; slow down", headers={"Retry-After": str(wait)})
        self._buckets[client] = (tokens - 1, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)  # forget the least recently seen client
