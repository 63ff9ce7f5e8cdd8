"""One document per run, and honest state for it: a stage is materialized only when it was done for
the document's current source version.

Dagster writes a materialization for every partition of a step and cannot fail one partition of
a multi-partition step (dagster-io/dagster#17836), so every document asset runs one document per
run (`BackfillPolicy.multi_run(1)`, see `defs/partitions.py`); a step handed several partitions fails
before touching any of them. A document that cannot go on raises `DocumentError`: the step fails
with the reason (what the UI shows for that partition), and a quarantine record says whether the
failure is permanent (never retried automatically) or transient. Transient failures are retried
three ways, each wider than the one before: the model client's own request retries, the step's
own retries (`RetryRequested` with exponential backoff, in the same run), then the reconciliation schedule at the
record's `next_attempt_at` (exponential backoff over runs) until `MAX_FAILED_ATTEMPTS`, after
which the record is a dead letter for an operator. Every failed attempt is recorded at once, so
the record is right even when the process dies before a retry.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Callable

from dagster import AssetExecutionContext, Failure, MaterializeResult, RetryRequested

from medkg_pdf import storage_keys
from medkg_pdf.errors import DocumentError
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import QuarantineRecord, SourceInfo, SourceRef, utc_now

# A transient failure is retried in the same run after 5 s, then 10 s; a permanent one, or the last
# attempt, raises Failure(allow_retries=False) with the document's own reason (a RetryPolicy would
# replace it by "Exceeded max_retries" and could not tell permanent from transient).
MAX_STEP_RETRIES = 2
STEP_RETRY_DELAY_S = 5.0

ATTEMPTS_PER_RUN = MAX_STEP_RETRIES + 1
MAX_FAILED_ATTEMPTS = 4 * ATTEMPTS_PER_RUN  # transient failures of one source version before it is a dead letter
RECONCILE_BACKOFF = timedelta(minutes=15)  # doubled after every failed run
RECONCILE_BACKOFF_MAX = timedelta(hours=6)


def next_attempt(at: datetime, failed_attempts: int) -> datetime:
    runs = max(1, -(-failed_attempts // ATTEMPTS_PER_RUN))
    return at + min(RECONCILE_BACKOFF * 2 ** (runs - 1), RECONCILE_BACKOFF_MAX)


def quarantine(storage: DocumentStorage, document_id: str, stage: str, error: DocumentError, run_id: str | None = None) -> QuarantineRecord:
    """Record a document's failure; repeated transient failures of one source version count up."""
    ref = storage.read_model_or_none(storage_keys.source_ref(document_id), SourceRef)
    registered_at = ref.arrived_at if ref is not None else None
    earlier = storage.read_model_or_none(storage_keys.quarantine(document_id), QuarantineRecord)
    same_version = earlier is not None and earlier.registered_at == registered_at
    failed_attempts = earlier.failed_attempts + 1 if same_version and earlier.retryable else 1
    now = utc_now()
    dead_letter = error.retryable and failed_attempts >= MAX_FAILED_ATTEMPTS
    record = QuarantineRecord(
        document_id=document_id,
        stage=stage,
        reason=error.reason,
        message=str(error),
        retryable=error.retryable,
        at=now.isoformat(),
        registered_at=registered_at,
        failed_attempts=failed_attempts,
        next_attempt_at=next_attempt(now, failed_attempts) if error.retryable and not dead_letter else None,
        dead_letter=dead_letter,
        run_id=run_id,
    )
    storage.write_model(storage_keys.quarantine(document_id), record)
    return record


def clear_quarantine(storage: DocumentStorage, document_id: str, stage: str) -> None:
    """A stage that now succeeds lifts its own verdict, and any verdict on an older source version."""
    record = storage.read_model_or_none(storage_keys.quarantine(document_id), QuarantineRecord)
    if record is None:
        return
    ref = storage.read_model_or_none(storage_keys.source_ref(document_id), SourceRef)
    outdated = ref is not None and record.registered_at is not None and record.registered_at != ref.arrived_at
    if record.stage == stage or outdated or stage == "parse_quality":
        storage.delete(storage_keys.quarantine(document_id))


