"""Per-key rate limit: a token bucket per API key (in this process)."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    """``rate_per_minute`` requests per minute per key, bursts of up to ``burst``.

    Example:
        >>> rl = RateLimiter(60, burst=2)
        >>> [rl.take("k")[0] for _ in range(3)]
        [True, True, False]
    """

    def __init__(self, rate_per_minute: int, burst: int | None = None) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst if burst is not None else max(5, rate_per_minute // 4))
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> tuple[bool, float]:
        """(allowed, seconds until the next token) for one request of ``key``."""
        if self.rate <= 0:
            return True, 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return True, 0.0
            self._buckets[key] = (tokens, now)
            return False, (1.0 - tokens) / self.rate
