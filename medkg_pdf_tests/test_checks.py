"""The asset checks of the document chain, each passing and failing on inputs built to make it.

Every test runs the real chain in a real Dagster instance against the VllmDouble, whose answers
come from `TextLayerModel`: the page's own text, or that text spoiled on purpose.
"""

import json

import pytest
from dagster import AssetCheckSeverity, AssetSelection

from medkg_pdf import storage_keys
from medkg_pdf.defs.documents import document_assets
from medkg_pdf.defs.regression.assets import accepted_baseline
from medkg_pdf.defs.documents import document_checks, source_pdf_is_valid, structured_document_schema_valid
from medkg_pdf.defs.documents.checks import judge_pages
from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf.schemas import PageParse, PageParses, PageStatus, SamplingParams, StructuredDocument
from medkg_pdf_tests.support import pdf_factory
from medkg_pdf_tests.support.chain import register_files, vllm_for
from medkg_pdf_tests.support.quality_fixtures import (
    MODEL,
    TextLayerModel,
    check_results,
    drop_digits,
    materialized,
    pdf_with_pages,
    resources,
    run,
    write_pdfs,
)
from medkg_pdf_tests.support.vllm_double import Faults, VllmDouble

LABEL = [
    "Amoxicillin capsules for oral use in adults and children over the age of twelve years",
    "Take one capsule by mouth with a full glass of water every eight hours with or without food",
    "Usual adult dose 500 mg three times daily for a course of 10 days unless told otherwise",
    "Do not stop taking this medicine early even if you feel better after the first few days",
    "Tell your doctor about any allergy to penicillin or to other antibiotics before starting",
]
PROGRESS_NOTE = [
    ["Progress note: patient afebrile, tolerating oral intake, ambulating in the corridor"],
    ["Plan: continue current antibiotics and review the culture results with the team tomorrow"],
]

CHAIN = {"source_pdf", "page_images", "vlm_page_parses", "structured_document", "baseline_parse", "parse_quality"}


def test_a_faithful_parse_passes_every_check_and_each_result_belongs_to_its_document(tmp_path, storage, instance):
    pdf = pdf_with_pages([LABEL, LABEL[::-1]])
    model = TextLayerModel().learn(pdf)
    (doc_id,) = register_files(storage, instance, write_pdfs(tmp_path, {"label.pdf": pdf}))
    with VllmDouble(model=MODEL, answer=model) as double:
        result = run(instance, resources(storage, vllm_for(double.url, model=MODEL)), partition_key=doc_id)
    assert result.success and materialized(result) == CHAIN
    checks = check_results(result)
    assert set(checks) == {
        "source_pdf_is_valid",
        "vlm_page_parses_failed_page_share",
        "structured_document_schema_valid",
        "structured_document_no_empty_text_pages",
        "parse_quality_match_score",
        "parse_quality_numeric_recall",
    }
    assert all(check.passed for check in checks.values())
    assert {check.partition for check in checks.values()} == {doc_id}  # a single-document run: per partition
    # measured values sit next to their targets
    match = checks["parse_quality_match_score"].metadata
    assert match["match_score"].value == 1.0 and match["match_score_target"].value == 0.95
    share = checks["vlm_page_parses_failed_page_share"].metadata
    assert share["failed_page_share"].value == 0.0 and share["failed_page_share_target"].value == 0.005
    assert model.unknown_images == 0


def test_a_model_that_drops_digits_fails_the_numeric_recall_gate_but_not_the_match_score(tmp_path, storage, instance):
    pdf = pdf_with_pages([LABEL])
    (doc_id,) = register_files(storage, instance, write_pdfs(tmp_path, {"label.pdf": pdf}))
    with VllmDouble(model=MODEL, answer=TextLayerModel(drop_digits).learn(pdf)) as double:
        result = run(instance, resources(storage, vllm_for(double.url, model=MODEL)), partition_key=doc_id)
    checks = check_results(result)
    numbers = checks["parse_quality_numeric_recall"]
    assert not numbers.passed and numbers.severity == AssetCheckSeverity.ERROR
    assert numbers.metadata["numeric_recall"].value == 0.0
    assert "missing 10, 500" in numbers.metadata["per_document"].value  # the lost numbers are named
    # two lost words out of ~80 keep the word-level match above its gate: only the number gate catches it
    assert checks["parse_quality_match_score"].passed
    assert checks["parse_quality_match_score"].metadata["match_score"].value >= 0.95
    assert not result.success  # a blocking check with ERROR fails the run


def test_a_failed_numeric_gate_blocks_what_depends_on_the_scores(tmp_path, storage, instance):
    """The gate is blocking: accepting the document as a regression baseline does not happen."""
    pdf = pdf_with_pages([LABEL])
    (doc_id,) = register_files(storage, instance, write_pdfs(tmp_path, {"label.pdf": pdf}))
    with VllmDouble(model=MODEL, answer=TextLayerModel(drop_digits).learn(pdf)) as double:
        result = run(
            instance,
            resources(storage, vllm_for(double.url, model=MODEL)),
            [*document_assets, accepted_baseline, *document_checks],
            partition_key=doc_id,
        )
    assert "parse_quality" in materialized(result) and "accepted_baseline" not in materialized(result)
    assert not storage.exists(storage_keys.accepted_baseline(doc_id))


