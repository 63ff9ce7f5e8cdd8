"""A page's text layer is judged before it is trusted as the quality baseline.

The PDFs are built here with PyMuPDF the way broken real-world ones are: a font whose ToUnicode
map is shifted by one code point (the page renders correctly, the extracted text is nonsense),
a scan with a scanner's invisible OCR layer (render mode 3), a page whose text is mostly an
image. The chain tests run the real chain against the test model server answering each page's
true text, so the parse is right and only the baseline is in question.
"""

from __future__ import annotations

import pymupdf
from dagster import AssetCheckSeverity

from medkg_pdf import samples, storage_keys
from medkg_pdf.samples import shifted_encoding
from medkg_pdf.defs.documents.text_layer import extract_baseline
from medkg_pdf.schemas import DocumentQuality
from medkg_pdf.text_layer_judge import judge_page, judge_text, letter_pair_share
from medkg_pdf_tests.support.chain import register_files, vllm_for
from medkg_pdf_tests.support.quality_fixtures import (
    LETTER,
    MODEL,
    TextLayerModel,
    check_results,
    pdf_with_pages,
    resources,
    run,
    write_pdfs,
)
from medkg_pdf_tests.support.vllm_double import VllmDouble

LABEL = [
    "Metformin hydrochloride tablets lower blood glucose in adults with type 2 diabetes mellitus",
    "Start with 500 mg twice daily with meals and increase the dose slowly to limit stomach upset",
    "Stop the tablets before contrast imaging and check kidney function at least once every year",
    "Lactic acidosis is rare but serious: seek help for muscle pain, trouble breathing or weakness",
]
NOTE = [
    "Progress note: patient afebrile, tolerating oral intake, ambulating in the corridor",
    "Plan: continue current antibiotics and review the culture results with the team tomorrow",
    "Potassium 4.1 mmol/L, creatinine 88 umol/L, white cell count 9.2 on the morning bloods",
]
GATES = ("parse_quality_match_score", "parse_quality_numeric_recall")

def joined(*pdfs: bytes) -> bytes:
    """One PDF of the pages of several (each keeps its own fonts)."""
    doc = pymupdf.open()
    for pdf in pdfs:
        with pymupdf.open(stream=pdf, filetype="pdf") as part:
            doc.insert_pdf(part)
    return doc.tobytes(garbage=3, deflate=True, no_new_id=True)


def with_invisible_layer(scan: bytes, texts: list[list[str]]) -> bytes:
    """A scan with a scanner's OCR layer: each page's lines in render mode 3 over its image."""
    with pymupdf.open(stream=scan, filetype="pdf") as doc:
        for page, lines in zip(doc, texts):
            for i, line in enumerate(lines):
                page.insert_text((72, 72 + 14 * i), line, fontname="helv", fontsize=11, render_mode=3)
        return doc.tobytes(garbage=3, deflate=True, no_new_id=True)


def text_mostly_as_image(lines: list[str], image_lines: list[str]) -> bytes:
    """Two lines of real text on top; the rest of the page's text is a picture of text (no layer)."""
    picture = pymupdf.open(stream=pdf_with_pages([image_lines * 4]), filetype="pdf")
    pix = picture[0].get_pixmap(dpi=150, colorspace=pymupdf.csGRAY, clip=pymupdf.Rect(0, 50, 612, 500))
    doc = pymupdf.open()
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    for i, line in enumerate(lines):
        page.insert_text((72, 72 + 14 * i), line, fontname="helv", fontsize=11)
    page.insert_image(pymupdf.Rect(0, 120, 612, 570), pixmap=pix)
    return doc.tobytes()


def verdicts(pdf: bytes) -> list[str]:
    return [page.verdict for page in extract_baseline(pdf, "d", "s").pages]


def run_chain(tmp_path, storage, instance, pdf: bytes, texts: list[list[str]]):
    """The real chain on one document; the model answers each page's true text."""
    model = TextLayerModel().learn(pdf, texts=["\n".join(lines) for lines in texts])
    (doc_id,) = register_files(storage, instance, write_pdfs(tmp_path, {"doc.pdf": pdf}))
    with VllmDouble(model=MODEL, answer=model) as double:
        result = run(instance, resources(storage, vllm_for(double.url, model=MODEL)), partition_key=doc_id)
    assert model.unknown_images == 0
    return result, storage.read_model_or_none(storage_keys.quality(doc_id), DocumentQuality)


# --- the measures, on pages built here and on the repo's sample documents


def test_a_shifted_encoding_reads_as_nonsense_while_language_reads_as_language():
    text = "\n".join(LABEL + NOTE)
    shifted = "".join(chr(ord(ch) + 1) if ch.isalpha() else ch for ch in text)
    assert letter_pair_share(text)[0] > 0.9 and judge_text(text).verdict == "usable"
    assert letter_pair_share(shifted)[0] < 0.5 and judge_text(shifted).verdict == "garbled"


def test_every_text_page_of_the_sample_documents_is_usable_and_the_scan_has_none():
    for sample in samples.sample_pdfs():
        for judged, truth in zip(verdicts(sample.data), sample.pages):
            expected = "none" if sample.scanned or not truth.strip() else "usable"
            assert judged == expected, (sample.name, judged)