def require(storage: DocumentStorage, key: str, model: type, what: str):
    record = storage.read_model_or_none(key, model)
    if record is None:
        raise DocumentError(f"{what} is missing ({storage.uri(key)}): materialize the upstream asset first", reason="upstream_missing")
    return record


def current_source(storage: DocumentStorage, document_id: str) -> SourceInfo:
    """The validated source of the version registered now; never an older version's record."""
    info = require(storage, storage_keys.source_info(document_id), SourceInfo, "the validated source PDF")
    ref = storage.read_model_or_none(storage_keys.source_ref(document_id), SourceRef)
    if ref is not None and info.source != ref:
        raise DocumentError(
            f"the stored source ({info.source.etag or info.sha256[:12]}, {info.source.arrived_at.isoformat()}) is not the "
            f"registered version ({ref.etag or 'new'}, {ref.arrived_at.isoformat()}): materialize source_pdf first",
            reason="upstream_missing",
        )
    return info


def require_version(storage: DocumentStorage, key: str, model: type, what: str, sha256: str):
    """An upstream record, only if it was made from the PDF with this sha256."""
    record = require(storage, key, model, what)
    if record.sha256 != sha256:
        raise DocumentError(
            f"{what} ({storage.uri(key)}) was made from another version of the PDF: materialize it again first",
            reason="upstream_missing",
        )
    return record


def the_document(context: AssetExecutionContext) -> str:
    """The one partition of this step; a multi-partition step is refused, so no document is misreported."""
    keys = list(context.partition_keys)
    if len(keys) != 1:
        raise Failure(
            description=(
                f"this step was given {len(keys)} documents; medkg-pdf runs one document per run so that each "
                "document's state is its own. Launch a backfill (one run per document) instead of a single "
                "multi-partition run."
            ),
            allow_retries=False,
        )
    return keys[0]


def fail_document(
    context: AssetExecutionContext, storage: DocumentStorage, stage: str, document_id: str, error: DocumentError
) -> Failure | RetryRequested:
    """Quarantine the document and say everything in the step's failure (what the UI shows), or retry it."""
    earlier = storage.read_model_or_none(storage_keys.quarantine(document_id), QuarantineRecord)
    if error.reason == "upstream_missing" and earlier is not None and earlier.stage != stage:
        # the first stage's record and reason stand: that is what a person needs to read
        error = DocumentError(f"skipped: {earlier.stage} failed: {earlier.message}", retryable=False, reason=earlier.reason)
        record = earlier
    else:
        record = quarantine(storage, document_id, stage, error, run_id=context.run_id)
    metadata: dict[str, Any] = {
        "document_id": document_id,
        "stage": stage,
        "reason": error.reason,
        "permanent": not error.retryable,
        "step_attempt": context.retry_number + 1,
        "failed_attempts": record.failed_attempts,
        "dead_letter": record.dead_letter,
    }
    if record.next_attempt_at is not None:
        metadata["next_attempt_at"] = record.next_attempt_at.isoformat()
    failure = Failure(description=f"{stage} failed for document {document_id}: {error}", metadata=metadata, allow_retries=False)
    if error.retryable and context.retry_number < MAX_STEP_RETRIES:
        delay = STEP_RETRY_DELAY_S * 2**context.retry_number
        context.log.warning(f"{stage} failed for document {document_id} (transient, retried in {delay:.0f} s): {error}")
        retry = RetryRequested(max_retries=MAX_STEP_RETRIES, seconds_to_wait=delay)
        retry.__cause__ = failure
        return retry
    context.log.error(f"{stage} failed for document {document_id}: {error}")
    return failure


def run_document(
    context: AssetExecutionContext,
    storage: DocumentStorage,
    stage: str,
    work: Callable[[str], dict[str, Any]],
) -> MaterializeResult:
    """Apply `work` to the step's document; `work` returns that document's metadata."""
    document_id = the_document(context)
    try:
        metadata = work(document_id)
    except DocumentError as error:
        raise fail_document(context, storage, stage, document_id, error) from None
    clear_quarantine(storage, document_id, stage)
    return MaterializeResult(metadata=metadata)
