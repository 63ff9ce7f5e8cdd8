"""Does `page_images` render at PyMuPDF speed? The asset versus a raw PyMuPDF loop on the same pages.

A step-level figure: `page_images` is materialized alone (`selection=["page_images"]`: the
`page_images_and_parses` step renders and stores every page and sends nothing; rendering and
parsing overlap in that step when both are selected, see `bench/end_to_end.py` for the whole
process). Its stored page images are deleted before each sample, since the step reuses the page
images of the same PDF when they are all there.

Same PDF (160 text pages, letter size), same DPI (150):

* raw loop: `page.get_pixmap(...)` and the asset's own PNG encoder (`encode_png`: OpenCV,
  compression level 1) for every page in one process, nothing else; and the same loop in N
  already-running processes (forkserver, warm), each opening the document itself and rendering a
  contiguous page range (time = dispatch to last result). PyMuPDF's own `tobytes("png")` loop is
  reported beside it (not a target: a slower encoder, which the asset no longer uses);
* `page_images` as configured by default (`workers=0`: one process per usable core, here N =
  the cores this process may use): this process plus N-1 helper processes claiming 8-page chunks;
  each helper opens the PDF, writes its PNGs to storage and returns only the page records.
  Measured warm (the forkserver is up, as in a process that rendered a large document before) and
  cold (the first document in a fresh process: the forkserver boots, importing the code location,
  while this process already renders; measured in a new interpreter each time);
* `page_images` with `workers=1`: the sequential path (also what documents under
  `parallel_min_pages` = 64 pages take).

The target compares `page_images` as it runs by default with the raw loop; the same-process-count
comparisons give the per-core cost of what the asset adds to the raw loop (the blank-page ink
ratio: a gray pixmap and a numpy count, and the fsync'd storage write of each PNG). The asset's
time is the step's function (STEP_START to STEP_OUTPUT in the event log): reading the PDF from
storage, rendering, ink ratio, PNG writes, the manifest. The N-process output is checked to equal
the sequential output (records and PNG bytes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.common import (
    PAGES_STEP,
    REPO,
    Section,
    cores,
    fresh_dir,
    instance_home,
    materialize,
    median,
    open_instance,
    pages_config,
    register_paths,
    step_times,
    table,
    unused_s3,
    unused_vllm,
    write_pdfs,
)

PAGES = 160
DPI = 150
# pages are drawn to the model profile's render target; a letter page's longest side (11 in) at 150 DPI
# is the same scale, so both sides of the comparison draw the same pixels
LETTER_AT_DPI = round(11 * DPI)
REPEATS = 2
COLD_SAMPLES = 2


def render_only(instance, storage, document_id: str, config: dict) -> dict:
    """`page_images` alone for one document, rendered afresh: seconds of the step's function, render processes."""
    from medkg_pdf import storage_keys
    from medkg_pdf.defs.documents import page_images

    storage.delete(storage_keys.page_images(document_id))  # else the step reuses the stored page images
    vllm = unused_vllm(render_longest_side=LETTER_AT_DPI)
    result = materialize([page_images], instance, {"storage": storage, "vllm": vllm}, partition_key=document_id,
                         selection=["page_images"], run_config=pages_config(**config))  # fmt: skip
    times = step_times(instance, result.run_id)[PAGES_STEP]
    (meta,) = [e.event_specific_data.materialization.metadata for e in result.get_asset_materialization_events()]
    assert not meta["reused_from_earlier_attempt"].value
    return {"s": times["output"] - times["start"], "processes": meta["render_processes"].value}


def cold_child(home: str, data: str, document_id: str) -> None:
    """In a fresh interpreter: `page_images` by default for one document, the first render of the process."""
    import warnings

    warnings.filterwarnings("ignore")
    from bench.common import open_instance
    from medkg_pdf.resources.storage import LocalStorage

    print(json.dumps(render_only(open_instance(Path(home)), LocalStorage(root=data), document_id, {})))


