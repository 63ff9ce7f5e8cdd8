"""`run_death_sensor`: a run whose process died (OOM kill, eviction, node loss) leaves its document
failed with that reason, so the reconciliation schedule retries it.

When a run worker dies, no step gets to write the document's quarantine record. Dagster notices
the death and marks the run failed: the code server that started the run worker (DefaultRunLauncher)
logs "Run execution process for <run> was terminated by signal 9 (SIGKILL)" as an engine event,
and run monitoring (`run_monitoring: enabled`, K8sRunLauncher) fails the run with the Job's pod
status, e.g. "Terminated with exit code 137: OOMKilled". This sensor reads those words and writes
the record: reason `oom_killed` when the process was SIGKILLed (exit code 137, OOMKilled: what the
kernel's and the kubelet's OOM killers do), `run_process_died` otherwise. A run that failed in a
step is left alone: the step wrote its own, more precise record. The CLI's in-process runs are
handled by `medkg_pdf.cli.fail_orphaned_runs` (reason `process_died`).
"""

from __future__ import annotations

import re

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from medkg_pdf import storage_keys
from medkg_pdf.defs.document_steps import quarantine
from medkg_pdf.engine.process import process_alive
from medkg_pdf.errors import DocumentError
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import QuarantineRecord

# what the launchers write when the kernel or the kubelet killed the process (SIGKILL = exit 128 + 9)
_KILLED = re.compile(r"OOMKilled|exit code 137|signal 9\b|SIGKILL", re.IGNORECASE)


def death_of(instance: DagsterInstance, run: DagsterRun) -> DocumentError | None:
    """Why the run's process died, from its event log; None when a step failed (the step said why)."""
    records = instance.get_records_for_run(
        run.run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.ENGINE_EVENT, DagsterEventType.RUN_FAILURE}
    ).records
    said: list[str] = []
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.STEP_FAILURE:
            return None
        message = record.event_log_entry.message or event.message or ""
        if event.event_type == DagsterEventType.RUN_FAILURE or _KILLED.search(message) or "exit" in message.lower():
            said.append(message.strip())
    told = next((m for m in said if _KILLED.search(m)), None)
    if told is not None:
        return DocumentError(
            f"the run's process was killed before the run ended (SIGKILL / exit code 137), most likely for memory: "
            f"{told[:400]}; pages stored before are reused by the next run",
            retryable=True,
            reason="oom_killed",
        )
    detail = next((m for m in said if m), "no step reported a failure")
    return DocumentError(
        f"the run's process died before the run ended: {detail[:400]}; pages stored before are reused by the next run",
        retryable=True,
        reason="run_process_died",
    )


def document_of(run: DagsterRun) -> str | None:
    """The document a run is for: its partition tag, or a backfill run's one-document range (multi_run(1))."""
    start = run.tags.get("dagster/asset_partition_range_start")
    if start is not None and start != run.tags.get("dagster/asset_partition_range_end"):
        return None
    return run.tags.get("dagster/partition") or start


def quarantine_dead_run(
    instance: DagsterInstance, storage: DocumentStorage, run: DagsterRun, error: DocumentError | None = None
) -> QuarantineRecord | None:
    """Write the quarantine record of a document whose run died (why: `error`, else read from its event log);
    nothing for runs that failed in a step. Once per run, whichever sensor or command sees it first."""
    document_id = document_of(run)
    if not document_id:
        return None
    error = error or death_of(instance, run)
    if error is None:
        return None
    earlier = storage.read_model_or_none(storage_keys.quarantine(document_id), QuarantineRecord)
    if earlier is not None and earlier.run_id == run.run_id:
        return earlier  # recorded already (a sensor tick evaluated twice)
    return quarantine(storage, document_id, "run", error, run_id=run.run_id)


@run_failure_sensor(
    name="run_death_sensor",
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="A document whose run's process died (OOM kill, eviction) is quarantined as transient with why, "
    "so the reconciliation schedule runs it again.",
)
def run_death_sensor(context: RunFailureSensorContext, storage: DocumentStorage):
    record = quarantine_dead_run(context.instance, storage, context.dagster_run)
    if record is None:
        return SkipReason(f"run {context.dagster_run.run_id} failed in a step or has no document")
    context.log.info(f"document {record.document_id}: {record.reason}: {record.message}")


def run_worker_pid(instance: DagsterInstance, run: DagsterRun) -> int | None:
    """The pid of the run's worker process, from the code server's "Started process for run" engine event."""
    records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ENGINE_EVENT).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.event_specific_data if event is not None else None
        pid = getattr(data, "metadata", {}).get("pid") if data is not None else None
        if pid is not None and str(pid.value).isdigit():
            return int(pid.value)
    return None


def fail_dead_local_runs(instance: DagsterInstance, storage: DocumentStorage) -> list[str]:
    """Fail the runs started on this machine whose worker process is gone, and quarantine their documents.

    The DefaultRunLauncher starts run workers as children of the daemon's code server, and it is that
    code server which reports a dead worker; when the daemon's whole process group dies (killed,
    host restart of the daemon), nobody is left to report it, and Dagster's run monitoring cannot
    check a local worker (`supports_check_run_worker_health` is False): the runs would stay
    "started" for ever, holding their run-queue and `vllm` pool slots. A run with no recorded pid
    yet is left to run monitoring's start timeout. Only for the local launcher: pids of other
    machines (Kubernetes pods) mean nothing here, and run monitoring checks those itself.
    """
    from dagster import RunsFilter
    from dagster._core.launcher import DefaultRunLauncher

    if not isinstance(instance.run_launcher, DefaultRunLauncher):
        return []
    failed = []
    for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING])):
        pid = run_worker_pid(instance, run)
        if pid is None or process_alive(pid):
            continue
        fail_dead_run(instance, storage, run, pid)
        failed.append(run.run_id)
    return failed


def fail_dead_run(instance: DagsterInstance, storage: DocumentStorage, run: DagsterRun, pid: int | None) -> None:
    """Fail a run whose process is gone (a failure with no failed step: run retries relaunch it) and record why."""
    if run.tags.get("medkg/trigger") == "cli":  # run in-process by a `medkg-pdf` command
        error = DocumentError(
            f"the medkg-pdf process running it (pid {pid or 'unknown'}) died before the run ended: killed, "
            "for example for memory (see `dmesg` for the OOM killer); pages stored before are reused by the next run",
            retryable=True,
            reason="process_died",
        )
    else:
        error = DocumentError(
            f"the run's worker process (pid {pid or 'unknown'}) died before the run ended, and so did the code server "
            "that started it (the daemon was killed or restarted); pages stored before are reused by the next run",
            retryable=True,
            reason="run_process_died",
        )
    instance.report_run_failed(run, message=str(error))
    quarantine_dead_run(instance, storage, run, error)


@sensor(
    name="dead_run_worker_sensor",
    minimum_interval_seconds=10,
    default_status=DefaultSensorStatus.RUNNING,
    description="A run whose local worker process is gone (its daemon and code server were killed with it) is "
    "failed, never left in progress, so run retries relaunch it and its pool slots are freed.",
)
def dead_run_worker_sensor(context: SensorEvaluationContext, storage: DocumentStorage):
    failed = fail_dead_local_runs(context.instance, storage)
    if not failed:
        return SkipReason("every started run's worker is alive")
    context.log.info(f"failed {len(failed)} runs whose worker process had died: {', '.join(failed)}")
    return SkipReason(f"failed {len(failed)} runs whose worker process had died")
