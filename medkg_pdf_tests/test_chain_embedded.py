"""The real embedded OCR engine behind the OpenAI contract, end to end through Dagster."""

import pymupdf
import pytest
from dagster import materialize
from dagster_aws.s3 import S3Resource

from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf import storage_keys
from medkg_pdf.defs.documents import document_assets
from medkg_pdf.resources.vllm import EMBEDDED_MODEL
from medkg_pdf import fleet, slo
from medkg_pdf.defs.reporting.assets import provenance_png
from medkg_pdf.report_plots import provenance_figure
from medkg_pdf.schemas import PageImages, PageParses, StructuredDocument
from medkg_pdf_tests.support.chain import register_files, vllm_for


def discharge_letter_through_the_chain(tmp_path, storage, instance, engine) -> tuple[str, pymupdf.Rect]:
    """A one-page letter parsed by the embedded engine; returns its id and where the dose is printed."""
    doc = pymupdf.open()
    page = doc.new_page(width=612, height=792)
    page.insert_text((72, 100), "Discharge medication", fontsize=20)
    page.insert_text((300, 500), "Metoprolol 25 mg twice daily", fontsize=12)
    (dose_rect,) = page.search_for("Metoprolol 25 mg twice daily")
    path = tmp_path / "discharge.pdf"
    doc.save(path)
    (doc_id,) = register_files(storage, instance, [path])
    result = materialize(
        document_assets, partition_key=doc_id, instance=instance,
        resources={"storage": storage, "vllm": vllm_for(engine.url, model=EMBEDDED_MODEL), "inbox_s3": S3Resource(), "quality_targets": QualityTargets()},
    )  # fmt: skip
    assert result.success
    return doc_id, dose_rect


def test_ocr_boxes_become_block_provenance_in_pdf_points(tmp_path, storage, instance, embedded_engine):
    """A reader can jump from a dose in the JSON to its place on the page."""
    doc_id, dose_rect = discharge_letter_through_the_chain(tmp_path, storage, instance, embedded_engine)
    parses = storage.read_model(storage_keys.page_parses(doc_id), PageParses)
    assert parses.pages[0].profile == "embedded-ocr" and parses.pages[0].regions
    document = storage.read_model(storage_keys.structured_json(doc_id), StructuredDocument)
    dose = next(block for block in document.blocks() if "25 mg" in block.text)
    assert dose.bbox is not None and dose.page == 1
    x0, y0, x1, y1 = dose.bbox
    assert x0 == pytest.approx(dose_rect.x0, abs=6) and y0 == pytest.approx(dose_rect.y0, abs=6)
    assert x1 == pytest.approx(dose_rect.x1, abs=6) and y1 == pytest.approx(dose_rect.y1, abs=6)
    assert document.title == "Discharge medication"


def test_the_report_draws_a_page_with_each_block_boxed_where_the_model_found_it(tmp_path, storage, instance, embedded_engine):
    doc_id, _ = discharge_letter_through_the_chain(tmp_path, storage, instance, embedded_engine)
    document = storage.read_model(storage_keys.structured_json(doc_id), StructuredDocument)
    manifest = storage.read_model(storage_keys.page_images(doc_id), PageImages)
    image = manifest.pages[0]

    figure = provenance_figure(document, 1, storage.read_bytes(image.key), image.dpi, "discharge.pdf")

    boxes = [patch for patch in figure.axes[0].patches]
    boxed_blocks = [block for block in document.blocks() if block.bbox]
    assert len(boxes) == len(boxed_blocks) >= 2
    for patch, block in zip(boxes, boxed_blocks):  # drawn on the image at its DPI, from PDF points
        assert patch.get_x() == pytest.approx(block.bbox[0] * image.dpi / 72) and patch.get_y() == pytest.approx(block.bbox[1] * image.dpi / 72)
    cohort = slo.classify(fleet.load_documents(storage))
    assert provenance_png(storage, cohort).startswith(b"\x89PNG")  # what the daily report embeds
