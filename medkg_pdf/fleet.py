"""Every document's records read back from storage into one pandas frame (a row per document).

The frame is what `medkg_pdf.slo`, the quality report and the Prometheus export work on. Reading
is the only I/O here: one listing of `documents/` and `quarantine/`, then a few small JSON
records per document, fetched by a bounded thread pool (S3 GETs are latency-bound).
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Callable, Iterable

import pandas as pd

from medkg_pdf import storage_keys
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import DocumentQuality, PageParses, QuarantineRecord, RegressionQuality, SourceRef

READ_WORKERS = 16

DOCUMENT_COLUMNS = [
    "document_id", "name", "uri", "arrived_at", "completed_at", "failed_at",
    "failure_stage", "failure_reason", "failure_message", "failure_class", "failed_attempts", "next_attempt_at",
    "match_score", "word_f1", "numeric_recall", "edit_similarity", "pages_compared",
]  # fmt: skip
DETAIL_COLUMNS = [
    "pages", "pages_ok", "pages_blank", "pages_failed", "page_statuses", "model", "prompt_version",
    "regression_verdict", "regression_word_f1", "structured_json", "structured_md", "quality_json",
]  # fmt: skip


def document_ids(storage: DocumentStorage) -> list[str]:
    found = (storage_keys.registered_document_id(key) for key in storage.list_keys(storage_keys.DOCUMENTS_PREFIX))
    return sorted(document_id for document_id in found if document_id is not None)


def _map(function: Callable[[str], Any], items: Iterable[str]) -> list[Any]:
    items = list(items)
    if len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(READ_WORKERS, len(items))) as pool:
        return list(pool.map(function, items))


def _document_row(storage: DocumentStorage, document_id: str) -> dict[str, Any] | None:
    ref = storage.read_model_or_none(storage_keys.source_ref(document_id), SourceRef)
    if ref is None:
        return None
    quality = storage.read_model_or_none(storage_keys.quality(document_id), DocumentQuality)
    quarantined = storage.read_model_or_none(storage_keys.quarantine(document_id), QuarantineRecord)
    row: dict[str, Any] = dict.fromkeys(DOCUMENT_COLUMNS)
    row.update(document_id=document_id, name=ref.name, uri=ref.uri, arrived_at=ref.arrived_at)
    if quality is not None:
        row.update(
            completed_at=quality.completed_at,
            match_score=quality.match_score,
            word_f1=quality.word_f1,
            numeric_recall=quality.numeric_recall,
            edit_similarity=quality.edit_similarity,
            pages_compared=quality.pages_compared,
        )
    if quarantined is not None:
        row.update(
            failed_at=datetime.fromisoformat(quarantined.at),
            failure_stage=quarantined.stage,
            failure_reason=quarantined.reason,
            failure_message=quarantined.message[:500],
            # permanent: never retried automatically; transient: retried at next_attempt_at; dead_letter: out of attempts
            failure_class="dead_letter" if quarantined.dead_letter else "transient" if quarantined.retryable else "permanent",
            failed_attempts=quarantined.failed_attempts,
            next_attempt_at=quarantined.next_attempt_at,
        )
    return row


def load_documents(storage: DocumentStorage) -> pd.DataFrame:
    """One row per registered document: arrival, completion, failure and its quality scores."""
    rows = [row for row in _map(lambda d: _document_row(storage, d), document_ids(storage)) if row is not None]
    frame = pd.DataFrame(rows, columns=DOCUMENT_COLUMNS)
    for column in ("arrived_at", "completed_at", "failed_at", "next_attempt_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def _detail_row(storage: DocumentStorage, document_id: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(DETAIL_COLUMNS)
    parses = storage.read_model_or_none(storage_keys.page_parses(document_id), PageParses)
    if parses is not None:
        statuses = Counter(page.status.value for page in parses.pages)
        row.update(
            pages=len(parses.pages),
            pages_ok=statuses.get("ok", 0),
            pages_blank=statuses.get("blank", 0),
            pages_failed=sum(not page.status.usable for page in parses.pages),
            page_statuses=dict(statuses),
            model=parses.model,
            prompt_version=parses.prompt_version,
        )
    regression = storage.read_model_or_none(storage_keys.regression(document_id), RegressionQuality)
    if regression is not None:
        row.update(regression_verdict=regression.verdict, regression_word_f1=regression.word_f1)
    for column, key in (
        ("structured_json", storage_keys.structured_json(document_id)),
        ("structured_md", storage_keys.structured_markdown(document_id)),
        ("quality_json", storage_keys.quality(document_id)),
    ):
        row[column] = storage.uri(key) if storage.exists(key) else None
    return row


def with_details(storage: DocumentStorage, frame: pd.DataFrame) -> pd.DataFrame:
    """Add page-status counts, the regression verdict and output links (read for these rows only)."""
    details = pd.DataFrame(_map(lambda d: _detail_row(storage, d), frame["document_id"]), columns=DETAIL_COLUMNS)
    return pd.concat([frame.reset_index(drop=True), details], axis=1)
