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
from dataclasses import dataclass
from typing import Any

import numpy as np
import pymupdf

INK_LEVEL = 200  # gray values below this count as ink (the raw `ink_ratio`)
BLANK_INK_RATIO = 0.0002  # white paper: under this raw ink share and no mark left, the page is not sent at all
MAX_PIXELS = 40_000_000  # capped up front so a 200x200-inch page never allocates gigabytes
INK_CONTRAST = 0.35  # content is at least this much darker than the paper around it; bleed-through is ~0.1-0.2
# marks smaller than this (mm²) are dust, not content: scanner specks measured 0.02-0.35 mm² (99 % under 0.18),
# a 9 pt letter 1.4-1.9 mm², a 6 pt one ~0.65 mm² (dots of i and periods, ~0.12 mm², are dropped with the dust)
SPECK_AREA_MM2 = 0.4
CONTENT_PIXELS = 4_000_000  # larger renders are judged downsampled to this
NEAR_BLANK_COMPONENTS = 3  # fewer marks than this left after cleaning: a near-blank page ("Page 2" leaves 5)


@dataclass(frozen=True)
class RenderTarget:
    """The image a model profile reads best, whatever the page's size: the page is scaled, up or down,
    so that its longest side is `longest_side` px, or its area is `pixels` px. A fixed DPI makes a
    2.5x4-inch leaflet 375x600 px (unreadable) and a poster gigapixels."""

    longest_side: int | None = None
    pixels: int | None = None

    def __post_init__(self) -> None:
        if (self.longest_side is None) == (self.pixels is None):
            raise ValueError("a render target is a longest side or a pixel count, exactly one of them")
        if (self.longest_side or self.pixels or 0) < 16:
            raise ValueError(f"render target too small: {self}")

    def scale(self, width_pt: float, height_pt: float) -> float:
        """Pixels per PDF point for a page of this size."""
        if self.longest_side is not None:
            return self.longest_side / max(width_pt, height_pt, 1e-6)
        return math.sqrt(self.pixels / max(width_pt * height_pt, 1e-6))

    @property
    def label(self) -> str:
        """The target as one storage key segment ("long-2000", "px-2116800")."""
        return f"long-{self.longest_side}" if self.longest_side is not None else f"px-{self.pixels}"


class RenderError(Exception):
    """A page that cannot be rendered; `reason` is the document's quarantine reason."""

    def __init__(self, message: str, reason: str = "render_failed"):
        super().__init__(message)
        self.reason = reason


def ink_ratio(gray: np.ndarray) -> float:
    return float(np.count_nonzero(gray < INK_LEVEL)) / max(1, gray.size)


def gray_of(pix: pymupdf.Pixmap) -> np.ndarray:
    gray = pix if pix.n == 1 else pymupdf.Pixmap(pymupdf.csGRAY, pix)
    return np.frombuffer(gray.samples, dtype=np.uint8).reshape(gray.height, gray.width)  # a copy: outlives `gray`


@dataclass(frozen=True)
class Content:
    """What is on a page once scan noise is set aside: `share` of the page's pixels, in `components` marks."""

    share: float
    components: int

    @property
    def near_blank(self) -> bool:
        return self.components < NEAR_BLANK_COMPONENTS


