"""Exports other tools read: Docling's `DoclingDocument` and olmOCR's Dolma JSONL, from a real chain run.

The CLI runs the whole chain once against the test server, answering every page with a heading, a
paragraph, a list and a table (plus the page image's hash, so each page's text is its own); the
files it writes are then loaded back with docling-core's own model and read as JSON lines.
"""

import json
import os
import subprocess
import sys

import pytest

from medkg_pdf.exporters import docling_document, dolma_record
from medkg_pdf.schemas import Block, Section, StructuredDocument
from medkg_pdf_tests.support import pdf_factory
from medkg_pdf_tests.support.chain import register_files, run_chain, vllm_for
from medkg_pdf_tests.support.vllm_double import VllmDouble, default_answer

docling_types = pytest.importorskip("docling_core.types.doc", reason="docling-core is the 'docling' extra")

MODEL = "medkg-embedded-ocr"
PAGE_MARKDOWN = """# Dosage

Take with food.

- Adults: 5 mg daily
- Children: 2.5 mg daily

| Drug | Dose |
| --- | --- |
| Warfarin | 5 mg |
"""


def answer(png: bytes, request: dict) -> str:
    return PAGE_MARKDOWN + "\n" + default_answer(png, request).split("\n\n", 1)[1] + "\n"


def _two_different_pages() -> bytes:
    """Two letter pages whose images differ, so the test server's answers (and each page's text) differ."""
    import pymupdf

    with pymupdf.open(stream=pdf_factory.text_pdf(["Warfarin 5 mg daily"]), filetype="pdf") as first, \
            pymupdf.open(stream=pdf_factory.text_pdf(["Monitor the INR weekly"]), filetype="pdf") as second:
        first.insert_pdf(second)
        return first.tobytes()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`medkg-pdf run --format md,json,docling,dolma` on a two-page letter PDF: the output folder."""
    tmp = tmp_path_factory.mktemp("export")
    pdf = tmp / "warfarin.pdf"
    pdf.write_bytes(_two_different_pages())
    out = tmp / "out"
    with VllmDouble(model=MODEL, answer=answer) as double:
        env = dict(os.environ, MEDKG_VLLM_BASE_URL=double.url, MEDKG_VLLM_MODEL=MODEL, DAGSTER_HOME="")
        result = subprocess.run(
            [sys.executable, "-m", "medkg_pdf.cli", "run", str(pdf), "--output-dir", str(out), "--format", "md,json,docling,dolma",
             "--json", "--data-dir", str(tmp / "d")],
            env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_cli_format_writes_markdown_json_docling_and_dolma_files_named_after_the_source(exported):
    assert sorted(path.name for path in exported.iterdir()) == [
        "warfarin.docling.json", "warfarin.dolma.jsonl", "warfarin.json", "warfarin.md",
    ]  # fmt: skip


def test_docling_export_validates_with_docling_core_and_keeps_pages_sizes_and_top_left_boxes(exported):
    document = docling_types.DoclingDocument.model_validate(json.loads((exported / "warfarin.docling.json").read_text()))
    assert sorted(document.pages) == [1, 2]
    assert (document.pages[1].size.width, document.pages[1].size.height) == pdf_factory.LETTER
    provs = [prov for item, _ in document.iterate_items() for prov in getattr(item, "prov", [])]
    assert {prov.page_no for prov in provs} == {1, 2}
    assert {prov.bbox.coord_origin for prov in provs} == {docling_types.CoordOrigin.TOPLEFT}
    labels = {item.label for item, _ in document.iterate_items()}
    assert {"section_header", "text", "list_item", "table"} <= {str(label.value) for label in labels}


def test_docling_markdown_export_keeps_the_text_and_the_table_cells(exported):
    document = docling_types.DoclingDocument.model_validate_json((exported / "warfarin.docling.json").read_text())
    markdown = document.export_to_markdown()
    for text in ("Dosage", "Take with food.", "Adults: 5 mg daily", "Warfarin", "5 mg", "Drug", "Dose"):
        assert text in markdown
    table = document.tables[0]
    assert [[cell.text for cell in row] for row in table.data.grid] == [["Drug", "Dose"], ["Warfarin", "5 mg"]]


def test_dolma_record_has_olmocr_fields_and_page_spans_cut_the_text_into_each_pages_text(exported):
    lines = (exported / "warfarin.dolma.jsonl").read_text().splitlines()
    assert len(lines) == 1  # one document, one JSON line
    record = json.loads(lines[0])
    assert {"id", "text", "source", "added", "created", "metadata", "attributes"} == set(record)
    assert record["metadata"]["pdf-total-pages"] == 2
    assert record["metadata"]["Source-File"] == str(exported.parent / "warfarin.pdf")  # a path, as olmOCR writes it
    structured = StructuredDocument.model_validate_json((exported / "warfarin.json").read_text())
    spans = record["attributes"]["pdf_page_numbers"]
    assert [page for _, _, page in spans] == [1, 2]
    assert spans[0][0] == 0 and spans[-1][1] == len(record["text"])
    assert all(end == next_start for (_, end, _), (next_start, _, _) in zip(spans, spans[1:]))
    assert [record["text"][start:end] for start, end, _ in spans] == [structured.body_text(1) + "\n", structured.body_text(2)]
    assert structured.body_text(1) != structured.body_text(2)


def _one_page(*blocks: Block, failed: list[int] | None = None, pages: int = 1) -> StructuredDocument:
    return StructuredDocument(document_id="label-0123456789", sha256="0" * 64, title=None, page_count=pages, model=MODEL,
                              prompt_version="v1", sections=[Section(heading=None, page=1, blocks=list(blocks))],
                              failed_pages=failed or [])  # fmt: skip


def test_a_block_box_is_kept_in_pdf_points_top_left_and_a_box_less_block_gets_its_whole_page():
    document = _one_page(Block(kind="paragraph", page=1, text="boxed", bbox=(72.0, 100.0, 300.0, 120.0)),
                         Block(kind="caption", page=1, text="unboxed"))  # fmt: skip
    exported = docling_document(document, {1: (612.0, 792.0)})
    boxed, unboxed = (item.prov[0] for item in exported.texts)
    assert (boxed.bbox.l, boxed.bbox.t, boxed.bbox.r, boxed.bbox.b) == (72.0, 100.0, 300.0, 120.0)
    assert boxed.bbox.coord_origin == docling_types.CoordOrigin.TOPLEFT and boxed.charspan == (0, len("boxed"))
    assert (unboxed.bbox.l, unboxed.bbox.t, unboxed.bbox.r, unboxed.bbox.b) == (0.0, 0.0, 612.0, 792.0)
    assert [item.label.value for item in exported.texts] == ["text", "caption"]


def test_a_failed_page_is_an_empty_dolma_span_so_later_pages_keep_their_numbers():
    document = _one_page(Block(kind="paragraph", page=1, text="first"), failed=[2], pages=3)
    document.sections.append(Section(heading=None, page=3, blocks=[Block(kind="paragraph", page=3, text="third")]))
    record = dolma_record(document, "file:///labels/x.pdf")
    assert record["text"] == "first\n\nthird"
    assert record["attributes"]["pdf_page_numbers"] == [[0, 6, 1], [6, 7, 2], [7, 12, 3]]


def test_furniture_is_docling_page_headers_and_footers_in_the_furniture_layer_and_left_out_of_dolma():
    """Docling's converters put running heads, feet and page numbers in the furniture layer; olmOCR text has none."""
    document = _one_page(
        Block(kind="page_header", page=1, text="Crit Care Res", bbox=(72.0, 30.0, 300.0, 40.0)),
        Block(kind="paragraph", page=1, text="Give fluids."),
        Block(kind="page_number", page=1, text="3", bbox=(300.0, 760.0, 306.0, 770.0)),
        Block(kind="page_number", page=1, text="- 3 -", bbox=(300.0, 20.0, 306.0, 30.0)),
    )
    exported = docling_document(document, {1: (612.0, 792.0)})
    layers = [(item.label.value, item.content_layer.value) for item in exported.texts]
    assert layers == [("page_header", "furniture"), ("text", "body"), ("page_footer", "furniture"), ("page_header", "furniture")]
    assert exported.export_to_markdown().strip() == "Give fluids."
    assert dolma_record(document, "file:///x.pdf")["text"] == "Give fluids."


