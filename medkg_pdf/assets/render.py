"""Stage 2: every page rendered to its own PNG, one at a time so memory does not grow with pages."""


import math
import time
from dataclasses import dataclass

import numpy as np
import pymupdf
from dagster import AssetExecutionContext, Config, MaterializeResult, asset
from pydantic import Field

from medkg_pdf import layout
from medkg_pdf.assets.common import DocumentError, require, run_per_document
from medkg_pdf.partitions import document_backfill_policy, documents
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import PageImage, PageImages, SourceInfo
from medkg_pdf.validation import MAX_IMAGE_BYTES

INK_LEVEL = 200  # gray values below this count as ink
BLANK_INK_RATIO = 0.0002  # a footer "page 2" alone is above this; a scanned white sheet's speckle is not


class RenderConfig(Config):
    dpi: int = Field(
        default=150,
        description="Render resolution. 150 DPI keeps a letter page near 2.7k Qwen2.5-VL image tokens (28 px patches).",
    )
    max_image_bytes: int = Field(default=MAX_IMAGE_BYTES, description="Larger PNGs are re-rendered smaller.")


@dataclass
class RenderedPage:
    png: bytes
    image: PageImage


def ink_ratio(pix: pymupdf.Pixmap) -> float:
    gray = pix if pix.n == 1 else pymupdf.Pixmap(pymupdf.csGRAY, pix)
    samples = np.frombuffer(gray.samples_mv, dtype=np.uint8)
    return float(np.count_nonzero(samples < INK_LEVEL)) / max(1, samples.size)


def render_page(page: pymupdf.Page, key: str, dpi: int, max_bytes: int) -> RenderedPage:
    """Render at `dpi`; if the PNG is over `max_bytes`, shrink until it fits (huge pages exist)."""
    scale = dpi / 72
    # Cap the pixel count up front so a 200x200-inch page never allocates gigabytes.
    max_pixels = 40_000_000
    area = page.rect.width * page.rect.height * scale * scale
    if area > max_pixels:
        scale *= math.sqrt(max_pixels / area)
    for _ in range(8):
        pix = page.get_pixmap(matrix=pymupdf.Matrix(scale, scale), alpha=False, colorspace=pymupdf.csRGB)
        png = pix.tobytes("png")
        if len(png) <= max_bytes:
            break
        scale *= math.sqrt(max_bytes / len(png)) * 0.9
    else:
        raise DocumentError(f"page {page.number + 1} cannot be rendered under {max_bytes} bytes", reason="image_too_large")
    ratio = ink_ratio(pix)
    image = PageImage(
        index=page.number,
        key=key,
        width=pix.width,
        height=pix.height,
        dpi=round(scale * 72, 2),
        png_bytes=len(png),
        blank=ratio < BLANK_INK_RATIO,
        ink_ratio=round(ratio, 6),
        rotation=page.rotation,
    )
    return RenderedPage(png=png, image=image)


@asset(
    partitions_def=documents,
    backfill_policy=document_backfill_policy,
    group_name="documents",
    deps=["source_pdf"],
    kinds={"png"},
    description="One PNG per page at the configured DPI (each at most 10 MB), plus blank-page detection.",
)
def page_images(context: AssetExecutionContext, config: RenderConfig, storage: DocumentStorage) -> MaterializeResult:
    def render(document_id: str) -> dict:
        info = require(storage, layout.source_info(document_id), SourceInfo, "the validated source PDF")
        started = time.perf_counter()
        images = []
        with pymupdf.open(stream=storage.read_bytes(info.stored_at), filetype="pdf") as doc:
            for page in doc:
                key = layout.page_png(info.sha256, config.dpi, page.number)
                try:
                    rendered = render_page(page, key, config.dpi, config.max_image_bytes)
                except DocumentError:
                    raise
                except Exception as error:  # a page the renderer chokes on fails its document, clearly
                    raise DocumentError(f"page {page.number + 1} cannot be rendered: {error}", reason="render_failed") from None
                storage.write_bytes(key, rendered.png)
                images.append(rendered.image)
        manifest = PageImages(document_id=document_id, sha256=info.sha256, dpi=config.dpi, pages=images)
        storage.write_model(layout.page_images(document_id), manifest)
        seconds = time.perf_counter() - started
        return {
            "pages": len(images),
            "blank_pages": sum(image.blank for image in images),
            "downscaled_pages": sum(image.dpi < config.dpi for image in images),
            "dpi": config.dpi,
            "png_mb": round(sum(image.png_bytes for image in images) / 2**20, 2),
            "render_s": round(seconds, 3),
            "pages_per_s": round(len(images) / max(seconds, 1e-9), 2),
        }

    return run_per_document(context, storage, "page_images", render)
