"""Structured documents in the formats other tools read: Docling's `DoclingDocument` and olmOCR's Dolma JSONL.

Plain functions of a stored `StructuredDocument` (no Dagster); docling-core is imported only when a
Docling export is asked for, since it is the optional extra `docling`.
"""

from medkg_pdf.exporters.dolma import dolma_record, dolma_text_and_spans
from medkg_pdf.exporters.docling import docling_document, pdf_page_sizes

__all__ = ["docling_document", "dolma_record", "dolma_text_and_spans", "pdf_page_sizes"]
