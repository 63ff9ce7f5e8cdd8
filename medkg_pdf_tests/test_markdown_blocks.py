"""A VLM's markdown becomes typed blocks: headings, paragraphs, lists, tables (markdown or HTML), captions."""

from medkg_pdf.defs.documents.structured import build_document, to_markdown
from medkg_pdf.markdown_blocks import markdown_to_blocks
from medkg_pdf.schemas import PageParse, PageParses, PageStatus, SamplingParams

PAGE = """# AMOXICILLIN CAPSULES, USP

## DOSAGE AND ADMINISTRATION

Take with or without food.
Continue for 10 days.

| Infection | Adults | Children |
|---|---|---|
| Ear/Nose/Throat | 500 mg every 12 hours | 25 mg/kg/day |

- diarrhea (2.3%)
- nausea

Table 1. Dosing by infection.
"""


def test_markdown_page_becomes_typed_blocks():
    blocks = markdown_to_blocks(PAGE, page=3)
    assert [b.kind for b in blocks] == ["heading", "heading", "paragraph", "table", "list", "caption"]
    assert blocks[0].level == 1 and blocks[1].level == 2
    assert blocks[2].text == "Take with or without food. Continue for 10 days."
    assert blocks[3].rows == [
        ["Infection", "Adults", "Children"],
        ["Ear/Nose/Throat", "500 mg every 12 hours", "25 mg/kg/day"],
    ]
    assert blocks[4].items == ["diarrhea (2.3%)", "nausea"]
    assert all(b.page == 3 for b in blocks)


def test_html_tables_from_vlms_become_rows_and_scripts_vanish():
    html = "<table><tr><th>Drug</th><th>Dose</th></tr><tr><td>Amoxicillin</td><td>500&nbsp;mg</td></tr></table>\n"
    (table,) = markdown_to_blocks(html, page=1)
    assert table.kind == "table"
    assert table.rows == [["Drug", "Dose"], ["Amoxicillin", "500 mg"]]
    blocks = markdown_to_blocks("<div>safe text<script>alert(1)</script></div>\n", page=1)
    assert [b.text for b in blocks] == ["safe text"]


def test_inline_html_is_dropped_from_paragraphs():
    (block,) = markdown_to_blocks("Dose <img src=x onerror=alert(1)> 5 mg", page=1)
    assert "onerror" not in block.text and "5 mg" in block.text


def _parse(index: int, markdown: str, status=PageStatus.ok) -> PageParse:
    return PageParse(document_id="d", page_index=index, cache_key="k", status=status, markdown=markdown,
                     model="m", prompt_version="v", sampling=SamplingParams())  # fmt: skip


def test_document_sections_title_and_provenance():
    parses = PageParses(
        document_id="doc", sha256="s", model="m", prompt_version="v", model_calls=2, cached_pages=0,
        pages=[_parse(0, PAGE), _parse(1, "## WARNINGS\n\nAnaphylaxis has been reported."), _parse(2, "", PageStatus.timeout)],
    )  # fmt: skip
    document = build_document(parses)
    assert document.title == "AMOXICILLIN CAPSULES, USP"
    assert [s.heading for s in document.sections] == ["AMOXICILLIN CAPSULES, USP", "DOSAGE AND ADMINISTRATION", "WARNINGS"]
    assert document.sections[-1].page == 2
    assert document.failed_pages == [3]
    assert "Anaphylaxis" in document.page_text(2)
    rendered = to_markdown(document)
    assert "| Ear/Nose/Throat | 500 mg every 12 hours | 25 mg/kg/day |" in rendered
    assert markdown_to_blocks(rendered, 1)[3].rows == document.blocks()[3].rows


def test_ordered_list_items_keep_their_numbers():
    """Section numbers and reference numbers are content ("2. Methods", "1. Singer M"): numeric recall counts them."""
    [block] = markdown_to_blocks("2. Methods\n3. Results\n\n- plain bullet", page=1)[:1]
    assert block.items == ["2. Methods", "3. Results"]
    assert markdown_to_blocks("- plain bullet", page=1)[0].items == ["plain bullet"]
