"""`reconciliation_schedule`: every hour, registered documents whose chain never finished get a run.

A sensor tick can be lost (daemon down, instance restored, run deleted) and a run can fail on a
transient error after its step retries ran out; this schedule is the safety net. It compares the
registered `documents` partitions with the status of the chain's last asset, `parse_quality`,
and with the quarantine records:

* a run in progress, or materialized and not quarantined: nothing to do;
* a permanent failure (invalid, encrypted, non-PDF, context overflow, the same bad answer twice):
  never again for that source version; a re-upload (new registration) gets its own run;
* a transient failure: again once its `next_attempt_at` has come (the backoff doubles with every
  failed run), until it becomes a dead letter after `MAX_FAILED_ATTEMPTS` attempts;
* never materialized, or a failed run that left no record (its process died): one run.

Due documents go first by the time they became due (never-run documents by registration), at most
`max_runs_per_tick` a tick, so a pile of old failures never starves the new ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from dagster import (
    AssetKey,
    AssetPartitionStatus,
    DagsterInstance,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from medkg_pdf import storage_keys
from medkg_pdf.defs.documents.jobs import DOCUMENT_CHAIN, document_chain_job
from medkg_pdf.defs.partitions import documents
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import QuarantineRecord, SourceRef, utc_now

CHAIN_END = AssetKey("parse_quality")


@dataclass
class Reconciliation:
    to_run: list[str] = field(default_factory=list)
    missing: int = 0  # never materialized
    failed: int = 0  # due: a transient failure whose next attempt has come, or a failed run without a record
    waiting: int = 0  # transient failures whose next attempt is still ahead
    in_progress: int = 0
    done: int = 0
    quarantined: dict[str, str] = field(default_factory=dict)  # document -> reason: permanent, not retried
    dead_letters: dict[str, str] = field(default_factory=dict)  # document -> reason: out of automatic attempts
    left_for_later: int = 0  # over the per-tick cap


def quarantine_records(storage: DocumentStorage) -> dict[str, QuarantineRecord]:
    """Every quarantined document (one listing, then only the quarantined records are read)."""
    records = {}
    for key in storage.list_keys(storage_keys.QUARANTINE_PREFIX):
        record = storage.read_model_or_none(key, QuarantineRecord)
        if record is not None:
            records[record.document_id] = record
    return records


def _outdated(storage: DocumentStorage, document_id: str, record: QuarantineRecord) -> bool:
    """The verdict was on an older source version: the registered one has not been tried yet."""
    ref = storage.read_model_or_none(storage_keys.source_ref(document_id), SourceRef)
    if ref is None:
        return False
    if record.registered_at is not None:
        return ref.arrived_at != record.registered_at
    return ref.arrived_at > datetime.fromisoformat(record.at)


def reconcile(instance: DagsterInstance, storage: DocumentStorage, max_runs: int, now: datetime | None = None) -> Reconciliation:
    """Which registered documents need a run of the chain now, most overdue first."""
    now = now or utc_now()
    result = Reconciliation()
    registered = instance.get_dynamic_partitions(documents.name)
    if not registered:
        return result
    status = instance.get_status_by_partition(CHAIN_END, registered, documents) or {}
    quarantined = quarantine_records(storage)
    due: list[tuple[datetime, int, str]] = []
    never = datetime.min.replace(tzinfo=timezone.utc)
    for order, document_id in enumerate(registered):
        state = status.get(document_id)
        record = quarantined.get(document_id)
        if state == AssetPartitionStatus.IN_PROGRESS:
            result.in_progress += 1
            continue
        if record is not None and _outdated(storage, document_id, record):
            record = None  # a new version arrived after the verdict: it deserves its own run
        if record is not None and record.dead_letter:
            result.dead_letters[document_id] = f"{record.stage}: {record.reason} after {record.failed_attempts} attempts"
            continue
        if record is not None and not record.retryable:
            result.quarantined[document_id] = f"{record.stage}: {record.reason}"
            continue
        if record is None and state == AssetPartitionStatus.MATERIALIZED:
            result.done += 1
            continue
        if record is not None:
            if record.next_attempt_at is not None and record.next_attempt_at > now:
                result.waiting += 1
                continue
            result.failed += 1
            due.append((record.next_attempt_at or never, order, document_id))
        else:
            if state == AssetPartitionStatus.FAILED:
                result.failed += 1
            else:
                result.missing += 1
            due.append((never, order, document_id))
    due.sort()
    result.to_run = [document_id for _, _, document_id in due[:max_runs]]
    result.left_for_later = max(0, len(due) - max_runs)
    return result


def build_reconciliation_schedule(
    *,
    cron_schedule: str = "17 * * * *",
    max_runs_per_tick: int = 100,
    default_status: DefaultScheduleStatus = DefaultScheduleStatus.STOPPED,
) -> ScheduleDefinition:
    """Hourly at :17 (off the top of the hour, when other jobs pile up); stopped until turned on."""

    @schedule(
        name="reconciliation_schedule",
        cron_schedule=cron_schedule,
        execution_timezone="UTC",
        job=document_chain_job,
        default_status=default_status,
        description=(
            f"Runs the document chain for registered documents whose parse_quality is missing, or that failed "
            f"transiently and are due again (never for permanent failures or dead letters), at most "
            f"{max_runs_per_tick} a tick, most overdue first."
        ),
    )
    def reconciliation_schedule(context: ScheduleEvaluationContext, storage: DocumentStorage):
        found = reconcile(context.instance, storage, max_runs_per_tick, now=context.scheduled_execution_time)
        summary = (
            f"{found.done} done, {found.in_progress} in progress, {found.missing} never materialized, "
            f"{found.failed} failed and due, {found.waiting} waiting for their next attempt, "
            f"{len(found.quarantined)} failed permanently, {len(found.dead_letters)} dead letters (not retried), "
            f"{len(found.to_run)} requested, {found.left_for_later} left for the next ticks"
        )
        context.log.info(summary)
        for document_id, reason in list(found.quarantined.items())[:20]:
            context.log.info(f"not retried: {document_id} failed permanently ({reason})")
        for document_id, reason in list(found.dead_letters.items())[:20]:
            context.log.warning(f"dead letter, not retried: {document_id} ({reason}); re-run it by hand once fixed")
        if not found.to_run:
            return SkipReason(summary)
        tick = context.scheduled_execution_time.strftime("%Y%m%dT%H%M") if context.scheduled_execution_time else "now"
        return [
            RunRequest(
                partition_key=document_id,
                run_key=f"reconcile:{document_id}:{tick}",
                asset_selection=DOCUMENT_CHAIN,
                tags={"medkg/trigger": "reconcile"},
            )
            for document_id in found.to_run
        ]

    return reconciliation_schedule


reconciliation_schedule = build_reconciliation_schedule()
