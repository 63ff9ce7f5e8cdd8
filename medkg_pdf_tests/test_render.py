"""Rendering with helper processes gives exactly what the sequential loop gives."""

import pymupdf
from dagster import materialize

from medkg_pdf import storage_keys
from medkg_pdf.defs.documents import page_images, source_pdf
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