def test_a_page_given_up_fails_its_document_and_nothing_downstream_of_it(tmp_path, storage, instance):
    """Two documents, one run each (as a backfill launches them); the first page sent gets three HTTP 500s.

    Over the failed-page budget, `vlm_page_parses` itself fails for that document: it is never
    recorded as parsed, never assembled or scored, and the other document is untouched.
    """
    first, second = pdf_with_pages(PROGRESS_NOTE), pdf_with_pages([LABEL])
    model = TextLayerModel().learn(first).learn(second)
    ids = register_files(storage, instance, write_pdfs(tmp_path, {"note.pdf": first, "label.pdf": second}))
    with VllmDouble(model=MODEL, answer=model, faults=Faults(script=["500", "500", "500"])) as double:
        vllm = vllm_for(double.url, model=MODEL, max_concurrency=1, max_attempts=3)  # one at a time: page 1 of note.pdf first
        note, label = (run(instance, resources(storage, vllm), partition_key=doc_id) for doc_id in ids)
    assert not note.success
    failure = next(e for e in note.all_events if e.is_step_failure)
    message = failure.event_specific_data.error.message
    assert "1 of 2 pages failed" in message and "http_error" in message
    assert materialized(note) == {"source_pdf", "baseline_parse", "page_images"}  # rendered, but not parsed
    assert not storage.exists(storage_keys.page_parses(ids[0])) and not storage.exists(storage_keys.structured_json(ids[0]))
    assert label.success and check_results(label)["vlm_page_parses_failed_page_share"].passed
    assert storage.exists(storage_keys.quality(ids[1]))


def test_the_page_budget_is_a_setting(tmp_path, storage, instance):
    """With a 60 % budget the same failed page (1 of 2) passes and the chain goes on."""
    first = pdf_with_pages(PROGRESS_NOTE)
    (doc_id,) = register_files(storage, instance, write_pdfs(tmp_path, {"note.pdf": first}))
    model = TextLayerModel().learn(first)
    with VllmDouble(model=MODEL, answer=model, faults=Faults(script=["500", "500", "500"])) as double:
        vllm = vllm_for(double.url, model=MODEL, max_concurrency=1, max_attempts=3)
        result = run(instance, resources(storage, vllm, quality_targets=QualityTargets(max_failed_page_share=0.6)), partition_key=doc_id)
    check = check_results(result)["vlm_page_parses_failed_page_share"]
    assert check.passed and check.metadata["failed_page_share"].value == 0.5
    document = storage.read_model(storage_keys.structured_json(doc_id), StructuredDocument)
    assert document.failed_pages == [1]  # the lost page is on record in the document itself


def test_a_text_page_that_comes_out_empty_fails_its_check(tmp_path, storage, instance):
    """The model answers page 2 with nothing but an HTML comment: status ok, yet no text survives."""
    pdf = pdf_with_pages(PROGRESS_NOTE)
    model = TextLayerModel(lambda text: "<!-- figure -->" if text.startswith("Plan") else text).learn(pdf)
    (doc_id,) = register_files(storage, instance, write_pdfs(tmp_path, {"note.pdf": pdf}))
    with VllmDouble(model=MODEL, answer=model) as double:
        result = run(instance, resources(storage, vllm_for(double.url, model=MODEL)), partition_key=doc_id)
    checks = check_results(result)
    assert checks["vlm_page_parses_failed_page_share"].passed  # every answer was "ok"...
    empty = checks["structured_document_no_empty_text_pages"]
    assert not empty.passed and empty.severity == AssetCheckSeverity.ERROR  # ...but page 2 was lost
    assert empty.metadata["empty_text_layer_pages"].value == 1 and "page 2" in empty.description
    assert checks["structured_document_schema_valid"].passed


def test_the_schema_check_revalidates_what_is_stored(tmp_path, storage, instance):
    """A structured.json changed after it was written (a hand edit, another writer) fails the check on re-run."""
    pdf = pdf_with_pages([LABEL])
    (doc_id,) = register_files(storage, instance, write_pdfs(tmp_path, {"label.pdf": pdf}))
    with VllmDouble(model=MODEL, answer=TextLayerModel().learn(pdf)) as double:
        defs = resources(storage, vllm_for(double.url, model=MODEL))
        assert run(instance, defs, partition_key=doc_id).success
        record = json.loads(storage.read_text(storage_keys.structured_json(doc_id)))
        record["page_count"] = "one"  # not an int
        record["reviewed_by"] = "someone"  # not a field of the model
        storage.write_text(storage_keys.structured_json(doc_id), json.dumps(record))
        only_the_check = AssetSelection.checks(structured_document_schema_valid)
        result = run(instance, defs, partition_key=doc_id, selection=only_the_check)
    check = check_results(result)["structured_document_schema_valid"]
    assert not check.passed and "2 schema errors" in check.description
    assert "page_count" in check.description and "reviewed_by" in check.description


