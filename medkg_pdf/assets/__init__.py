"""The document chain, one module per stage."""

from medkg_pdf.assets.assemble import structured_document
from medkg_pdf.assets.baseline import baseline_parse
from medkg_pdf.assets.parse import vlm_page_parses
from medkg_pdf.assets.quality import parse_quality
from medkg_pdf.assets.render import page_images
from medkg_pdf.assets.source import source_pdf

document_assets = [source_pdf, page_images, vlm_page_parses, structured_document, baseline_parse, parse_quality]
