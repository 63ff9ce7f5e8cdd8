"""The Dagster UI as an operator sees it: headless Chromium on the real `dagster-webserver`.

The instance is built the way `medkg-pdf demo` builds it (the CLI's `process_files`, then its
`build_report`) from one letter parsed by the vLLM double answering like DeepSeek-OCR (text with
boxes), then only the webserver is started on it (finished runs need no daemon). The browser
must find the whole document chain on the asset graph, the document's `structured_document`
partition with what its materialization recorded, and the daily report with the page image on
which each block's box is drawn.

Skips when Debian's Chromium (/usr/bin/chromium) or the `playwright` module is missing; never
`playwright install` (it downloads a browser).
"""

from __future__ import annotations

import os
from pathlib import Path

import pymupdf
import pytest

from medkg_pdf.cli import build_report, process_files
from medkg_pdf.defs.documents.jobs import DOCUMENT_CHAIN
from medkg_pdf_tests.support.live_dagster import live_dagster, write_instance
from medkg_pdf_tests.support.pdf_factory import LETTER, text_pdf
from medkg_pdf_tests.support.vllm_double import VllmDouble

CHROMIUM = Path("/usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api", reason="the `playwright` module is not installed (test extra)")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (Debian package `chromium`)"),
]

# Without the background-networking flags Chromium keeps dialling Google and the closed network refuses it.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
MODEL = "deepseek-ai/DeepSeek-OCR"
LINES = ["Discharge medication", "Amoxicillin 500 mg every 8 hours for 7 days", "Ibuprofen 400 mg twice daily"]
UI_TIMEOUT_MS = 30_000


def grounded_answer() -> str:
    """DeepSeek-OCR's answer for `text_pdf(LINES)`: each line with its box (0..999) where text_pdf prints it."""
    parts = []
    for i, line in enumerate(LINES):
        baseline = 72 + 14 * i  # text_pdf: Helvetica 11 pt from (72, 72), 14 pt apart
        box = (72, baseline - 11, 72 + pymupdf.get_text_length(line, "helv", 11), baseline + 3)
        scaled = [round(v / side * 999) for v, side in zip(box, LETTER * 2)]
        kind, text = ("title", f"# {line}") if i == 0 else ("text", line)
        parts.append(f"<|ref|>{kind}<|/ref|><|det|>[{scaled}]<|/det|>\n{text}\n")
    return "\n".join(parts)


@pytest.fixture
def ui(tmp_path, monkeypatch):
    """A webserver on an instance holding one parsed document and the daily report; yields (url, document id)."""
    home, data = tmp_path / "dagster_home", tmp_path / "data"
    write_instance(home, None)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    pdf = tmp_path / "discharge.pdf"
    pdf.write_bytes(text_pdf(LINES))
    answer = grounded_answer()
    with VllmDouble(model=MODEL, answer=lambda png, request: answer) as double:
        (result,) = process_files(
            [pdf], data, json_lines=False, settings={"MEDKG_VLLM_BASE_URL": double.url, "MEDKG_VLLM_MODEL": MODEL}
        )
    assert result["status"] == "ok", result
    build_report(data)
    with live_dagster(home, dict(os.environ, MEDKG_DATA_DIR=str(data)), daemon=False) as dagster:
        yield dagster.url, result["document_id"]


@pytest.fixture
def browser_page(tmp_path):
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",  # a fresh profile every time
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            sync_api.expect.set_options(timeout=UI_TIMEOUT_MS)  # the graph's partition counts load after the nodes
            # the UI's first-visit "Join the Dagster community" dialog covers the page until skipped
            page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
            yield page
        finally:
            context.close()


def test_the_ui_shows_the_whole_chain_a_documents_materialization_and_the_report_with_its_boxed_page(
    ui, browser_page, tmp_path
):
    """What an operator opens first: every stage on the lineage graph, materialized; the document's
    structured result; the report's page image with the blocks' boxes, actually loaded."""
    url, document_id = ui
    page, expect = browser_page, sync_api.expect

    page.goto(f"{url}/locations/medkg_pdf/asset-groups/documents")
    for key in DOCUMENT_CHAIN:  # source_pdf, page_images, vlm_page_parses, structured_document, baseline_parse, parse_quality
        node = page.locator("svg foreignObject").filter(has=page.get_by_text(key.to_user_string(), exact=True))
        expect(node).to_contain_text("100% filled")  # drawn as a node, its one partition materialized
    expect(page.locator("svg").get_by_text("quality_report", exact=True)).to_be_visible()  # downstream, in `reports`
    page.screenshot(path=tmp_path / "graph.png")

    page.goto(f"{url}/assets/structured_document?view=partitions&partition={document_id}")
    expect(page.get_by_text("Materialized", exact=True)).to_be_visible()
    expect(page.get_by_text("Discharge medication", exact=True)).to_be_visible()  # the `title` entry
    expect(page.locator("body")).to_contain_text('"paragraph": 2')  # the `blocks` entry: two dose lines
    page.get_by_text("[Show Markdown]").first.click()  # the `boxed_pages` entry: the page with its blocks' boxes
    preview = page.get_by_role("img", name="page 1 with its blocks' boxes")
    expect(preview).to_be_visible()
    assert preview.evaluate("img => img.complete && img.naturalWidth > 0"), "the document's boxed page did not load"
    page.screenshot(path=tmp_path / "structured_document.png")

    page.goto(f"{url}/assets/quality_report")
    page.get_by_text("[Show Markdown]").first.click()  # the `report` entry, a markdown metadata value
    boxed_page = page.get_by_role("img", name="where a page's blocks came from")
    expect(boxed_page).to_be_visible()
    assert boxed_page.evaluate("img => img.complete && img.naturalWidth > 0"), "the boxed page image did not load"
    boxed_page.scroll_into_view_if_needed()
    page.screenshot(path=tmp_path / "report.png")
