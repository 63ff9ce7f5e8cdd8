"""Offline generator of realistic sample medical PDFs, with their ground-truth text.

Everything is drawn with PyMuPDF and its built-in Base-14 fonts only, so the samples need
no network, no font files and no other tool. Generation is deterministic: the same bytes on
every call (fixed metadata dates, no random file /ID, seeded noise).

Ground truth (``SamplePdf.pages``) is exactly the text placed on each page, in reading order
(full-width blocks, then the left column, then the right column), one placed line per line,
joined with ``"\\n"``. Paragraphs are wrapped here (not by PyMuPDF), so every ground-truth
line is one line on the page. A table row is one ground-truth line whose cells are joined
with ``" | "`` (a wrapped cell's lines are joined with a space). A blank page is ``""``.

Base-14 fonts only cover Latin-1, so the text uses ``>=``, ``<=`` and ``-`` bullets instead of
the Unicode symbols (``≥``, ``•`` would be extracted as ``·``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pymupdf

__all__ = ["SamplePdf", "case_pdfs", "sample_pdfs", "shifted_encoding", "write_samples"]

PAGE_W, PAGE_H = 612.0, 792.0
MARGIN = 72.0
BLACK = (0, 0, 0)
GRAY_FILL = (0.88, 0.88, 0.88)

SERIF, SANS, SANS_BOLD, MONO = "tiro", "helv", "hebo", "cour"

_META_DATE = "D:20250101000000"


@dataclass(frozen=True)
class SamplePdf:
    name: str  # file name, e.g. "amoxicillin-label.pdf"
    data: bytes
    pages: list[str]  # ground-truth plain text of each page, reading order ("" for a blank page)
    description: str
    scanned: bool


# ---------------------------------------------------------------------------------------
# layout helpers


def _wrap(text: str, width: float, font: str, size: float) -> list[str]:
    """Greedy word wrap measured with the font's real glyph widths."""
    words = text.split()
    lines: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current} {word}" if current else word
        if current and pymupdf.get_text_length(candidate, fontname=font, fontsize=size) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


@dataclass
class _Flow:
    """Places text top-down in one or more columns, recording every placed line.

    ``columns`` are (x0, x1) pairs; text moves to the next column when one is full."""

    page: pymupdf.Page
    columns: list[tuple[float, float]]
    top: float
    bottom: float
    out: list[str]
    col: int = 0
    y: float = field(default=0.0)
    # maps a point on the displayed page to the point PyMuPDF's insert_text expects
    to_page: pymupdf.Matrix = field(default_factory=lambda: pymupdf.Matrix(1, 0, 0, 1, 0, 0))
    text_rotate: int = 0

    def __post_init__(self) -> None:
        self.y = self.top

    @property
    def x0(self) -> float:
        return self.columns[self.col][0]

    @property
    def x1(self) -> float:
        return self.columns[self.col][1]

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    def _ensure(self, height: float) -> None:
        if self.y + height <= self.bottom:
            return
        if self.col + 1 >= len(self.columns):
            raise ValueError("sample content does not fit on the page")
        self.col += 1
        self.y = self.top

    def _put(self, x: float, baseline: float, text: str, font: str, size: float,
             color=BLACK) -> None:
        point = pymupdf.Point(x, baseline) * self.to_page
        self.page.insert_text(point, text, fontname=font, fontsize=size, color=color,
                              rotate=self.text_rotate)

    def space(self, points: float) -> None:
        self.y += points

    def lines(self, lines: list[str], font: str, size: float, *, leading: float | None = None,
              align: str = "left", indent: float = 0.0, after: float = 0.0,
              keep: int = 1, color=BLACK) -> None:
        leading = leading or size * 1.25
        self._ensure(leading * min(keep, max(len(lines), 1)))
        for line in lines:
            self._ensure(leading)
            self.y += leading
            length = pymupdf.get_text_length(line, fontname=font, fontsize=size)
            if align == "center":
                x = self.x0 + (self.width - length) / 2
            elif align == "right":
                x = self.x1 - length
            else:
                x = self.x0 + indent
            self._put(x, self.y - leading * 0.22, line, font, size, color)
            self.out.append(line)
        self.y += after

    def para(self, text: str, font: str = SERIF, size: float = 10.0, *,
             leading: float | None = None, align: str = "left", indent: float = 0.0,
             hanging: str = "", after: float = 5.0, color=BLACK) -> None:
        """A wrapped paragraph. ``hanging`` (e.g. "- ") starts the first line and the
        following lines are indented by its width (bullet items)."""
        hang_w = pymupdf.get_text_length(hanging, fontname=font, fontsize=size) if hanging else 0.0
        wrapped = _wrap(text, self.width - indent - hang_w, font, size)
        if not hanging:
            self.lines(wrapped, font, size, leading=leading, align=align, indent=indent,
                       after=after, color=color)
            return
        leading = leading or size * 1.25
        self._ensure(leading)
        first = True
        for line in wrapped:
            if first:
                self.lines([hanging + line], font, size, leading=leading, indent=indent)
                first = False
            else:
                self.lines([line], font, size, leading=leading, indent=indent + hang_w)
                # ground truth keeps the bullet item as placed: continuation lines unindented
        self.y += after

    def heading(self, text: str, size: float = 11.0, *, after: float = 3.0,
                align: str = "left") -> None:
        self.lines([text], SANS_BOLD, size, align=align, after=after, keep=3)

    def rule(self, after: float = 6.0, width: float = 0.75) -> None:
        self._ensure(after + 2)
        self.y += 3
        p0 = pymupdf.Point(self.x0, self.y) * self.to_page
        p1 = pymupdf.Point(self.x1, self.y) * self.to_page
        self.page.draw_line(p0, p1, color=BLACK, width=width)
        self.y += after

    def block(self, height: float, draw: Callable[[pymupdf.Rect], None], after: float = 4.0) -> None:
        """Reserve ``height`` points in the current column and draw graphics there (no text)."""
        self._ensure(height)
        draw(pymupdf.Rect(self.x0, self.y, self.x1, self.y + height))
        self.y += height + after

    def table(self, rows: list[list[str]], widths: list[float], *, size: float = 9.0,
              pad: float = 4.0, after: float = 8.0) -> None:
        """A ruled table; row 0 is the header (bold, shaded). Widths are fractions or points."""
        total = sum(widths)
        col_w = [w / total * self.width for w in widths]
        leading = size * 1.25
        for r, row in enumerate(rows):
            font = SANS_BOLD if r == 0 else SANS
            cells = [_wrap(cell, col_w[c] - 2 * pad, font, size) for c, cell in enumerate(row)]
            height = max(len(c) for c in cells) * leading + 2 * pad
            self._ensure(height)
            x = self.x0
            for c, cell_lines in enumerate(cells):
                rect = pymupdf.Rect(x, self.y, x + col_w[c], self.y + height)
                self.page.draw_rect(rect, color=BLACK, fill=GRAY_FILL if r == 0 else None,
                                    width=0.6)
                baseline = self.y + pad
                for line in cell_lines:
                    baseline += leading
                    self._put(x + pad, baseline - leading * 0.22, line, font, size)
                x += col_w[c]
            self.out.append(" | ".join(" ".join(c) for c in cells))
            self.y += height
        self.y += after


