"""Generators of hostile and edge-case inputs for the PDF intake and render stages.

Every generator is offline and deterministic (same bytes on every call), except
``encrypted_pdf``, whose AES salt and IV are random on each save. Each stands for
a real-world failure seen in document pipelines; its docstring names the case.

Observed PyMuPDF 1.28 behaviour for each input is asserted in ``test_samples.py``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pymupdf

LETTER = (612, 792)
_SAVE = dict(garbage=3, deflate=True, no_new_id=True)
_META = {
    "producer": "medkg-pdf test factory",
    "creator": "medkg-pdf test factory",
    "creationDate": "D:20250101000000",
    "modDate": "D:20250101000000",
}

# ---------------------------------------------------------------------------------------
# helpers


def _save(doc: pymupdf.Document, **extra) -> bytes:
    doc.set_metadata(_META)
    opts = dict(_SAVE)
    opts.update(extra)
    data = doc.tobytes(**opts)
    doc.close()
    return data


def _hand_pdf(objects: list[bytes], root: int = 1) -> bytes:
    """Serialise numbered objects (1-based, ``objects[i]`` is object ``i+1``'s body,
    without the ``obj``/``endobj`` wrapper) into a PDF with a correct xref table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for num, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % num + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n" % (len(objects) + 1)
    out += b"0000000000 65535 f \n"
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<</Size %d /Root %d 0 R>>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        root,
        xref_at,
    )
    return bytes(out)


def _stream(dictionary: bytes, payload: bytes) -> bytes:
    return b"<<" + dictionary + b" /Length %d>>\nstream\n" % len(payload) + payload + b"\nendstream"


# ---------------------------------------------------------------------------------------
# generators


def text_pdf(lines: list[str], pages: int = 1) -> bytes:
    """A plain, valid, born-digital letter-size PDF whose every page carries ``lines`` (Helvetica 11 pt)."""
    return text_pages_pdf([lines] * pages)


def text_pages_pdf(pages: list[list[str]]) -> bytes:
    """Like `text_pdf`, each page with its own lines (so every page image, and its cache entry, is distinct)."""
    doc = pymupdf.open()
    for lines in pages:
        page = doc.new_page(width=LETTER[0], height=LETTER[1])
        y = 72.0
        for line in lines:
            page.insert_text((72, y), line, fontname="helv", fontsize=11)
            y += 14.0
            if y > LETTER[1] - 72:
                break
    return _save(doc)


def zero_byte() -> bytes:
    """An empty upload (interrupted transfer, placeholder object in a bucket)."""
    return b""


def html_renamed() -> bytes:
    """An HTML error or login page saved with a .pdf name (portal download that returned HTML)."""
    return (
        b"<!DOCTYPE html>\n<html><head><title>Session expired</title></head>\n"
        b"<body><h1>Patient Portal</h1><p>Your session has expired. Please sign in again "
        b"to download discharge-summary.pdf.</p></body></html>\n"
    )


def png_renamed() -> bytes:
    """A real PNG (a phone photo or screenshot of a document) uploaded with a .pdf name."""
    rng = np.random.default_rng(7)
    img = np.full((120, 160, 3), 235, dtype=np.uint8)
    img[20:100, 20:140] = rng.integers(0, 255, size=(80, 120, 3), dtype=np.uint8)
    pix = pymupdf.Pixmap(pymupdf.csRGB, 160, 120, img.tobytes(), False)
    return pix.tobytes("png")


def truncated_pdf() -> bytes:
    """The first 60% of a valid multi-page PDF (download or upload cut short)."""
    data = text_pdf([f"Progress note line {i}: vitals stable, BP 120/80." for i in range(40)], pages=6)
    return data[: int(len(data) * 0.6)]


def broken_xref_pdf() -> bytes:
    """A PDF whose xref offsets are all wrong (file edited by a tool that did not rewrite the xref)."""
    data = text_pdf(["Broken xref sample: hemoglobin 13.5 g/dL", "Platelets 250 x10^3/uL"], pages=2)
    head, sep, tail = data.rpartition(b"\nxref\n")
    assert sep, "factory PDF has no classic xref table"
    lines = tail.split(b"\n")
    fixed = []
    for line in lines:
        # entries look like b"0000000042 00000 n " : shift every in-use offset by 7 bytes
        if len(line) == 19 and line.endswith(b" n ") and line[:10].isdigit():
            line = b"%010d" % (int(line[:10]) + 7) + line[10:]
        fixed.append(line)
    return head + sep + b"\n".join(fixed)


