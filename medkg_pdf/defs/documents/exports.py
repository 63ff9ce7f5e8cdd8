"""An optional asset: the structured document as Docling's `DoclingDocument`, for tools that read Docling.

Outside `document_chain_job` (nothing launches it on its own) and checked for docling-core only when
it is materialized, so the code location loads and validates without the `docling` extra.
"""

from dagster import AssetExecutionContext, Failure, MaterializeResult

from medkg_pdf import storage_keys
from medkg_pdf.defs.document_steps import current_source, require_version, run_document
from medkg_pdf.defs.partitions import document_asset
from medkg_pdf.exporters.docling import docling_document as to_docling, pdf_page_sizes, require_docling
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import PageImages, StructuredDocument


def stored_page_sizes(storage: DocumentStorage, document_id: str) -> dict[int, tuple[float, float]]:
    """Page sizes in points from the page manifest, which records them when the pages are drawn; a manifest
    written before it did sends us to the source PDF (the same `page.rect`, rotation applied)."""
    manifest = storage.read_model_or_none(storage_keys.page_images(document_id), PageImages)
    if manifest is not None and manifest.pages and all(page.width_pt and page.height_pt for page in manifest.pages):
        return {page.index + 1: (page.width_pt, page.height_pt) for page in manifest.pages}
    return pdf_page_sizes(storage.read_bytes(storage_keys.source_pdf(document_id)))


@document_asset(
    group_name="documents",
    deps=["structured_document"],
    kinds={"json"},
    description="The structured document as Docling's DoclingDocument (docling-core, the 'docling' extra): "
    "pages with their sizes, every block with its page and box (PDF points, top-left origin).",
)
def docling_document(context: AssetExecutionContext, storage: DocumentStorage) -> MaterializeResult:
    try:
        require_docling()
    except ImportError as error:  # no retry can install a package
        raise Failure(description=str(error), allow_retries=False) from None

    def export(document_id: str) -> dict:
        sha256 = current_source(storage, document_id).sha256
        document = require_version(storage, storage_keys.structured_json(document_id), StructuredDocument, "the structured document", sha256)
        exported = to_docling(document, stored_page_sizes(storage, document_id))
        storage.write_text(storage_keys.docling_json(document_id), exported.model_dump_json())
        return {"pages": len(exported.pages), "items": sum(1 for _ in exported.iterate_items()),
                "json": storage.uri(storage_keys.docling_json(document_id))}  # fmt: skip

    return run_document(context, storage, "docling_document", export)