def _margin_line(page: pymupdf.Page, text: str, out: list[str], *, y: float = PAGE_H - 40, align: str = "center") -> None:
    """One 8 pt line in the page's top or bottom margin (a footer by default): a running head or foot, a page number."""
    length = pymupdf.get_text_length(text, fontname=SANS, fontsize=8)
    x = {"center": (PAGE_W - length) / 2, "left": MARGIN, "right": PAGE_W - MARGIN - length}[align]
    page.insert_text((x, y), text, fontname=SANS, fontsize=8)
    out.append(text)


def _finish(doc: pymupdf.Document, title: str, subject: str) -> bytes:
    doc.set_metadata(
        {
            "title": title,
            "subject": subject,
            "author": "medkg-pdf samples",
            "creator": "medkg-pdf samples",
            "producer": "medkg-pdf samples (PyMuPDF)",
            "keywords": "sample, synthetic, medical",
            "creationDate": _META_DATE,
            "modDate": _META_DATE,
        }
    )
    # no_new_id: keep the trailer /ID out, so the bytes are identical on every call
    data = doc.tobytes(garbage=3, deflate=True, no_new_id=True)
    doc.close()
    return data


def _new_page(doc: pymupdf.Document) -> pymupdf.Page:
    return doc.new_page(width=PAGE_W, height=PAGE_H)


# ---------------------------------------------------------------------------------------
# a. drug label


