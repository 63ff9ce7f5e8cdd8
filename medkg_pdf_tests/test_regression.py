"""Accept today's output as the baseline, change the prompt, and see which documents got worse.

The "model" answers with fixed markdown per page image (`TextLayerModel.learn(..., texts=...)`),
so a test can make version 2 of the prompt swap two doses in a table and nothing else.
"""

from dagster import AssetCheckSeverity

from medkg_pdf import storage_keys
from medkg_pdf.defs.documents import document_assets
from medkg_pdf.defs.regression.assets import accepted_baseline, regression_quality
from medkg_pdf.defs.documents import document_checks
from medkg_pdf.defs.regression.checks import regression_quality_no_document_worse
from medkg_pdf.schemas import AcceptedBaseline, RegressionQuality
from medkg_pdf_tests.support.chain import register_files, vllm_for
from medkg_pdf_tests.support.quality_fixtures import (
    MODEL,
    TextLayerModel,
    check_results,
    materialized,
    pdf_with_pages,
    run_each,
    resources,
    run,
    write_pdfs,
)
from medkg_pdf_tests.support.vllm_double import VllmDouble

DOSING_LINES = ["Dosing", "drug dose", "amoxicillin 500 mg", "gentamicin 5 mg/kg"]
DOSING_V1 = "# Dosing\n\n| drug | dose |\n|---|---|\n| amoxicillin | 500 mg |\n| gentamicin | 5 mg/kg |"
DOSING_V2 = "# Dosing\n\n| drug | dose |\n|---|---|\n| amoxicillin | 5 mg/kg |\n| gentamicin | 500 mg |"  # doses swapped
NOTE_LINES = ["Discharge note", "Home on day 3 with oral amoxicillin 500 mg three times daily for 7 days"]


def test_a_prompt_change_that_swaps_two_doses_in_a_table_is_flagged_worse(tmp_path, storage, instance):
    dosing, note = pdf_with_pages([DOSING_LINES]), pdf_with_pages([NOTE_LINES])
    ids = register_files(storage, instance, write_pdfs(tmp_path, {"dosing.pdf": dosing, "note.pdf": note}))
    version_1 = TextLayerModel().learn(dosing, texts=[DOSING_V1]).learn(note)
    version_2 = TextLayerModel().learn(dosing, texts=[DOSING_V2]).learn(note)

    with VllmDouble(model=MODEL, answer=version_1) as double:
        defs = resources(storage, vllm_for(double.url, model=MODEL, prompt_version="v1"))
        assert all(r.success for r in run_each(instance, defs, ids))  # good enough to pass every gate

        # a reviewer accepts both documents as they are now
        assert all(r.success for r in run_each(instance, defs, ids, [accepted_baseline]))
        for doc_id in ids:
            pointer = storage.read_model(storage_keys.accepted_baseline(doc_id), AcceptedBaseline)
            assert (pointer.model, pointer.prompt_version) == (MODEL, "v1")
            assert pointer.structured_key == f"baselines/{MODEL}/v1/{doc_id}.json"
            assert storage.read_bytes(pointer.structured_key) == storage.read_bytes(storage_keys.structured_json(doc_id))

        # prompt v2 re-parses every page (new cache key) and answers the table differently
        double.answer = version_2
        defs_v2 = resources(storage, vllm_for(double.url, model=MODEL, prompt_version="v2"))
        assert all(r.success for r in run_each(instance, defs_v2, ids))  # the text-layer gates cannot see the swap
        dosing_run, note_run = run_each(instance, defs_v2, ids, [*document_assets, regression_quality, *document_checks, regression_quality_no_document_worse])

    dosing_id, note_id = ids
    swapped = storage.read_model(storage_keys.regression(dosing_id), RegressionQuality)
    assert swapped.verdict == "worse"
    assert swapped.word_f1 == 1.0 and swapped.numeric_recall == 1.0  # same words, same numbers...
    assert swapped.table_cell_agreement == round(4 / 6, 4) and swapped.tables_compared == 1  # ...in the wrong cells
    assert (swapped.baseline_prompt_version, swapped.current_prompt_version) == ("v1", "v2")
    assert any("table cells agree 0.667" in reason for reason in swapped.reasons)
    assert storage.read_model(storage_keys.regression(note_id), RegressionQuality).verdict == "unchanged"

    check = check_results(dosing_run)["regression_quality_no_document_worse"]
    assert not check.passed and check.severity == AssetCheckSeverity.WARN and dosing_id in check.description
    assert check_results(note_run)["regression_quality_no_document_worse"].passed
    assert "regression_quality" in materialized(dosing_run) and "regression_quality" in materialized(note_run)


def test_a_document_without_an_accepted_baseline_is_reported_not_failed(tmp_path, storage, instance):
    note = pdf_with_pages([NOTE_LINES])
    (doc_id,) = register_files(storage, instance, write_pdfs(tmp_path, {"note.pdf": note}))
    with VllmDouble(model=MODEL, answer=TextLayerModel().learn(note)) as double:
        defs = resources(storage, vllm_for(double.url, model=MODEL))
        result = run(
            instance, defs, [*document_assets, regression_quality, regression_quality_no_document_worse], partition_key=doc_id
        )
    assert result.success
    assert storage.read_model(storage_keys.regression(doc_id), RegressionQuality).verdict == "no_baseline"
    check = check_results(result)["regression_quality_no_document_worse"]
    assert check.passed and check.metadata["documents_skipped"].value == 1
    assert not storage.exists(storage_keys.quarantine(doc_id))  # a missing baseline is no processing failure
