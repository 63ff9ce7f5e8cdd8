"""The storage layout: every key the pipeline reads or writes is built here, nowhere else.

Per-document records live under `documents/<id>/`; page images and page parses live under
`cache/<pdf sha256>/`, keyed by content, so identical PDFs under two names share their work and
a re-run reuses every finished page.
"""

from __future__ import annotations

from medkg_pdf.partitions import is_document_id


def _doc(document_id: str) -> str:
    if not is_document_id(document_id):
        raise ValueError(f"not a document id: {document_id[:200]!r}")
    return f"documents/{document_id}"


def source_ref(document_id: str) -> str:
    """Registration: where the document comes from; written by the sensor or the CLI."""
    return f"{_doc(document_id)}/source-ref.json"


def source_pdf(document_id: str) -> str:
    return f"{_doc(document_id)}/source.pdf"


def source_info(document_id: str) -> str:
    return f"{_doc(document_id)}/source.json"


def page_images(document_id: str) -> str:
    return f"{_doc(document_id)}/page-images.json"


def page_parses(document_id: str) -> str:
    return f"{_doc(document_id)}/page-parses.json"


def structured_json(document_id: str) -> str:
    return f"{_doc(document_id)}/structured.json"


def structured_markdown(document_id: str) -> str:
    return f"{_doc(document_id)}/structured.md"


def baseline(document_id: str) -> str:
    return f"{_doc(document_id)}/baseline.json"


def quality(document_id: str) -> str:
    return f"{_doc(document_id)}/quality.json"


def quarantine(document_id: str) -> str:
    return f"quarantine/{document_id}.json"


def page_png(sha256: str, dpi: int, page_index: int) -> str:
    return f"cache/{sha256}/images/dpi-{dpi}/page-{page_index + 1:05d}.png"


def page_parse(sha256: str, page_index: int, cache_key: str) -> str:
    return f"cache/{sha256}/parses/page-{page_index + 1:05d}-{cache_key}.json"