def test_docling_document_asset_stores_a_valid_docling_document_after_the_chain(tmp_path, storage, instance):
    from medkg_pdf import storage_keys
    from medkg_pdf.defs.documents import document_assets
    from medkg_pdf.defs.documents.exports import docling_document as docling_asset

    pdf = tmp_path / "label.pdf"
    pdf.write_bytes(pdf_factory.text_pdf(["Warfarin 5 mg daily"], pages=1))
    (doc_id,) = register_files(storage, instance, [pdf])
    with VllmDouble(model=MODEL, answer=answer) as double:
        result = run_chain(instance, storage, vllm_for(double.url), partition_key=doc_id, selection=[*document_assets, docling_asset])
    assert result.success
    stored = docling_types.DoclingDocument.model_validate_json(storage.read_bytes(storage_keys.docling_json(doc_id)))
    assert sorted(stored.pages) == [1] and "Warfarin" in stored.export_to_markdown()


def test_docling_document_is_optional_and_outside_the_document_chain_job():
    from medkg_pdf.definitions import defs
    from medkg_pdf.defs.documents.jobs import DOCUMENT_CHAIN

    assert "docling_document" not in {key.to_user_string() for key in DOCUMENT_CHAIN}
    assert defs.resolve_assets_def("docling_document").backfill_policy.max_partitions_per_run == 1  # one document per run


def test_without_docling_core_the_export_names_the_extra_to_install(monkeypatch):
    from medkg_pdf.exporters.docling import require_docling

    monkeypatch.setitem(sys.modules, "docling_core", None)
    monkeypatch.setitem(sys.modules, "docling_core.types", None)
    with pytest.raises(ImportError, match=r"medkg-pdf\[docling\]"):
        require_docling()
