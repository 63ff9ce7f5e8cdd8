"""How every stage treats the documents of one step: each on its own, one bad one never sinks the rest.

A step covers one partition (sensor and CLI runs) or a range of them (backfills under the
BackfillPolicy). A document that cannot go on is recorded under `quarantine/` with its stage
and reason; with one partition the step then fails with that reason, with several the step
reports it in its metadata and goes on with the others.
"""

from __future__ import annotations

from typing import Any, Callable

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue
from pydantic import BaseModel

from medkg_pdf import layout
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import utc_now


class DocumentError(Exception):
    """A document-level failure with a reason a person understands."""

    def __init__(self, message: str, *, retryable: bool = False, reason: str = "invalid_input"):
        super().__init__(message)
        self.retryable = retryable
        self.reason = reason


class QuarantineRecord(BaseModel):
    document_id: str
    stage: str
    reason: str
    message: str
    retryable: bool
    at: str


def quarantine(storage: DocumentStorage, document_id: str, stage: str, error: DocumentError) -> None:
    record = QuarantineRecord(
        document_id=document_id,
        stage=stage,
        reason=error.reason,
        message=str(error),
        retryable=error.retryable,
        at=utc_now().isoformat(),
    )
    storage.write_model(layout.quarantine(document_id), record)


def clear_quarantine(storage: DocumentStorage, document_id: str, stage: str) -> None:
    """A document that now passes a stage it once failed leaves quarantine."""
    record = storage.read_model_or_none(layout.quarantine(document_id), QuarantineRecord)
    if record is not None and record.stage == stage:
        storage.delete(layout.quarantine(document_id))


def require(storage: DocumentStorage, key: str, model: type[BaseModel], what: str):
    record = storage.read_model_or_none(key, model)
    if record is None:
        raise DocumentError(f"{what} is missing ({storage.uri(key)}): materialize the upstream asset first", reason="upstream_missing")
    return record


def run_per_document(
    context: AssetExecutionContext,
    storage: DocumentStorage,
    stage: str,
    work: Callable[[str], dict[str, Any]],
    step_metadata: Callable[[], dict[str, Any]] | None = None,
) -> MaterializeResult:
    """Apply `work` to each document of the step; `work` returns that document's metadata."""
    done: dict[str, dict[str, Any]] = {}
    failed: dict[str, DocumentError] = {}
    for document_id in context.partition_keys:
        try:
            done[document_id] = work(document_id)
            clear_quarantine(storage, document_id, stage)
        except DocumentError as error:
            earlier = storage.read_model_or_none(layout.quarantine(document_id), QuarantineRecord)
            if error.reason == "upstream_missing" and earlier is not None:
                # keep the first stage's reason: that is what a person needs to read
                error = DocumentError(f"skipped: {earlier.stage} failed: {earlier.message}", retryable=earlier.retryable, reason=earlier.reason)
            else:
                quarantine(storage, document_id, stage, error)
            context.log.error(f"{stage} failed for document {document_id}: {error}")
            failed[document_id] = error
    if len(context.partition_keys) == 1:
        if failed:
            (document_id, error), = failed.items()
            raise Failure(
                description=f"{stage} failed for document {document_id}: {error}",
                metadata={"document_id": document_id, "reason": error.reason, "retryable": error.retryable},
                allow_retries=error.retryable,
            )
        return MaterializeResult(metadata=done[context.partition_keys[0]])
    return MaterializeResult(
        metadata={
            "documents": len(context.partition_keys),
            "documents_ok": len(done),
            "documents_failed": len(failed),
            "failures": MetadataValue.md(
                "\n".join(f"- `{doc}`: {error}" for doc, error in failed.items()) or "none"
            ),
            **(step_metadata() if step_metadata else {}),
        }
    )
