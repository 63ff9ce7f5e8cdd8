"""The daily quality report on a real run of three documents (one good, one that loses numbers, one rejected),
and its wiring: the daily schedule, the freshness policies, the definitions."""

import io
import json
from datetime import timedelta

import pandas as pd
from dagster import AssetKey, Definitions

from medkg_pdf import storage_keys
from medkg_pdf.defs.reporting.assets import HAVE_PYARROW, ReportPointer, quality_report
from medkg_pdf.defs.reporting.checks import quality_report_slos
from medkg_pdf.defs.freshness import freshness_policies
from medkg_pdf.defs.reporting.schedules import quality_report_schedule
from medkg_pdf_tests.support import pdf_factory
from medkg_pdf_tests.support.chain import register_files, vllm_for
from medkg_pdf_tests.support.quality_fixtures import (
    MODEL,
    TextLayerModel,
    check_results,
    drop_digits,
    pdf_with_pages,
    run_each,
    resources,
    run,
    write_pdfs,
)
from medkg_pdf_tests.support.vllm_double import VllmDouble

GOOD = ["Discharge summary", "Home on oral amoxicillin three times daily, review in clinic"]
NUMBERS = ["Dosing chart", "Vancomycin 15 mg/kg every 12 hours, trough before the 4th dose"]


