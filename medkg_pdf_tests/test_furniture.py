"""Page furniture: running heads, feet and page numbers are blocks of their own, kept out of the body.

The structured JSON keeps them (page and box, for a reader who wants them); the markdown body and the
Dolma text leave them out; the quality score still sees them, because the PDF's text layer it is
compared with has them too.
"""

import pymupdf
import pytest
from dagster import materialize
from dagster_aws.s3 import S3Resource

from medkg_pdf import storage_keys
from medkg_pdf.defs.documents import document_assets
from medkg_pdf.defs.documents.structured import build_document, to_markdown
from medkg_pdf.defs.quality.assets import compare
from medkg_pdf.exporters import dolma_text_and_spans
from medkg_pdf.furniture import is_page_number, mark_furniture
from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf.resources.vllm import EMBEDDED_MODEL
from medkg_pdf.schemas import BaselineParse, Block, DocumentQuality, PageParse, PageParses, PageStatus, SamplingParams, StructuredDocument
from medkg_pdf_tests.support.chain import register_files, vllm_for
from medkg_pdf_tests.support.vllm_double import VllmDouble

RUNNING_HEAD = "Crit Care Res. 2025;12(3):145-152"
BODY = [
    ("Fluid resuscitation", "Give 30 mL/kg crystalloid within 3 hours of recognising septic shock."),
    ("Vasopressors", "Start norepinephrine when the mean arterial pressure stays below 65 mmHg."),
    ("Antibiotics", "Give broad-spectrum antibiotics within 1 hour of recognising sepsis."),
]


def paragraph(page: int, text: str, kind: str = "paragraph", **extra) -> Block:
    return Block(kind=kind, page=page, text=text, **extra)


def kinds(pages: list[list[Block]]) -> list[list[str]]:
    return [[block.kind for block in blocks] for blocks in mark_furniture(pages)]


# ----- the detector, on blocks ---------------------------------------------------------------------


def test_lines_repeated_at_the_page_edges_become_headers_and_footers_digits_aside():
    pages = [
        [paragraph(n, RUNNING_HEAD), paragraph(n, body), paragraph(n, f"Page {n} of 3")]
        for n, (_, body) in enumerate(BODY, start=1)
    ]
    assert kinds(pages) == [["page_header", "paragraph", "page_number"]] * 3


@pytest.mark.parametrize("text", ["3", "- 3 -", "Page 3", "3 of 12", "page 3 / 12", "— 12 —"])
def test_a_lone_page_number_at_the_bottom_of_a_one_page_document_is_furniture(text):
    assert kinds([[paragraph(1, "Discharge summary."), paragraph(1, text)]]) == [["paragraph", "page_number"]]


@pytest.mark.parametrize("text", ["3 mg", "Page 3 of the protocol", "1.5", "3.", "Table 3", "12345"])
def test_numbers_that_say_more_than_a_page_number_are_not_page_numbers(text):
    assert not is_page_number(text)
    assert kinds([[paragraph(1, "Discharge summary."), paragraph(1, text)]]) == [["paragraph", "paragraph"]]


def test_a_heading_repeated_on_two_pages_is_kept():
    """A section continued onto the next page repeats its heading once: that is content, not a running head."""
    pages = [[paragraph(n, "Results", kind="heading", level=2), paragraph(n, body)] for n, (_, body) in enumerate(BODY[:2], start=1)]
    assert kinds(pages) == [["heading", "paragraph"]] * 2


def test_a_title_repeated_as_the_running_head_of_later_pages_is_kept_on_its_first_page():
    title = "Early Fluid Resuscitation in Septic Shock"
    pages = [[paragraph(1, title, kind="heading", level=1), paragraph(1, BODY[0][1])]]
    pages += [[paragraph(n, title), paragraph(n, body)] for n, (_, body) in enumerate(BODY[1:], start=2)]
    assert kinds(pages) == [["heading", "paragraph"], ["page_header", "paragraph"], ["page_header", "paragraph"]]


def test_a_table_row_repeated_at_the_top_of_every_page_is_kept():
    """A long table repeats its header row on every page; it stays a table."""
    rows = [["Drug", "Dose"], ["Amoxicillin", "500 mg"]]
    pages = [[paragraph(n, "Drug Dose Amoxicillin 500 mg", kind="table", rows=rows), paragraph(n, body)] for n, (_, body) in enumerate(BODY, start=1)]
    assert kinds(pages) == [["table", "paragraph"]] * 3


def test_a_lone_number_in_the_middle_of_the_page_is_body_text_where_boxes_say_so():
    pages = [[paragraph(1, "Intro.", bbox=(72, 72, 300, 90)), paragraph(1, "3", bbox=(72, 400, 80, 410))]]
    assert [[b.kind for b in blocks] for blocks in mark_furniture(pages, {1: 792.0})] == [["paragraph", "paragraph"]]
    low = [[pages[0][0], pages[0][1].model_copy(update={"bbox": (300, 740, 308, 750)})]]
    assert [[b.kind for b in blocks] for blocks in mark_furniture(low, {1: 792.0})] == [["paragraph", "page_number"]]


