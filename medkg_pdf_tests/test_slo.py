"""The SLO computation (`medkg_pdf.slo`) on hand-made timelines, then the SLO checks on real runs.

The targets are settings, so a run against a slow server can break the latency SLO with
second-sized targets instead of waiting out the real 45 / 90 / 120 s.
"""

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from dagster import AssetCheckSeverity, AssetSelection

from medkg_pdf import slo
from medkg_pdf.defs.reporting.assets import quality_report
from medkg_pdf.defs.reporting.checks import quality_report_slos
from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf_tests.support import pdf_factory
from medkg_pdf_tests.support.chain import register_files, vllm_for
from medkg_pdf_tests.support.quality_fixtures import (
    MODEL,
    TextLayerModel,
    check_results,
    pdf_with_pages,
    run_each,
    resources,
    run,
    write_pdfs,
)
from medkg_pdf_tests.support.vllm_double import Faults, VllmDouble

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


def timeline(*rows: tuple[str, timedelta, float | None, float | None]) -> pd.DataFrame:
    """(document, arrived this long before NOW, completed after s, failed after s)."""
    records = []
    for name, ago, completed_s, failed_s in rows:
        arrived = NOW - ago
        records.append(
            {
                "document_id": name,
                "arrived_at": arrived,
                "completed_at": arrived + timedelta(seconds=completed_s) if completed_s is not None else None,
                "failed_at": arrived + timedelta(seconds=failed_s) if failed_s is not None else None,
                "failure_reason": "pages_failed" if failed_s is not None else None,
            }
        )
    return pd.DataFrame(records)


def test_percentiles_are_nearest_rank():
    values = list(range(1, 101))
    assert [slo.nearest_rank(values, q) for q in (0.5, 0.95, 0.99)] == [50, 95, 99]
    assert slo.nearest_rank([30, 100], 0.5) == 30  # a real sample, never an interpolation
    assert slo.nearest_rank([], 0.5) is None


def test_busy_time_is_the_union_of_the_waiting_intervals():
    t0 = pd.Timestamp(NOW)
    starts = pd.Series([t0, t0 + pd.Timedelta(seconds=5), t0 + pd.Timedelta(seconds=20)])
    ends = pd.Series([t0 + pd.Timedelta(seconds=10), t0 + pd.Timedelta(seconds=15), t0 + pd.Timedelta(seconds=30)])
    assert slo.busy_hours(starts, ends) * 3600 == pytest.approx(25)  # [0,15) and [20,30)


def test_a_day_of_documents_against_the_targets():
    frame = timeline(
        ("fast", timedelta(hours=2), 30, None),
        ("slow", timedelta(hours=1), 100, None),
        ("failed", timedelta(minutes=30), None, 10),
        ("stuck", timedelta(minutes=10), None, None),  # pending for 600 s: already over P99's 120 s
        ("young", timedelta(seconds=5), None, None),  # pending for 5 s: not judged yet
        ("backfilled", timedelta(days=3), 3 * 86400 - 3600, None),  # an old document re-run an hour ago
    )
    report = slo.evaluate(frame, NOW, slo.SloTargets())
    assert (report.documents, report.completed, report.failed, report.pending) == (5, 2, 1, 2)
    # latency sample: 30, 100 and the stuck document's 600 s; the backfilled one is outside the window
    assert report.latency_samples == 3 and report.overdue_pending == 1
    assert report.latency_s == {"p50": 100, "p95": 600, "p99": 600}
    assert report.latency_ok == {"p50": False, "p95": False, "p99": False}
    assert report.error_rate == pytest.approx(1 / 3) and not report.error_rate_ok
    assert report.failures_by_reason == {"pages_failed": 1}
    # busy: 30 + 100 + 10 + 600 s (the young document waits inside the stuck one's 600 s); 2 completed
    assert report.busy_h * 3600 == pytest.approx(740)
    assert report.throughput_per_h == pytest.approx(2 / (740 / 3600)) and not report.throughput_ok


def test_a_document_that_failed_and_then_succeeded_counts_as_completed():
    frame = timeline(("retried", timedelta(hours=1), 50, 10))  # quarantined at +10 s, completed at +50 s
    report = slo.evaluate(frame, NOW)
    assert (report.completed, report.failed, report.error_rate) == (1, 0, 0.0)
    assert report.latency_s["p50"] == 50


def test_a_re_uploaded_document_is_in_flight_again_until_its_new_version_completes():
    frame = timeline(("label", timedelta(minutes=5), 30, None), ("guide", timedelta(minutes=4), None, 20))
    frame.loc[:, "arrived_at"] = NOW - timedelta(minutes=1)  # both re-uploaded a minute ago; their records are older

    report = slo.evaluate(frame, NOW)

    assert (report.completed, report.failed, report.pending) == (0, 0, 2)  # the backlog shows, nothing from the old versions
    assert report.latency_samples == 0  # and no negative latency slips into the sample
    assert (slo.classify(frame)["latency_s"].dropna() >= 0).all()


