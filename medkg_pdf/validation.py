"""What makes a file a PDF we will process, with a reason a person understands when it is not."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pymupdf

MAX_PDF_BYTES = 100 * 1024 * 1024
MAX_IMAGE_BYTES = 10 * 1024 * 1024


class InvalidPdfError(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class ValidPdf:
    sha256: str
    bytes: int
    page_count: int
    pages_with_text: list[bool]
    repaired: bool = False
    warnings: list[str] = field(default_factory=list)


def check_size(size: int, max_bytes: int = MAX_PDF_BYTES) -> None:
    """Called with the size from stat/HEAD, before a byte is read into memory."""
    if size == 0:
        raise InvalidPdfError("empty_file", "the file is empty (0 bytes)")
    if size > max_bytes:
        raise InvalidPdfError(
            "too_large", f"the file is {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit"
        )


def _sniff(data: bytes) -> str:
    head = data[:1024].lstrip()
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head[:3] == b"\xff\xd8\xff":
        return "a JPEG image"
    if head[:5].lower() in (b"<!doc", b"<html") or b"<html" in head[:200].lower():
        return "an HTML page"
    if head[:2] == b"PK":
        return "a ZIP archive (e.g. .docx)"
    return "not a PDF"


def validate_pdf(data: bytes, *, max_pages: int, max_bytes: int = MAX_PDF_BYTES) -> ValidPdf:
    check_size(len(data), max_bytes)
    if b"%PDF-" not in data[:1024]:
        raise InvalidPdfError("not_pdf", f"the file is {_sniff(data)}: no %PDF- header in its first 1024 bytes")
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as error:  # pymupdf raises FileDataError/RuntimeError variants
        raise InvalidPdfError("corrupt", f"PyMuPDF cannot open the PDF (truncated or corrupt): {error}") from None
    with doc:
        if not doc.is_pdf:  # MuPDF sniffs content and would happily open HTML or images
            raise InvalidPdfError("not_pdf", f"the file is {_sniff(data)}, not a PDF")
        if doc.needs_pass or doc.is_encrypted:
            raise InvalidPdfError("encrypted", "the PDF is password-protected; upload an unlocked copy")
        if doc.page_count < 1:
            raise InvalidPdfError("no_pages", "the PDF has no pages")
        if doc.page_count > max_pages:
            raise InvalidPdfError(
                "too_many_pages", f"the PDF has {doc.page_count} pages, over the cap of {max_pages} (config max_pages)"
            )
        warnings = []
        if doc.is_repaired and b"%%EOF" not in data[-2048:]:
            raise InvalidPdfError(
                "truncated", "the PDF ends early (no %%EOF trailer and a broken structure): the upload was cut off"
            )
        if doc.is_repaired:
            warnings.append("PyMuPDF repaired a broken cross-reference table; content may be incomplete")
        pages_with_text = []
        for page in doc:
            try:
                pages_with_text.append(bool(page.get_text("text").strip()))
            except Exception as error:
                raise InvalidPdfError("corrupt", f"page {page.number + 1} cannot be read: {error}") from None
        return ValidPdf(
            sha256=hashlib.sha256(data).hexdigest(),
            bytes=len(data),
            page_count=doc.page_count,
            pages_with_text=pages_with_text,
            repaired=bool(doc.is_repaired),
            warnings=warnings,
        )
