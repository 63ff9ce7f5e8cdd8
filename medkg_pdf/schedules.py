"""`reconciliation_schedule`: every hour, registered documents whose chain never finished get a run.

A sensor tick can be lost (daemon down, instance restored, run deleted) and a run can fail on a
transient error after its retries ran out; this schedule is the safety net. It compares the
registered `documents` partitions with the status of the chain's last asset, `parse_quality`,
and with the quarantine records:

* a run in progress, or materialized and not quarantined: nothing to do;
* quarantined with a reason that is not retryable: nothing either (a broken PDF stays broken),
  unless the document was registered again (re-uploaded) after it was quarantined;
* never materialized, last attempt failed, or quarantined with a retryable reason (model server
  down, source unreadable): one run of the chain.

At most `max_runs_per_tick` runs a tick, oldest documents first, so an outage of thousands of
documents drains at a pace the run queue absorbs (a UI backfill is faster for a big gap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

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

from medkg_pdf import layout
from medkg_pdf.assets.common import QuarantineRecord
from medkg_pdf.jobs import DOCUMENT_CHAIN, document_chain_job
from medkg_pdf.partitions import documents
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import SourceRef

CHAIN_END = AssetKey("parse_quality")


@dataclass
class Reconciliation:
    to_run: list[str] = field(default_factory=list)
    missing: int = 0  # never materialized
    failed: int = 0  # last run failed, or the document is quarantined with a retryable reason
    in_progress: int = 0
    done: int = 0
    quarantined: dict[str, str] = field(default_factory=dict)  # document -> reason, not retried
    left_for_later: int = 0  # over the per-tick cap


def quarantine_records(storage: DocumentStorage) -> dict[str, QuarantineRecord]:
    """Every quarantined document (one listing, then only the quarantined records are read)."""
    records = {}
    for key in storage.list_keys("quarantine"):
        record = storage.read_model_or_none(key, QuarantineRecord)
        if record is not None:
            records[record.document_id] = record
    return records


def _arrived_after(storage: DocumentStorage, document_id: str, record: QuarantineRecord) -> bool:
    ref = storage.read_model_or_none(layout.source_ref(document_id), SourceRef)
    return ref is not None and ref.arrived_at > datetime.fromisoformat(record.at)


def reconcile(instance: DagsterInstance, storage: DocumentStorage, max_runs: int) -> Reconciliation:
    """Which registered documents need a run of the chain.

    Dagster's partition status alone is not enough: a multi-document step (a backfill run) reports
    a failed document in its metadata and in `quarantine/`, not as a failed partition, so the
    quarantine records count as well.
    """
    result = Reconciliation()
    registered = instance.get_dynamic_partitions(documents.name)
    if not registered:
        return result
    status = instance.get_status_by_partition(CHAIN_END, registered, documents) or {}
    quarantined = quarantine_records(storage)
    for document_id in registered:  # in registration order: the oldest waited longest
        state = status.get(document_id)
        record = quarantined.get(document_id)
        if state == AssetPartitionStatus.IN_PROGRESS:
            result.in_progress += 1
            continue
        if record is not None and not record.retryable:
            if not _arrived_after(storage, document_id, record):
                result.quarantined[document_id] = f"{record.stage}: {record.reason}"
                continue
            record = None  # a new version arrived after the verdict: it deserves its own run
        if record is None and state == AssetPartitionStatus.MATERIALIZED:
            result.done += 1
            continue
        if record is not None or state == AssetPartitionStatus.FAILED:
            result.failed += 1
        else:
            result.missing += 1
        if len(result.to_run) < max_runs:
            result.to_run.append(document_id)
        else:
            result.left_for_later += 1
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
            f"Runs the document chain for registered documents whose parse_quality is missing or failed "
            f"(not for non-retryable quarantine), at most {max_runs_per_tick} a tick."
        ),
    )
    def reconciliation_schedule(context: ScheduleEvaluationContext, storage: DocumentStorage):
        found = reconcile(context.instance, storage, max_runs_per_tick)
        summary = (
            f"{found.done} done, {found.in_progress} in progress, {found.missing} never materialized, "
            f"{found.failed} failed, {len(found.quarantined)} quarantined (not retried), "
            f"{len(found.to_run)} requested, {found.left_for_later} left for the next ticks"
        )
        context.log.info(summary)
        for document_id, reason in list(found.quarantined.items())[:20]:
            context.log.info(f"not retried: {document_id} is quarantined ({reason})")
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