def test_the_report_writes_tables_and_plots_and_shows_the_worst_documents_first(tmp_path, storage, instance):
    good, numbers = pdf_with_pages([GOOD]), pdf_with_pages([NUMBERS])
    model = TextLayerModel().learn(good).learn(numbers, texts=[drop_digits("\n".join(NUMBERS))])
    ids = register_files(
        storage, instance,
        write_pdfs(tmp_path, {"good.pdf": good, "numbers.pdf": numbers, "portal.pdf": pdf_factory.html_renamed()}),
    )  # fmt: skip
    good_id, numbers_id, rejected_id = ids
    with VllmDouble(model=MODEL, answer=model) as double:
        defs = resources(storage, vllm_for(double.url, model=MODEL))
        run_each(instance, defs, ids)  # fails its numeric gate, on purpose
        result = run(instance, defs, [quality_report, quality_report_slos])
    assert result.success

    pointer = storage.read_model(storage_keys.quality_report_latest(), ReportPointer)
    documents = pd.read_csv(io.BytesIO(storage.read_bytes(pointer.documents_csv)))
    assert sorted(documents["document_id"]) == sorted(ids)
    by_id = documents.set_index("document_id")
    assert by_id.loc[good_id, "status"] == "completed" and by_id.loc[good_id, "match_score"] == 1.0
    assert by_id.loc[numbers_id, "numeric_recall"] == 0.0
    assert by_id.loc[numbers_id, "status"] == "failed" and by_id.loc[numbers_id, "failure_reason"] == "quality_gate"
    assert by_id.loc[rejected_id, "status"] == "failed" and by_id.loc[rejected_id, "failure_reason"] == "not_pdf"
    assert by_id.loc[rejected_id, "failure_class"] == "permanent"  # never retried automatically
    assert by_id.loc[good_id, "structured_json"] == storage.uri(storage_keys.structured_json(good_id))
    for name in ("scores.png", "latency.png"):
        assert storage.read_bytes(storage_keys.quality_report(pointer.day, name)).startswith(b"\x89PNG\r\n\x1a\n")
    slo_record = json.loads(storage.read_text(pointer.slo_json))
    assert slo_record["completed"] == 1 and slo_record["failed"] == 2 and slo_record["latency_ok"]["p99"]  # a gate failure is an error
    pages = pd.read_csv(io.BytesIO(storage.read_bytes(storage_keys.quality_report(pointer.day, "page-status.csv"))))
    assert pages.set_index("status")["pages"].to_dict() == {"ok": 2}
    assert storage.exists(storage_keys.quality_report(pointer.day, "documents.parquet")) == HAVE_PYARROW

    metadata = result.asset_materializations_for_node("quality_report")[0].metadata
    report = metadata["report"].value
    assert "| latency p95 |" in report and "< 90 s" in report and "| error rate | 66.67% | < 2% | **missed** |" in report
    assert report.count("data:image/png;base64,") == 2  # both plots, embedded for the UI
    worst = report[report.index("**Worst documents**"):].splitlines()
    rows = [line for line in worst if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [numbers_id, rejected_id, good_id]  # failed (lowest score first), then the rest
    assert "failed at parse_quality: quality_gate (permanent)" in rows[0]
    assert f"[json]({storage.uri(storage_keys.structured_json(numbers_id))})" in rows[0]
    assert metadata["page_status"].value == {"ok": 2} and metadata["failed"].value == 2
    assert metadata["parquet"].value == ("written" if HAVE_PYARROW else "skipped: pyarrow is not installed")
    assert not check_results(result)["slo_error_rate"].passed  # 2 of 3 failed


def test_the_report_runs_daily_and_goes_stale_after_a_missed_day():
    assert quality_report_schedule.cron_schedule == "0 6 * * *" and quality_report_schedule.execution_timezone == "UTC"
    assert quality_report_schedule.job.name == "quality_report_job"
    policies = freshness_policies({})
    assert (policies.report.warn_window.to_timedelta(), policies.report.fail_window.to_timedelta()) == (
        timedelta(hours=25),
        timedelta(hours=30),
    )
    assert policies.documents.fail_window.to_timedelta() == timedelta(hours=48)
    configured = freshness_policies({"MEDKG_FRESHNESS_DOCUMENTS_HOURS": "2,6"})
    assert (configured.documents.warn_window.to_timedelta(), configured.documents.fail_window.to_timedelta()) == (
        timedelta(hours=2),
        timedelta(hours=6),
    )


def test_the_code_location_wires_checks_policies_jobs_and_the_schedule():
    from medkg_pdf.definitions import defs

    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    for key in ("source_pdf", "vlm_page_parses", "parse_quality", "quality_report"):
        assert graph.get(AssetKey(key)).freshness_policy is not None, key
    checks = {key.name for key in graph.asset_check_keys}
    assert {"vlm_page_parses_failed_page_share", "parse_quality_match_score", "slo_latency", "slo_error_rate"} <= checks
    assert {"accept_baseline", "regression_check", "quality_report_job"} <= {job.name for job in defs.jobs}
    assert defs.resolve_schedule_def("daily_quality_report").cron_schedule == "0 6 * * *"


def test_the_score_plot_names_each_document_lowest_first_and_marks_those_under_a_gate():
    from matplotlib.colors import to_rgba

    from medkg_pdf.report_plots import LABELLED_DOCUMENTS, score_figure

    cohort = pd.DataFrame({
        "document_id": ["a-1", "b-2", "c-3", "d-4"], "name": ["good.pdf", "numbers.pdf", "scan.pdf", "fair.pdf"],
        "match_score": [1.0, 0.97, None, 0.90], "numeric_recall": [1.0, 0.5, None, 1.0],
    })  # fmt: skip
    figure = score_figure(cohort, {"match_score": 0.95, "numeric_recall": 0.99})

    scores, recall = figure.axes[0], figure.axes[1]
    assert [label.get_text() for label in scores.get_yticklabels()] == ["fair.pdf", "numbers.pdf", "good.pdf"]
    red, blue = to_rgba("#c44e52"), to_rgba("#4c72b0")
    assert [tuple(color) for color in scores.collections[0].get_facecolors()] == [red, blue, blue]
    assert [tuple(color) for color in recall.collections[0].get_facecolors()] == [blue, red, blue]
    assert "3 documents with a text-layer baseline" in figure._suptitle.get_text() and "1 without one" in figure._suptitle.get_text()

    many = pd.DataFrame({"document_id": [f"d-{i}" for i in range(100)], "name": [f"doc{i:03d}.pdf" for i in range(100)],
                         "match_score": [i / 100 for i in range(100)], "numeric_recall": [1.0] * 100})  # fmt: skip
    crowded = score_figure(many, {"match_score": 0.95, "numeric_recall": 0.99})
    assert len(crowded.axes[0].get_yticklabels()) == LABELLED_DOCUMENTS
    assert crowded.axes[0].get_yticklabels()[0].get_text() == "doc000.pdf"  # the lowest kept
    assert "60 more score higher" in crowded._suptitle.get_text()
