"""Is a page's text layer evidence at all? A verdict per page before it is used as a baseline.

The quality score compares a parse with the PDF's own text layer. A broken layer (a shifted glyph
encoding, a font with a wrong ToUnicode map, a scanner's invisible OCR, text over part of the
page only) would blame a correct parse, so each page gets one verdict, checked in this order:

- `none`: no extractable text.
- `invisible_over_image`: most of the text is drawn in render mode 3 (invisible) over an image
  covering most of the page: a scanner's OCR. Never trusted as a baseline (it is another OCR,
  so a match would measure agreement between two OCRs, not faithfulness); the reason says
  whether the words look like words.
- `garbled`: the letters do not read as language (U+FFFD, mostly symbols, or few letter pairs
  that occur in text; see `letter_pair_share`).
- `partial`: the text's boxes cover little of the page's ink (text drawn as an image next to it).
- `usable`: everything else; only these pages are scored.

Pure: PyMuPDF and numpy, no Dagster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pymupdf

from medkg_pdf.page_render import gray_of

USABLE = "usable"

# Letter pairs are counted over this built-in text: plain English prose and medical phrasing
# (drug labels, notes, guidelines). A pair is "plausible" when it occurs here. Measured on the
# six text pages of `medkg_pdf.samples` (2026-12-04): 0.90-0.98 (0.90 on a short rotated page);
# the same pages shifted by one code point: 0.36-0.43; 300 random lower-case words: 0.43.
_REFERENCE = """
The patient is a sixty two year old woman admitted with community acquired pneumonia and sepsis.
She was treated with intravenous antibiotics, fluids and oxygen, and her blood pressure improved
within the first day. Take one capsule by mouth with a full glass of water every eight hours with
or without food. Usual adult dose five hundred milligrams three times daily for a course of ten
days unless told otherwise. Do not stop taking this medicine early even if you feel better after
the first few days. Tell your doctor about any allergy to penicillin or to other antibiotics
before starting. Contraindications, warnings and precautions: serious hypersensitivity reactions,
including anaphylaxis, have been reported in patients receiving beta lactam therapy. Adverse
reactions most frequently reported were diarrhea, nausea, vomiting, headache, rash and abdominal
pain. Dosage and administration in renal impairment: reduce the dose when creatinine clearance is
below thirty millilitres per minute. Pharmacokinetics: absorption, distribution, metabolism and
elimination were studied in healthy volunteers. The clinical trial randomized participants to
placebo or treatment; the primary outcome was mortality at twenty eight days. Results were
analysed by intention to treat with confidence intervals and hazard ratios. Discharge summary:
diagnosis, history of present illness, medications, allergies, laboratory findings, vital signs,
temperature, heart rate, respiratory rate, follow up with the cardiology clinic in two weeks.
Pregnancy and lactation, pediatric use, geriatric use, overdosage, description, how supplied,
storage and handling, keep out of reach of children, store at room temperature. Hemoglobin,
glucose, potassium, sodium, bicarbonate, lactate, culture, cytology, biopsy, hypertension,
diabetes mellitus, chronic kidney disease, myocardial infarction, thrombosis, embolism, asthma.
Amoxicillin, clavulanate, vancomycin, ceftriaxone, azithromycin, metformin, insulin, heparin,
warfarin, aspirin, paracetamol, ibuprofen, morphine, oxycodone, hydrochlorothiazide, lisinopril.
Quick zebras jump over lazy fox; squeeze, knowledge, rhythm, sphygmomanometer, xylophone, quality.
"""
_LETTERS = re.compile(r"[^\W\d_]+", re.UNICODE)


def _pairs(word: str) -> list[str]:
    return [word[i : i + 2] for i in range(len(word) - 1)]


_KNOWN_PAIRS = frozenset(pair for word in _LETTERS.findall(_REFERENCE.lower()) for pair in _pairs(word))

# thresholds, measured as described at each use
MIN_LETTER_PAIR_SHARE = 0.75  # language: 0.90-0.98; a +1 shifted encoding: 0.36-0.43
MIN_ALNUM_SHARE = 0.5  # of visible characters: mostly symbols is a broken encoding, not text
MIN_PAIRS_TO_JUDGE = 20  # fewer letter pairs (a page number, a caption) are not judged for garble
MIN_IMAGE_COVER = 0.5  # share of the page under images for "over an image" (a scan: ~1.0)
MIN_INVISIBLE_SHARE = 0.5  # share of characters in render mode 3
MIN_INK_COVERED = 0.3  # share of ink under text boxes; sample pages 0.64 (bar chart) to 1.0
MIN_INK_SHARE = 0.002  # below this much ink the page is near blank and coverage is not judged
_INK_DPI = 36
_INK_LEVEL = 160  # grey level under which a pixel is ink (text is black, paper white)


@dataclass(frozen=True)
class Judgement:
    verdict: str
    reason: str

    @property
    def usable(self) -> bool:
        return self.verdict == USABLE


def letter_pair_share(text: str) -> tuple[float, int]:
    """Share of letter pairs inside words that occur in real text, and how many pairs were seen.

    Why pairs and not a dictionary: no dictionary ships, and a shifted or mis-mapped encoding
    keeps word lengths and spacing but turns "the" into "uif"; pairs like "ui", "if", "qm" are
    rare in any Latin-script language, while medical terms reuse ordinary pairs. Non-ASCII
    letters (accented, other scripts) are not judged: they are neither counted for nor against.
    """
    pairs = [p for word in _LETTERS.findall(text.lower()) for p in _pairs(word) if p.isascii()]
    if not pairs:
        return 1.0, 0
    return sum(p in _KNOWN_PAIRS for p in pairs) / len(pairs), len(pairs)


def judge_text(text: str) -> Judgement:
    """The garble test alone, on extracted text: U+FFFD, mostly symbols, implausible letter pairs."""
    visible = [ch for ch in text if not ch.isspace()]
    if not visible:
        return Judgement("none", "no text layer")
    if "\ufffd" in text:
        return Judgement("garbled", f"{text.count(chr(0xFFFD))} unmapped glyphs (U+FFFD)")
    alnum = sum(ch.isalnum() for ch in visible) / len(visible)
    if alnum < MIN_ALNUM_SHARE:
        return Judgement("garbled", f"mostly symbols: {alnum:.0%} letters or digits")
    share, counted = letter_pair_share(text)
    if counted >= MIN_PAIRS_TO_JUDGE and share < MIN_LETTER_PAIR_SHARE:
        return Judgement("garbled", f"letters do not read as words: {share:.0%} plausible letter pairs")
    return Judgement(USABLE, f"{share:.0%} plausible letter pairs")


def _cover(rects: list[pymupdf.Rect], page: pymupdf.Rect, shape: tuple[int, int]) -> np.ndarray:
    """A mask of the page (at the ink rendering's size) under the union of the rectangles."""
    mask = np.zeros(shape, dtype=bool)
    sy, sx = shape[0] / page.height, shape[1] / page.width
    for r in rects:
        r = (r - (page.x0, page.y0, page.x0, page.y0)) & pymupdf.Rect(0, 0, page.width, page.height)
        if not r.is_empty:
            mask[int(r.y0 * sy) : int(np.ceil(r.y1 * sy)), int(r.x0 * sx) : int(np.ceil(r.x1 * sx))] = True
    return mask


def _image_cover(page: pymupdf.Page) -> float:
    """Share of the page under images (a 100x100 grid of the union, so overlaps count once)."""
    rects = [pymupdf.Rect(info["bbox"]) * page.rotation_matrix for info in page.get_image_info()]
    return float(_cover(rects, page.rect, (100, 100)).mean())


def judge_page(page: pymupdf.Page, text: str) -> Judgement:
    """The verdict for one page, given its extracted text (see the module docstring for the order)."""
    if not text.strip():
        return Judgement("none", "no text layer")
    trace = page.get_texttrace()
    chars = sum(len(span["chars"]) for span in trace)
    invisible = sum(len(span["chars"]) for span in trace if span["type"] == 3)
    if chars and invisible / chars >= MIN_INVISIBLE_SHARE:
        cover = _image_cover(page)
        if cover >= MIN_IMAGE_COVER:
            words = judge_text(text)
            looks = "reads as words" if words.usable else f"garbled too ({words.reason})"
            return Judgement(
                "invisible_over_image",
                f"invisible OCR text (render mode 3) over an image covering {cover:.0%} of the page; {looks}",
            )
    garble = judge_text(text)
    if not garble.usable:
        return garble
    covered = _ink_covered(page, [pymupdf.Rect(span["bbox"]) for span in trace if span["type"] != 3])
    if covered is not None and covered < MIN_INK_COVERED:
        return Judgement("partial", f"text covers {covered:.0%} of the page's ink")
    return garble


def _ink_covered(page: pymupdf.Page, text_boxes: list[pymupdf.Rect]) -> float | None:
    """Share of the rendered page's ink under the text's boxes (None: too little ink to judge)."""
    pix = page.get_pixmap(dpi=_INK_DPI, colorspace=pymupdf.csGRAY, alpha=False)
    ink = gray_of(pix) < _INK_LEVEL
    if ink.mean() < MIN_INK_SHARE:
        return None
    # a box grown by a point on each side: anti-aliased glyph edges fall just outside their box
    # (text boxes are in the unrotated page's space, the rendering follows /Rotate)
    boxes = [(box + (-1, -1, 1, 1)) * page.rotation_matrix for box in text_boxes]
    mask = _cover(boxes, page.rect, ink.shape)
    return float((ink & mask).sum() / ink.sum())