def _amoxicillin_label() -> SamplePdf:
    doc = pymupdf.open()
    pages: list[str] = []

    # page 1: single column with a dosage table
    page = _new_page(doc)
    out: list[str] = []
    f = _Flow(page, [(MARGIN, PAGE_W - MARGIN)], top=MARGIN - 10, bottom=PAGE_H - 60, out=out)
    f.heading("AMOXICILLIN CAPSULES, USP", size=18, align="center", after=2)
    f.lines(["250 mg and 500 mg, for oral use"], SANS, 10.5, align="center")
    f.lines(["Rx only"], SANS_BOLD, 9, align="center")
    f.rule(after=8)
    f.heading("INDICATIONS AND USAGE")
    f.para(
        "Amoxicillin capsules are a penicillin-class antibacterial indicated for the treatment "
        "of infections due to susceptible (ONLY beta-lactamase-negative) isolates of the "
        "designated bacteria in the conditions listed below: infections of the ear, nose and "
        "throat; infections of the genitourinary tract; infections of the skin and skin "
        "structure; and infections of the lower respiratory tract."
    )
    f.para(
        "To reduce the development of drug-resistant bacteria and maintain the effectiveness of "
        "amoxicillin and other antibacterial drugs, amoxicillin should be used only to treat "
        "infections that are proven or strongly suspected to be caused by bacteria.",
        after=8,
    )
    f.heading("DOSAGE AND ADMINISTRATION")
    f.para(
        "Amoxicillin capsules may be taken without regard to meals. The dosage depends on the "
        "site and severity of the infection and on the age and weight of the patient. Treatment "
        "should continue for a minimum of 48 to 72 hours beyond the time that the patient "
        "becomes asymptomatic. The recommended dosages are given in Table 1."
    )
    f.lines(["Table 1. Dosage for Adults and Pediatric Patients Older than 3 Months"], SANS_BOLD,
            9.5, after=4)
    f.table(
        [
            ["Infection", "Adults", "Children (>3 months)"],
            ["Ear/Nose/Throat", "500 mg every 12 hours or 250 mg every 8 hours",
             "25 mg/kg/day in divided doses every 12 hours"],
            ["Lower Respiratory Tract", "875 mg every 12 hours or 500 mg every 8 hours",
             "45 mg/kg/day in divided doses every 12 hours"],
            ["Skin/Skin Structure", "500 mg every 12 hours or 250 mg every 8 hours",
             "25 mg/kg/day in divided doses every 12 hours"],
            ["Genitourinary Tract", "500 mg every 12 hours or 250 mg every 8 hours",
             "20 mg/kg/day in divided doses every 8 hours"],
        ],
        widths=[0.28, 0.34, 0.38],
    )
    f.heading("Dosing in Renal Impairment", size=10)
    f.para(
        "Patients with a glomerular filtration rate (GFR) of less than 30 mL/min should not "
        "receive the 875 mg dose. Patients with a GFR of 10 to 30 mL/min should receive 250 mg "
        "or 500 mg every 12 hours, and patients with a GFR below 10 mL/min should receive 250 mg "
        "or 500 mg every 24 hours, depending on the severity of the infection."
    )
    _margin_line(page, "Page 1 of 2", out)
    pages.append("\n".join(out))

    # page 2: two columns
    page = _new_page(doc)
    out = []
    head = _Flow(page, [(MARGIN, PAGE_W - MARGIN)], top=MARGIN - 20, bottom=PAGE_H, out=out)
    head.lines(["Amoxicillin Capsules, USP - Full Prescribing Information (continued)"], SANS, 8)
    head.rule(after=6, width=0.5)
    gutter = 24.0
    mid = PAGE_W / 2
    f = _Flow(page, [(MARGIN, mid - gutter / 2), (mid + gutter / 2, PAGE_W - MARGIN)],
              top=head.y, bottom=PAGE_H - 60, out=out)
    f.heading("WARNINGS")
    f.para(
        "Anaphylactic Reactions: Serious and occasionally fatal hypersensitivity (anaphylactic) "
        "reactions have been reported in patients on penicillin therapy. These reactions are "
        "more likely to occur in individuals with a history of penicillin hypersensitivity "
        "and/or a history of sensitivity to multiple allergens. If an allergic reaction occurs, "
        "amoxicillin should be discontinued and appropriate therapy instituted."
    )
    f.para(
        "Clostridioides difficile-Associated Diarrhea (CDAD): CDAD has been reported with use of "
        "nearly all antibacterial agents, including amoxicillin, and may range in severity from "
        "mild diarrhea to fatal colitis. CDAD must be considered in all patients who present "
        "with diarrhea following antibacterial use; it has been reported to occur over 2 months "
        "after the administration of antibacterial agents."
    )
    f.para(
        "Skin Rash in Patients with Mononucleosis: a high percentage of patients with "
        "mononucleosis who receive amoxicillin develop an erythematous skin rash. Amoxicillin "
        "should not be administered to patients with mononucleosis."
    )
    f.para(
        "Phenylketonurics: some formulations contain aspartame, a source of phenylalanine "
        "(each 5 mL of the 200 mg/5 mL suspension contains 1.82 mg of phenylalanine)."
    )
    # move to the right column for the next section, like the original label
    f.col, f.y = 1, f.top
    f.heading("ADVERSE REACTIONS")
    f.para(
        "The most common adverse reactions (incidence of 1% or more) reported in clinical trials "
        "of 1,191 adult and pediatric patients were diarrhea (2.3%), vaginal mycosis (1.3%), "
        "headache (1.1%) and nausea (1.0%). Rash was reported in 0.9% of patients and vomiting "
        "in 0.7%."
    )
    f.para(
        "Adverse reactions led to discontinuation of therapy in 0.8% of patients. The following "
        "adverse reactions have been identified during post-approval use:"
    )
    for item in (
        "Gastrointestinal: black hairy tongue, hemorrhagic colitis (< 0.1%).",
        "Hypersensitivity: serum sickness-like reactions, urticaria, angioedema.",
        "Liver: a moderate rise in AST and/or ALT (1.5 to 3 times the upper limit of normal).",
        "Hemic and lymphatic: anemia, thrombocytopenia, eosinophilia, leukopenia.",
    ):
        f.para(item, hanging="- ", after=2)
    f.space(6)
    f.heading("OVERDOSAGE")
    f.para(
        "In case of overdosage, discontinue medication, treat symptomatically and institute "
        "supportive measures as required. Interstitial nephritis resulting in oliguric renal "
        "failure has been reported in a small number of patients after overdosage. Amoxicillin "
        "may be removed from circulation by hemodialysis (about 50 to 70% in 4 hours)."
    )
    _margin_line(page, "Page 2 of 2", out)
    pages.append("\n".join(out))

    return SamplePdf(
        name="amoxicillin-label.pdf",
        data=_finish(doc, "Amoxicillin Capsules, USP", "Drug label"),
        pages=pages,
        description="US drug-label style prescribing information: headings, paragraphs, a ruled "
        "3-column dosage table (page 1) and a two-column page with percentages (page 2).",
        scanned=False,
    )


# ---------------------------------------------------------------------------------------
# b. two-column clinical paper


def _draw_bar_chart(page: pymupdf.Page, rect: pymupdf.Rect) -> None:
    """Graphics-only figure (no text), so the caption is the figure's only text."""
    frame = rect + (6, 4, -6, -4)
    page.draw_rect(frame, color=(0.4, 0.4, 0.4), width=0.5)
    base = frame.y1 - 8
    page.draw_line((frame.x0 + 8, base), (frame.x1 - 8, base), color=BLACK, width=0.8)
    page.draw_line((frame.x0 + 8, frame.y0 + 8), (frame.x0 + 8, base), color=BLACK, width=0.8)
    values = [0.18, 0.24, 0.31, 0.39]  # mortality by vasopressor delay
    colors = [(0.20, 0.40, 0.70), (0.30, 0.55, 0.80), (0.85, 0.55, 0.20), (0.80, 0.25, 0.20)]
    slot = (frame.width - 24) / len(values)
    for i, (v, c) in enumerate(zip(values, colors)):
        x0 = frame.x0 + 16 + i * slot
        h = v / 0.45 * (base - frame.y0 - 12)
        page.draw_rect(pymupdf.Rect(x0, base - h, x0 + slot * 0.6, base), color=c, fill=c)


