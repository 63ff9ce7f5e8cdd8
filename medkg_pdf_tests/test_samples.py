"""The sample PDFs match their ground truth, and each hostile input is what it claims to be.

The hostile-input tests also pin down what PyMuPDF does with each input, which is what the
intake validation is written against.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections import Counter

import numpy as np
import pymupdf
import pytest

from medkg_pdf.samples import SamplePdf, sample_pdfs, write_samples
from medkg_pdf_tests.support import pdf_factory

EXPECTED = {
    "amoxicillin-label.pdf": (2, False),
    "sepsis-guideline-two-column.pdf": (2, False),
    "scanned-discharge-summary.pdf": (1, True),
    "blank-and-rotated.pdf": (3, False),
}


@pytest.fixture(scope="module")
def samples() -> dict[str, SamplePdf]:
    return {s.name: s for s in sample_pdfs()}


def _words(text: str) -> Counter:
    return Counter(w for w in text.split() if w != "|")


def _open(data: bytes) -> pymupdf.Document:
    return pymupdf.open(stream=data, filetype="pdf")


# ---------------------------------------------------------------------------------------
# samples


def test_sample_set(samples):
    assert list(samples) == list(EXPECTED)
    for name, (n_pages, scanned) in EXPECTED.items():
        s = samples[name]
        assert s.scanned is scanned
        assert len(s.pages) == n_pages
        assert s.description
        doc = _open(s.data)
        assert doc.is_pdf and not doc.is_repaired and not doc.needs_pass
        assert doc.page_count == n_pages
        for page in doc:
            assert (page.mediabox.width, page.mediabox.height) == (612, 792)


def test_text_layer_matches_ground_truth(samples):
    for s in samples.values():
        if s.scanned:
            continue
        doc = _open(s.data)
        for page, truth in zip(doc, s.pages):
            text = page.get_text()
            # same words, same counts (table cells come out cell by cell, hence a multiset)
            assert _words(text) == _words(truth), (s.name, page.number)
            if "|" not in truth:  # no table: the text layer is in the ground truth's order
                assert text.split() == truth.split(), (s.name, page.number)


def test_ground_truth_content(samples):
    label = samples["amoxicillin-label.pdf"].pages
    assert label[0].startswith("AMOXICILLIN CAPSULES, USP\n")
    for needle in ("INDICATIONS AND USAGE", "DOSAGE AND ADMINISTRATION",
                   "Infection | Adults | Children (>3 months)",
                   "Ear/Nose/Throat | 500 mg every 12 hours"):
        assert needle in label[0]
    assert "diarrhea (2.3%)" in label[1]
    # two columns: the whole left column (WARNINGS) precedes the right one
    assert label[1].index("WARNINGS") < label[1].index("Phenylketonurics") < label[1].index(
        "ADVERSE REACTIONS")

    paper = samples["sepsis-guideline-two-column.pdf"].pages
    assert paper[0].splitlines()[1].startswith("Early Fluid Resuscitation")
    assert "30 mL/kg" in paper[0] and "MAP >= 65 mmHg" in paper[0]
    assert re.search(r"^Figure 1\. ", paper[1], re.M)
    assert len(re.findall(r"^- ", paper[1], re.M)) == 4
    assert paper[1].index("3. Results") < paper[1].index("Key findings")

    scan = samples["scanned-discharge-summary.pdf"].pages[0]
    assert "DISCHARGE SUMMARY" in scan and "Amoxicillin 500 mg PO every 8 hours" in scan

    memo = samples["blank-and-rotated.pdf"].pages
    assert memo[0].startswith("MEMORANDUM") and memo[1] == "" and "Bed 412" in memo[2]


def test_builtin_fonts_render_every_character(samples):
    """Base-14 fonts are Latin-1 only: nothing may come back as the '·' replacement."""
    for s in samples.values():
        if not s.scanned:
            text = "".join(p.get_text() for p in _open(s.data))
            assert "\u00b7" not in text and "\ufffd" not in text
        assert all(ord(ch) < 256 for page in s.pages for ch in page)


def test_scanned_sample_is_image_only(samples):
    s = samples["scanned-discharge-summary.pdf"]
    page = _open(s.data)[0]
    assert page.get_text() == ""
    assert page.get_text("words") == []
    images = page.get_images(full=True)
    assert len(images) == 1
    xref, _, width, height, bpc, *_ = images[0]
    assert (width, height, bpc) == (1700, 2200, 8)  # 200 DPI letter
    assert pymupdf.Pixmap(page.parent, xref).n == 1  # grayscale (PNG's ICC gray profile)
    assert page.get_image_rects(images[0][0])[0] == page.rect
    gray = page.get_pixmap(dpi=50, colorspace=pymupdf.csGRAY)
    pixels = np.frombuffer(gray.samples, dtype=np.uint8)
    assert (pixels < 128).mean() > 0.005  # it has ink


def test_blank_page_renders_all_white(samples):
    doc = _open(samples["blank-and-rotated.pdf"].data)
    blank = doc[1]
    assert blank.get_contents() == []
    pix = blank.get_pixmap(dpi=72, colorspace=pymupdf.csGRAY)
    assert set(pix.samples) == {255}
    # and the memo page next to it is not blank
    memo = np.frombuffer(doc[0].get_pixmap(dpi=72, colorspace=pymupdf.csGRAY).samples, np.uint8)
    assert memo.min() < 100


def test_rotated_page_reads_upright(samples):
    page = _open(samples["blank-and-rotated.pdf"].data)[2]
    assert page.rotation == 90
    assert (page.rect.width, page.rect.height) == (792, 612)  # displayed landscape
    m = page.rotation_matrix
    lines = [line for block in page.get_text("dict")["blocks"] for line in block.get("lines", [])]
    assert lines
    for line in lines:
        dx, dy = line["dir"]  # unrotated page space; map it to the displayed page
        assert (round(m.a * dx + m.c * dy, 6), round(m.b * dx + m.d * dy, 6)) == (1, 0)
    pix = page.get_pixmap(dpi=50, colorspace=pymupdf.csGRAY)
    assert pix.width > pix.height
    ink = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width) < 128
    # horizontal lines of text: many empty rows between lines, ink spread along the rows
    rows_with_ink = ink.any(axis=1).mean()
    cols_with_ink = ink.any(axis=0).mean()
    assert cols_with_ink > rows_with_ink


def test_generation_is_deterministic_and_written(tmp_path, samples):
    """write_samples regenerates everything: identical bytes to the earlier call."""
    paths = write_samples(tmp_path / "out")
    assert [p.name for p in paths] == list(EXPECTED)
    for p in paths:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        assert digest == hashlib.sha256(samples[p.name].data).hexdigest(), p.name


# ---------------------------------------------------------------------------------------
# hostile inputs: each is what it claims, and PyMuPDF's behaviour is pinned down


def test_factory_is_deterministic():
    for gen in (pdf_factory.zero_page_pdf, pdf_factory.truncated_pdf, pdf_factory.broken_xref_pdf,
                pdf_factory.png_renamed, pdf_factory.huge_page_pdf, pdf_factory.decompression_bomb_pdf):
        assert gen() == gen(), gen.__name__
    assert pdf_factory.text_pdf(["a"], pages=2) == pdf_factory.text_pdf(["a"], pages=2)


def test_zero_byte_raises():
    assert pdf_factory.zero_byte() == b""
    with pytest.raises(pymupdf.EmptyFileError, match="Cannot open empty stream"):
        pymupdf.open(stream=pdf_factory.zero_byte(), filetype="pdf")
    assert issubclass(pymupdf.EmptyFileError, pymupdf.FileDataError)
    assert issubclass(pymupdf.FileDataError, RuntimeError)


@pytest.mark.parametrize("gen, magic", [(pdf_factory.html_renamed, b"<!DOCTYPE html>"),
                                        (pdf_factory.png_renamed, b"\x89PNG\r\n\x1a\n")])
def test_renamed_non_pdfs_open_as_other_formats(gen, magic):
    """filetype='pdf' is only a hint: MuPDF sniffs the content and opens HTML / PNG as a
    1-page non-PDF document. Validation must check ``is_pdf`` (or the %PDF- header)."""
    data = gen()
    assert data.startswith(magic)
    doc = pymupdf.open(stream=data, filetype="pdf")
    assert doc.is_pdf is False
    assert doc.page_count == 1


def test_truncated_pdf_opens_with_repair():
    data = pdf_factory.truncated_pdf()
    assert data.startswith(b"%PDF-") and b"%%EOF" not in data[-32:]
    doc = _open(data)
    assert doc.is_pdf and doc.is_repaired
    assert doc.page_count == 6
    texts = [page.get_text() for page in doc]
    assert "Progress note line 0" in texts[0]
    assert texts[-1] == ""  # the cut-off pages lost their content


def test_broken_xref_pdf_is_repaired_and_readable():
    doc = _open(pdf_factory.broken_xref_pdf())
    assert doc.is_pdf and doc.is_repaired
    assert doc.page_count == 2
    assert "hemoglobin 13.5 g/dL" in doc[1].get_text()


def test_encrypted_pdf_needs_password():
    doc = _open(pdf_factory.encrypted_pdf())
    assert doc.needs_pass and doc.is_encrypted and doc.is_pdf
    with pytest.raises(ValueError, match="document closed or encrypted"):
        doc.load_page(0)
    assert doc.authenticate("wrong") == 0
    assert doc.authenticate("secret") > 0
    assert "Pathology report" in doc[0].get_text()
    assert _open(pdf_factory.encrypted_pdf("other")).authenticate("other") > 0


def test_zero_page_pdf_opens_with_no_pages():
    doc = _open(pdf_factory.zero_page_pdf())
    assert doc.is_pdf and not doc.is_repaired
    assert doc.page_count == 0
    with pytest.raises(IndexError):
        doc[0]
    with pytest.raises(ValueError, match="cannot save with zero pages"):
        doc.tobytes()


def test_oversized_file_is_sparse(tmp_path):
    path = pdf_factory.oversized_file(tmp_path / "huge.pdf")
    st = os.stat(path)
    assert st.st_size == 101 * 1024 * 1024 and st.st_size > 100 * 1024 * 1024
    assert st.st_blocks * 512 < 1024 * 1024  # sparse: almost no disk used
    with open(path, "rb") as f:
        assert f.read(8) == b"%PDF-1.7"
    with pytest.raises(pymupdf.FileDataError, match="Failed to open file"):
        pymupdf.open(path)
    path.unlink()


def test_huge_page_pdf_render_would_exceed_limits():
    data = pdf_factory.huge_page_pdf()
    assert len(data) < 1024 * 1024
    page = _open(data)[0]
    assert (page.rect.width, page.rect.height) == (14400, 14400)
    # render a small clip at 150 DPI and extrapolate the PNG size to the whole page
    clip = pymupdf.Rect(1000, 1000, 1480, 1480)
    png = page.get_pixmap(dpi=150, clip=clip).tobytes("png")
    whole_page_png = len(png) * (page.rect.get_area() / clip.get_area())
    assert whole_page_png > 10 * 1024 * 1024
    assert round(page.rect.width * 150 / 72) == 30000  # 30000 x 30000 px at 150 DPI


def test_many_pages_pdf_is_fast():
    start = time.perf_counter()
    data = pdf_factory.many_pages_pdf()
    assert time.perf_counter() - start < 10
    doc = _open(data)
    assert doc.page_count == 5000 and not doc.is_repaired
    assert doc[4999].get_text().strip() == "Chart page 5000 of 5000"


def test_decompression_bomb_declares_gigapixels():
    data = pdf_factory.decompression_bomb_pdf()
    assert len(data) < 4096
    doc = _open(data)
    assert doc.page_count == 1 and not doc.is_repaired
    (image,) = doc[0].get_images(full=True)
    xref, _, width, height, bpc, colorspace, *_ = image
    assert (width, height, bpc, colorspace) == (30000, 30000, 8, "DeviceGray")
    assert doc.xref_get_key(xref, "Filter") == ("array", "[/FlateDecode/FlateDecode]")
    assert len(doc.xref_stream_raw(xref)) < 2048
    # MuPDF renders it by subsampling while decoding (~2 s, ~150 MB); extract_image or
    # Pixmap(doc, xref) would inflate all 900 MB: validation must check declared pixels first.
    pix = doc[0].get_pixmap(dpi=36, colorspace=pymupdf.csGRAY)
    assert (pix.width, pix.height) == (306, 396) and set(pix.samples) == {0}


def test_text_pdf():
    data = pdf_factory.text_pdf(["Amoxicillin 500 mg", "every 8 hours"], pages=3)
    doc = _open(data)
    assert doc.page_count == 3
    assert all(page.get_text() == "Amoxicillin 500 mg\nevery 8 hours\n" for page in doc)


def test_every_generator_documents_its_case():
    for name in pdf_factory.__all__:
        doc = getattr(pdf_factory, name).__doc__
        assert doc and doc.strip(), name
