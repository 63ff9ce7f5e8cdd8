"""Rendering with helper processes gives exactly what the sequential loop gives."""

import subprocess
import sys
from pathlib import Path

import pymupdf
import pytest
from dagster import materialize

from medkg_pdf import storage_keys
from medkg_pdf.defs.documents import page_images, source_pdf
from medkg_pdf.page_render import MAX_PIXELS
from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf.resources.storage import LocalStorage
from medkg_pdf.schemas import PageImages
from medkg_pdf_tests.support.chain import register_files, vllm_for

UNUSED_SERVER = "http://127.0.0.1:9"  # page_images alone never calls the model server


def _render(tmp_path, instance, pdf, name: str, workers: int):
    from dagster_aws.s3 import S3Resource

    storage = LocalStorage(root=str(tmp_path / name))
    (doc_id,) = register_files(storage, instance, [pdf])
    result = materialize(
        [source_pdf, page_images], partition_key=doc_id, instance=instance, selection=["source_pdf", "page_images"],
        resources={"storage": storage, "inbox_s3": S3Resource(), "vllm": vllm_for(UNUSED_SERVER), "quality_targets": QualityTargets()},
        run_config={"ops": {"page_images_and_parses": {"config": {"workers": workers, "parallel_min_pages": 1}}}},
    )  # fmt: skip
    assert result.success
    manifest = storage.read_model(storage_keys.page_images(doc_id), PageImages)
    metadata = next(
        e.event_specific_data.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key.path == ["page_images"]
    )
    return manifest, [storage.read_bytes(page.key) for page in manifest.pages], metadata


def test_parallel_render_equals_sequential(tmp_path, instance):
    doc = pymupdf.open()
    for number in range(1, 25):
        doc.new_page().insert_text((72, 72 + number * 10), f"Page {number}: dose {number} mg", fontsize=12)
    pdf = tmp_path / "many.pdf"
    doc.save(pdf)
    sequential, seq_pngs, _ = _render(tmp_path, instance, pdf, "seq", workers=1)
    parallel, par_pngs, metadata = _render(tmp_path, instance, pdf, "par", workers=2)
    assert metadata["render_processes"].value == 2
    assert [p.model_dump(exclude={"key"}) for p in parallel.pages] == [p.model_dump(exclude={"key"}) for p in sequential.pages]
    assert par_pngs == seq_pngs and len(par_pngs) == 24


REPO = Path(__file__).resolve().parents[1]

# A page drawn in a process whose address space is capped, as a run pod's memory limit caps it.
_UNDER_A_CAP = """
import resource, sys
cap = int(sys.argv[1]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
import pymupdf
from medkg_pdf_tests.support import pdf_factory
from medkg_pdf.page_render import RenderTarget, draw_page
with pymupdf.open(stream=getattr(pdf_factory, sys.argv[2])(), filetype="pdf") as doc:
    png, fields = draw_page(doc[0], RenderTarget(longest_side=int(sys.argv[3])), 10 * 2**20)
# VmHWM: this process's own peak RSS (ru_maxrss would report the forking pytest's, which survives exec)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(fields["width"] * fields["height"], len(png), peak_kb // 1024)
"""
ADDRESS_SPACE_MB = 1200  # the interpreter, PyMuPDF and OpenCV take ~700 MB of address space before any page


@pytest.mark.parametrize("pdf, longest_side", [("huge_page_pdf", 30_000), ("decompression_bomb_pdf", 2000)])
def test_a_page_that_would_take_gigabytes_renders_in_a_process_capped_at_1200_mb(pdf, longest_side):
    """A 200 x 200-inch poster is 2.7 GB at 150 DPI (MuPDF refuses to draw it at all); an image
    stream that inflates to 900 MB declares 30 000 x 30 000 pixels. Both must render bounded under
    the cap, never fail or be an out-of-memory kill. (Drawn at 100 DPI without the pixel cap, the
    poster fails: "Overly large image"; at 60 DPI, 432 MB raw, it exceeds a 1 000 MB cap.)"""
    drawn = subprocess.run([sys.executable, "-c", _UNDER_A_CAP, str(ADDRESS_SPACE_MB), pdf, str(longest_side)], cwd=REPO,
                           capture_output=True, text=True, timeout=240)  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    pixels, png_bytes, peak_mb = map(int, drawn.stdout.split())
    assert pixels <= MAX_PIXELS and png_bytes <= 10 * 2**20 and peak_mb < 600