def _sepsis_paper() -> SamplePdf:
    doc = pymupdf.open()
    pages: list[str] = []
    gutter = 22.0
    mid = PAGE_W / 2
    cols = [(MARGIN - 18, mid - gutter / 2), (mid + gutter / 2, PAGE_W - MARGIN + 18)]

    # page 1: full-width title block, then two columns
    page = _new_page(doc)
    out: list[str] = []
    head = _Flow(page, [(MARGIN - 18, PAGE_W - MARGIN + 18)], top=MARGIN - 16, bottom=PAGE_H,
                 out=out)
    head.lines(["ORIGINAL RESEARCH | Critical Care Medicine"], SANS, 8, after=6)
    head.para(
        "Early Fluid Resuscitation and Vasopressor Timing in Adults with Septic Shock: "
        "A Retrospective Cohort Study",
        font=SANS_BOLD, size=16, leading=20, align="center", after=6,
    )
    head.lines(["Maria L. Okafor, MD, MPH; Daniel R. Whitcombe, MD; Priya Raman, PharmD"],
               SANS, 10, align="center")
    head.lines(["Department of Critical Care Medicine, Riverside University Hospital"],
               SERIF, 9, align="center")
    head.rule(after=8, width=0.6)

    f = _Flow(page, cols, top=head.y, bottom=PAGE_H - 58, out=out)
    f.heading("Abstract", size=10.5)
    f.para(
        "Background: The optimal volume of initial crystalloid resuscitation and the timing of "
        "vasopressor initiation in septic shock remain debated. We examined whether completing "
        "a 30 mL/kg crystalloid bolus within 3 hours and starting norepinephrine within 6 hours "
        "were associated with hospital mortality.", size=9.5,
    )
    f.para(
        "Methods: Adults admitted from the emergency department with septic shock between "
        "January 2019 and December 2023 were included. Exposure groups were defined by time "
        "from shock recognition to vasopressor start.", size=9.5,
    )
    f.para(
        "Results: Among 1,284 patients (median age 67 years; 44% women), hospital mortality was "
        "18.2% when norepinephrine was started within 1 hour and 38.9% when it was started after "
        "6 hours (adjusted odds ratio 1.9; 95% CI 1.4 to 2.6).", size=9.5,
    )
    f.para(
        "Conclusions: Earlier vasopressor initiation was independently associated with lower "
        "mortality in septic shock.", size=9.5, after=8,
    )
    f.heading("1. Introduction", size=10.5)
    f.para(
        "Sepsis is a life-threatening organ dysfunction caused by a dysregulated host response "
        "to infection, and septic shock carries a hospital mortality that exceeds 30% in many "
        "cohorts. Current guidelines recommend at least 30 mL/kg of intravenous crystalloid "
        "within the first 3 hours and vasopressors to target a mean arterial pressure (MAP) "
        ">= 65 mmHg when hypotension persists after fluid resuscitation.", size=9.5,
    )
    f.para(
        "Observational studies suggest that each hour of delay in vasopressor therapy may "
        "increase mortality, yet fixed fluid volumes can cause harm in patients with heart "
        "failure or end-stage kidney disease. We therefore studied both exposures in a single "
        "contemporary cohort.", size=9.5, after=8,
    )
    f.heading("2. Methods", size=10.5)
    f.para(
        "Study design and setting. This retrospective cohort study was conducted in a 650-bed "
        "academic hospital. The institutional review board approved the study and waived "
        "informed consent.", size=9.5,
    )
    f.para(
        "Patients. Adults aged 18 years or older were eligible if they met Sepsis-3 criteria for "
        "septic shock: a vasopressor requirement to maintain MAP >= 65 mmHg and a serum lactate "
        "> 2 mmol/L despite adequate volume resuscitation. Patients transferred from other "
        "hospitals and those with comfort-care orders within 24 hours were excluded.", size=9.5,
    )
    f.para(
        "Exposures and outcomes. The primary exposure was the time from shock recognition to "
        "the start of norepinephrine, grouped as < 1 h, 1-3 h, 3-6 h and > 6 h. The primary "
        "outcome was in-hospital mortality; secondary outcomes were ICU length of stay and "
        "receipt of renal replacement therapy.", size=9.5,
    )
    f.para(
        "Statistical analysis. Multivariable logistic regression adjusted for age, SOFA score, "
        "lactate, source of infection and time to antibiotics. A two-sided p < 0.05 was "
        "considered significant.", size=9.5,
    )
    _margin_line(page, "Crit Care Res. 2025;12(3):145-152", out)
    pages.append("\n".join(out))

    # page 2: two columns with a figure, caption and bullet list
    page = _new_page(doc)
    out = []
    head = _Flow(page, [(MARGIN - 18, PAGE_W - MARGIN + 18)], top=MARGIN - 28, bottom=PAGE_H,
                 out=out)
    head.lines(["Okafor et al. Vasopressor Timing in Septic Shock"], SANS, 8)
    head.rule(after=6, width=0.5)
    f = _Flow(page, cols, top=head.y, bottom=PAGE_H - 58, out=out)
    f.heading("3. Results", size=10.5)
    f.para(
        "Of 1,517 screened patients, 1,284 were included. The median initial lactate was "
        "4.1 mmol/L (IQR 2.9 to 6.3) and the median SOFA score was 8. A total of 1,046 patients "
        "(81.5%) received the full 30 mL/kg bolus within 3 hours; the median volume was "
        "2.4 L.", size=9.5,
    )
    f.para(
        "Norepinephrine was started within 1 hour in 312 patients, at 1-3 hours in 498, at "
        "3-6 hours in 301 and after 6 hours in 173. MAP >= 65 mmHg was reached at a median of "
        "2.5 hours. Hospital mortality rose with each delay category (Figure 1).", size=9.5,
    )
    f.block(130, lambda r: _draw_bar_chart(page, r))
    f.para(
        "Figure 1. Hospital mortality by time from shock recognition to norepinephrine start "
        "(< 1 h: 18.2%; 1-3 h: 24.1%; 3-6 h: 31.0%; > 6 h: 38.9%). n = 1,284.",
        font=SANS, size=8.5, after=8,
    )
    f.para(
        "After adjustment, vasopressor delay beyond 6 hours remained associated with mortality "
        "(adjusted OR 1.9; 95% CI 1.4 to 2.6; p < 0.001). Completion of the 30 mL/kg bolus was "
        "not independently associated with mortality (adjusted OR 0.94; 95% CI 0.71 to 1.25).",
        size=9.5,
    )
    f.para(
        "Renal replacement therapy was required in 11.8% of patients, and the median ICU "
        "length of stay was 4 days (IQR 2 to 8).", size=9.5,
    )
    f.col, f.y = 1, f.top
    f.heading("Key findings", size=10.5)
    for item in (
        "Each delay category in norepinephrine start was associated with higher mortality.",
        "A MAP target >= 65 mmHg was reached later when vasopressors were delayed.",
        "The 30 mL/kg bolus alone did not predict survival after adjustment.",
        "Lactate > 4 mmol/L identified the highest-risk patients.",
    ):
        f.para(item, size=9.5, hanging="- ", after=2)
    f.space(6)
    f.heading("4. Discussion", size=10.5)
    f.para(
        "In this cohort, delayed vasopressor initiation was associated with a graded increase "
        "in mortality, whereas completing a fixed crystalloid volume was not. These findings "
        "support early norepinephrine, possibly before the full fluid bolus is complete, in "
        "patients with profound hypotension.", size=9.5,
    )
    f.para(
        "Our study has limitations. Residual confounding is likely in an observational design, "
        "and the time of shock recognition was abstracted from the chart. Randomized trials of "
        "early vasopressor strategies are under way.", size=9.5, after=8,
    )
    f.heading("References", size=10.5)
    for ref in (
        "1. Singer M, Deutschman CS, Seymour CW, et al. The Third International Consensus "
        "Definitions for Sepsis and Septic Shock (Sepsis-3). JAMA. 2016;315(8):801-810.",
        "2. Evans L, Rhodes A, Alhazzani W, et al. Surviving Sepsis Campaign: International "
        "Guidelines for Management of Sepsis and Septic Shock 2021. Crit Care Med. "
        "2021;49(11):e1063-e1143.",
    ):
        f.para(ref, font=SERIF, size=8.5, after=3)
    _margin_line(page, "Crit Care Res. 2025;12(3):145-152", out)
    pages.append("\n".join(out))

    return SamplePdf(
        name="sepsis-guideline-two-column.pdf",
        data=_finish(doc, "Early Fluid Resuscitation and Vasopressor Timing", "Clinical paper"),
        pages=pages,
        description="Two-column clinical paper: full-width title and authors, then two text "
        "columns with numbers (30 mL/kg, MAP >= 65 mmHg), a graphics-only bar chart with a "
        "'Figure 1.' caption and a bullet list.",
        scanned=False,
    )