def encrypted_pdf(password: str = "secret") -> bytes:
    """An AES-256 password-protected PDF (patient records mailed with a user password)."""
    doc = pymupdf.open()
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    page.insert_text((72, 72), "CONFIDENTIAL: Pathology report", fontname="helv", fontsize=12)
    return _save(
        doc,
        encryption=pymupdf.PDF_ENCRYPT_AES_256,
        user_pw=password,
        owner_pw=password + "-owner",
        permissions=int(pymupdf.PDF_PERM_PRINT | pymupdf.PDF_PERM_COPY),
    )


def zero_page_pdf() -> bytes:
    """A syntactically valid PDF with an empty page tree (export of an empty report)."""
    return _hand_pdf(
        [
            b"<</Type /Catalog /Pages 2 0 R>>",
            b"<</Type /Pages /Kids [] /Count 0>>",
        ]
    )


def oversized_file(path: Path, size: int = 101 * 1024 * 1024) -> Path:
    """A file above the upload size limit; written sparse (header then truncate) so it costs no disk."""
    path = Path(path)
    with open(path, "wb") as f:
        f.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
        f.truncate(size)
    return path


def huge_page_pdf(tile_px: int = 256) -> bytes:
    """One 14400x14400 pt page (the PDF maximum, e.g. a CAD plot or poster) covered in colour noise.

    A random RGB image is tiled at 1 image pixel per device pixel at 150 DPI, so a 150-DPI render
    is 30000x30000 px of noise (2.7 GB raw, far above 10 MB as PNG) while the PDF stays ~0.3 MB."""
    side = 14400
    rng = np.random.default_rng(14400)
    noise = rng.integers(0, 256, size=(tile_px, tile_px, 3), dtype=np.uint8).tobytes()
    step = tile_px * 72.0 / 150.0  # tile edge in points at 150 DPI
    n = int(np.ceil(side / step))
    ops = []
    for row in range(n):
        for col in range(n):
            ops.append(b"q %.4f 0 0 %.4f %.4f %.4f cm /Im0 Do Q" % (step, step, col * step, row * step))
    content = zlib.compress(b"\n".join(ops), 9)
    return _hand_pdf(
        [
            b"<</Type /Catalog /Pages 2 0 R>>",
            b"<</Type /Pages /Kids [3 0 R] /Count 1>>",
            b"<</Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] "
            b"/Resources <</XObject <</Im0 5 0 R>>>> /Contents 4 0 R>>" % (side, side),
            _stream(b"/Filter /FlateDecode", content),
            _stream(
                b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB "
                b"/BitsPerComponent 8 /Filter /FlateDecode" % (tile_px, tile_px),
                zlib.compress(noise, 9),
            ),
        ]
    )


def many_pages_pdf(n: int = 5000) -> bytes:
    """A very long document (a chart dump of thousands of pages), each page with one line of text.

    Written by hand (one content stream per page, one shared Helvetica font): ~0.1 s for 5000 pages."""
    kids = b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(n))
    objects = [
        b"<</Type /Catalog /Pages 2 0 R>>",
        b"<</Type /Pages /Kids [" + kids + b"] /Count %d>>" % n,
        b"<</Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding>>",
    ]
    for i in range(n):
        page_obj = 4 + 2 * i
        objects.append(
            b"<</Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources <</Font <</F1 3 0 R>>>> /Contents %d 0 R>>" % (page_obj + 1)
        )
        objects.append(_stream(b"", b"BT /F1 11 Tf 72 712 Td (Chart page %d of %d) Tj ET" % (i + 1, n)))
    return _hand_pdf(objects)


