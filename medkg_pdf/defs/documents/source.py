"""Stage 1: the raw PDF as it arrived, validated and copied into storage."""


from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue
from dagster_aws.s3 import S3Resource
from pydantic import Field

from medkg_pdf import storage_keys
from medkg_pdf.defs.document_steps import DocumentError, require, run_document
from medkg_pdf.defs.partitions import document_asset
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.page_selection import pages_label, select_pages
from medkg_pdf.schemas import SourceInfo, SourceRef
from medkg_pdf.sources import SourceReadError, read_source
from medkg_pdf.validation import MAX_PDF_BYTES, InvalidPdfError, validate_pdf


class SourceConfig(Config):
    max_pages: int = Field(default=2000, description="Documents with more pages are refused (config, not code).")
    max_bytes: int = Field(default=MAX_PDF_BYTES, description="Largest accepted PDF (100 MiB by default).")


@document_asset(
    group_name="documents",
    kinds={"pdf"},
    description="The raw PDF, validated (magic bytes, size, opens, not encrypted, page cap) and stored as-is.",
)
def source_pdf(
    context: AssetExecutionContext, config: SourceConfig, storage: DocumentStorage, inbox_s3: S3Resource
) -> MaterializeResult:
    s3_client = None

    def ingest(document_id: str) -> dict:
        nonlocal s3_client
        ref = require(storage, storage_keys.source_ref(document_id), SourceRef, "the document's registration")
        if ref.uri.startswith("s3://") and s3_client is None:
            s3_client = inbox_s3.get_client()
        # this version's record replaces the last one only once it is valid; until then no record
        # of an older version is left for a later stage to build on
        storage.delete(storage_keys.source_info(document_id))
        try:
            data = read_source(ref, s3_client, config.max_bytes)
            valid = validate_pdf(data, max_pages=config.max_pages, max_bytes=config.max_bytes)
            if ref.pages:  # a page range: the stored PDF holds those pages alone, and is checked as such
                data = select_pages(data, ref.pages)
                valid = validate_pdf(data, max_pages=config.max_pages, max_bytes=max(config.max_bytes, len(data)))
        except InvalidPdfError as error:
            raise DocumentError(f"{ref.name}: {error}", reason=error.reason) from None
        except SourceReadError as error:
            raise DocumentError(f"{ref.name}: {error}", retryable=error.retryable, reason=error.reason) from None
        for warning in valid.warnings:
            context.log.warning(f"{document_id}: {warning}")
        storage.write_bytes(storage_keys.source_pdf(document_id), data)
        info = SourceInfo(
            document_id=document_id,
            source=ref,
            sha256=valid.sha256,
            bytes=valid.bytes,
            page_count=valid.page_count,
            pages_with_text=valid.pages_with_text,
            repaired=valid.repaired,
            warnings=valid.warnings,
            stored_at=storage_keys.source_pdf(document_id),
        )
        storage.write_model(storage_keys.source_info(document_id), info)
        return {
            "sha256": valid.sha256,
            "bytes": valid.bytes,
            "page_count": valid.page_count,
            "source_pages": pages_label(ref.pages) if ref.pages else "all",
            "pages_with_text_layer": sum(valid.pages_with_text),
            "source_uri": MetadataValue.url(ref.uri) if ref.uri.startswith("s3://") else ref.uri,
            "source_etag": ref.etag or "",
            "arrived_at": ref.arrived_at.isoformat(),
            "warnings": MetadataValue.md("\n".join(f"- {w}" for w in valid.warnings) or "none"),
        }

    return run_document(context, storage, "source_pdf", ingest)