def test_short_text_such_as_a_page_number_is_not_judged_for_garble():
    assert judge_text("Page 7 of 12").usable
    assert judge_text("\ufffd\ufffd\ufffd x").verdict == "garbled"


def test_a_broken_to_unicode_map_makes_the_page_garbled_though_it_renders_the_same():
    pdf = pdf_with_pages([LABEL])
    broken = shifted_encoding(pdf, {0})
    with pymupdf.open(stream=pdf) as a, pymupdf.open(stream=broken) as b:
        assert a[0].get_pixmap(dpi=50).samples == b[0].get_pixmap(dpi=50).samples
        assert "Nfugpsnjo" in b[0].get_text()
    (page,) = extract_baseline(broken, "d", "s").pages
    assert page.verdict == "garbled" and "plausible letter pairs" in page.reason


def test_an_invisible_ocr_layer_over_a_scan_is_never_the_baseline_right_or_wrong():
    scan = pdf_with_pages([NOTE], scanned=True)
    right = extract_baseline(with_invisible_layer(scan, [NOTE]), "d", "s").pages[0]
    wrong = extract_baseline(with_invisible_layer(scan, [["Xqzt vkpw jjrq zzkx wqvt " * 4]]), "d", "s").pages[0]
    assert right.verdict == wrong.verdict == "invisible_over_image"
    assert "reads as words" in right.reason and "garbled too" in wrong.reason


def test_a_page_whose_text_is_mostly_a_picture_of_text_is_partial():
    (page,) = extract_baseline(text_mostly_as_image(NOTE[:2], LABEL), "d", "s").pages
    assert page.verdict == "partial" and "of the page's ink" in page.reason


def test_a_page_rotated_by_its_page_dictionary_is_judged_on_its_rendering():
    doc = pymupdf.open(stream=pdf_with_pages([LABEL]), filetype="pdf")
    doc[0].set_rotation(90)
    assert judge_page(doc[0], doc[0].get_text()).verdict == "usable"


# --- through the chain: an unusable layer is "no usable baseline", never a low match


def test_a_correct_parse_of_a_garbled_page_is_not_scored_and_the_other_pages_carry_the_score(tmp_path, storage, instance):
    pdf = joined(shifted_encoding(pdf_with_pages([LABEL]), {0}), pdf_with_pages([NOTE]))
    result, quality = run_chain(tmp_path, storage, instance, pdf, [LABEL, NOTE])
    assert result.success and all(check_results(result)[name].passed for name in GATES)
    first, second = quality.pages
    assert (first.has_baseline, first.verdict, first.word_f1) == (False, "garbled", None)
    assert (second.has_baseline, second.verdict) == (True, "usable")
    assert quality.pages_compared == 1 and quality.match_score == 1.0
    metadata = next(m for m in result.get_asset_materialization_events() if m.asset_key.path[-1] == "parse_quality")
    counts = metadata.materialization.metadata
    assert counts["text_layer_garbled"].value == 1 and counts["text_layer_usable"].value == 1


def test_a_document_whose_every_layer_is_garbled_has_no_usable_baseline_and_only_warns(tmp_path, storage, instance):
    pdf = shifted_encoding(pdf_with_pages([LABEL, NOTE]), {0, 1})
    result, quality = run_chain(tmp_path, storage, instance, pdf, [LABEL, NOTE])
    assert result.success  # a WARN never blocks: the correct document is not rejected
    assert quality.match_score is None and quality.numeric_recall is None  # not 0.005
    assert quality.no_baseline_reason.startswith("no usable baseline (2 pages garbled: letters do not read")
    checks = check_results(result)
    for name in GATES:
        assert not checks[name].passed and checks[name].severity == AssetCheckSeverity.WARN
        assert "no usable baseline (2 pages garbled" in checks[name].description


def test_a_scan_with_an_invisible_ocr_layer_is_judged_like_a_scan(tmp_path, storage, instance):
    pdf = with_invisible_layer(pdf_with_pages([NOTE, LABEL], scanned=True), [["Xqzt vkpw jjrq zzkx wqvt " * 4], LABEL])
    result, quality = run_chain(tmp_path, storage, instance, pdf, [NOTE, LABEL])
    assert result.success and quality.match_score is None
    assert [p.verdict for p in quality.pages] == ["invisible_over_image"] * 2
    assert "2 pages invisible_over_image" in quality.no_baseline_reason
    assert all(check_results(result)[name].severity == AssetCheckSeverity.WARN for name in GATES)


def test_a_normal_text_page_stays_usable_and_scores_as_before(tmp_path, storage, instance):
    result, quality = run_chain(tmp_path, storage, instance, pdf_with_pages([LABEL]), [LABEL])
    assert result.success and all(check_results(result)[name].passed for name in GATES)
    (page,) = quality.pages
    assert page.verdict == "usable" and page.has_baseline and quality.match_score == 1.0
    assert quality.no_baseline_reason == ""


def test_garbage_text_layer_is_not_a_baseline():
    assert judge_text("Amoxicillin capsules 500 mg").usable
    assert not judge_text("\x01\x02 ÿþ ¤¤¤ §§§ ¶¶¶ ¤¤¤ ¤¤¤ ¤¤¤ ¤¤¤ ¤¤¤").usable
    assert not judge_text("").usable
