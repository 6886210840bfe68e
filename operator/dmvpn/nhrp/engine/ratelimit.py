"""Token buckets per key, with a bounded number of keys."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Allow ``burst`` events at once per key, then one every ``interval`` seconds."""

    def __init__(self, *, burst: int, interval: float, max_keys: int) -> None:
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        self._buckets: dict[Hashable, _Bucket] = {}

    def allow(self, key: Hashable, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self.prune(now)
                if len(self._buckets) >= self.max_keys:
                    return False  # under a flood of distinct keys, fail closed
            bucket = self._buckets[key] = _Bucket(tokens=float(self.burst), updated=now)
        self._refill(bucket, now)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def prune(self, now: float) -> None:
        """Forget keys whose bucket is full again: they are indistinguishable from new keys."""
        for key, bucket in list(self._buckets.items()):
            self._refill(bucket, now)
            if bucket.tokens >= self.burst:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)

    def _refill(self, bucket: _Bucket, now: float) -> None:
        if self.interval <= 0:
            bucket.tokens = float(self.burst)
        else:
            elapsed = max(now - bucket.updated, 0.0)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed / self.interval)
        bucket.updated = now
