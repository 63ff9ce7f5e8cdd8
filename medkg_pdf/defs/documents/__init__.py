"""The document chain: one document per run, from its source PDF to its scored structured document."""

from medkg_pdf.defs.documents.checks import (
    source_pdf_is_valid,
    structured_document_no_empty_text_pages,
    structured_document_schema_valid,
    vlm_page_parses_failed_page_share,
)
from medkg_pdf.defs.documents.pages import page_images_and_parses
from medkg_pdf.defs.documents.source import source_pdf
from medkg_pdf.defs.documents.structured import structured_document
from medkg_pdf.defs.documents.text_layer import baseline_parse
from medkg_pdf.defs.quality.assets import parse_quality
from medkg_pdf.defs.quality.checks import parse_quality_match_score, parse_quality_numeric_recall

# page_images and vlm_page_parses are one step (pages are sent as they are rendered), two assets
page_images = vlm_page_parses = page_images_and_parses

# what one run of the chain materializes and checks: source_pdf -> page_images -> vlm_page_parses
# -> structured_document, baseline_parse -> parse_quality
document_assets = [source_pdf, page_images_and_parses, structured_document, baseline_parse, parse_quality]
document_checks = [
    source_pdf_is_valid,
    vlm_page_parses_failed_page_share,
    structured_document_schema_valid,
    structured_document_no_empty_text_pages,
    parse_quality_match_score,
    parse_quality_numeric_recall,
]
