"""A range of a PDF's pages (`--pages 1-5,9`), and the smaller PDF that holds only them.

A selection is a document of its own: its id carries the range, and `source_pdf` stores the
selected pages as a PDF of their own, so every later stage sees an ordinary document and nothing
recorded for the whole PDF is ever taken for the part (or the other way round).
"""

from __future__ import annotations

import re

import pymupdf

from medkg_pdf.validation import InvalidPdfError

_PART = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_pages(spec: str) -> tuple[int, ...]:
    """'1-5,9' -> (1, 2, 3, 4, 5, 9): 1-based, sorted, each page once."""
    pages: set[int] = set()
    for part in spec.split(","):
        match = _PART.match(part)
        if not match:
            raise ValueError(f"{spec!r}: expected page numbers and ranges like 1-5,9 (pages count from 1)")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if first < 1 or last < first:
            raise ValueError(f"{part.strip()!r}: a range goes from page 1 or later up to a page not before it")
        if last - first >= 100_000:
            raise ValueError(f"{part.strip()!r}: over 100 000 pages")
        pages.update(range(first, last + 1))
    return tuple(sorted(pages))


def pages_label(pages: tuple[int, ...] | list[int]) -> str:
    """(1, 2, 3, 4, 5, 9) -> '1-5,9': the shortest spec that parses back to the same pages."""
    runs: list[list[int]] = []
    for page in sorted(pages):
        if runs and page == runs[-1][1] + 1:
            runs[-1][1] = page
        else:
            runs.append([page, page])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def select_pages(data: bytes, pages: tuple[int, ...] | list[int]) -> bytes:
    """The PDF with only `pages`, in order (PyMuPDF's `select` keeps fonts, images and links they use)."""
    with pymupdf.open(stream=data, filetype="pdf") as doc:
        missing = [page for page in pages if page > doc.page_count]
        if missing:
            raise InvalidPdfError(
                "pages_out_of_range",
                f"pages {pages_label(missing)} were asked for, but the PDF has {doc.page_count} pages",
            )
        doc.select([page - 1 for page in pages])
        return doc.tobytes(garbage=3, deflate=True)
