"""Storage keys: every key the pipeline reads, writes or lists is built (and parsed) here, nowhere else.

Per-document records live under `documents/<id>/`; page images and page parses live under
`cache/<pdf sha256>/`, keyed by content, so identical PDFs under two names share their work and
a re-run reuses every finished page.
"""

from __future__ import annotations

import re

from medkg_pdf.document_ids import is_document_id


DOCUMENTS_PREFIX = "documents"
QUARANTINE_PREFIX = "quarantine"
_SOURCE_REF = "source-ref.json"


def _doc(document_id: str) -> str:
    if not is_document_id(document_id):
        raise ValueError(f"not a document id: {document_id[:200]!r}")
    return f"{DOCUMENTS_PREFIX}/{document_id}"


def registered_document_id(key: str) -> str | None:
    """The document a listed key registers (`documents/<id>/source-ref.json`), or None for any other key."""
    head, _, name = key.rpartition("/")
    prefix, _, document_id = head.partition("/")
    if name != _SOURCE_REF or prefix != DOCUMENTS_PREFIX or not is_document_id(document_id):
        return None
    return document_id


def source_ref(document_id: str) -> str:
    """Registration: where the document comes from; written by the sensor or the CLI."""
    return f"{_doc(document_id)}/{_SOURCE_REF}"


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
    return f"{QUARANTINE_PREFIX}/{document_id}.json"


def page_png(sha256: str, dpi: int, page_index: int) -> str:
    return f"cache/{sha256}/images/dpi-{dpi}/page-{page_index + 1:05d}.png"


def page_parse(sha256: str, page_index: int, cache_key: str) -> str:
    return f"cache/{sha256}/parses/page-{page_index + 1:05d}-{cache_key}.json"


def safe_segment(name: str) -> str:
    """A model name or prompt version as one storage key segment ("Qwen/Qwen2.5-VL" -> "Qwen--Qwen2.5-VL")."""
    segment = re.sub(r"[^A-Za-z0-9._-]", "-", name.replace("/", "--")).lstrip("._-")[:128]
    if not segment:
        raise ValueError(f"cannot make a storage key segment of {name[:200]!r}")
    return segment


def pinned_structured(model: str, prompt_version: str, document_id: str) -> str:
    """A structured document accepted as the regression baseline, kept per model and prompt version."""
    _doc(document_id)
    return f"baselines/{safe_segment(model)}/{safe_segment(prompt_version)}/{document_id}.json"


def pinned_quality(model: str, prompt_version: str, document_id: str) -> str:
    _doc(document_id)
    return f"baselines/{safe_segment(model)}/{safe_segment(prompt_version)}/{document_id}.quality.json"


def accepted_baseline(document_id: str) -> str:
    """Which pinned structured document is the accepted baseline of this document."""
    return f"{_doc(document_id)}/accepted-baseline.json"


def regression(document_id: str) -> str:
    return f"{_doc(document_id)}/regression.json"


def quality_report(day: str, name: str) -> str:
    """Files of the daily quality report, e.g. reports/quality/2026-11-23/documents.csv."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        raise ValueError(f"not a report day: {day[:50]!r}")
    return f"reports/quality/{day}/{name}"


def quality_report_latest() -> str:
    """Pointer to the newest quality report (its day and evaluation time), read by the SLO checks."""
    return "reports/quality/latest.json"
