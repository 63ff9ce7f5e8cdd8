"""What the quality tests share: PDFs with distinct pages, a "model" that reads the text layer, one chain runner.

`TextLayerModel` stands in for the VLM behind the VllmDouble: it renders the PDFs a test will
register exactly as the `page_images` stage does (same function, same DPI), remembers
`sha256(png) -> page text`, and answers a request for that image with the text, passed through
an optional `transform` (drop digits, lose a page, ...). So a test chooses what the model gets
wrong, and every other part of the chain (storage, Dagster, HTTP client, checks) is real.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable

import pymupdf
from dagster import AssetSelection, DagsterInstance, ExecuteInProcessResult, materialize
from dagster_aws.s3 import S3Resource

from medkg_pdf.defs.documents import document_assets
from medkg_pdf.page_render import RenderTarget
from medkg_pdf.profiles import get_profile
from medkg_pdf.rendering import render_page
from medkg_pdf.defs.documents import document_checks
from medkg_pdf.resources.pushgateway import PushgatewayResource
from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf.resources.storage import LocalStorage
from medkg_pdf.resources.vllm import VLLMResource
from medkg_pdf.validation import MAX_IMAGE_BYTES

MODEL = "qwen-double"
LETTER = (612, 792)


def pdf_with_pages(pages: list[list[str]], *, scanned: bool = False) -> bytes:
    """A letter-size PDF whose page i carries the lines pages[i] (Helvetica 11 pt).

    scanned=True rasterises each page into an image-only page: no text layer, as from a scanner.
    """
    doc = pymupdf.open()
    for lines in pages:
        page = doc.new_page(width=LETTER[0], height=LETTER[1])
        for i, line in enumerate(lines):
            page.insert_text((72, 72 + 14 * i), line, fontname="helv", fontsize=11)
    if scanned:
        images = pymupdf.open()
        for page in doc:
            pix = page.get_pixmap(dpi=200, colorspace=pymupdf.csGRAY)
            images.new_page(width=LETTER[0], height=LETTER[1]).insert_image(pymupdf.Rect(0, 0, *LETTER), pixmap=pix)
        doc.close()
        doc = images
    data = doc.tobytes(garbage=3, deflate=True, no_new_id=True)
    doc.close()
    return data


def drop_digits(text: str) -> str:
    return re.sub(r"\d", "", text)


class TextLayerModel:
    """Answers each known page image with its text (the text layer, or the text given for a scan)."""

    def __init__(self, transform: Callable[[str], str] = lambda text: text, target: RenderTarget | None = None):
        self.transform = transform
        self.target = target or get_profile(None, MODEL).render_target()  # what the pipeline draws for MODEL
        self.pages: dict[str, str] = {}
        self.unknown_images = 0

    def learn(self, pdf: bytes, texts: list[str] | None = None) -> "TextLayerModel":
        with pymupdf.open(stream=pdf, filetype="pdf") as doc:
            for page in doc:
                rendered = render_page(page, "unused", self.target, MAX_IMAGE_BYTES)
                text = texts[page.number] if texts is not None else page.get_text("text", sort=True).strip()
                self.pages[hashlib.sha256(rendered.png).hexdigest()] = text
        return self

    def __call__(self, png: bytes, body: dict) -> str:
        text = self.pages.get(hashlib.sha256(png).hexdigest())
        if text is None:
            self.unknown_images += 1
            return "# unknown page"
        return self.transform(text)


def write_pdfs(directory: Path, pdfs: dict[str, bytes]) -> list[Path]:
    paths = []
    for name, data in pdfs.items():
        path = directory / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def resources(storage: LocalStorage, vllm: VLLMResource, **overrides) -> dict:
    base = {
        "storage": storage,
        "vllm": vllm,
        "inbox_s3": S3Resource(region_name="us-east-1"),  # never called: sources are local files
        "quality_targets": QualityTargets(),
        "pushgateway": PushgatewayResource(),
    }
    base.update(overrides)
    return base


def run_each(instance: DagsterInstance, resource_defs: dict, document_ids: list[str], assets: list | None = None) -> list[ExecuteInProcessResult]:
    """One run per document, as a backfill (BackfillPolicy.multi_run(1)) or the sensor launches them."""
    return [run(instance, resource_defs, assets, partition_key=document_id) for document_id in document_ids]


def run(
    instance: DagsterInstance,
    resource_defs: dict,
    assets: list | None = None,
    *,
    partition_key: str | None = None,
    tags: dict | None = None,
    selection: AssetSelection | None = None,
) -> ExecuteInProcessResult:
    """Materialize the document chain with its checks (or `assets`), never raising on failure."""
    if selection is not None and partition_key is not None:
        # Dagster 1.13 derives a run's partitions definition from its selected assets, and a
        # checks-only selection has none: the partition goes in as the run tag instead.
        tags, partition_key = {**(tags or {}), "dagster/partition": partition_key}, None
    return materialize(
        assets if assets is not None else [*document_assets, *document_checks],
        instance=instance,
        resources=resource_defs,
        partition_key=partition_key,
        tags=tags,
        selection=selection,
        raise_on_error=False,
    )


def check_results(result: ExecuteInProcessResult) -> dict:
    """check name -> its evaluation in this run."""
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def materialized(result: ExecuteInProcessResult) -> set[str]:
    return {event.asset_key.path[-1] for event in result.get_asset_materialization_events()}