def cold(home, data, document_id) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-m", "bench.render", "--cold", str(home), str(data), document_id], cwd=REPO,
                         env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def raw_range(pdf_path: str, start: int, stop: int, dpi: int, encoder: str = "asset") -> int:
    """Render pages [start, stop) to PNG bytes: with the asset's encoder (OpenCV), or PyMuPDF's own ("pymupdf")."""
    import pymupdf

    from medkg_pdf.page_render import encode_png

    total = 0
    matrix = pymupdf.Matrix(dpi / 72, dpi / 72)
    with pymupdf.open(pdf_path) as doc:
        for number in range(start, stop):
            if encoder == "pymupdf":
                total += len(doc[number].get_pixmap(dpi=dpi).tobytes("png"))
            else:
                total += len(encode_png(doc[number].get_pixmap(matrix=matrix, alpha=False, colorspace=pymupdf.csRGB)))
    return total


def _warm(_: int) -> int:
    import pymupdf  # noqa: F401

    return 0


def raw_sequential(pdf_path: str, pages: int, encoder: str = "asset") -> float:
    started = time.perf_counter()
    raw_range(pdf_path, 0, pages, DPI, encoder)
    return time.perf_counter() - started


def raw_parallel(pool: ProcessPoolExecutor, pdf_path: str, pages: int, processes: int) -> float:
    step = -(-pages // processes)
    started = time.perf_counter()
    futures = [pool.submit(raw_range, pdf_path, s, min(s + step, pages), DPI) for s in range(0, pages, step)]
    for future in futures:
        future.result()
    return time.perf_counter() - started


def run(quick: bool = False) -> Section:
    from medkg_pdf import storage_keys
    from medkg_pdf.defs.documents import source_pdf
    from medkg_pdf.resources.storage import LocalStorage
    from medkg_pdf.schemas import PageImages

    section = Section("Rendering: page_images vs a raw PyMuPDF loop")
    root = fresh_dir("render")
    n = cores()
    pages = 64 if quick else PAGES
    (path,) = write_pdfs(root / "pdfs", [pages])
    instance = open_instance(instance_home(root))
    stores = {w: LocalStorage(root=str(root / f"data-{w}")) for w in ("seq", "par")}
    ids = {}
    for name, storage in stores.items():
        (ids[name],) = register_paths(storage, instance, [path])
        materialize([source_pdf], instance, {"storage": storage, "inbox_s3": unused_s3()}, partition_key=ids[name])

    def asset(name: str, workers: int | None) -> dict:
        config = {} if workers is None else {"workers": workers}  # None: the default
        return render_only(instance, stores[name], ids[name], config)

    samples: dict[str, list[float]] = {"raw1": [], "rawN": [], "asset1": [], "assetN": [], "pymupdf1": []}
    colds = [cold(instance_home(root), stores["par"].root, ids["par"]) for _ in range(0 if quick or n == 1 else COLD_SAMPLES)]
    from medkg_pdf.rendering import render_context

    # one forkserver per process: start it with the asset's preload (as page_images would), not bare
    ctx = render_context()
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
        list(pool.map(_warm, range(n * 4)))
        processes = []
        for rep in range(1 if quick else REPEATS):
            for kind in (("raw1", "asset1", "rawN", "assetN") if rep % 2 == 0 else ("assetN", "rawN", "asset1", "raw1")):
                if kind == "raw1":
                    samples[kind].append(raw_sequential(str(path), pages))
                elif kind == "rawN":
                    samples[kind].append(raw_parallel(pool, str(path), pages, n))
                elif kind == "asset1":
                    samples[kind].append(asset("seq", 1)["s"])
                else:
                    measured = asset("par", None)
                    samples[kind].append(measured["s"])
                    processes.append(measured["processes"])
        samples["pymupdf1"].append(raw_sequential(str(path), pages, "pymupdf"))  # for reference only

    def fingerprint(name: str):
        manifest = stores[name].read_model(storage_keys.page_images(ids[name]), PageImages)
        return [(p.model_dump(), hashlib.sha256(stores[name].read_bytes(p.key)).hexdigest()) for p in manifest.pages]

    same = fingerprint("seq") == fingerprint("par")
    pps = {kind: pages / median(values) for kind, values in samples.items()}
    section.add(f"step-level: page_images (default: {n} processes) / raw PyMuPDF loop ({pages} pages, {DPI} DPI)",
                pps["assetN"] / pps["raw1"], "", 0.90, gating=True,
                note=f"{pps['assetN']:.1f} vs {pps['raw1']:.1f} pages/s (same PNG encoder); {pps['assetN'] / n:.1f} pages/s "
                     f"per core; up to {max(processes)} render processes (the step's `render_processes`)")  # fmt: skip
    if colds:
        cold_pps = pages / median([c["s"] for c in colds])
        # not gating: how much the forkserver's boot (seconds of CPU importing the code location) costs depends on
        # whether a second core is free at that moment, which a baseline measured minutes apart cannot control
        section.add("page_images (default), first document in a fresh process / raw PyMuPDF loop", cold_pps / pps["raw1"],
                    "", 0.90, kind="ratio, not gating",
                    note=f"{cold_pps:.1f} pages/s, median of {len(colds)} fresh interpreters: the forkserver boots while this "
                         f"process renders ({max(c['processes'] for c in colds)} render processes allowed)")  # fmt: skip
    section.add("per core: page_images 1 process / raw loop 1 process", pps["asset1"] / pps["raw1"], kind="per core",
                note=f"{pps['asset1']:.1f} vs {pps['raw1']:.1f} pages/s: what the asset adds per page (ink ratio, fsync'd write)")
    if n > 1:
        section.add(f"per core: page_images {n} processes / raw loop {n} processes", pps["assetN"] / pps["rawN"], kind="per core",
                    note=f"{pps['assetN']:.1f} vs {pps['rawN']:.1f} pages/s")
        section.add(f"page_images speed-up, {n} processes vs 1", pps["assetN"] / pps["asset1"], "x",
                    note=f"raw loop: {pps['rawN'] / pps['raw1']:.2f} x")
    section.add("raw loop: the asset's PNG encoder (OpenCV) / PyMuPDF's tobytes('png'), 1 process", pps["raw1"] / pps["pymupdf1"],
                "x", note=f"{pps['raw1']:.1f} vs {pps['pymupdf1']:.1f} pages/s: what the encoder alone changes")
    section.add("N-process output equals the sequential output (records, PNG bytes)", 1.0 if same else 0.0, "", 1.0, gating=True)
    labels = {"raw1": "raw loop", "rawN": "raw loop", "asset1": "page_images workers=1", "assetN": "page_images default",
              "pymupdf1": "raw loop, PyMuPDF tobytes('png') (reference)"}  # fmt: skip
    rows = [[labels[kind], f"{n if kind.endswith('N') else 1}", pages / median(v), pages / median(v) / (n if kind.endswith("N") else 1),
             ", ".join(f"{x:.2f}" for x in v)] for kind, v in samples.items()]  # fmt: skip
    section.body.append(
        f"{n} usable cores. PDF: {pages} pages of text (45 lines each, ~0.48 MB PNG per page at {DPI} DPI). "
        "PNG encoding is most of the raw loop's time (OpenCV, compression 1, as the asset encodes; the asset renders "
        "and encodes in the step that also sends pages to the model server, here with nothing to send); the asset adds "
        "the ink ratio (a gray pixmap + numpy), the storage write (fsync) and the manifest. Documents under "
        "`parallel_min_pages` (64) keep the sequential path."
    )
    section.body.append(table(["variant", "processes", "pages/s", "pages/s per process", "seconds per sample"], rows))
    return section


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", nargs=3, metavar=("HOME", "DATA", "DOCUMENT_ID"))
    args = parser.parse_args()
    if args.cold:
        cold_child(*args.cold)
        sys.exit(0)
    result = run()
    for figure in result.figures:
        print(figure.row())
    print("\n\n".join(result.body))
