"""Rendering for stage 2 (`page_images`): every page to its own PNG, one at a time per process, streamed.

Large documents are rendered by several processes (one per available core, the cgroup CPU limit
respected): this process and `workers - 1` helpers claim chunks of pages from a shared counter,
each helper opens the PDF itself from a temporary file and hands back each chunk's PNGs and
records through a bounded queue (`medkg_pdf.page_render`: no Dagster in the helpers); this process
stores them. The helpers come from a forkserver (never a fork of this threaded process) that is
booted in the background on first use, while this process is already rendering; a document done
before a helper is up is simply rendered here. Small documents and single-core machines keep the
plain sequential loop.

Helpers are a budget of the whole process, not of each document: at most `available_cores() - 1`
at once across every document this process renders (the CLI runs several documents in threads of
one process). Each helper costs tens of MB, and on a machine whose cores are already busy with
other documents a helper adds memory, not speed; a document that finds no free helper renders in
its own thread.
"""


import math
import multiprocessing
import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pymupdf
from dagster import Config
from pydantic import Field

from medkg_pdf import storage_keys
from medkg_pdf.errors import DocumentError
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import PageImage
from medkg_pdf.page_render import RenderError, RenderTarget, claim, draw_checked, draw_page, render_helper
from medkg_pdf.validation import MAX_IMAGE_BYTES

class RenderConfig(Config):
    """How pages are drawn; the size they are drawn at is the model profile's render target (`VLLMResource.render_target`)."""

    max_image_bytes: int = Field(default=MAX_IMAGE_BYTES, description="Larger PNGs are re-rendered smaller.")
    force: bool = Field(
        default=False,
        description="Ask the model for every page even when a stored answer would be reused (`medkg-pdf run --force`).",
    )
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


def render_page(page: pymupdf.Page, key: str, target: RenderTarget, max_bytes: int) -> RenderedPage:
    """Render scaled to `target`; if the PNG is over `max_bytes`, shrink until it fits (huge pages exist)."""
    try:
        png, fields = draw_page(page, target, max_bytes)
    except RenderError as error:
        raise DocumentError(str(error), reason=error.reason) from None
    return RenderedPage(png=png, image=PageImage(key=key, **fields))


# ----- rendering a page range (shared by this process and the helper processes) -----------------

CHUNK_PAGES = 8  # pages claimed at a time: small enough to balance, large enough to amortize the claim


def render_pages(
    doc: pymupdf.Document, storage: DocumentStorage, sha256: str, target: RenderTarget, max_bytes: int, start: int, stop: int
) -> Iterator[RenderedPage]:
    """Render pages [start, stop) of an open document one by one, each PNG written to storage before it is yielded."""
    for number in range(start, stop):
        try:
            png, fields = draw_checked(doc, number, target, max_bytes)
        except RenderError as error:
            raise DocumentError(str(error), reason=error.reason) from None
        key = storage_keys.page_png(sha256, target.label, number)
        storage.write_bytes(key, png)
        yield RenderedPage(png=png, image=PageImage(key=key, **fields))


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


_CONTEXT = None


def render_context():
    """The multiprocessing context render helpers start from: the forkserver, preloaded with the light renderer (`page_render`).

    One per process. A caller that runs its own pool beside `render_parallel` (a benchmark comparing
    the two) takes it from here, so both share the same forkserver and its preload.
    """
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["medkg_pdf.page_render"])  # helpers start with only the renderer imported
    return _CONTEXT


def render_parallel(
    data: bytes, sha256: str, config: RenderConfig, storage: DocumentStorage, target: RenderTarget, processes: int
) -> Iterator[tuple[PageImage, bytes | None]]:
    """Render with this process plus `processes - 1` helpers, yielding each page as soon as it exists.

    Every page comes with its PNG, already stored: this process's own chunks as it renders them,
    the helpers' chunks as they arrive (in whatever order they finish). The queue from the helpers
    holds at most one chunk per helper, so they wait while this process is behind. The caller has
    taken the `processes - 1` helpers from `HELPERS`.
    """
    max_bytes = config.max_image_bytes

    def stored(pages: list) -> Iterator[tuple[PageImage, bytes]]:
        for png, fields in pages:
            key = storage_keys.page_png(sha256, target.label, fields["index"])
            storage.write_bytes(key, png)
            yield PageImage(key=key, **fields), png

    with pymupdf.open(stream=data, filetype="pdf") as doc:
        pages = doc.page_count
        chunks = [(start, min(start + CHUNK_PAGES, pages)) for start in range(0, pages, CHUNK_PAGES)]
        ctx = render_context()
        counter = ctx.Value("i", 0)
        results = ctx.Queue(maxsize=max(1, processes - 1))
        received: set[int] = set()
        started: list[multiprocessing.process.BaseProcess] = []
        with tempfile.TemporaryDirectory(prefix="medkg-render-") as tmp:
            pdf_path = os.path.join(tmp, "source.pdf")
            with open(pdf_path, "wb") as handle:
                handle.write(data)
            args = (pdf_path, target, max_bytes, chunks, counter, results)

            def start_helpers() -> None:
                # in a thread: the first start boots the forkserver (a second or two), while this process renders
                for _ in range(processes - 1):
                    if counter.value >= len(chunks):
                        return
                    helper = ctx.Process(target=render_helper, args=args, daemon=True)
                    helper.start()
                    started.append(helper)

            def helper_chunk(timeout: float) -> list | None:
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
                return payload

            starter = threading.Thread(target=start_helpers, name="medkg-render-helpers", daemon=True)
            starter.start()
            try:
                own = 0
                while (index := claim(counter)) < len(chunks):
                    own += 1
                    for rendered in render_pages(doc, storage, sha256, target, max_bytes, *chunks[index]):
                        yield rendered.image, rendered.png
                    while (done := helper_chunk(0.0)) is not None:  # hand on what the helpers finished meanwhile
                        yield from stored(done)
                while len(received) + own < len(chunks):  # the rest of the helpers' chunks
                    done = helper_chunk(0.5)
                    if done is not None:
                        yield from stored(done)
            finally:
                with counter.get_lock():
                    counter.value = max(counter.value, len(chunks))  # no helper claims anything more
                starter.join(timeout=30)
                deadline = time.monotonic() + 30
                for helper in list(started):
                    while helper.is_alive() and time.monotonic() < deadline:
                        try:  # a helper waiting to hand over a chunk nobody will take: take it
                            while True:
                                results.get_nowait()
                        except queue.Empty:
                            pass
                        helper.join(timeout=0.1)
                    if helper.is_alive():
                        helper.terminate()
                        helper.join(timeout=5)
                results.close()


def iter_rendered(
    data: bytes, sha256: str, config: RenderConfig, storage: DocumentStorage, target: RenderTarget, used: dict | None = None
) -> Iterator[tuple[PageImage, bytes | None]]:
    """Every page of a PDF rendered to `target` and stored, in render order; one process or several by
    size and by the helpers free in this process. `used["processes"]` says how many rendered it."""
    with pymupdf.open(stream=data, filetype="pdf") as doc:
        helpers = HELPERS.take(render_processes(config, doc.page_count) - 1)
        if used is not None:
            used["processes"] = 1 + helpers
        if helpers == 0:
            for rendered in render_pages(doc, storage, sha256, target, config.max_image_bytes, 0, doc.page_count):
                yield rendered.image, rendered.png
            return
    try:
        yield from render_parallel(data, sha256, config, storage, target, 1 + helpers)
    finally:
        HELPERS.give_back(helpers)
