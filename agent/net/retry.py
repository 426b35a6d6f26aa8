"""Exponential backoff with full jitter, pure: attempts in, delay out."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    first_s: float = 2.0
    cap_s: float = 300.0
    factor: float = 2.0

    def ceiling(self, attempt: int) -> float:
        """The longest wait after the `attempt`-th failure in a row (1-based)."""
        return min(self.cap_s, self.first_s * self.factor ** max(0, attempt - 1))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """A wait drawn from [ceiling/2, ceiling]: spread out, never a tight loop."""
        high = self.ceiling(attempt)
        return (rng or random).uniform(high / 2, high)