def test_a_long_paragraph_repeated_on_pages_is_not_a_running_head():
    text = "Warning: " + "do not exceed the maximum daily dose of 4 g of paracetamol " * 4
    pages = [[paragraph(n, text), paragraph(n, body)] for n, (_, body) in enumerate(BODY, start=1)]
    assert kinds(pages) == [["paragraph", "paragraph"]] * 3


# ----- the whole chain, on the embedded engine -------------------------------------------------------


def three_page_article(path) -> None:
    doc = pymupdf.open()
    for number, (heading, body) in enumerate(BODY, start=1):
        page = doc.new_page(width=612, height=792)
        page.insert_text((72, 40), "Sepsis management review", fontsize=8)
        page.insert_text((72, 120), heading, fontsize=18)
        page.insert_text((72, 160), body, fontsize=11)
        page.insert_text((72, 735), RUNNING_HEAD, fontsize=8)
        page.insert_text((280, 772), f"Page {number} of 3", fontsize=9)
    doc.save(path)


def materialize_chain(storage, instance, path, vllm) -> str:
    (doc_id,) = register_files(storage, instance, [path])
    result = materialize(
        document_assets, partition_key=doc_id, instance=instance,
        resources={"storage": storage, "vllm": vllm, "inbox_s3": S3Resource(), "quality_targets": QualityTargets()},
    )  # fmt: skip
    assert result.success
    return doc_id


def test_running_heads_feet_and_page_numbers_are_blocks_out_of_the_markdown_body(tmp_path, storage, instance, embedded_engine):
    """Through the embedded engine: the JSON has every piece of furniture with its page and box; the
    markdown body and the Dolma text have none of it, and every body sentence is intact."""
    three_page_article(tmp_path / "article.pdf")
    doc_id = materialize_chain(storage, instance, tmp_path / "article.pdf", vllm_for(embedded_engine.url, model=EMBEDDED_MODEL))
    document = storage.read_model(storage_keys.structured_json(doc_id), StructuredDocument)
    furniture = [block for block in document.blocks() if block.furniture]
    by_page = {n: sorted(b.kind for b in furniture if b.page == n) for n in (1, 2, 3)}
    assert by_page == {n: ["page_footer", "page_header", "page_number"] for n in (1, 2, 3)}, [b.text for b in furniture]
    for block in furniture:
        assert block.bbox is not None
        assert (block.bbox[3] < 60) if block.kind == "page_header" else (block.bbox[1] > 715)
    numbers = {b.page: b.text.replace(" ", "") for b in furniture if b.kind == "page_number"}
    assert numbers == {n: f"Page{n}of3" for n in (1, 2, 3)}  # the engine reads small print without spaces

    markdown = storage.read_text(storage_keys.structured_markdown(doc_id))
    for gone in ("management review", "Crit Care Res", "of3", "of 3"):
        assert gone not in markdown
    for heading, body in BODY:
        assert heading in markdown and body in markdown
    text, _ = dolma_text_and_spans(document)
    assert "Crit Care Res" not in text and BODY[2][1] in text

    # the text layer has the furniture too: leaving it out of what is matched would cost the parse words it read
    quality = storage.read_model(storage_keys.quality(doc_id), DocumentQuality)
    baseline = storage.read_model(storage_keys.baseline(doc_id), BaselineParse)
    body_only = document.model_copy(
        update={"sections": [s.model_copy(update={"blocks": [b for b in s.blocks if not b.furniture]}) for s in document.sections]}
    )
    assert quality.match_score == compare(document, baseline).match_score > compare(body_only, baseline).match_score + 0.1


# ----- the whole chain, on a grounded (DeepSeek-OCR style) answer -----------------------------------------------

DEEPSEEK = "deepseek-ai/DeepSeek-OCR"


def grounded_answer(png, body) -> str:
    """A DeepSeek-OCR answer with header and footer regions, as the model types them."""
    return (
        "<|ref|>header<|/ref|><|det|>[[100, 30, 600, 50]]<|/det|>\nSepsis management review\n\n"
        "<|ref|>title<|/ref|><|det|>[[100, 140, 500, 170]]<|/det|>\n# Fluid resuscitation\n\n"
        "<|ref|>text<|/ref|><|det|>[[100, 190, 900, 220]]<|/det|>\nGive 30 mL/kg crystalloid within 3 hours.\n\n"
        "<|ref|>footer<|/ref|><|det|>[[100, 940, 500, 960]]<|/det|>\nCrit Care Res. 2025;12(3):145-152\n\n"
        "<|ref|>footer<|/ref|><|det|>[[850, 940, 900, 960]]<|/det|>\n7\n"
    )


