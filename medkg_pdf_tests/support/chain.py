"""Setting up the document chain for a test or a benchmark: documents registered, a model server client."""

from __future__ import annotations

from pathlib import Path

from medkg_pdf.defs.partitions import documents
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.resources.vllm import EMBEDDED_MODEL, VLLMResource
from medkg_pdf.sources import file_ref, register


def run_chain(instance, storage: DocumentStorage, vllm: VLLMResource, partition_key=None, tags=None, selection=None):
    """Materialize the document chain (or `selection`) for one partition in-process; failures are returned, not raised."""
    from dagster import materialize

    from medkg_pdf.defs.documents import document_assets
    from medkg_pdf.resources.quality import QualityTargets

    return materialize(
        selection or document_assets,
        partition_key=partition_key,
        instance=instance,
        resources={"storage": storage, "vllm": vllm, "inbox_s3": _unused_s3(), "quality_targets": QualityTargets()},
        raise_on_error=False,
        tags=tags,
    )


def _unused_s3():
    from dagster_aws.s3 import S3Resource

    return S3Resource(region_name="us-east-1")


def register_files(storage: DocumentStorage, instance, paths: list[Path]) -> list[str]:
    """Register local files as `documents` partitions of a Dagster instance; returns their ids."""
    ids = []
    for path in paths:
        ref = file_ref(path)
        register(storage, ref)
        ids.append(ref.document_id)
    instance.add_dynamic_partitions(documents.name, ids)
    return ids


def page_hashes(pdf: bytes, model: str = EMBEDDED_MODEL) -> list[str]:
    """sha256 of each page image exactly as the pipeline renders it for `model` and sends it, in page order."""
    import hashlib

    import pymupdf

    from medkg_pdf.profiles import get_profile
    from medkg_pdf.rendering import render_page
    from medkg_pdf.validation import MAX_IMAGE_BYTES

    target = get_profile(None, model).render_target()
    with pymupdf.open(stream=pdf, filetype="pdf") as doc:
        return [hashlib.sha256(render_page(page, "unused", target, MAX_IMAGE_BYTES).png).hexdigest() for page in doc]


def vllm_for(url: str, **settings) -> VLLMResource:
    """A `VLLMResource` for the server at `url` that backs off for tenths of a second, not seconds."""
    defaults = dict(base_url=url, model=EMBEDDED_MODEL, backoff_initial_s=0.05, backoff_max_s=0.5)
    defaults.update(settings)
    return VLLMResource(**defaults)
