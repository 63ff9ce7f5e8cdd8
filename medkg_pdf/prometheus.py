"""The SLO figures in Prometheus text format, and their push to a Pushgateway.

The pipeline is a batch system: nothing stays up to be scraped, so the quality report builds a
fresh registry from the records in storage and PUTs it to the Pushgateway (which then replaces
the whole group). What the metrics mean:

- `medkg_pdfs_processed_total` / `medkg_pdfs_failed_total`: every document ever completed /
  now quarantined, counted from storage (use `increase()` over days, as the seeds' dashboards do)
- `medkg_pdf_processing_duration_seconds`: a histogram of the end-to-end latencies of the SLO
  window (the documents that arrived in the last 24 h), replaced on every push: read it with
  `histogram_quantile(0.95, medkg_pdf_processing_duration_seconds_bucket)`, *without* `rate()`
- `medkg_pdf_slo_*`: the window's measured values next to their targets, and whether each is met
- `medkg_pdf_report_timestamp_seconds`: when this was computed (alert when it is older than a day)
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, push_to_gateway

from medkg_pdf import slo

LATENCY_BUCKETS_S = (5, 10, 15, 30, 45, 60, 90, 120, 180, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)
SCORE_BUCKETS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0)


def registry_for(frame: pd.DataFrame, report: slo.SloReport, now: datetime) -> CollectorRegistry:
    """A registry holding the SLO figures of `report` and the all-time counts of `frame` (one row per document)."""
    registry = CollectorRegistry()
    everything = slo.classify(frame, report.targets) if len(frame) else frame.assign(status=pd.Series(dtype=str))
    counts = everything["status"].value_counts()

    processed = Counter("medkg_pdfs_processed", "Documents whose chain completed (all time, from storage).", registry=registry)
    processed.inc(int(counts.get("completed", 0)))
    failed = Counter("medkg_pdfs_failed", "Documents now in quarantine or under a quality gate (all time, from storage).", registry=registry)
    failed.inc(int(counts.get("failed", 0)))
    backlog = Gauge("medkg_pdf_backlog_documents", "Registered documents neither completed nor failed.", registry=registry)
    backlog.set(int(counts.get("pending", 0)))

    cohort = slo.in_window(everything, now, report.targets.window, report.targets) if len(everything) else everything
    duration = Histogram(
        "medkg_pdf_processing_duration_seconds",
        "End-to-end latency (arrival to quality record) of the documents of the SLO window; replaced on each push.",
        buckets=LATENCY_BUCKETS_S,
        registry=registry,
    )
    for value in cohort.loc[cohort["status"] == "completed", "latency_s"].dropna() if len(cohort) else []:
        duration.observe(float(value))
    scores = Histogram(
        "medkg_pdf_match_score",
        "Match score vs the text-layer baseline of the documents of the SLO window; replaced on each push.",
        buckets=SCORE_BUCKETS,
        registry=registry,
    )
    for value in cohort["match_score"].dropna() if len(cohort) else []:
        scores.observe(float(value))

    latency = Gauge("medkg_pdf_slo_latency_seconds", "Measured end-to-end latency percentile.", ["quantile"], registry=registry)
    latency_target = Gauge("medkg_pdf_slo_latency_target_seconds", "Latency SLO target.", ["quantile"], registry=registry)
    for name, q in slo.QUANTILES.items():
        if report.latency_s[name] is not None:
            latency.labels(quantile=str(q)).set(report.latency_s[name])
        latency_target.labels(quantile=str(q)).set(report.targets.latency_target(name))
    throughput = Gauge("medkg_pdf_slo_throughput_per_hour", "Documents completed per hour while there was a backlog.", registry=registry)
    if report.throughput_per_h is not None:
        throughput.set(report.throughput_per_h)
    Gauge("medkg_pdf_slo_throughput_target_per_hour", "Throughput SLO target.", registry=registry).set(
        report.targets.throughput_per_h
    )
    error_ratio = Gauge("medkg_pdf_slo_error_ratio", "failed / (completed + failed) in the SLO window.", registry=registry)
    if report.error_rate is not None:
        error_ratio.set(report.error_rate)
    Gauge("medkg_pdf_slo_error_ratio_target", "Error rate SLO target (exclusive).", registry=registry).set(
        report.targets.max_error_rate
    )
    met = Gauge("medkg_pdf_slo_met", "1 when the SLO is met in the window, else 0.", ["slo"], registry=registry)
    for name, ok in report.latency_ok.items():
        met.labels(slo=f"latency_{name}").set(int(ok))
    met.labels(slo="throughput").set(int(report.throughput_ok))
    met.labels(slo="error_rate").set(int(report.error_rate_ok))
    window = Gauge("medkg_pdf_slo_window_documents", "Documents of the SLO window by status.", ["status"], registry=registry)
    for status, value in (("completed", report.completed), ("failed", report.failed), ("pending", report.pending)):
        window.labels(status=status).set(value)
    Gauge("medkg_pdf_slo_window_seconds", "Length of the SLO window.", registry=registry).set(
        report.targets.window.total_seconds()
    )
    Gauge("medkg_pdf_report_timestamp_seconds", "When these figures were computed (unix time).", registry=registry).set(
        now.timestamp()
    )
    return registry


def exposition(registry: CollectorRegistry) -> str:
    """The registry in the Prometheus text exposition format."""
    return generate_latest(registry).decode("utf-8")


def push(registry: CollectorRegistry, gateway_url: str, job: str, grouping_key: dict[str, str] | None = None, timeout_s: float = 10.0) -> None:
    """PUT the registry to the Pushgateway group `job` (and `grouping_key`), replacing what was there."""
    push_to_gateway(gateway_url, job=job, registry=registry, grouping_key=grouping_key or {}, timeout=timeout_s)