def test_a_scanned_document_without_a_text_layer_warns_instead_of_passing(tmp_path, storage, instance):
    pdf = pdf_with_pages(PROGRESS_NOTE, scanned=True)
    model = TextLayerModel().learn(pdf, texts=[" ".join(lines) for lines in PROGRESS_NOTE])
    (doc_id,) = register_files(storage, instance, write_pdfs(tmp_path, {"scan.pdf": pdf}))
    with VllmDouble(model=MODEL, answer=model) as double:
        result = run(instance, resources(storage, vllm_for(double.url, model=MODEL)), partition_key=doc_id)
    checks = check_results(result)
    for name in ("parse_quality_match_score", "parse_quality_numeric_recall"):
        assert not checks[name].passed and checks[name].severity == AssetCheckSeverity.WARN
        assert "no baseline" in checks[name].description
    assert checks["structured_document_no_empty_text_pages"].passed  # no text layer: nothing to lose
    assert result.success  # WARN never blocks


def test_a_rejected_upload_fails_its_own_run_and_the_others_are_checked_as_usual(tmp_path, storage, instance):
    good = pdf_with_pages([LABEL])
    ids = register_files(
        storage, instance, write_pdfs(tmp_path, {"good.pdf": good, "portal.pdf": pdf_factory.html_renamed()})
    )
    with VllmDouble(model=MODEL, answer=TextLayerModel().learn(good)) as double:
        good_run, portal_run = (run(instance, resources(storage, vllm_for(double.url, model=MODEL)), partition_key=doc_id) for doc_id in ids)
    failure = next(e for e in portal_run.all_events if e.is_step_failure)
    assert failure.step_key == "source_pdf" and "HTML" in failure.event_specific_data.error.message
    assert failure.event_specific_data.user_failure_data.metadata["reason"].value == "not_pdf"
    assert materialized(portal_run) == set() and check_results(portal_run) == {}
    assert good_run.success and all(check.passed or check.severity == AssetCheckSeverity.WARN for check in check_results(good_run).values())
    assert storage.exists(storage_keys.quality(ids[0]))


def test_a_stored_pdf_that_no_longer_matches_its_record_fails_the_source_check(tmp_path, storage, instance):
    pdf = pdf_with_pages([LABEL])
    (doc_id,) = register_files(storage, instance, write_pdfs(tmp_path, {"label.pdf": pdf}))
    with VllmDouble(model=MODEL, answer=TextLayerModel().learn(pdf)) as double:
        defs = resources(storage, vllm_for(double.url, model=MODEL))
        assert run(instance, defs, partition_key=doc_id).success
        storage.write_bytes(storage_keys.source_pdf(doc_id), pdf[: len(pdf) // 2])  # bit rot, a bad copy
        result = run(instance, defs, partition_key=doc_id, selection=AssetSelection.checks(source_pdf_is_valid))
    check = check_results(result)["source_pdf_is_valid"]
    assert not check.passed and "sha256 differs" in check.description


@pytest.mark.parametrize(("failed", "verdict"), [(1, "pass"), (2, "fail")])
def test_the_page_budget_allows_one_lost_page_in_two_hundred(storage, failed, verdict):
    """"<= 0.5 %" is inclusive: a 200-page document may lose one page, not two."""
    doc_id = "long-guideline-0123456789"
    pages = [
        PageParse(
            document_id=doc_id, page_index=i, cache_key=f"k{i}", model=MODEL, prompt_version="v1",
            sampling=SamplingParams(), status=PageStatus.http_error if i < failed else PageStatus.ok,
        )
        for i in range(200)
    ]  # fmt: skip
    storage.write_model(
        storage_keys.page_parses(doc_id),
        PageParses(document_id=doc_id, sha256="0" * 64, model=MODEL, prompt_version="v1", pages=pages, model_calls=200, cached_pages=0),
    )
    finding = judge_pages(storage, doc_id, QualityTargets().max_failed_page_share)
    assert finding.verdict == verdict and finding.measured == failed / 200


def test_the_gates_can_be_set_per_environment():
    """A CPU-OCR environment may relax the number gate; production keeps 0.99 (docs/quality.md)."""
    from medkg_pdf.resources import resources_for

    assert resources_for({})["quality_targets"].min_numeric_recall == 0.99
    relaxed = resources_for({"MEDKG_GATE_MIN_NUMERIC_RECALL": "0.85", "MEDKG_SLO_WINDOW_HOURS": "6"})["quality_targets"]
    assert relaxed.min_numeric_recall == 0.85 and relaxed.slo().window.total_seconds() == 6 * 3600
