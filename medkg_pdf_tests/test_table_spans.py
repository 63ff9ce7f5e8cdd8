"""Span-aware tables: every value stays under its header (issue 14)."""

import pytest

from medkg_pdf import storage_keys
from medkg_pdf.markdown_blocks import markdown_to_blocks
from medkg_pdf.metrics import table_cell_agreement
from medkg_pdf.schemas import StructuredDocument
from medkg_pdf_tests.support import pdf_factory
from medkg_pdf_tests.support.chain import register_files, run_chain, vllm_for
from medkg_pdf_tests.support.vllm_double import VllmDouble

ROWSPAN = """<table>
<thead><tr><th>Drug</th><th>Population</th><th>Dose</th></tr></thead>
<tr><td rowspan=2>Amoxicillin</td><td>Adult</td><td>500 mg</td></tr>
<tr><td>Child</td><td>25 mg/kg</td></tr>
<tr><td>Cefalexin</td><td>Adult</td><td>250 mg</td></tr>
</table>"""

COLSPAN = """<table>
<tr><th rowspan="2">Drug</th><th colspan="2">Dose</th></tr>
<tr><th>Adult</th><th>Child</th></tr>
<tr><td>Amoxicillin</td><td>500 mg</td><td>25 mg/kg</td></tr>
</table>"""


def _table(markdown):
    [block] = [b for b in markdown_to_blocks(markdown, page=1) if b.kind == "table"]
    return block


def test_rowspan_keeps_every_dose_under_its_header():
    block = _table(ROWSPAN)
    header, *body = block.rows
    assert header == ["Drug", "Population", "Dose"]
    by_header = [dict(zip(header, row)) for row in body]
    assert [row["Dose"] for row in by_header] == ["500 mg", "25 mg/kg", "250 mg"]
    assert [row["Population"] for row in by_header] == ["Adult", "Child", "Adult"]
    assert by_header[1]["Drug"] == "Amoxicillin"
    assert block.spans == [[1, 0, 2, 1]]
    assert block.header_rows == 1


def test_colspan_header_gives_equal_length_rows():
    block = _table(COLSPAN)
    assert {len(row) for row in block.rows} == {3}
    assert block.rows[0] == ["Drug", "Dose", "Dose"]
    assert block.rows[1] == ["Drug", "Adult", "Child"]
    assert block.rows[2] == ["Amoxicillin", "500 mg", "25 mg/kg"]
    assert block.spans == [[0, 0, 2, 1], [0, 1, 1, 2]]
    assert block.header_rows == 2


def test_ragged_markdown_table_pads_without_shifting():
    block = _table("| Drug | Dose | Route |\n|---|---|---|\n| Amoxicillin | 500 mg |\n| Cefalexin | 250 mg | oral |\n")
    assert block.rows == [["Drug", "Dose", "Route"], ["Amoxicillin", "500 mg", ""], ["Cefalexin", "250 mg", "oral"]]
    assert block.spans is None and block.header_rows == 1


def test_ragged_html_table_pads():
    block = _table("<table><tr><td>a</td><td>b</td><td>c</td></tr><tr><td>d</td></tr></table>")
    assert block.rows == [["a", "b", "c"], ["d", "", ""]]


def test_cell_agreement_of_span_table_against_expanded_and_shifted():
    grid = _table(ROWSPAN).rows
    expanded = [
        ["Drug", "Population", "Dose"],
        ["Amoxicillin", "Adult", "500 mg"],
        ["Amoxicillin", "Child", "25 mg/kg"],
        ["Cefalexin", "Adult", "250 mg"],
    ]
    shifted = [  # what span-blind parsing produced: the child's dose under "Population"
        ["Drug", "Population", "Dose"],
        ["Amoxicillin", "Adult", "500 mg"],
        ["Child", "25 mg/kg"],
        ["Cefalexin", "Adult", "250 mg"],
    ]
    assert table_cell_agreement(grid, expanded) == 1.0
    assert table_cell_agreement(shifted, grid) < 1.0
    assert table_cell_agreement(grid, _table(_html(expanded)).rows) == 1.0


def _html(rows):
    return "<table>" + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows) + "</table>"


def test_bad_span_attributes_are_clamped():
    block = _table('<table><tr><td rowspan="0">a</td><td colspan="x">b</td><td rowspan="9">c</td></tr></table>')
    assert block.rows == [["a", "b", "c"]]
    assert block.spans is None


# The same spanned dose table as each model family answers it (recorded shapes: Qwen2.5-VL's plain
# HTML, olmOCR-2's YAML front matter before its HTML, DeepSeek-OCR's grounded table region).
OLMOCR_FRONT = "---\nprimary_language: en\nis_rotation_valid: true\nrotation_correction: 0\nis_table: true\nis_diagram: false\n---\n"
ANSWERS = {
    "Qwen/Qwen2.5-VL-7B-Instruct": "## Dosing\n\n" + ROWSPAN,
    "allenai/olmOCR-2-7B-1025": OLMOCR_FRONT + "## Dosing\n\n" + ROWSPAN,
    "deepseek-ai/DeepSeek-OCR": "<|ref|>sub_title<|/ref|><|det|>[[80, 40, 920, 90]]<|/det|>\nDosing\n\n"
    "<|ref|>table<|/ref|><|det|>[[80, 120, 920, 400]]<|/det|>\n" + ROWSPAN.replace("\n", "") + "\n",
}


@pytest.mark.parametrize("model", sorted(ANSWERS))
def test_a_spanned_dose_table_lands_under_the_right_headers_through_the_chain_for_each_model_family(
    model, tmp_path, storage, instance
):
    pdf = tmp_path / "dosing.pdf"
    pdf.write_bytes(pdf_factory.text_pdf(["Dosing", "Drug Population Dose", "Amoxicillin Adult 500 mg", "Child 25 mg/kg",
                                          "Cefalexin Adult 250 mg"]))  # fmt: skip
    (doc_id,) = register_files(storage, instance, [pdf])
    with VllmDouble(model=model, answer=lambda png, body: ANSWERS[model]) as server:
        result = run_chain(instance, storage, vllm_for(server.url, model=model), doc_id)
    assert result.success

    document = storage.read_model(storage_keys.structured_json(doc_id), StructuredDocument)
    [table] = [block for block in document.blocks() if block.kind == "table"]
    header, *body = table.rows
    rows = [dict(zip(header, row)) for row in body]
    assert [(row["Drug"], row["Population"], row["Dose"]) for row in rows] == [
        ("Amoxicillin", "Adult", "500 mg"), ("Amoxicillin", "Child", "25 mg/kg"), ("Cefalexin", "Adult", "250 mg")
    ]  # fmt: skip
    assert table.spans == [[1, 0, 2, 1]] and table.header_rows == 1
    [structured] = [m for m in result.asset_materializations_for_node("structured_document")]
    if model.startswith("deepseek"):
        assert table.bbox is not None  # the region's box, in PDF points
        # the UI's preview: the page with the located boxes, a small inline JPEG
        preview = structured.metadata["boxed_pages"].value
        assert preview.startswith("![page 1 with its blocks' boxes](data:image/jpeg;base64,") and len(preview) < 150_000
        assert "table orange" in preview
    else:
        assert "boxed_pages" not in structured.metadata  # plain markdown: nothing was located