# ---------------------------------------------------------------------------------------
# c. scanned discharge summary (image only)


_SCAN_DPI = 200


def _discharge_text_page(doc: pymupdf.Document) -> list[str]:
    page = _new_page(doc)
    out: list[str] = []
    f = _Flow(page, [(MARGIN, PAGE_W - MARGIN)], top=MARGIN - 12, bottom=PAGE_H - 50, out=out)
    f.lines(["RIVERSIDE UNIVERSITY HOSPITAL"], SANS_BOLD, 13, align="center")
    f.lines(["DISCHARGE SUMMARY"], SANS_BOLD, 12, align="center")
    f.rule(after=8, width=1.0)
    for label in (
        "Patient: DOE, JOHN A.          MRN: 00482913          DOB: 04/12/1958",
        "Admitted: 03/14/2025          Discharged: 03/19/2025",
        "Attending: Sarah K. Lindqvist, MD          Service: Internal Medicine",
    ):
        f.lines([label], MONO, 9.5)
    f.space(8)
    f.heading("PRINCIPAL DIAGNOSIS", size=10.5)
    f.para("Community-acquired pneumonia, right lower lobe.", font=MONO, size=9.5)
    f.heading("SECONDARY DIAGNOSES", size=10.5)
    f.para("Type 2 diabetes mellitus (HbA1c 7.8%). Hypertension. Chronic kidney disease "
           "stage 3a (eGFR 52 mL/min/1.73 m2).", font=MONO, size=9.5)
    f.heading("HOSPITAL COURSE", size=10.5)
    f.para(
        "67-year-old man presented with 4 days of fever, productive cough and dyspnea. On "
        "arrival: temperature 38.9 C, heart rate 112/min, blood pressure 104/62 mmHg, SpO2 89% "
        "on room air. WBC 15.6 x10^9/L, CRP 182 mg/L, procalcitonin 2.4 ng/mL. Chest X-ray "
        "showed right lower lobe consolidation. Blood cultures were negative.",
        font=MONO, size=9.5,
    )
    f.para(
        "He was treated with IV ceftriaxone 1 g daily and azithromycin 500 mg daily, with "
        "oxygen by nasal cannula at 2 L/min, weaned to room air on day 3. He was afebrile for "
        "48 hours before discharge and was switched to oral amoxicillin.",
        font=MONO, size=9.5,
    )
    f.heading("DISCHARGE MEDICATIONS", size=10.5)
    for med in (
        "1. Amoxicillin 500 mg PO every 8 hours for 5 more days",
        "2. Metformin 1000 mg PO twice daily",
        "3. Lisinopril 10 mg PO once daily",
        "4. Acetaminophen 650 mg PO every 6 hours as needed for fever",
    ):
        f.lines([med], MONO, 9.5)
    f.space(6)
    f.heading("FOLLOW-UP", size=10.5)
    f.para("Primary care in 7 days. Repeat chest X-ray in 6 weeks. Return to the emergency "
           "department for fever > 38.5 C, chest pain or shortness of breath.",
           font=MONO, size=9.5)
    f.space(10)
    f.lines(["Electronically signed: Sarah K. Lindqvist, MD  03/19/2025 14:32"], MONO, 9)
    return out