def decompression_bomb_pdf(side: int = 30000) -> bytes:
    """A page whose image declares side x side gray pixels (900 MB raw) from a ~1 KB doubly-Flate'd stream (a zip-bomb image)."""
    # Flate stream of side*side zero bytes (~860 KB), built from one repeated full-flush block
    # (no 900 MB buffer), then compressed again (~1.4 KB): /Filter [/FlateDecode /FlateDecode].
    rows_per_block = 100
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(bytes(side * rows_per_block)) + comp.flush(zlib.Z_FULL_FLUSH)
    raw = block * (side // rows_per_block)
    raw += comp.compress(bytes(side * (side % rows_per_block))) + comp.flush(zlib.Z_FINISH)
    n = side * side
    adler = ((n % 65521) << 16) | 1  # adler32 of n zero bytes
    once = b"\x78\xda" + raw + adler.to_bytes(4, "big")
    twice = zlib.compress(once, 9)
    content = b"q 612 0 0 792 0 0 cm /Im0 Do Q"
    return _hand_pdf(
        [
            b"<</Type /Catalog /Pages 2 0 R>>",
            b"<</Type /Pages /Kids [3 0 R] /Count 1>>",
            b"<</Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources <</XObject <</Im0 5 0 R>>>> /Contents 4 0 R>>",
            _stream(b"", content),
            _stream(
                b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
                b"/BitsPerComponent 8 /Filter [/FlateDecode /FlateDecode]" % (side, side),
                twice,
            ),
        ]
    )


__all__ = [
    "broken_xref_pdf",
    "decompression_bomb_pdf",
    "encrypted_pdf",
    "html_renamed",
    "huge_page_pdf",
    "many_pages_pdf",
    "oversized_file",
    "png_renamed",
    "text_pdf",
    "truncated_pdf",
    "zero_byte",
    "zero_page_pdf",
]


# ---------------------------------------------------------------------------------------
# pages of the same text at two paper sizes, and scanned pages with no content but scan noise

SMALL_PAGE = (180, 288)  # 2.5 x 4 inches: a leaflet, a label, a pocket card
_SCAN_DPI = 150


def miniature_pdf(letter_pdf: bytes, size: tuple[float, float] = SMALL_PAGE) -> bytes:
    """The first page of a letter PDF printed at leaflet size: the same text and layout, every glyph
    ~0.29x (11 pt type becomes ~3 pt), the text layer kept. At 150 DPI it is 375x600 px."""
    src = pymupdf.open(stream=letter_pdf, filetype="pdf")
    doc = pymupdf.open()
    page = doc.new_page(width=size[0], height=size[1])
    page.show_pdf_page(pymupdf.Rect(6, 6, size[0] - 6, size[1] - 6), src, 0)
    return _save(doc)


def _scan_page(doc: pymupdf.Document, gray: np.ndarray) -> None:
    """A letter page holding one grayscale scan (no text layer), as a scanner's PDF does."""
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    pix = pymupdf.Pixmap(pymupdf.csGRAY, gray.shape[1], gray.shape[0], np.ascontiguousarray(gray).tobytes(), False)
    page.insert_image(page.rect, stream=pix.tobytes("png"))


def speckled_scan(seed: int = 14) -> np.ndarray:
    """A blank sheet through a scanner: paper at ~246 with sensor noise, dust specks of 1-3 px (dark) and a
    few dozen hairs of dirt. Its raw ink share (gray < 200) is ~0.002, ten times the old blank limit."""
    rng = np.random.default_rng(seed)
    height, width = round(LETTER[1] / 72 * _SCAN_DPI), round(LETTER[0] / 72 * _SCAN_DPI)
    gray = rng.normal(246, 4, (height, width))
    for _ in range(4000):  # dust: 1-2 px specks
        y, x, s = rng.integers(0, height - 3), rng.integers(0, width - 3), rng.integers(1, 3)
        gray[y : y + s, x : x + s] = rng.integers(40, 150)
    return np.clip(gray, 0, 255).astype(np.uint8)


def bleed_through_scan(seed: int = 14, lines: list[str] | None = None) -> np.ndarray:
    """The blank back of a printed sheet on grey recycled paper: a grey cast (~205) with the front's text
    showing through mirrored and faint (~15 % darker than the paper), plus speckle."""
    text = pymupdf.open(stream=text_pdf(lines or [f"Line {n}: amoxicillin 500 mg every 8 hours" for n in range(40)]), filetype="pdf")
    front = np.frombuffer(text[0].get_pixmap(dpi=_SCAN_DPI, colorspace=pymupdf.csGRAY).samples, np.uint8)
    front = front.reshape(round(LETTER[1] / 72 * _SCAN_DPI), round(LETTER[0] / 72 * _SCAN_DPI))[:, ::-1]
    back = speckled_scan(seed).astype(np.float64) - 41 - (255 - front.astype(np.float64)) * 0.12
    return np.clip(back, 0, 255).astype(np.uint8)


def scanned_pages_pdf(pages: list[np.ndarray | list[str]]) -> bytes:
    """A PDF of scans (arrays) and born-digital text pages (lists of lines), in order."""
    doc = pymupdf.open()
    for page in pages:
        if isinstance(page, np.ndarray):
            _scan_page(doc, page)
        else:
            born = pymupdf.open(stream=text_pdf(page), filetype="pdf")
            doc.insert_pdf(born)
    return _save(doc)


def footer_only_pdf(footer: str = "Page 2", fontsize: float = 9) -> bytes:
    """A page with nothing on it but its page number, centred at the bottom: real content, however little."""
    doc = pymupdf.open()
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    page.insert_text((LETTER[0] / 2 - 14, LETTER[1] - 36), footer, fontname="helv", fontsize=fontsize)
    return _save(doc)
