"""One page to a PNG, and the render helper processes' loop: PyMuPDF, OpenCV and NumPy only.

Kept apart from `medkg_pdf.rendering` (which imports Dagster for its config and storage) so that the render
helper processes and their forkserver import only this: ~50 MB each instead of ~90 MB with the
code location (measured by bench/memory_cli.py). The helpers do not write to storage (that needs
the storage resource, hence Dagster); they send each page's PNG and record back through a bounded
queue, and the document's process stores them, so a helper never runs far ahead of the requests.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import cv2
import numpy as np
import pymupdf

INK_LEVEL = 200  # gray values below this count as ink
BLANK_INK_RATIO = 0.0002  # a footer "page 2" alone is above this; a scanned white sheet's speckle is not
MAX_PIXELS = 40_000_000  # capped up front so a 200x200-inch page never allocates gigabytes


class RenderError(Exception):
    """A page that cannot be rendered; `reason` is the document's quarantine reason."""

    def __init__(self, message: str, reason: str = "render_failed"):
        super().__init__(message)
        self.reason = reason


def ink_ratio(pix: pymupdf.Pixmap) -> float:
    gray = pix if pix.n == 1 else pymupdf.Pixmap(pymupdf.csGRAY, pix)
    samples = np.frombuffer(gray.samples_mv, dtype=np.uint8)
    return float(np.count_nonzero(samples < INK_LEVEL)) / max(1, samples.size)


def encode_png(pix: pymupdf.Pixmap) -> bytes:
    """PNG of an RGB pixmap. OpenCV encodes without holding the GIL (PyMuPDF's tobytes holds it for
    the ~0.1 s of a page), so the requests and other documents go on while a page is encoded."""
    rgb = np.frombuffer(pix.samples_mv, dtype=np.uint8).reshape(pix.height, pix.width, 3)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RenderError(f"page image {pix.width}x{pix.height} could not be encoded as PNG")
    return png.tobytes()


def draw_page(page: pymupdf.Page, dpi: int, max_bytes: int) -> tuple[bytes, dict[str, Any]]:
    """(PNG, the fields of its `PageImage` but `key`) at `dpi`; over `max_bytes`, shrunk until it fits."""
    scale = dpi / 72
    area = page.rect.width * page.rect.height * scale * scale
    if area > MAX_PIXELS:
        scale *= math.sqrt(MAX_PIXELS / area) * 0.999  # pixmap sides round up: stay under, not 1 px over
    for _ in range(8):
        pix = page.get_pixmap(matrix=pymupdf.Matrix(scale, scale), alpha=False, colorspace=pymupdf.csRGB)
        png = encode_png(pix)
        if len(png) <= max_bytes:
            break
        scale *= math.sqrt(max_bytes / len(png)) * 0.9
    else:
        raise RenderError(f"page {page.number + 1} cannot be rendered under {max_bytes} bytes", reason="image_too_large")
    ratio = ink_ratio(pix)
    fields = {
        "index": page.number,
        "width": pix.width,
        "height": pix.height,
        "dpi": round(scale * 72, 2),
        "png_bytes": len(png),
        "png_sha256": hashlib.sha256(png).hexdigest(),  # what the model is shown: part of the page's cache key
        "width_pt": round(page.rect.width, 2),
        "height_pt": round(page.rect.height, 2),
        "blank": ratio < BLANK_INK_RATIO,
        "ink_ratio": round(ratio, 6),
        "rotation": page.rotation,
    }
    return png, fields


def draw_checked(doc: pymupdf.Document, number: int, dpi: int, max_bytes: int) -> tuple[bytes, dict[str, Any]]:
    """`draw_page` of page `number`; whatever the renderer raises becomes a RenderError naming the page."""
    try:
        return draw_page(doc[number], dpi, max_bytes)
    except RenderError:
        raise
    except Exception as error:  # a page the renderer chokes on fails its document, clearly
        raise RenderError(f"page {number + 1} cannot be rendered: {error}") from None


def claim(counter) -> int:
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    return index


def render_helper(pdf_path: str, dpi: int, max_bytes: int, chunks, counter, results) -> None:
    """A helper process: claim chunks of pages until none is left; each chunk's (PNG, fields) pairs go
    to `results` (bounded: a put waits while the document's process is behind)."""
    doc = None
    try:
        while (index := claim(counter)) < len(chunks):
            start, stop = chunks[index]
            try:
                if doc is None:  # opened only once there is work: a late helper never touches the file
                    doc = pymupdf.open(pdf_path)
                pages = [draw_checked(doc, number, dpi, max_bytes) for number in range(start, stop)]
            except RenderError as error:
                results.put((index, "error", (str(error), error.reason)))
                return
            except BaseException as error:  # noqa: BLE001 - reported to the parent, which fails the document
                results.put((index, "error", (f"pages {start + 1}-{stop} cannot be rendered: {error}", "render_failed")))
                return
            results.put((index, "ok", pages))
    finally:
        if doc is not None:
            doc.close()
