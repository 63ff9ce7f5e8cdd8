"""Asset checks, one module per checked stage; `all_checks` is what definitions.py wires in."""

from medkg_pdf.checks.assemble import structured_document_no_empty_text_pages, structured_document_schema_valid
from medkg_pdf.checks.parse import vlm_page_parses_failed_page_share
from medkg_pdf.checks.quality import parse_quality_match_score, parse_quality_numeric_recall
from medkg_pdf.checks.regression import regression_quality_no_document_worse
from medkg_pdf.checks.slo import quality_report_slos
from medkg_pdf.checks.source import source_pdf_is_valid

# the document chain's checks, for runs of `document_assets`
document_checks = [
    source_pdf_is_valid,
    vlm_page_parses_failed_page_share,
    structured_document_schema_valid,
    structured_document_no_empty_text_pages,
    parse_quality_match_score,
    parse_quality_numeric_recall,
]
all_checks = [*document_checks, regression_quality_no_document_worse, quality_report_slos]