def _scanned_discharge_summary() -> SamplePdf:
    tmp = pymupdf.open()
    truth = _discharge_text_page(tmp)
    pix = tmp[0].get_pixmap(dpi=_SCAN_DPI, colorspace=pymupdf.csGRAY, alpha=False)
    tmp.close()

    # make it look scanned: off-white paper, slight toner fade, dust speckle, a darker edge
    img = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width).astype(np.int16)
    rng = np.random.default_rng(20250319)
    img = np.where(img > 200, 246, img)  # paper is never pure white on a scan
    ink = img < 128
    img[ink] += rng.integers(0, 40, size=int(ink.sum()), dtype=np.int16)  # uneven toner
    speck = rng.random(img.shape) < 0.0008
    img[speck] = rng.integers(60, 180, size=int(speck.sum()), dtype=np.int16)
    img[:, :12] = 200  # shadow of the scanner lid along the left edge
    img = np.clip(img, 0, 255).astype(np.uint8)
    scan = pymupdf.Pixmap(pymupdf.csGRAY, pix.width, pix.height, img.tobytes(), False)
    scan.set_dpi(_SCAN_DPI, _SCAN_DPI)
    png = scan.tobytes("png")

    doc = pymupdf.open()
    page = _new_page(doc)
    page.insert_image(page.rect, stream=png)
    return SamplePdf(
        name="scanned-discharge-summary.pdf",
        data=_finish(doc, "Discharge Summary (scan)", "Scanned document"),
        pages=["\n".join(truth)],
        description="A one-page discharge summary as a 200-DPI grayscale scan: one PNG image, "
        "no text layer, with off-white paper, uneven toner and seeded dust speckle.",
        scanned=True,
    )


# ---------------------------------------------------------------------------------------
# d. memo, blank separator page, rotated landscape page


def _blank_and_rotated() -> SamplePdf:
    doc = pymupdf.open()
    pages: list[str] = []

    page = _new_page(doc)
    out: list[str] = []
    f = _Flow(page, [(MARGIN, PAGE_W - MARGIN)], top=MARGIN, bottom=PAGE_H - 60, out=out)
    f.lines(["MEMORANDUM"], SANS_BOLD, 18, after=8)
    for line in (
        "To: All Nursing Staff, 4 West",
        "From: Infection Prevention Committee",
        "Date: January 6, 2025",
        "Subject: Updated hand hygiene audit schedule",
    ):
        f.lines([line], SANS, 10.5)
    f.rule(after=10)
    f.para(
        "Beginning January 13, hand hygiene audits on 4 West will take place on every shift, "
        "three times per week. Observers will record compliance before and after patient "
        "contact. The unit target is 95% compliance; the December rate was 88%.", size=11,
        after=8,
    )
    f.para(
        "Please review the attached laboratory summary for the three patients currently on "
        "contact precautions. Questions may be directed to the infection prevention office at "
        "extension 4471.", size=11,
    )
    pages.append("\n".join(out))

    _new_page(doc)  # truly blank separator page: no content stream at all
    pages.append("")

    # landscape content on a portrait page with /Rotate 90: the text is written rotated by
    # 90 degrees in the unrotated space, so it reads upright on the displayed (rotated) page.
    page = _new_page(doc)
    page.set_rotation(90)
    out = []
    shown = page.rect  # displayed page: 792 x 612
    f = _Flow(page, [(MARGIN, shown.width - MARGIN)], top=MARGIN - 10, bottom=shown.height - 50,
              out=out, to_page=page.derotation_matrix, text_rotate=90)
    f.lines(["CUMULATIVE LABORATORY REPORT - 4 WEST, CONTACT PRECAUTIONS"], SANS_BOLD, 14,
            after=4)
    f.lines(["Collected 01/05/2025 06:00"], SANS, 10)
    f.rule(after=8)
    for line in (
        "Bed 412: WBC 11.2 x10^9/L (ref 4.0-11.0), CRP 48 mg/L, creatinine 1.1 mg/dL, "
        "C. difficile toxin PCR positive",
        "Bed 418: WBC 7.9 x10^9/L (ref 4.0-11.0), CRP 12 mg/L, creatinine 0.8 mg/dL, "
        "MRSA nasal swab positive",
        "Bed 421: WBC 9.4 x10^9/L (ref 4.0-11.0), CRP 5 mg/L, creatinine 1.4 mg/dL, "
        "VRE rectal swab negative",
    ):
        f.para(line, font=SANS, size=10.5, after=6)
    f.para("Critical values were called to the charge nurse at 07:15.", font=SERIF, size=10.5)
    pages.append("\n".join(out))

    return SamplePdf(
        name="blank-and-rotated.pdf",
        data=_finish(doc, "Memo with attachments", "Memo"),
        pages=pages,
        description="Three pages: a short memo, a truly blank separator page (no content "
        "stream), and a portrait page with /Rotate 90 carrying landscape text that reads "
        "upright when rendered.",
        scanned=False,
    )


# ---------------------------------------------------------------------------------------
# e. one case per class of real-world trouble (issue 14): each a small PDF with its ground truth