def page_content(gray: np.ndarray, px_per_mm: float) -> Content:
    """Content against the page's own paper, not a fixed gray level: the paper is estimated locally
    (the brightest value around each point, so a grey cast or an uneven scan is paper too); a pixel is
    content only when it is INK_CONTRAST darker than that (faint bleed-through from the back is not);
    marks smaller than a speck of dust at this scale are dropped. No library call does this
    whole judgement; OpenCV does each step."""
    import cv2  # here, not at the top: `RenderTarget` users (profiles, the model client) need no OpenCV

    if gray.size > CONTENT_PIXELS:  # a poster: judged at ~4 Mpx, so the labels never take hundreds of MB
        factor = math.sqrt(CONTENT_PIXELS / gray.size)
        gray = cv2.resize(gray, (max(1, int(gray.shape[1] * factor)), max(1, int(gray.shape[0] * factor))), interpolation=cv2.INTER_AREA)
        px_per_mm *= factor
    height, width = gray.shape
    step = max(1, round(px_per_mm))  # the paper estimate at ~1 px/mm: cheap, and text strokes vanish in it
    small = cv2.resize(gray, (max(1, width // step), max(1, height // step)), interpolation=cv2.INTER_AREA)
    paper = cv2.medianBlur(cv2.dilate(small, np.ones((5, 5), np.uint8)), 5)
    darkest_ink = (paper.astype(np.float32) * (1 - INK_CONTRAST)).astype(np.uint8)
    ink = cv2.compare(gray, cv2.resize(darkest_ink, (width, height), interpolation=cv2.INTER_LINEAR), cv2.CMP_LT)
    _count, _labels, stats, _centroids = cv2.connectedComponentsWithStats(ink, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    kept = areas[areas >= max(2.0, SPECK_AREA_MM2 * px_per_mm**2)]
    return Content(share=float(kept.sum()) / max(1, gray.size), components=int(kept.size))


def encode_png(pix: pymupdf.Pixmap) -> bytes:
    """PNG of an RGB pixmap. OpenCV encodes without holding the GIL (PyMuPDF's tobytes holds it for
    the ~0.1 s of a page), so the requests and other documents go on while a page is encoded."""
    import cv2
    rgb = np.frombuffer(pix.samples_mv, dtype=np.uint8).reshape(pix.height, pix.width, 3)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RenderError(f"page image {pix.width}x{pix.height} could not be encoded as PNG")
    return png.tobytes()


def draw_page(page: pymupdf.Page, target: RenderTarget, max_bytes: int) -> tuple[bytes, dict[str, Any]]:
    """(PNG, the fields of its `PageImage` but `key`) scaled to `target`; over `max_bytes`, shrunk until it fits."""
    scale = target.scale(page.rect.width, page.rect.height)
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
    gray = gray_of(pix)
    ratio = ink_ratio(gray)
    content = page_content(gray, scale * 72 / 25.4)
    fields = {
        "index": page.number,
        "width": pix.width,
        "height": pix.height,
        "dpi": round(scale * 72, 2),  # the scale drawn at, in pixels per inch
        "render_target": target.label,
        "png_bytes": len(png),
        "png_sha256": hashlib.sha256(png).hexdigest(),  # what the model is shown: part of the page's cache key
        "width_pt": round(page.rect.width, 2),
        "height_pt": round(page.rect.height, 2),
        "blank": ratio < BLANK_INK_RATIO and content.components == 0,
        "ink_ratio": round(ratio, 6),
        "content_ratio": round(content.share, 6),
        "content_components": content.components,
        "near_blank": content.near_blank,
        "rotation": page.rotation,
    }
    return png, fields


def draw_checked(doc: pymupdf.Document, number: int, target: RenderTarget, max_bytes: int) -> tuple[bytes, dict[str, Any]]:
    """`draw_page` of page `number`; whatever the renderer raises becomes a RenderError naming the page."""
    try:
        return draw_page(doc[number], target, max_bytes)
    except RenderError:
        raise
    except Exception as error:  # a page the renderer chokes on fails its document, clearly
        raise RenderError(f"page {number + 1} cannot be rendered: {error}") from None


def claim(counter) -> int:
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    return index


def render_helper(pdf_path: str, target: RenderTarget, max_bytes: int, chunks, counter, results) -> None:
    """A helper process: claim chunks of pages until none is left; each chunk's (PNG, fields) pairs go
    to `results` (bounded: a put waits while the document's process is behind)."""
    doc = None
    try:
        while (index := claim(counter)) < len(chunks):
            start, stop = chunks[index]
            try:
                if doc is None:  # opened only once there is work: a late helper never touches the file
                    doc = pymupdf.open(pdf_path)
                pages = [draw_checked(doc, number, target, max_bytes) for number in range(start, stop)]
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
