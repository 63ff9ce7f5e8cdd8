"""How many requests one run keeps in flight: fewer after a 429, creeping back up after successes.

AIMD (as TCP): a 429 halves the limit, each success adds 1/limit, so a busy server sees the
load drop at once and return slowly. Hand-written: the AIMD packages on PyPI are single-author
0.1 releases, and this is an asyncio.Condition and two lines of arithmetic.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator


class AdaptiveLimit:
    """Requests in flight for one run (one event loop), between 1 and `ceiling`."""

    def __init__(self, ceiling: int):
        self.ceiling = ceiling
        self.limit = float(ceiling)
        self.lowest = ceiling
        self.in_flight = 0
        self._changed = asyncio.Condition()
        self._cut_at = 0.0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Wait for room under the current limit; yields when the request left (for `slow_down`)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < int(self.limit))
            self.in_flight += 1
        try:
            yield time.monotonic()
        finally:
            async with self._changed:
                self.in_flight -= 1
                self._changed.notify_all()

    def slow_down(self, sent_at: float) -> None:
        """Halve the limit, once per burst: 429s for requests sent before the last cut do not cut again."""
        if sent_at >= self._cut_at:
            self.limit = max(1.0, self.limit / 2)
            self.lowest = min(self.lowest, int(self.limit))
            self._cut_at = time.monotonic()

    def speed_up(self) -> None:
        self.limit = min(float(self.ceiling), self.limit + 1 / self.limit)
