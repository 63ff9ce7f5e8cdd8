"""A circuit breaker for one run's calls to the model server.

Hand-written because the maintained breaker libraries (pybreaker, aiobreaker) either block the
event loop or cannot half-open on a success count; the state machine is twenty lines.
Thresholds follow the split-container design: open after 5 consecutive failures, stay open
60 s, half-open, close after 2 successes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable


class BreakerState(str, Enum):
    closed = "closed"
    open = "open"
    half_open = "half_open"


class BreakerOpenError(RuntimeError):
    pass


@dataclass
class CircuitBreaker:
    failure_threshold: int = 5
    recovery_s: float = 60.0
    success_threshold: int = 2
    on_change: Callable[[BreakerState, BreakerState, str], None] = lambda old, new, why: None
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = field(default=BreakerState.closed, init=False)
    trips: int = field(default=0, init=False)
    _failures: int = field(default=0, init=False)
    _successes: int = field(default=0, init=False)
    _opened_at: float = field(default=0.0, init=False)

    def _move(self, new: BreakerState, why: str) -> None:
        old, self.state = self.state, new
        if new is BreakerState.open:
            self.trips += 1
            self._opened_at = self.clock()
        self._failures = self._successes = 0
        self.on_change(old, new, why)

    def before_call(self, target: str) -> None:
        """Raise at once while open; after the recovery time let trial calls through."""
        if self.state is BreakerState.open:
            waited = self.clock() - self._opened_at
            if waited < self.recovery_s:
                raise BreakerOpenError(
                    f"circuit breaker open for {target}: {self.failure_threshold} consecutive failures; "
                    f"next trial in {self.recovery_s - waited:.0f} s"
                )
            self._move(BreakerState.half_open, f"{self.recovery_s:.0f} s elapsed, trying the server again")

    def record_success(self) -> None:
        if self.state is BreakerState.half_open:
            self._successes += 1
            if self._successes >= self.success_threshold:
                self._move(BreakerState.closed, f"{self.success_threshold} successful calls")
        else:
            self._failures = 0

    def record_failure(self, why: str) -> None:
        if self.state is BreakerState.half_open:
            self._move(BreakerState.open, f"trial call failed: {why}")
        elif self.state is BreakerState.closed:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._move(BreakerState.open, f"{self._failures} consecutive failures, last: {why}")
