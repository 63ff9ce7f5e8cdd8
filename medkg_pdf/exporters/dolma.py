"""olmOCR's Dolma JSONL record: the document's text and the character span of each page.

Field for field what olmOCR's `build_dolma_document` writes (allenai/olmocr, pipeline.py): pages
joined by "\n" (none after the last), `attributes.pdf_page_numbers` as `[start, end, page]` with
`text[start:end]` exactly that page's text (its trailing "\n" included, as olmOCR does), `id` the
SHA-1 of the text, `source`, `added`/`created` as `YYYY-MM-DD`, and `metadata` with `Source-File`
and `pdf-total-pages`. The olmOCR-specific token counters are replaced by medkg's model and
document id; a failed page is an empty span, so page numbers never shift. A page's text is its body:
running heads, feet and page numbers are left out, as olmOCR's own output is expected to (olmOCR-Bench
scores headers and footers as text that must be absent).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote, urlparse

from medkg_pdf.schemas import StructuredDocument

SOURCE = "medkg-pdf"


def dolma_text_and_spans(document: StructuredDocument) -> tuple[str, list[list[int]]]:
    """The body text of every page in order, and `[start, end, page]` for each page (1-based)."""
    text = ""
    spans: list[list[int]] = []
    body = document.page_texts(furniture=False)
    for page in range(1, document.page_count + 1):
        start = len(text)
        text += body[page] + ("\n" if page < document.page_count else "")
        spans.append([start, len(text), page])
    return text, spans


def dolma_record(document: StructuredDocument, source_uri: str) -> dict[str, Any]:
    """One Dolma line for `document`; `source_uri` is its SourceRef's URI. `Source-File` is what olmOCR
    writes there: the local path of a file (not a file:// URI), the s3:// URL of an object."""
    text, spans = dolma_text_and_spans(document)
    parsed = urlparse(source_uri)
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return {
        "id": hashlib.sha1(text.encode()).hexdigest(),
        "text": text,
        "source": SOURCE,
        "added": today,
        "created": today,
        "metadata": {
            "Source-File": unquote(parsed.path) if parsed.scheme == "file" else source_uri,
            "pdf-total-pages": document.page_count,
            "medkg-document-id": document.document_id,
            "medkg-model": document.model,
            "medkg-failed-pages": document.failed_pages,
        },
        "attributes": {"pdf_page_numbers": spans},
    }
