"""What keeps memory bounded by the work in flight: page text is not kept once stored, the page
parses record is written page by page, render helpers are a budget of the process."""

import threading

import pymupdf

from medkg_pdf import storage_keys
from medkg_pdf.defs.documents.pages import page_parses_json, page_summary
from medkg_pdf.page_render import RenderTarget
from medkg_pdf.rendering import HELPERS, RenderConfig, available_cores, iter_rendered
from medkg_pdf.resources.storage import LocalStorage
from medkg_pdf.schemas import PageParse, PageParses, PageStatus, Region, SamplingParams

DOC = "discharge-0123456789"


def _page(index: int) -> PageParse:
    return PageParse(
        document_id=DOC, page_index=index, cache_key=f"k{index}", status=PageStatus.ok, markdown=f"# Page {index}\n\nINR 2.{index}",
        regions=[Region(kind="text", label="text", bbox=(0.1, 0.1, 0.9, 0.2), text=f"INR 2.{index}")] if index % 2 else [],
        model="m", prompt_version="v1", sampling=SamplingParams(temperature=0.0, seed=42, max_tokens=4096),
    )  # fmt: skip


def test_streamed_record_is_the_record(tmp_path):
    pages = [_page(i) for i in range(5)]
    header = {"document_id": DOC, "sha256": "ab" * 32, "model": "m", "prompt_version": "v1", "model_calls": 5, "cached_pages": 0}
    storage = LocalStorage(root=str(tmp_path))
    storage.write_chunks(storage_keys.page_parses(DOC), page_parses_json(header, iter(pages)))
    assert storage.read_model(storage_keys.page_parses(DOC), PageParses) == PageParses(**header, pages=pages)
    storage.write_chunks("empty", page_parses_json(header, iter([])))
    assert storage.read_model("empty", PageParses).pages == []


def test_page_summary_drops_the_text_and_keeps_what_the_step_reports():
    page = _page(1)
    summary = page_summary(page)
    assert summary.markdown == "" and summary.regions == []
    assert summary.model_dump(exclude={"markdown", "regions"}) == page.model_dump(exclude={"markdown", "regions"})


def test_render_helpers_are_a_budget_of_the_process(tmp_path):
    """Two documents rendering at once in one process never run more helpers than cores - 1 together."""
    doc = pymupdf.open()
    for number in range(32):
        doc.new_page().insert_text((72, 72), f"Page {number + 1}: 5 mg", fontsize=12)
    data = doc.tobytes()
    storage = LocalStorage(root=str(tmp_path))
    config = RenderConfig(workers=available_cores() + 2, parallel_min_pages=1)  # each wants more than there are
    used = [{}, {}]
    both_started = threading.Barrier(2)

    def render(slot: int) -> None:
        pages = iter_rendered(data, f"{slot:064x}", config, storage, RenderTarget(longest_side=550), used[slot])
        next(pages)  # helpers taken
        both_started.wait(timeout=30)
        for _ in pages:
            pass

    threads = [threading.Thread(target=render, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    helpers = sum(u["processes"] - 1 for u in used)
    assert helpers == max(1, available_cores() - 1)  # the first took them all, the second rendered alone
    assert HELPERS._in_use == 0  # all given back
