"""What can go wrong talking to a model server, split by what the caller must do about it."""

from __future__ import annotations

from medkg_pdf.schemas import PageStatus


class ModelServerError(RuntimeError):
    """The server is unusable for the whole run; the message always names URL and model."""


class ServerUnavailableError(ModelServerError):
    pass


class ModelNotServedError(ModelServerError):
    pass


class FatalRequestError(ModelServerError):
    """A 401/403/404: every page would fail the same way, so the run stops at once."""


class RetryableError(Exception):
    """Worth another attempt (timeout, 429, 5xx, dropped connection); `retry_after` honours the server."""

    def __init__(self, message: str, status: PageStatus, retry_after: float | None = None, *, throttled: bool = False):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        # a wait, not a failure (a 429's back-pressure, an open breaker): it neither counts for the
        # breaker nor spends an attempt, only the page's wait budget
        self.throttled = throttled


class PageFailure(Exception):
    """This page failed for good; the run goes on with the others."""

    def __init__(self, message: str, status: PageStatus):
        super().__init__(message)
        self.status = status
