"""Page furniture (running heads and feet, page numbers) told apart from the body, per document.

A model that types its regions (DeepSeek-OCR's `header`/`footer`) says so itself. For every other
block the document is the evidence: a short line at the same edge (first or last blocks) of several
pages, digits aside ("Page 1 of 2" / "Page 2 of 2", "Crit Care Res. 2025;12(3):145-152"), is a
running head or foot; a lone number ("3", "- 3 -", "Page 3", "3 of 12") as a page's first or last
block is its page number, even on a one-page document. Only prose blocks are candidates: a table
(whose header row a long table repeats on every page), a list or a figure is never furniture. A
heading is one only when its box lies in the page's margin band and it repeats, as a heading, on at
least three pages (a heading seen on two pages is more likely a section continued; without boxes the
same heading atop every page may be each page's own). Where blocks carry boxes, every candidate must
lie in the page's top or bottom band, so a lone number in the middle of a page stays body text.

Hand-written: layout tools that detect furniture (Docling's layout model, PyMuPDF4LLM's header
detection) work on the PDF or its image, not on a model's already-parsed blocks.
"""

from __future__ import annotations

import re
from collections import defaultdict

from medkg_pdf.schemas import Block

EDGE_BLOCKS = 2  # a running head may sit just under or over a page number
EDGE_BAND = 0.15  # share of the page height at the top and bottom where furniture is printed
MAX_CHARS = 160  # furniture is one short line; a repeated long paragraph is content
MIN_PAGE_SHARE = 0.4  # of pages with blocks: running heads often alternate between odd and even pages
MIN_PAGES = 2
MIN_HEADING_PAGES = 3
_CANDIDATES = ("paragraph", "heading")
_DIGITS = re.compile(r"\d+")
_NOT_KEY = re.compile(r"[^\w#]|_")
PAGE_NUMBER = re.compile(r"^(?:page|p\.|pg\.?)?\s*[-–—]?\s*\d{1,4}\s*[-–—]?(?:\s*(?:of|/)\s*\d{1,4})?$", re.IGNORECASE)


def typed_kind(kind: str, text: str) -> str:
    """A model's header/footer region as a block kind; a lone number in it is the page number."""
    return "page_number" if is_page_number(text) else kind


def is_page_number(text: str) -> bool:
    return bool(PAGE_NUMBER.match(" ".join(text.split())))


def _key(block: Block) -> tuple[bool, str]:
    """Digits, spaces and punctuation aside: OCR of small print drops or adds spaces ("Res.2025" / "Res. 2025").
    Headings count apart, so a title on page 1 is not eaten by the running head that repeats it on later pages."""
    return block.kind == "heading", _NOT_KEY.sub("", _DIGITS.sub("#", block.text.lower()))


def _in_band(block: Block, edge: str, height: float | None) -> bool:
    """Without a box (a markdown-only answer) the block's position on the page is the only evidence."""
    if block.bbox is None or not height:
        return True
    return block.bbox[3] <= height * EDGE_BAND if edge == "top" else block.bbox[1] >= height * (1 - EDGE_BAND)


def _edges(blocks: list[Block]) -> list[tuple[str, int, range]]:
    """(edge, index, the indices between that edge and the block) for the blocks near the top and bottom."""
    top = [("top", i, range(0, i)) for i in range(min(EDGE_BLOCKS, len(blocks)))]
    bottom = [("bottom", len(blocks) - 1 - d, range(len(blocks) - d, len(blocks))) for d in range(min(EDGE_BLOCKS, len(blocks)))]
    return top + bottom


def mark_furniture(pages: list[list[Block]], page_heights: dict[int, float] | None = None) -> list[list[Block]]:
    """The same pages (one list of blocks each, in reading order), furniture blocks retyped.

    Furniture sits at the edge: a block is a candidate only when every block between it and the page's
    top (or bottom) is furniture already, so the walk goes one depth at a time."""
    heights = page_heights or {}
    pages = [list(blocks) for blocks in pages]

    def candidate(block: Block, edge: str) -> bool:
        if block.kind == "heading" and (block.bbox is None or not heights.get(block.page)):
            return False  # the same heading atop every page of a markdown answer may be each page's real heading
        return (block.kind in _CANDIDATES or _number_list(block)) and len(block.text) <= MAX_CHARS and _in_band(block, edge, heights.get(block.page))

    seen: dict[tuple[str, tuple[bool, str]], set[int]] = defaultdict(set)
    for blocks in pages:
        for edge, i, _ in _edges(blocks):
            if blocks[i].furniture or candidate(blocks[i], edge):
                seen[(edge, _key(blocks[i]))].add(blocks[i].page)
    with_blocks = sum(1 for blocks in pages if blocks)
    for depth in range(EDGE_BLOCKS):
        for blocks in pages:
            for edge, i, between in _edges(blocks):
                block = blocks[i]
                if len(between) != depth or block.furniture or not candidate(block, edge):
                    continue
                if not all(blocks[j].furniture for j in between):
                    continue
                needed = max(MIN_HEADING_PAGES if block.kind == "heading" else MIN_PAGES, MIN_PAGE_SHARE * with_blocks)
                if len(seen[(edge, _key(block))]) >= needed:
                    blocks[i] = _retyped(block, "page_header" if edge == "top" else "page_footer")
                elif (block.kind == "paragraph" or _number_list(block)) and is_page_number(block.text):
                    blocks[i] = _retyped(block, "page_number")
    return pages


def _number_list(block: Block) -> bool:
    """"- 3 -" written as markdown is a one-item list of "3 -"."""
    return block.kind == "list" and len(block.items or []) == 1 and is_page_number(block.text)


def _retyped(block: Block, kind: str) -> Block:
    return block.model_copy(update={"kind": typed_kind(kind, block.text), "level": None, "items": None})
