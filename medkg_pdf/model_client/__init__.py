"""The model-server client as plain Python (no Dagster), for the resource, the CLI and the benchmarks.

- `client.py`: HTTP (httpx), preflight, retries (tenacity), the circuit breaker, run stats.
- `page_parser.py`: one page's tries, judging answers, the rotation re-ask, fitting the context.
- `errors.py`: what the caller must handle. `breaker.py`: the breaker's state machine.
"""

from medkg_pdf.model_client.client import Backoff, ModelClient, OnResult, RunStats, redact, shown_url
from medkg_pdf.model_client.errors import (
    FatalRequestError,
    ModelNotServedError,
    ModelServerError,
    PageFailure,
    RetryableError,
    ServerUnavailableError,
)
from medkg_pdf.model_client.page_parser import PageParser, PageRecipe, PageRequest, looks_repetitive

__all__ = [
    "Backoff",
    "FatalRequestError",
    "ModelClient",
    "ModelNotServedError",
    "ModelServerError",
    "OnResult",
    "PageFailure",
    "PageParser",
    "PageRecipe",
    "PageRequest",
    "RetryableError",
    "RunStats",
    "ServerUnavailableError",
    "looks_repetitive",
    "redact",
    "shown_url",
]
