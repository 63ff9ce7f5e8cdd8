"""Model profiles: each family's prompt, image size and answer format, served over real HTTP."""

import pymupdf
import pytest
from dagster import materialize

from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf import storage_keys
from medkg_pdf.defs.documents import document_assets
from medkg_pdf.profiles import PROFILES, InvalidAnswerError, get_profile, infer_profile
from medkg_pdf.resources.vllm import PageRequest, png_size
from medkg_pdf.schemas import PageStatus, StructuredDocument
from medkg_pdf_tests.support.chain import register_files, vllm_for
from medkg_pdf_tests.support.vllm_double import VllmDouble, make_png

DEEPSEEK = "deepseek-ai/DeepSeek-OCR"
OLMOCR = "allenai/olmOCR-2-7B-1025"

# Written by hand following DeepSeek-OCR's published grounding format (coordinates 0..999).
DEEPSEEK_ANSWER = (
    "<|ref|>title<|/ref|><|det|>[[80, 40, 920, 90]]<|/det|>\n# AMOXICILLIN CAPSULES, USP\n\n"
    "<|ref|>text<|/ref|><|det|>[[80, 120, 920, 200]]<|/det|>\nAdults: 500 mg every 12 hours.\n\n"
    "<|ref|>table<|/ref|><|det|>[[80, 220, 920, 400]]<|/det|>\n"
    "<table><tr><td>Infection</td><td>Adults</td></tr><tr><td>Ear</td><td>500 mg</td></tr></table>\n\n"
    "<|ref|>footer<|/ref|><|det|>[[400, 960, 600, 990]]<|/det|>\nPage 1\n"
)
OLMOCR_ANSWER = (
    "---\nprimary_language: en\nis_rotation_valid: true\nrotation_correction: 0\nis_table: false\n"
    "is_diagram: false\n---\n# Sepsis bundle\n\nGive 30 mL/kg crystalloid within 3 hours.\n"
)


@pytest.mark.parametrize(
    ("model", "profile"),
    [
        ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2.5-vl"),
        (DEEPSEEK, "deepseek-ocr"),
        (OLMOCR, "olmocr-2"),
        ("medkg-embedded-ocr", "embedded-ocr"),
        ("some/other-vlm", "qwen2.5-vl"),
    ],
)
def test_profile_is_inferred_from_the_served_model(model, profile):
    assert infer_profile(model) == profile


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of"):
        get_profile("llava", "x")


def test_image_sizing_rules():
    assert PROFILES["deepseek-ocr"].target_size(1275, 1650) == (791, 1024)
    assert PROFILES["olmocr-2"].target_size(1275, 1650) == (995, 1288)
    qwen_w, qwen_h = PROFILES["qwen2.5-vl"].target_size(2550, 3300)
    assert qwen_w % 28 == 0 and qwen_h % 28 == 0 and (qwen_w // 28) * (qwen_h // 28) <= 3600
    assert PROFILES["qwen2.5-vl"].target_size(600, 800) == (600, 800)  # never upscaled


def test_deepseek_grounding_becomes_regions_without_tags():
    parsed = PROFILES["deepseek-ocr"].parse(DEEPSEEK_ANSWER)
    assert [r.label for r in parsed.regions] == ["title", "text", "table", "footer"]
    assert parsed.regions[1].bbox == pytest.approx((80 / 999, 120 / 999, 920 / 999, 200 / 999))
    assert "<|" not in parsed.markdown and "Page 1" not in parsed.markdown
    assert "Adults: 500 mg" in parsed.markdown


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]\nunclosed", "unbalanced"),
        ("<|ref|>text<|/ref|><|det|>[[10, 20, 1200, 40]]<|/det|>\nx", "out of range"),
        ("<|ref|>text<|/ref|><|det|>[[50, 20, 10, 40]]<|/det|>\nx", "inverted"),
        ("<|ref|>text<|/ref|><|det|>[[1, 2, 3]]<|/det|>\nx", "4 numbers"),
        ("<|ref|>text<|/ref|> <|det|>not a box<|/det|>\nx", "box"),
    ],
)
def test_malformed_grounding_is_rejected_with_the_reason(answer, reason):
    with pytest.raises(InvalidAnswerError, match=reason):
        PROFILES["deepseek-ocr"].parse(answer)