# every printable code maps to the next code point: "Metformin" is extracted as "Nfugpsnjo"
_SHIFTED_TO_UNICODE = b"""/CIDInit /ProcSet findresource begin 12 dict begin begincmap
/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def
/CMapName /Shifted def /CMapType 2 def
1 begincodespacerange <00> <FF> endcodespacerange
2 beginbfrange
<20> <20> <0020>
<21> <7E> <0022>
endbfrange
endcmap CMapName currentdict /CMap defineresource pop end end"""


def shifted_encoding(pdf: bytes, pages: set[int]) -> bytes:
    """The PDF with the fonts of `pages` given a ToUnicode map shifted by +1: renders the same, reads as nonsense.

    Pages of one PDF share its Helvetica object, so all its pages' text changes.
    """
    with pymupdf.open(stream=pdf, filetype="pdf") as doc:
        cmap = doc.get_new_xref()
        doc.update_object(cmap, "<<>>")
        doc.update_stream(cmap, _SHIFTED_TO_UNICODE)
        for number in pages:
            for xref, *_ in doc[number].get_fonts():
                doc.xref_set_key(xref, "ToUnicode", f"{cmap} 0 R")
        return doc.tobytes(garbage=3, deflate=True, no_new_id=True)



LEAFLET_W, LEAFLET_H = 180.0, 288.0  # 2.5 x 4 inches: a package insert or a pocket card


def _small_leaflet() -> SamplePdf:
    doc = pymupdf.open()
    page = doc.new_page(width=LEAFLET_W, height=LEAFLET_H)
    out: list[str] = []
    f = _Flow(page, [(14, LEAFLET_W - 14)], top=14, bottom=LEAFLET_H - 14, out=out)
    f.lines(["WARFARIN 5 mg TABLETS"], SANS_BOLD, 9, after=3)
    f.para("Take one tablet by mouth once daily at the same time each day, with or without food.",
           font=SANS, size=7.5, after=3)
    f.para("Your INR target is 2.0 to 3.0. Have it checked every 4 weeks, or sooner if your "
           "doctor changes the dose.", font=SANS, size=7.5, after=3)
    f.para("Call your doctor for bleeding gums, black stools or a headache that does not go away.",
           font=SANS, size=7.5)
    return SamplePdf(
        name="case-small-leaflet.pdf",
        data=_finish(doc, "Warfarin pocket card", "Small page"),
        pages=["\n".join(out)],
        description="A 2.5 x 4 inch pocket card (180 x 288 pt) in 7.5-9 pt type: at a fixed 150 DPI only 375 x 600 px.",
        scanned=False,
    )


def _speckled_paper(width: int, height: int, rng: np.random.Generator, bleed: np.ndarray | None = None) -> np.ndarray:
    """Off-white scanned paper with dust specks and, optionally, faint mirrored text showing through."""
    img = np.full((height, width), 238, dtype=np.int16)
    img += rng.integers(-6, 7, size=img.shape, dtype=np.int16)  # paper grain
    if bleed is not None:
        img = np.minimum(img, 238 - ((255 - bleed[:, ::-1].astype(np.int16)) * 0.12).astype(np.int16))
    speck = rng.random(img.shape) < 0.0012
    img[speck] = rng.integers(40, 170, size=int(speck.sum()), dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def _speckled_blank_scan() -> SamplePdf:
    doc = pymupdf.open()
    pages: list[str] = []
    rng = np.random.default_rng(20250601)
    bleed = None
    for number, body in enumerate((
        "Ward round note, day 2. Patient comfortable overnight, afebrile, eating and drinking. "
        "Continue ceftriaxone 2 g once daily and review the blood cultures at 48 hours.",
        None,  # the back of the sheet: scanned blank
        "Ward round note, day 3. Blood cultures negative at 48 hours. Switch to oral amoxicillin "
        "500 mg three times daily for 5 days and plan discharge tomorrow.",
    )):
        page = _new_page(doc)
        if body is None:
            paper = _speckled_paper(int(PAGE_W * _SCAN_DPI / 72), int(PAGE_H * _SCAN_DPI / 72), rng, bleed)
            scan = pymupdf.Pixmap(pymupdf.csGRAY, paper.shape[1], paper.shape[0], paper.tobytes(), False)
            page.insert_image(page.rect, stream=scan.tobytes("png"))
            pages.append("")
            continue
        out: list[str] = []
        f = _Flow(page, [(MARGIN, PAGE_W - MARGIN)], top=MARGIN, bottom=PAGE_H - 60, out=out)
        f.heading(f"PROGRESS NOTE {number + 1}", size=12)
        f.para(body, font=SERIF, size=11)
        pages.append("\n".join(out))
        if bleed is None:  # the first page shows through the blank back of its sheet
            pix = page.get_pixmap(dpi=_SCAN_DPI, colorspace=pymupdf.csGRAY, alpha=False)
            bleed = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width)
    return SamplePdf(
        name="case-speckled-blank-scan.pdf",
        data=_finish(doc, "Progress notes", "Scanned blank page between text pages"),
        pages=pages,
        description="Two text pages around a scanned blank back of a sheet: grey paper grain, seeded dust "
        "specks and the first page's text showing through, mirrored and faint.",
        scanned=False,
    )


