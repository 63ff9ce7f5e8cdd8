"""Per-block confidence: the model's own token log-probabilities, carried onto the blocks they spell.

vLLM returns `choices[0].logprobs.content` when a request asks `logprobs: true`; every page request
does (it changes no token of the answer). A block's confidence is exp(mean log-probability) over the
lines it was parsed from, or over its located region; none where the server gives none or gives
something that does not spell the answer. The embedded engine answers its OCR recognition scores the
same way (one piece per located block).
"""

import math

import pytest

from medkg_pdf import storage_keys
from medkg_pdf.model_client.client import token_logprobs
from medkg_pdf.model_client.page_parser import confidences
from medkg_pdf.schemas import StructuredDocument
from medkg_pdf_tests.support import pdf_factory
from medkg_pdf_tests.support.chain import register_files, run_chain, vllm_for
from medkg_pdf_tests.support.vllm_double import VllmDouble

UNSURE = -2.0  # the log-probability the test server gives every token of a smudged word


def unsure_of(word: str):
    return lambda token: UNSURE if word in token else -0.01


def chain_document(tmp_path, storage, instance, model: str, answer: str, token_logprob) -> StructuredDocument:
    tmp_path.mkdir(exist_ok=True)
    pdf = tmp_path / "label.pdf"
    pdf.write_bytes(pdf_factory.text_pdf(["Warfarin 5 mg once daily", "Check the INR every 4 weeks", model]))
    (doc_id,) = register_files(storage, instance, [pdf])
    with VllmDouble(model=model, answer=lambda png, body: answer, token_logprob=token_logprob) as server:
        assert run_chain(instance, storage, vllm_for(server.url, model=model), doc_id).success
        assert server.request_bodies[0]["logprobs"] is True
    return storage.read_model(storage_keys.structured_json(doc_id), StructuredDocument)


def test_a_block_the_model_was_unsure_of_has_a_low_confidence_and_the_others_a_high_one(tmp_path, storage, instance):
    answer = "# Warfarin\n\nWarfarin 5 mg once daily.\n\nCheck the INR every smudged weeks."
    document = chain_document(tmp_path, storage, instance, "Qwen/Qwen2.5-VL-7B-Instruct", answer, unsure_of("smudged"))
    by_text = {block.text: block.confidence for block in document.blocks()}
    assert by_text["Warfarin"] == pytest.approx(math.exp(-0.01), abs=1e-3)
    assert by_text["Warfarin 5 mg once daily."] == pytest.approx(math.exp(-0.01), abs=1e-3)
    assert by_text["Check the INR every smudged weeks."] < 0.75  # one word of six at -2.0, weighted by its characters


def test_olmocr_front_matter_is_not_counted_and_located_regions_carry_their_own(tmp_path, storage, instance):
    olmocr = ("---\nprimary_language: en\nis_rotation_valid: true\nrotation_correction: 0\nis_table: false\n"
              "is_diagram: false\n---\nWarfarin 5 mg once daily.\n\nCheck the INR every smudged weeks.\n")  # fmt: skip
    document = chain_document(tmp_path / "o", storage, instance, "allenai/olmOCR-2-7B-1025", olmocr, unsure_of("smudged"))
    assert [round(block.confidence, 2) for block in document.blocks()] == [0.99, pytest.approx(0.7, abs=0.1)]

    grounded = ("<|ref|>text<|/ref|><|det|>[[80, 100, 920, 140]]<|/det|>\nWarfarin 5 mg once daily.\n\n"
                "<|ref|>text<|/ref|><|det|>[[80, 160, 920, 200]]<|/det|>\nCheck the INR every smudged weeks.\n")  # fmt: skip
    document = chain_document(tmp_path / "g", storage, instance, "deepseek-ai/DeepSeek-OCR", grounded, unsure_of("smudged"))
    sure, unsure = document.blocks()
    assert sure.confidence > 0.98 and unsure.confidence < 0.8 and sure.bbox is not None


def test_no_confidence_is_made_up_from_nonsense_and_the_embedded_engine_gives_its_ocr_scores(tmp_path, storage, instance, embedded_engine):
    assert token_logprobs(None) is None
    assert token_logprobs({"content": [{"token": "a", "logprob": "high"}]}) is None
    assert token_logprobs({"content": [{"token": "a", "logprob": 0.5}]}) is None  # a log-probability is <= 0
    assert confidences("Warfarin 5 mg", "Warfarin 5 mg", [], [("Warfarin", -0.1)])[0] is None  # tokens spell another text

    pdf = tmp_path / "label.pdf"
    pdf.write_bytes(pdf_factory.text_pdf(["Warfarin 5 mg once daily"]))
    (doc_id,) = register_files(storage, instance, [pdf])
    assert run_chain(instance, storage, vllm_for(embedded_engine.url), doc_id).success
    document = storage.read_model(storage_keys.structured_json(doc_id), StructuredDocument)
    # the engine answers each located block with the log of its lines' mean recognition score
    assert document.blocks() and all(0.8 < block.confidence <= 1.0 for block in document.blocks())


def test_asking_for_logprobs_can_be_turned_off_and_then_no_confidence_is_recorded():
    from medkg_pdf.resources.vllm import PageRequest
    from medkg_pdf_tests.support.vllm_double import make_png

    results = []
    with VllmDouble(model="Qwen/Qwen2.5-VL-7B-Instruct", answer=lambda png, body: "Warfarin 5 mg") as server:
        vllm_for(server.url, model=server.model, request_logprobs=False).parse_pages(
            [PageRequest(document_id="doc-0123456789", page_index=0, cache_key="k", load_png=lambda: make_png(56, 56))], results.append
        )
        assert "logprobs" not in server.request_bodies[0]
    assert results[0].markdown == "Warfarin 5 mg" and results[0].line_confidence is None