def test_olmocr_front_matter_is_read():
    parsed = PROFILES["olmocr-2"].parse(OLMOCR_ANSWER)
    assert parsed.front_matter["primary_language"] == "en" and parsed.rotation_correction == 0
    assert parsed.markdown.startswith("# Sepsis bundle")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("# no front matter\n\ntext", "no YAML front matter"),
        ("---\nprimary_language: en\n---\ntext", "lacks one of"),
        ("---\nprimary_language: en\nis_rotation_valid: false\nrotation_correction: 45\nis_table: false\nis_diagram: false\n---\nx", "rotation_correction"),
        ("---\n: : bad yaml [\n---\ntext", "not YAML"),
    ],
)
def test_malformed_olmocr_answers_are_rejected(answer, reason):
    with pytest.raises(InvalidAnswerError, match=reason):
        PROFILES["olmocr-2"].parse(answer)


def _request(size=(1275, 1650)) -> list[PageRequest]:
    png = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, *size), False)
    png.clear_with(255)
    data = png.tobytes("png")
    return [PageRequest(document_id="d-0123456789", page_index=0, cache_key="k", load_png=lambda: data)]


def _parse(resource, requests):
    results = []
    resource.parse_pages(requests, results.append)
    return results[0]


def test_deepseek_profile_over_http_sends_its_prompt_size_and_keeps_special_tokens():
    seen = []
    with VllmDouble(model=DEEPSEEK, answer=lambda png, body: seen.append(png_size(png)) or DEEPSEEK_ANSWER) as double:
        result = _parse(vllm_for(double.url, model=DEEPSEEK), _request())
        body = double.request_bodies[0]
    assert result.status is PageStatus.ok and result.profile == "deepseek-ocr"
    assert seen == [(791, 1024)]
    assert body["skip_special_tokens"] is False
    assert "<|grounding|>Convert the document to markdown." in str(body["messages"])
    assert len(result.regions) == 4


def test_malformed_answer_over_http_is_invalid_response_never_a_crash():
    with VllmDouble(model=DEEPSEEK, answer=lambda png, body: "<|ref|>text<|/ref|><|det|>[[1,2,3]]<|/det|>") as double:
        result = _parse(vllm_for(double.url, model=DEEPSEEK), _request())
    assert result.status is PageStatus.invalid_response
    assert "4 numbers" in result.error and result.markdown == ""


def test_olmocr_reported_rotation_turns_the_page_and_asks_once_more():
    sizes = []

    def answer(png, body):
        sizes.append(png_size(png))
        if len(sizes) == 1:
            return OLMOCR_ANSWER.replace("is_rotation_valid: true", "is_rotation_valid: false").replace(
                "rotation_correction: 0", "rotation_correction: 90"
            )
        return OLMOCR_ANSWER

    with VllmDouble(model=OLMOCR, answer=answer) as double:
        result = _parse(vllm_for(double.url, model=OLMOCR), _request())
    assert result.status is PageStatus.ok and result.rotation_applied == 90
    assert sizes == [(995, 1288), (1288, 995)]


def test_profile_is_part_of_the_cache_key():
    keys = {vllm_for("http://x", model=DEEPSEEK, profile=name).cache_key("sha", 0, "long-2000") for name in PROFILES}
    assert len(keys) == len(PROFILES)


def test_grounded_boxes_land_on_the_text_in_pdf_coordinates(tmp_path, storage, instance):
    """A box from the model, scaled back, covers the words where PyMuPDF finds them on the page."""
    doc = pymupdf.open()
    page = doc.new_page(width=612, height=792)
    page.insert_text((100, 300), "Amoxicillin 500 mg every 12 hours", fontsize=14)
    (rect,) = page.search_for("Amoxicillin 500 mg every 12 hours")
    path = tmp_path / "dose.pdf"
    doc.save(path)

    def answer(png, body):
        box = [round(rect.x0 / 612 * 999), round(rect.y0 / 792 * 999), round(rect.x1 / 612 * 999), round(rect.y1 / 792 * 999)]
        return f"<|ref|>text<|/ref|><|det|>[{box}]<|/det|>\nAmoxicillin 500 mg every 12 hours\n"

    with VllmDouble(model=DEEPSEEK, answer=answer) as double:
        (doc_id,) = register_files(storage, instance, [path])
        from dagster_aws.s3 import S3Resource

        result = materialize(
            document_assets, partition_key=doc_id, instance=instance,
            resources={"storage": storage, "vllm": vllm_for(double.url, model=DEEPSEEK), "inbox_s3": S3Resource(), "quality_targets": QualityTargets()},
        )  # fmt: skip
    assert result.success
    document = storage.read_model(storage_keys.structured_json(doc_id), StructuredDocument)
    (block,) = document.blocks()
    assert block.page == 1 and "500 mg" in block.text
    assert block.bbox == pytest.approx((rect.x0, rect.y0, rect.x1, rect.y1), abs=1.0)
