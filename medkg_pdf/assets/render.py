"""Rendering for stage 2 (`page_images`): every page to its own PNG, one at a time per process, streamed.

Large documents are rendered by several processes (one per available core, the cgroup CPU limit
respected): this process and `workers - 1` helpers claim chunks of pages from a shared counter,
each helper opens the PDF itself from a temporary file, writes its PNGs to storage and hands back
only the small `PageImage` records. The helpers come from a forkserver (never a fork of this
threaded process) that is booted in the background on first use, while this process is already
rendering; a document done before a helper is up is simply rendered here. Small documents and
single-core machines keep the plain sequential loop.

Helpers are a budget of the whole process, not of each document: at most `available_cores() - 1`
at once across every document this process renders (the CLI runs several documents in threads of
one process). Each helper costs tens of MB, and on a machine whose cores are already busy with
other documents a helper adds memory, not speed; a document that finds no free helper renders in
its own thread.
"""


import importlib
import math
import multiprocessing
import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pymupdf
from dagster import Config, ConfigurableResource
from pydantic import Field

from medkg_pdf import layout
from medkg_pdf.assets.common import DocumentError
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import PageImage
from medkg_pdf.validation import MAX_IMAGE_BYTES

INK_LEVEL = 200  # gray values below this count as ink
BLANK_INK_RATIO = 0.0002  # a footer "page 2" alone is above this; a scanned white sheet's speckle is not


class RenderConfig(Config):
    dpi: int = Field(
        default=150,
        description="Render resolution. 150 DPI keeps a letter page near 2.7k Qwen2.5-VL image tokens (28 px patches).",
    )
    max_image_bytes: int = Field(default=MAX_IMAGE_BYTES, description="Larger PNGs are re-rendered smaller.")
    workers: int = Field(
        default=0,
        ge=0,
        description=(
            "Processes rendering one document: 0 = one per available core (cgroup CPU limit respected), "
            "1 = this process only."
        ),
    )
    parallel_min_pages: int = Field(
        default=64,
        ge=1,
        description=(
            "Documents with fewer pages render in this process only (the first helper of a process costs "
            "~2-3 s of CPU to start)."
        ),
    )


@dataclass
class RenderedPage:
    png: bytes
    image: PageImage


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
        raise DocumentError(f"page image {pix.width}x{pix.height} could not be encoded as PNG", reason="render_failed")
    return png.tobytes()


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
        png = encode_png(pix)
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


# ----- rendering a page range (shared by this process and the helper processes) -----------------

CHUNK_PAGES = 8  # pages claimed at a time: small enough to balance, large enough to amortize the claim


def render_pages(
    doc: pymupdf.Document, storage: DocumentStorage, sha256: str, dpi: int, max_bytes: int, start: int, stop: int
) -> Iterator[RenderedPage]:
    """Render pages [start, stop) of an open document one by one, each PNG written to storage before it is yielded."""
    for number in range(start, stop):
        page = doc[number]
        key = layout.page_png(sha256, dpi, page.number)
        try:
            rendered = render_page(page, key, dpi, max_bytes)
        except DocumentError:
            raise
        except Exception as error:  # a page the renderer chokes on fails its document, clearly
            raise DocumentError(f"page {page.number + 1} cannot be rendered: {error}", reason="render_failed") from None
        del page
        storage.write_bytes(key, rendered.png)
        yield rendered


def render_range(
    doc: pymupdf.Document, storage: DocumentStorage, sha256: str, dpi: int, max_bytes: int, start: int, stop: int
) -> list[PageImage]:
    """Render pages [start, stop), keep only the records (the PNGs are in storage)."""
    return [rendered.image for rendered in render_pages(doc, storage, sha256, dpi, max_bytes, start, stop)]


def available_cores() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU limit (a Kubernetes `limits.cpu`)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


