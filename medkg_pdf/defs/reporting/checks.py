"""SLO checks on `quality_report`: latency percentiles, throughput while there is a backlog, error rate.

They judge the document table the report wrote (`reports/quality/latest.json` names it), at the
report's evaluation time, so the check, the report and the Prometheus export show one set of
numbers. Not blocking: an SLO miss is an operational signal, it makes no document's data wrong.
Latency and error rate fail with ERROR (the seeds page on-call for them); throughput with WARN,
since it also moves with how much work arrived.
"""

from collections.abc import Iterator

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    MetadataValue,
    multi_asset_check,
)

from medkg_pdf import storage_keys, slo
from medkg_pdf.defs.reporting.assets import ReportPointer, read_report_documents
from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf.resources.storage import DocumentStorage

REPORT = "quality_report"
SPECS = [
    AssetCheckSpec(
        "slo_latency",
        asset=REPORT,
        description="End-to-end latency (arrival to quality record) P50/P95/P99 of the window under 45/90/120 s.",
    ),
    AssetCheckSpec(
        "slo_throughput", asset=REPORT, description="At least 60 PDFs/h completed while documents were waiting."
    ),
    AssetCheckSpec("slo_error_rate", asset=REPORT, description="Under 2 % of the window's finished documents failed."),
]


def _common(report: slo.SloReport) -> dict:
    return {
        "window_start": report.window_start.isoformat(),
        "window_end": report.window_end.isoformat(),
        "documents": report.documents,
        "completed": report.completed,
        "failed": report.failed,
        "pending": report.pending,
    }


def latency_result(report: slo.SloReport) -> AssetCheckResult:
    metadata = _common(report)
    for name in slo.QUANTILES:
        if report.latency_s[name] is not None:
            metadata[f"latency_{name}_s"] = report.latency_s[name]
        metadata[f"latency_{name}_target_s"] = report.targets.latency_target(name)
    metadata["latency_samples"] = report.latency_samples
    metadata["overdue_pending"] = report.overdue_pending
    missed = [name for name, ok in report.latency_ok.items() if not ok]
    if report.latency_samples == 0:
        description = "no completed document in the window"
    elif missed:
        description = "latency SLO missed: " + ", ".join(
            f"{name} {report.latency_s[name]:.1f} s > {report.targets.latency_target(name):g} s" for name in missed
        )
    else:
        description = "latency " + ", ".join(f"{name} {report.latency_s[name]:.1f} s" for name in slo.QUANTILES) + " within targets"
    return AssetCheckResult(
        check_name="slo_latency", passed=not missed, severity=AssetCheckSeverity.ERROR, metadata=metadata, description=description
    )


def throughput_result(report: slo.SloReport) -> AssetCheckResult:
    metadata = {**_common(report), "busy_hours": report.busy_h, "throughput_target_per_h": report.targets.throughput_per_h}
    if report.throughput_per_h is not None:
        metadata["throughput_per_h"] = report.throughput_per_h
    if report.throughput_per_h is None:
        description = "no backlog in the window: nothing to measure"
    else:
        verb = "at least" if report.throughput_ok else "below"
        description = (
            f"{report.throughput_per_h:.1f} PDFs/h over {report.busy_h * 3600:.0f} s with documents waiting, {verb} "
            f"the {report.targets.throughput_per_h:g}/h target"
        )
    return AssetCheckResult(
        check_name="slo_throughput",
        passed=report.throughput_ok,
        severity=AssetCheckSeverity.WARN,
        metadata=metadata,
        description=description,
    )


def error_rate_result(report: slo.SloReport) -> AssetCheckResult:
    metadata = {**_common(report), "error_rate_target": report.targets.max_error_rate}
    if report.error_rate is not None:
        metadata["error_rate"] = report.error_rate
    if report.failures_by_reason:
        metadata["failures_by_reason"] = MetadataValue.json(report.failures_by_reason)
    if report.error_rate is None:
        description = "no finished document in the window"
    else:
        verb = "under" if report.error_rate_ok else "not under"
        description = (
            f"{report.failed} of {report.failed + report.completed} finished documents failed "
            f"({report.error_rate:.2%}), {verb} the {report.targets.max_error_rate:.0%} target"
        )
    return AssetCheckResult(
        check_name="slo_error_rate",
        passed=report.error_rate_ok,
        severity=AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=description,
    )


@multi_asset_check(specs=SPECS, name="quality_report_slos")
def quality_report_slos(
    context: AssetCheckExecutionContext, storage: DocumentStorage, quality_targets: QualityTargets
) -> Iterator[AssetCheckResult]:
    pointer = storage.read_model_or_none(storage_keys.quality_report_latest(), ReportPointer)
    if pointer is None:
        for spec in SPECS:
            yield AssetCheckResult(check_name=spec.name, passed=False, description="no quality report has been written yet")
        return
    report = slo.evaluate(read_report_documents(storage, pointer), pointer.evaluated_at, quality_targets.slo())
    yield latency_result(report)
    yield throughput_result(report)
    yield error_rate_result(report)