def _garbled_text_layer() -> SamplePdf:
    parts: list[bytes] = []
    pages: list[str] = []
    for heading, body in (
        ("METFORMIN HYDROCHLORIDE TABLETS", "Start with 500 mg twice daily with meals. Increase the dose by 500 mg "
         "weekly to a maximum of 2000 mg daily. Stop before iodinated contrast imaging."),
        ("MONITORING", "Check kidney function before starting and at least once a year. Do not use if the eGFR is "
         "below 30 mL/min/1.73 m2."),
    ):
        doc = pymupdf.open()  # a document per page: the pages of one PDF share its font object (and its map)
        out: list[str] = []
        f = _Flow(_new_page(doc), [(MARGIN, PAGE_W - MARGIN)], top=MARGIN, bottom=PAGE_H - 60, out=out)
        f.heading(heading, size=13)
        f.para(body, font=SANS, size=11)
        pages.append("\n".join(out))
        parts.append(_finish(doc, "Metformin label", "Garbled text layer"))
    joined = pymupdf.open()
    for index, part in enumerate(parts):
        with pymupdf.open(stream=shifted_encoding(part, {0}) if index == 0 else part, filetype="pdf") as page_doc:
            joined.insert_pdf(page_doc)
    return SamplePdf(
        name="case-garbled-text-layer.pdf",
        data=_finish(joined, "Metformin label", "Garbled text layer"),
        pages=pages,
        description="Page 1's font carries a ToUnicode map shifted by one code point: it renders correctly "
        "and its text layer reads as nonsense ('Nfugpsnjo'); page 2 is sound.",
        scanned=False,
    )


SPANNED_TABLE = [
    ["Drug", "Population", "Dose"],
    ["Amoxicillin", "Adult", "500 mg every 8 hours"],
    [None, "Child", "25 mg/kg/day in 3 doses"],  # None: covered by the cell above (rowspan 2)
    ["Cefalexin", "Adult", "250 mg every 6 hours"],
]


def _spanned_dose_table() -> SamplePdf:
    doc = pymupdf.open()
    page = _new_page(doc)
    out: list[str] = []
    f = _Flow(page, [(MARGIN, PAGE_W - MARGIN)], top=MARGIN, bottom=PAGE_H - 60, out=out)
    f.heading("DOSAGE AND ADMINISTRATION", size=12, after=8)
    widths, row_h, size = [130.0, 110.0, 228.0], 22.0, 10.0
    top = f.y
    for r, row in enumerate(SPANNED_TABLE):
        x = f.x0
        for c, cell in enumerate(row):
            if cell is None:
                x += widths[c]
                continue
            rows_spanned = 2 if r + 1 < len(SPANNED_TABLE) and SPANNED_TABLE[r + 1][c] is None else 1
            rect = pymupdf.Rect(x, top + r * row_h, x + widths[c], top + (r + rows_spanned) * row_h)
            page.draw_rect(rect, color=BLACK, fill=GRAY_FILL if r == 0 else None, width=0.6)
            baseline = rect.y0 + (rect.height + size * 0.7) / 2
            page.insert_text((x + 5, baseline), cell, fontname=SANS_BOLD if r == 0 else SANS, fontsize=size)
            x += widths[c]
        out.append(" | ".join(cell for cell in row if cell is not None))
    return SamplePdf(
        name="case-spanned-dose-table.pdf",
        data=_finish(doc, "Amoxicillin dosing", "Table with a row span"),
        pages=["\n".join(out)],
        description="A ruled dose table whose 'Amoxicillin' cell spans two rows (adult and child doses).",
        scanned=False,
    )


RUNNING_HEAD = "Sepsis Management Guideline 2025"
RUNNING_FOOT = "Crit Care Res. 2025;12(3):145-152"


def running_page_number(number: int, total: int) -> str:
    return f"Page {number} of {total}"


def _running_heads() -> SamplePdf:
    doc = pymupdf.open()
    pages: list[str] = []
    bodies = (
        ("1. Recognition", "Screen every adult with suspected infection for sepsis using the qSOFA score: "
         "respiratory rate of 22/min or more, altered mentation, systolic blood pressure of 100 mmHg or less."),
        ("2. Resuscitation", "Give 30 mL/kg of balanced crystalloid within the first 3 hours for hypotension "
         "or a lactate of 4 mmol/L or more, and reassess the volume status after each bolus."),
        ("3. Antimicrobials", "Start broad-spectrum antibiotics within 1 hour of recognition, after blood "
         "cultures are drawn, and review the choice at 48 hours with the culture results."),
    )
    for number, (heading, body) in enumerate(bodies, start=1):
        page = _new_page(doc)
        out: list[str] = []
        _margin_line(page, RUNNING_HEAD, out, y=40, align="right")
        f = _Flow(page, [(MARGIN, PAGE_W - MARGIN)], top=MARGIN, bottom=PAGE_H - 80, out=out)
        f.heading(heading, size=13)
        f.para(body, font=SERIF, size=11)
        _margin_line(page, RUNNING_FOOT, out, align="left")
        _margin_line(page, running_page_number(number, len(bodies)), out, align="right")
        pages.append("\n".join(out))
    return SamplePdf(
        name="case-running-heads.pdf",
        data=_finish(doc, "Sepsis guideline", "Running heads and page numbers"),
        pages=pages,
        description="Three pages, each with a running head, a journal footer and 'Page n of 3'.",
        scanned=False,
    )


# ---------------------------------------------------------------------------------------
# public API


def sample_pdfs() -> list[SamplePdf]:
    """The four sample PDFs with their ground truth; identical bytes on every call."""
    return [
        _amoxicillin_label(),
        _sepsis_paper(),
        _scanned_discharge_summary(),
        _blank_and_rotated(),
    ]


def case_pdfs() -> dict[str, SamplePdf]:
    """One generated PDF per class of real-world trouble, by class name; identical bytes on every call."""
    return {
        "small page": _small_leaflet(),
        "speckled blank scan": _speckled_blank_scan(),
        "garbled text layer": _garbled_text_layer(),
        "spanned dose table": _spanned_dose_table(),
        "running heads and page numbers": _running_heads(),
    }


def write_samples(out_dir: Path) -> list[Path]:
    """Write every sample PDF into ``out_dir`` (created if missing); return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for sample in sample_pdfs():
        path = out_dir / sample.name
        path.write_bytes(sample.data)
        paths.append(path)
    return paths