def test_a_document_under_a_quality_gate_counts_as_an_error():
    frame = timeline(*[(f"ok-{i}", timedelta(hours=2), 30, None) for i in range(8)], ("lost-numbers", timedelta(hours=1), 40, None),
                     ("scanned", timedelta(hours=1), 35, None))  # fmt: skip
    frame["match_score"] = [1.0] * 8 + [0.97, None]
    frame["numeric_recall"] = [1.0] * 8 + [0.80, None]  # a dose lost; the scan has no baseline to judge

    judged = slo.evaluate(frame, NOW, slo.SloTargets(min_match_score=0.95, min_numeric_recall=0.99))

    assert (judged.completed, judged.failed) == (9, 1) and judged.error_rate == pytest.approx(0.1)
    assert judged.failures_by_reason == {"quality_gate": 1}
    assert slo.evaluate(frame, NOW).failed == 0  # without gates it is not judged here


def test_an_empty_window_meets_every_slo_with_nothing_measured():
    report = slo.evaluate(timeline(), NOW)
    assert report.documents == 0 and report.throughput_per_h is None and report.error_rate is None
    assert all(report.latency_ok.values()) and report.throughput_ok and report.error_rate_ok


def test_latency_per_hour_buckets_by_completion():
    frame = timeline(("a", timedelta(hours=3), 10, None), ("b", timedelta(hours=3), 20, None), ("c", timedelta(hours=1), 40, None))
    buckets = slo.latency_over_time(frame, NOW, timedelta(hours=24))
    assert buckets["count"].tolist() == [2, 1]
    assert buckets["p50"].tolist() == [10, 40] and buckets["p99"].tolist() == [20, 40]


def report_and_slos(instance, defs, **targets):
    """Build the quality report (default targets), then judge it with `targets` (a checks-only run)."""
    first = run(instance, defs, [quality_report, quality_report_slos])
    assert first.success
    strict = {**defs, "quality_targets": QualityTargets(**targets)}
    again = run(instance, strict, [quality_report, quality_report_slos], selection=AssetSelection.checks(quality_report_slos))
    return check_results(first), check_results(again)


def test_a_slow_model_server_breaks_the_latency_slo(tmp_path, storage, instance):
    pdfs = {f"note-{i}.pdf": pdf_with_pages([[f"Ward round note {i}: patient stable overnight"]]) for i in range(2)}
    model = TextLayerModel()
    for data in pdfs.values():
        model.learn(data)
    ids = register_files(storage, instance, write_pdfs(tmp_path, pdfs))
    with VllmDouble(model=MODEL, answer=model, faults=Faults(latency_s=1.0)) as double:  # every page takes >= 1 s
        vllm = vllm_for(double.url, model=MODEL, max_concurrency=1)
        assert all(r.success for r in run_each(instance, resources(storage, vllm), ids))
    defs = resources(storage, vllm)
    at_defaults, strict = report_and_slos(
        instance, defs, latency_p50_s=0.5, latency_p95_s=0.6, latency_p99_s=0.7, throughput_per_h=1e7
    )
    assert at_defaults["slo_latency"].passed  # ~2 s end to end is well within 45 / 90 / 120 s
    latency = strict["slo_latency"]
    assert not latency.passed and latency.severity == AssetCheckSeverity.ERROR
    assert latency.metadata["latency_p50_s"].value >= 1.0 and latency.metadata["latency_p50_target_s"].value == 0.5
    assert "p99" in latency.description and "> 0.7 s" in latency.description
    throughput = strict["slo_throughput"]
    assert not throughput.passed and throughput.severity == AssetCheckSeverity.WARN
    assert throughput.metadata["throughput_per_h"].value < 1e7


def test_a_rejected_document_breaks_the_error_rate_slo(tmp_path, storage, instance):
    good = pdf_with_pages([["Discharge summary: home on oral antibiotics"]])
    ids = register_files(storage, instance, write_pdfs(tmp_path, {"good.pdf": good, "bad.pdf": pdf_factory.html_renamed()}))
    with VllmDouble(model=MODEL, answer=TextLayerModel().learn(good)) as double:
        defs = resources(storage, vllm_for(double.url, model=MODEL))
        run_each(instance, defs, ids)
        result = run(instance, defs, [quality_report, quality_report_slos])
    errors = check_results(result)["slo_error_rate"]
    assert not errors.passed and errors.severity == AssetCheckSeverity.ERROR
    assert errors.metadata["error_rate"].value == 0.5 and errors.metadata["error_rate_target"].value == 0.02
    assert errors.metadata["failures_by_reason"].value == {"not_pdf": 1}
    assert "1 of 2 finished documents failed" in errors.description
    assert check_results(result)["slo_latency"].passed


def test_slo_checks_fail_clearly_before_any_report_exists(storage, instance):
    result = run(
        instance, resources(storage, vllm_for("http://127.0.0.1:9")), [quality_report, quality_report_slos],
        selection=AssetSelection.checks(quality_report_slos),
    )  # fmt: skip
    assert {c.description for c in check_results(result).values()} == {"no quality report has been written yet"}
