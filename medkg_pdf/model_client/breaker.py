"""A circuit breaker for the calls to one model server, shared by every run in the process.

Hand-written because the maintained breaker libraries (pybreaker, aiobreaker) either block the
event loop or cannot half-open on a success count; the state machine is short.
Thresholds follow the split-container design: open after 5 consecutive failures, stay open
60 s, half-open (one trial call at a time), close after 2 successes.

Shared (`shared_breaker`, one per server URL) so that a run started during an outage knows of
it, and a run that outlives the outage sees a trial call succeed and the breaker close. While it
is open a call is refused with the seconds to wait (`BreakerOpenError.retry_after`): callers wait
for the trial instead of failing at once.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterator

from medkg_pdf.model_client.errors import RetryableError
from medkg_pdf.schemas import PageStatus

OnChange = Callable[["BreakerState", "BreakerState", str], None]


class BreakerState(str, Enum):
    closed = "closed"
    open = "open"
    half_open = "half_open"


class BreakerOpenError(RetryableError):
    """Refused without a request; `retry_after` says when a trial call may go. A wait, not a failure."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message, PageStatus.breaker_open, retry_after, throttled=True)


@dataclass
class CircuitBreaker:
    failure_threshold: int = 5
    recovery_s: float = 60.0
    success_threshold: int = 2
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = field(default=BreakerState.closed, init=False)
    trips: int = field(default=0, init=False)
    _failures: int = field(default=0, init=False)
    _successes: int = field(default=0, init=False)
    _opened_at: float = field(default=0.0, init=False)
    _epoch: int = field(default=0, init=False)  # bumped on every change: a call's ticket
    _trial_out: bool = field(default=False, init=False)  # a half-open trial call is in flight
    _listeners: list[OnChange] = field(default_factory=list, init=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    @contextmanager
    def watch(self, listener: OnChange) -> Iterator[None]:
        """Tell `listener` of state changes for a while (a run logs them to its own log)."""
        with self._lock:
            self._listeners.append(listener)
        try:
            yield
        finally:
            with self._lock:
                self._listeners.remove(listener)

    def _move(self, new: BreakerState, why: str) -> None:
        old, self.state = self.state, new
        self._epoch += 1
        if new is BreakerState.open:
            self.trips += 1
            self._opened_at = self.clock()
        self._failures = self._successes = 0
        self._trial_out = False
        for listener in list(self._listeners):
            listener(old, new, why)

    def before_call(self, target: str) -> int:
        """A ticket for a call that may go now, or BreakerOpenError saying how long to wait.

        After the recovery time the breaker half-opens and lets one trial call through at a time.
        """
        with self._lock:
            if self.state is BreakerState.open:
                waited = self.clock() - self._opened_at
                if waited < self.recovery_s:
                    raise BreakerOpenError(
                        f"circuit breaker open for {target}: {self.failure_threshold} consecutive failures; "
                        f"next trial in {self.recovery_s - waited:.0f} s",
                        self.recovery_s - waited,
                    )
                self._move(BreakerState.half_open, f"{self.recovery_s:.0f} s elapsed, trying the server again")
            if self.state is BreakerState.half_open:
                if self._trial_out:
                    raise BreakerOpenError(
                        f"circuit breaker half-open for {target}: waiting for the trial call", min(1.0, self.recovery_s)
                    )
                self._trial_out = True
            return self._epoch

    def _current(self, ticket: int | None) -> bool:
        """Only calls that began in the present state count (None: a caller without tickets)."""
        return ticket is None or ticket == self._epoch

    def record_success(self, ticket: int | None = None) -> None:
        with self._lock:
            if not self._current(ticket):
                return
            if self.state is BreakerState.half_open:
                self._successes += 1
                self._trial_out = False
                if self._successes >= self.success_threshold:
                    self._move(BreakerState.closed, f"{self.success_threshold} successful calls")
            else:
                self._failures = 0

    def record_failure(self, why: str, ticket: int | None = None) -> None:
        with self._lock:
            if not self._current(ticket):
                return
            if self.state is BreakerState.half_open:
                self._move(BreakerState.open, f"trial call failed: {why}")
            elif self.state is BreakerState.closed:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._move(BreakerState.open, f"{self._failures} consecutive failures, last: {why}")

    def release(self, ticket: int) -> None:
        """However a call ended (a 429, a bad answer), its half-open trial slot is free again."""
        with self._lock:
            if ticket == self._epoch and self.state is BreakerState.half_open:
                self._trial_out = False


_shared: dict[tuple, CircuitBreaker] = {}
_shared_lock = threading.Lock()


def shared_breaker(url: str, **settings) -> CircuitBreaker:
    """The process's breaker for the server at `url` (one per URL and settings), made on first use."""
    key = (url, tuple(sorted(settings.items())))
    with _shared_lock:
        if key not in _shared:
            _shared[key] = CircuitBreaker(**settings)
        return _shared[key]


def forget_shared_breakers() -> None:
    """Start every server's breaker afresh (tests: a loopback port may be reused by the next test)."""
    with _shared_lock:
        _shared.clear()