class _HelperBudget:
    """Render helper processes this process may run at once, shared by every document it renders."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_use = 0

    def take(self, wanted: int) -> int:
        with self._lock:
            granted = max(0, min(wanted, max(1, available_cores() - 1) - self._in_use))
            self._in_use += granted
            return granted

    def give_back(self, count: int) -> None:
        with self._lock:
            self._in_use -= count


HELPERS = _HelperBudget()


def render_processes(config: RenderConfig, pages: int) -> int:
    if pages < max(config.parallel_min_pages, 2 * CHUNK_PAGES):
        return 1
    wanted = config.workers or available_cores()
    return max(1, min(wanted, math.ceil(pages / CHUNK_PAGES)))


def _resource_spec(resource: ConfigurableResource) -> tuple[str, str, dict[str, Any]]:
    """A configured resource as plain data (resources do not pickle): class path and resolved field values."""
    fields: dict[str, Any] = {}
    for name in type(resource).model_fields:
        value = getattr(resource, name)
        nested = isinstance(value, ConfigurableResource)
        fields[name] = ("resource", _resource_spec(value)) if nested else ("value", value)
    return type(resource).__module__, type(resource).__qualname__, fields


def _from_spec(spec: tuple[str, str, dict[str, Any]]) -> Any:
    module, qualname, fields = spec
    cls = getattr(importlib.import_module(module), qualname)
    return cls(**{name: (_from_spec(value) if kind == "resource" else value) for name, (kind, value) in fields.items()})


def _claim(counter) -> int:
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    return index


def _render_helper(pdf_path: str, sha256: str, dpi: int, max_bytes: int, storage_spec, chunks, counter, results):
    """A helper process: claim chunks until none is left; PNGs go to storage, records to `results`."""
    doc = storage = None
    try:
        while (index := _claim(counter)) < len(chunks):
            try:
                if doc is None:  # opened only once there is work: a late helper never touches the file
                    storage = _from_spec(storage_spec)
                    doc = pymupdf.open(pdf_path)
                images = render_range(doc, storage, sha256, dpi, max_bytes, *chunks[index])
            except DocumentError as error:
                results.put((index, "error", (str(error), error.reason)))
                return
            except BaseException as error:  # noqa: BLE001 - reported to the parent, which fails the document
                first, last = chunks[index][0] + 1, chunks[index][1]
                results.put((index, "error", (f"pages {first}-{last} cannot be rendered: {error}", "render_failed")))
                return
            results.put((index, "ok", [image.model_dump() for image in images]))
    finally:
        if doc is not None:
            doc.close()


_CONTEXT = None


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload([__name__])  # helpers start with this module imported
    return _CONTEXT


def render_parallel(
    data: bytes, sha256: str, config: RenderConfig, storage: DocumentStorage, processes: int
) -> Iterator[tuple[PageImage, bytes | None]]:
    """Render with this process plus `processes - 1` helpers, yielding each page as soon as it exists.

    Pages this process renders come with their PNG; pages of the helpers' chunks come as records
    only (their PNGs are in storage), in whatever order the chunks finish. The caller has taken
    the `processes - 1` helpers from `HELPERS`.
    """
    with pymupdf.open(stream=data, filetype="pdf") as doc:
        pages = doc.page_count
        chunks = [(start, min(start + CHUNK_PAGES, pages)) for start in range(0, pages, CHUNK_PAGES)]
        ctx = _context()
        counter = ctx.Value("i", 0)
        results = ctx.Queue()
        received: set[int] = set()
        started: list[multiprocessing.process.BaseProcess] = []
        with tempfile.TemporaryDirectory(prefix="medkg-render-") as tmp:
            pdf_path = os.path.join(tmp, "source.pdf")
            with open(pdf_path, "wb") as handle:
                handle.write(data)
            dpi, max_bytes = config.dpi, config.max_image_bytes
            args = (pdf_path, sha256, dpi, max_bytes, _resource_spec(storage), chunks, counter, results)

            def start_helpers() -> None:
                # in a thread: the first start boots the forkserver (seconds), while this process renders
                for _ in range(processes - 1):
                    if counter.value >= len(chunks):
                        return
                    helper = ctx.Process(target=_render_helper, args=args, daemon=True)
                    helper.start()
                    started.append(helper)

            def helper_chunk(timeout: float) -> list[PageImage] | None:
                try:
                    index, kind, payload = results.get(timeout=timeout)
                except queue.Empty:
                    if timeout and not starter.is_alive() and not any(helper.is_alive() for helper in started):
                        try:
                            index, kind, payload = results.get(timeout=1.0)
                        except queue.Empty:
                            codes = [helper.exitcode for helper in started]
                            raise DocumentError(
                                f"a render helper process died (exit codes {codes}) before finishing its pages",
                                reason="render_failed",
                            ) from None
                    else:
                        return None
                if kind == "error":
                    message, reason = payload
                    raise DocumentError(message, reason=reason)
                received.add(index)
                return [PageImage.model_validate(record) for record in payload]

            starter = threading.Thread(target=start_helpers, name="medkg-render-helpers", daemon=True)
            starter.start()
            try:
                own = 0
                while (index := _claim(counter)) < len(chunks):
                    own += 1
                    for rendered in render_pages(doc, storage, sha256, dpi, max_bytes, *chunks[index]):
                        yield rendered.image, rendered.png
                    while (images := helper_chunk(0.0)) is not None:  # hand on what the helpers finished meanwhile
                        yield from ((image, None) for image in images)
                while len(received) + own < len(chunks):  # the rest of the helpers' chunks
                    images = helper_chunk(0.5)
                    if images is not None:
                        yield from ((image, None) for image in images)
            finally:
                with counter.get_lock():
                    counter.value = max(counter.value, len(chunks))  # no helper claims anything more
                deadline = time.monotonic() + 30
                for helper in list(started):
                    helper.join(timeout=max(0.0, deadline - time.monotonic()))
                    if helper.is_alive():
                        helper.terminate()
                        helper.join(timeout=5)
                results.close()


def iter_rendered(
    data: bytes, sha256: str, config: RenderConfig, storage: DocumentStorage, used: dict | None = None
) -> Iterator[tuple[PageImage, bytes | None]]:
    """Every page of a PDF rendered and stored, in render order; one process or several by size and
    by the helpers free in this process. `used["processes"]` says how many rendered it."""
    with pymupdf.open(stream=data, filetype="pdf") as doc:
        helpers = HELPERS.take(render_processes(config, doc.page_count) - 1)
        if used is not None:
            used["processes"] = 1 + helpers
        if helpers == 0:
            for rendered in render_pages(doc, storage, sha256, config.dpi, config.max_image_bytes, 0, doc.page_count):
                yield rendered.image, rendered.png
            return
    try:
        yield from render_parallel(data, sha256, config, storage, 1 + helpers)
    finally:
        HELPERS.give_back(helpers)