def test_header_and_footer_regions_of_a_grounded_answer_become_blocks_not_dropped(tmp_path, storage, instance):
    doc = pymupdf.open()
    doc.new_page(width=612, height=792).insert_text((72, 120), "Fluid resuscitation", fontsize=18)
    doc.save(tmp_path / "page.pdf")
    with VllmDouble(model=DEEPSEEK, answer=grounded_answer) as double:
        doc_id = materialize_chain(storage, instance, tmp_path / "page.pdf", vllm_for(double.url, model=DEEPSEEK))
    document = storage.read_model(storage_keys.structured_json(doc_id), StructuredDocument)
    blocks = document.blocks()
    assert [b.kind for b in blocks] == ["page_header", "heading", "paragraph", "page_footer", "page_number"]
    header, footer, number = blocks[0], blocks[3], blocks[4]
    assert header.text == "Sepsis management review" and header.bbox == pytest.approx((61.2, 23.78, 367.2, 39.64), abs=0.5)
    assert footer.text == "Crit Care Res. 2025;12(3):145-152" and footer.page == 1 and footer.bbox is not None
    assert number.text == "7" and number.bbox[1] > 700
    assert document.title == "Fluid resuscitation" and document.sections[0].heading == "Fluid resuscitation"
    markdown = storage.read_text(storage_keys.structured_markdown(doc_id))
    assert markdown == "# Fluid resuscitation\n\nGive 30 mL/kg crystalloid within 3 hours.\n"


def test_a_page_parse_without_page_sizes_keeps_typed_furniture_without_boxes():
    """No page-image manifest (an old run): the regions' kinds still hold, only the boxes are unknown."""
    from medkg_pdf.profiles import PROFILES

    parsed = PROFILES["deepseek-ocr"].parse(grounded_answer(b"", {}))
    parse = PageParse(
        document_id="d", page_index=0, cache_key="k", status=PageStatus.ok, markdown=parsed.markdown, model=DEEPSEEK,
        prompt_version="v", sampling=SamplingParams(), regions=parsed.regions,
    )  # fmt: skip
    document = build_document(PageParses(document_id="d", sha256="s", model=DEEPSEEK, prompt_version="v", pages=[parse], model_calls=1, cached_pages=0))
    assert [b.kind for b in document.blocks()] == ["page_header", "heading", "paragraph", "page_footer", "page_number"]
    assert all(b.bbox is None for b in document.blocks())
    assert "Crit Care" not in to_markdown(document) and "Crit Care" in document.page_text(1)


def test_markdown_only_answers_without_boxes_are_judged_by_block_position():
    """A Qwen-style answer has no boxes: the first and last blocks of each page are the evidence."""
    pages = [
        f"Sepsis management review\n\n# {heading}\n\n{body}\n\n| Drug | Dose |\n|---|---|\n| Norepinephrine | 0.1 µg/kg/min |\n\n- {n} -"
        for n, (heading, body) in enumerate(BODY, start=1)
    ]
    parses = [
        PageParse(document_id="d", page_index=i, cache_key="k", status=PageStatus.ok, markdown=markdown, model="qwen",
                  prompt_version="v", sampling=SamplingParams())
        for i, markdown in enumerate(pages)
    ]  # fmt: skip
    document = build_document(PageParses(document_id="d", sha256="s", model="qwen", prompt_version="v", pages=parses, model_calls=3, cached_pages=0))
    assert [[b.kind for b in document.blocks() if b.page == n] for n in (1, 2, 3)] == [
        ["page_header", "heading", "paragraph", "table", "page_number"]
    ] * 3
    markdown = to_markdown(document)
    assert "Sepsis management review" not in markdown and "- 2 -" not in markdown and markdown.count("| Norepinephrine |") == 3
    assert document.title == "Fluid resuscitation"


def test_a_heading_is_a_running_head_only_when_its_box_puts_it_in_the_margin_of_three_pages():
    """Without boxes the same heading atop every page may be each page's own; with boxes in the top margin it is a running head."""
    unboxed = [[paragraph(n, "Discharge summary", kind="heading", level=1), paragraph(n, body)] for n, (_, body) in enumerate(BODY, start=1)]
    assert kinds(unboxed) == [["heading", "paragraph"]] * 3
    boxed = [[b.model_copy(update={"bbox": (72, 30 + 100 * (i > 0), 300, 45 + 100 * (i > 0))}) for i, b in enumerate(page)] for page in unboxed]
    heights = {n: 792.0 for n in (1, 2, 3)}
    assert [[b.kind for b in page] for page in mark_furniture(boxed, heights)] == [["page_header", "paragraph"]] * 3
    assert [[b.kind for b in page] for page in mark_furniture(boxed[:2], heights)] == [["heading", "paragraph"]] * 2
