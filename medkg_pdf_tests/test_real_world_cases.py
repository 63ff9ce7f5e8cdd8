"""One generated PDF per class of real-world trouble, through the whole chain on the embedded engine.

`medkg_pdf.samples.case_pdfs` draws each class with its known text: a 2.5 x 4 inch pocket card, a
scanned blank back of a sheet (grain, specks, the front showing through), a text layer whose font
map is shifted (it renders right and extracts as nonsense), a dose table with a row-spanned cell,
and pages with a running head, a journal footer and "Page n of 3". Each test states what a reader
of the output must be able to rely on for its class; the module prints the per-class figures that
docs/quality.md quotes (word F1 and numeric recall of the body against the known text).
"""

from __future__ import annotations

import pytest
from dagster import DagsterInstance, materialize
from dagster_aws.s3 import S3Resource

from medkg_pdf import metrics, storage_keys
from medkg_pdf.defs.documents import document_assets
from medkg_pdf.quality_gates import gates_missed
from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf.resources.storage import LocalStorage
from medkg_pdf.samples import RUNNING_FOOT, RUNNING_HEAD, SPANNED_TABLE, case_pdfs, running_page_number
from medkg_pdf.schemas import BaselineParse, DocumentQuality, PageParses, PageStatus, StructuredDocument
from medkg_pdf_tests.support.chain import register_files, vllm_for
from medkg_pdf_tests.support.quality_fixtures import write_pdfs

CASES = case_pdfs()


@pytest.fixture(scope="module")
def chain(embedded_engine, tmp_path_factory):
    """Every case through the chain, one run each; what each run stored, by class."""
    tmp_path = tmp_path_factory.mktemp("cases")
    storage = LocalStorage(root=str(tmp_path / "data"))
    with DagsterInstance.ephemeral() as instance:
        ids = register_files(storage, instance, write_pdfs(tmp_path, {case.name: case.data for case in CASES.values()}))
        resources = {"storage": storage, "vllm": vllm_for(embedded_engine.url), "inbox_s3": S3Resource(region_name="us-east-1"),
                     "quality_targets": QualityTargets()}  # fmt: skip
        runs = {name: materialize(document_assets, instance=instance, resources=resources, partition_key=doc_id, raise_on_error=False)
                for name, doc_id in zip(CASES, ids)}  # fmt: skip
    stored = {}
    for (name, run), doc_id in zip(runs.items(), ids):
        stored[name] = {
            "success": run.success,
            "document": storage.read_model_or_none(storage_keys.structured_json(doc_id), StructuredDocument),
            "parses": storage.read_model_or_none(storage_keys.page_parses(doc_id), PageParses),
            "quality": storage.read_model_or_none(storage_keys.quality(doc_id), DocumentQuality),
            "baseline": storage.read_model_or_none(storage_keys.baseline(doc_id), BaselineParse),
            "markdown": storage.read_text(storage_keys.structured_markdown(doc_id)) if run.success else "",
        }
    print("\nper class (embedded engine, whole chain): word F1 / numeric recall of the body vs the known text")
    for name, case in CASES.items():
        document = stored[name]["document"]
        if document is None:
            print(f"  {name}: no document")
            continue
        truth = "\n".join(case.pages)
        body = "\n".join(document.page_text(page) for page in range(1, document.page_count + 1))
        recall, _ = metrics.numeric_recall(body, truth)
        print(f"  {name}: word F1 {metrics.word_f1(body, truth):.3f}, numeric recall {recall:.3f}")
    return stored


def test_a_pocket_card_reads_as_well_as_a_letter_page(chain):
    """Drawn to the engine's pixel budget (2000 px long side), not 150 DPI (375 x 600 px, unreadable)."""
    case = chain["small page"]
    assert case["success"]
    text = case["document"].page_text(1)
    assert metrics.word_f1(text, CASES["small page"].pages[0]) >= 0.9
    assert metrics.numeric_recall(text, CASES["small page"].pages[0])[0] == 1.0  # 5 mg, 2.0 to 3.0, every 4 weeks


def test_a_speckled_blank_scan_is_blank_and_its_document_ok(chain):
    case = chain["speckled blank scan"]
    assert case["success"]
    assert [page.status for page in case["parses"].pages] == [PageStatus.ok, PageStatus.blank, PageStatus.ok]
    assert case["document"].page_text(2) == ""


def test_a_garbled_text_layer_is_no_baseline_and_no_gate_failure(chain):
    """Page 1's layer reads 'NFUGPSNJO': judged garbled and left out; page 2 alone carries the score."""
    case = chain["garbled text layer"]
    assert case["success"]
    assert [page.verdict for page in case["baseline"].pages] == ["garbled", "usable"]
    assert case["quality"].pages_compared == 1
    assert gates_missed(case["quality"], QualityTargets()) == []
    assert "METFORMIN" in case["document"].page_text(1).upper()  # the parse itself reads the page right


def test_spanned_dose_table_values_stay_under_their_headers(chain):
    """The row-spanned 'Amoxicillin' cell (drawn centred across two rows) fills both rows it covers, so
    the child's dose stays beside its drug and under Dose, as an HTML rowspan is expanded."""
    case = chain["spanned dose table"]
    assert case["success"]
    [table] = [block for block in case["document"].blocks() if block.kind == "table"]
    expanded = [[cell if cell is not None else SPANNED_TABLE[r - 1][c] for c, cell in enumerate(row)] for r, row in enumerate(SPANNED_TABLE)]
    assert [[cell.strip() for cell in row] for row in table.rows] == expanded


def test_running_heads_feet_and_page_numbers_are_furniture_not_body(chain):
    case = chain["running heads and page numbers"]
    assert case["success"]
    document = case["document"]
    for page in range(1, 4):
        furniture = {block.text.strip() for block in document.blocks() if block.page == page and block.furniture}
        body = " ".join(block.text for block in document.blocks() if block.page == page and not block.furniture)
        assert RUNNING_HEAD in furniture
        assert any(RUNNING_FOOT in text or running_page_number(page, 3) in text for text in furniture)
        assert RUNNING_HEAD not in body and running_page_number(page, 3) not in body
    for furniture_text in (RUNNING_HEAD, RUNNING_FOOT, "Page 2 of 3"):
        assert furniture_text not in case["markdown"]
