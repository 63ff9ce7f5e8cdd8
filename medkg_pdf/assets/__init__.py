"""The document chain, one module per stage."""

from medkg_pdf.assets.assemble import structured_document
from medkg_pdf.assets.baseline import baseline_parse
from medkg_pdf.assets.parse import page_images_and_parses
from medkg_pdf.assets.quality import parse_quality
from medkg_pdf.assets.source import source_pdf

# page_images and vlm_page_parses are one step (pages are sent as they are rendered), two assets
page_images = vlm_page_parses = page_images_and_parses

document_assets = [source_pdf, page_images_and_parses, structured_document, baseline_parse, parse_quality]
