"""The document chain in a real Dagster instance, against a fast fake vLLM server.

(The real embedded OCR engine runs the chain in test_chain_embedded.py.)
"""

import hashlib
import json
from pathlib import Path

import pytest

from medkg_pdf import storage_keys
from medkg_pdf.resources.storage import LocalStorage
from medkg_pdf.schemas import SCHEMA_VERSION, PageImages, PageParses, PageStatus, QuarantineRecord, SourceInfo, StructuredDocument
from medkg_pdf_tests.support import pdf_factory
from medkg_pdf_tests.support.chain import register_files, run_chain, vllm_for
from medkg_pdf_tests.support.vllm_double import Faults, VllmDouble

MODEL = "medkg-embedded-ocr"


@pytest.fixture
def double():
    with VllmDouble(model=MODEL) as server:
        yield server


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_chain_materializes_every_asset_and_writes_files(tmp_path, storage, instance, double):
    pdf = write(tmp_path, "label.pdf", pdf_factory.text_pdf(["Amoxicillin 500 mg every 8 hours"], pages=3))
    (doc_id,) = register_files(storage, instance, [pdf])
    result = run_chain(instance, storage, vllm_for(double.url), doc_id)
    assert result.success
    materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events() for e in [e.event_specific_data.materialization]}
    assert materialized == {"source_pdf", "page_images", "vlm_page_parses", "structured_document", "baseline_parse", "parse_quality"}
    info = storage.read_model(storage_keys.source_info(doc_id), SourceInfo)
    assert info.page_count == 3 and info.pages_with_text == [True, True, True]
    assert storage.read_bytes(storage_keys.page_png(info.sha256, vllm_for(double.url).render_target().label, 0)).startswith(b"\x89PNG")
    parses = storage.read_model(storage_keys.page_parses(doc_id), PageParses)
    assert [p.status for p in parses.pages] == [PageStatus.ok] * 3 and parses.model_calls == 3
    document = storage.read_model(storage_keys.structured_json(doc_id), StructuredDocument)
    assert document.page_count == 3 and document.sections[0].heading == "Page"
    assert storage.read_text(storage_keys.structured_markdown(doc_id)).startswith("# Page")


def test_every_file_the_chain_writes_names_the_schema_version_of_its_shape(tmp_path, storage, instance, double):
    pdf = write(tmp_path, "label.pdf", pdf_factory.text_pdf(["Amoxicillin 500 mg every 8 hours"], pages=2))
    (doc_id,) = register_files(storage, instance, [pdf])
    assert run_chain(instance, storage, vllm_for(double.url), doc_id).success

    written = sorted(Path(storage.root).rglob("*.json"))
    assert len(written) >= 7  # source ref and info, page images, two page parses, parses, baseline, structured, quality
    assert {path.name: json.loads(path.read_text())["schema_version"] for path in written} == {path.name: SCHEMA_VERSION for path in written}


def test_rerun_makes_zero_model_calls_and_a_prompt_change_reparses(tmp_path, storage, instance, double):
    pdf = write(tmp_path, "guide.pdf", pdf_factory.text_pdf(["Sepsis bundle 30 mL/kg"], pages=4))
    (doc_id,) = register_files(storage, instance, [pdf])
    assert run_chain(instance, storage, vllm_for(double.url), doc_id).success
    assert double.requests == 4
    assert run_chain(instance, storage, vllm_for(double.url), doc_id).success
    assert double.requests == 4
    assert storage.read_model(storage_keys.page_parses(doc_id), PageParses).cached_pages == 4
    assert run_chain(instance, storage, vllm_for(double.url, prompt_version="page-markdown-v2"), doc_id).success
    assert double.requests == 8


def test_a_stored_answer_is_reused_only_when_everything_that_decides_it_is_the_same(tmp_path, storage, instance, double):
    pdf = write(tmp_path, "guide.pdf", pdf_factory.text_pdf(["Sepsis bundle 30 mL/kg"], pages=2))
    (doc_id,) = register_files(storage, instance, [pdf])

    def requests_made(**settings) -> int:
        before = double.requests
        assert run_chain(instance, storage, vllm_for(double.url, **settings), doc_id).success
        return double.requests - before

    edited = "Transcribe this page as markdown. Keep every number and unit exactly."
    assert requests_made() == 2
    assert requests_made(backoff_initial_s=0.01) == 0  # how the client retries does not decide an answer
    assert requests_made(prompt=edited) == 2  # the prompt's text changed, its version label did not
    assert requests_made(prompt=edited) == 0
    assert requests_made(prompt=edited, model_revision="2026-11-30") == 2  # new weights under the same name
    assert requests_made(prompt=edited, model_revision="2026-11-30", max_model_len=12288) == 2  # a context that can shrink the image
    assert requests_made(prompt=edited, model_revision="2026-11-30", max_model_len=12288, seed=7) == 2
    assert requests_made(prompt=edited, model_revision="2026-11-30", max_model_len=12288, seed=7) == 0


def test_a_page_rendered_differently_is_asked_again(tmp_path, storage, instance, double):
    """The key holds the hash of the PNG the model is shown: a renderer upgrade that changes pixels re-asks."""
    pdf = write(tmp_path, "guide.pdf", pdf_factory.text_pdf(["Sepsis bundle 30 mL/kg"], pages=1))
    (doc_id,) = register_files(storage, instance, [pdf])
    assert run_chain(instance, storage, vllm_for(double.url), doc_id).success
    manifest = storage.read_model(storage_keys.page_images(doc_id), PageImages)
    page = manifest.pages[0]
    assert page.png_sha256 == hashlib.sha256(storage.read_bytes(page.key)).hexdigest()
    assert page.width_pt == 612 and page.height_pt == 792  # letter, in points

    storage.write_model(storage_keys.page_images(doc_id), manifest.model_copy(update={"pages": [page.model_copy(update={"png_sha256": "0" * 64})]}))
    assert run_chain(instance, storage, vllm_for(double.url), doc_id).success
    assert double.requests == 2


CALLS: list[tuple[str, str]] = []  # (method, key) of the storage below; module level: Dagster copies resources


class CountingStorage(LocalStorage):
    """The real local storage, recording each read and listing."""

    def read_bytes(self, key: str) -> bytes:
        CALLS.append(("read", key))
        return super().read_bytes(key)

    def list_keys(self, prefix: str) -> list[str]:
        CALLS.append(("list", prefix))
        return super().list_keys(prefix)


def test_stored_answers_are_found_with_one_listing_per_document_not_a_read_per_page(tmp_path, instance, double):
    storage = CountingStorage(root=str(tmp_path / "data"))
    pdf = write(tmp_path, "guide.pdf", pdf_factory.text_pdf(["Sepsis bundle 30 mL/kg"], pages=6))
    (doc_id,) = register_files(storage, instance, [pdf])
    sha = hashlib.sha256(pdf.read_bytes()).hexdigest()
    parses_prefix = storage_keys.page_parses_prefix(sha)

    def answer_lookups() -> tuple[int, int]:
        CALLS.clear()
        assert run_chain(instance, storage, vllm_for(double.url), doc_id).success
        listings = sum(1 for method, key in CALLS if method == "list" and key == parses_prefix)
        reads = sum(1 for method, key in CALLS if method == "read" and key.startswith(parses_prefix + "/"))
        return listings, reads

    assert answer_lookups() == (1, 6)  # a new PDF: one listing, then only the 6 stored pages read back to write page_parses
    assert double.requests == 6
    assert answer_lookups() == (1, 12)  # a re-run: the listing finds all 6, each read as a hit and again for page_parses
    assert double.requests == 6


def test_identical_pdfs_under_two_names_are_parsed_once(tmp_path, storage, instance, double):
    data = pdf_factory.text_pdf(["Metformin 850 mg twice daily"], pages=2)
    ids = register_files(storage, instance, [write(tmp_path, "a.pdf", data), write(tmp_path, "copy of a.pdf", data)])
    for doc_id in ids:
        assert run_chain(instance, storage, vllm_for(double.url), doc_id).success
    assert double.requests == 2
    assert all(storage.exists(storage_keys.quality(doc_id)) for doc_id in ids)


def test_bad_pdf_fails_its_run_with_a_clear_error_and_is_quarantined(tmp_path, storage, instance, double):
    (doc_id,) = register_files(storage, instance, [write(tmp_path, "locked.pdf", pdf_factory.encrypted_pdf())])
    result = run_chain(instance, storage, vllm_for(double.url), doc_id)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "password-protected" in failure.event_specific_data.error.message
    record = storage.read_model(storage_keys.quarantine(doc_id), QuarantineRecord)
    assert record.stage == "source_pdf" and record.reason == "encrypted" and not record.retryable
    assert double.requests == 0


def test_a_bad_document_fails_only_its_own_run(tmp_path, storage, instance, double):
    good = write(tmp_path, "good.pdf", pdf_factory.text_pdf(["Warfarin 5 mg"], pages=2))
    bad = write(tmp_path, "bad.pdf", pdf_factory.html_renamed())
    good2 = write(tmp_path, "good2.pdf", pdf_factory.text_pdf(["Heparin 5000 units"], pages=1))
    ids = register_files(storage, instance, [good, bad, good2])
    results = {doc_id: run_chain(instance, storage, vllm_for(double.url), doc_id) for doc_id in ids}  # as a backfill launches them
    assert results[ids[0]].success and results[ids[2]].success and not results[ids[1]].success
    assert storage.exists(storage_keys.quality(ids[0])) and storage.exists(storage_keys.quality(ids[2]))
    assert not storage.exists(storage_keys.quality(ids[1]))
    assert results[ids[1]].get_asset_materialization_events() == []
    assert "HTML" in storage.read_model(storage_keys.quarantine(ids[1]), QuarantineRecord).message
    assert double.requests == 3


def test_a_run_handed_several_documents_refuses_them_all_and_records_nothing(tmp_path, storage, instance, double):
    ids = register_files(storage, instance, [
        write(tmp_path, "a.pdf", pdf_factory.text_pdf(["Warfarin 5 mg"], pages=1)),
        write(tmp_path, "b.pdf", pdf_factory.text_pdf(["Heparin 5000 units"], pages=1)),
    ])  # fmt: skip
    result = run_chain(
        instance, storage, vllm_for(double.url),
        tags={"dagster/asset_partition_range_start": ids[0], "dagster/asset_partition_range_end": ids[-1]},
    )  # fmt: skip
    assert not result.success
    assert result.get_asset_materialization_events() == []
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "one document per run" in failure.event_specific_data.error.message
    assert double.requests == 0 and not any(storage.exists(storage_keys.source_info(doc_id)) for doc_id in ids)


def test_server_outage_mid_run_keeps_parsed_pages_and_the_rerun_does_the_rest(tmp_path, storage, instance):
    pdf = write(tmp_path, "long.pdf", pdf_factory.text_pdf(["Page of a long guideline"], pages=12))
    (doc_id,) = register_files(storage, instance, [pdf])
    answered = []

    def answer_then_die(png, body):
        answered.append(1)
        if len(answered) == 5:
            double.set_faults(Faults(error_503=1.0))  # the server starts failing after 5 pages
        return f"# Page\n\nanswer {len(answered)}"

    with VllmDouble(model=MODEL, answer=answer_then_die) as double:
        vllm = vllm_for(double.url, max_concurrency=1, breaker_recovery_s=0.2)  # queued pages wait for the trial call
        result = run_chain(instance, storage, vllm, doc_id)
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert "pages failed" in failure.event_specific_data.error.message
        stored = [p for p in storage.list_keys(f"cache") if "/parses/" in p]
        ok_before = [k for k in stored if '"ok"' in storage.read_text(k)]
        assert len(ok_before) == 5
        double.set_faults(Faults())
        requests_before = double.requests
        assert run_chain(instance, storage, vllm, doc_id).success
        assert double.requests - requests_before == 7
        assert not storage.exists(storage_keys.quarantine(doc_id))


def test_a_run_against_a_down_server_fails_within_seconds_naming_it(tmp_path, storage, instance):
    import time

    with VllmDouble(model=MODEL) as gone:
        url = gone.url
    pdf = write(tmp_path, "x.pdf", pdf_factory.text_pdf(["Insulin glargine 10 units"], pages=3))
    (doc_id,) = register_files(storage, instance, [pdf])
    started = time.monotonic()
    result = run_chain(instance, storage, vllm_for(url), doc_id)
    assert not result.success and time.monotonic() - started < 10
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "page_images_and_parses"
    assert url in failure.event_specific_data.error.message and "unreachable" in failure.event_specific_data.error.message
    assert storage.read_model(storage_keys.quarantine(doc_id), QuarantineRecord).retryable


def test_a_dose_table_that_repeats_on_the_page_is_kept_and_a_loop_beyond_it_fails(tmp_path, storage, instance):
    """A repetitive answer is checked against the page's own text layer (numbers exactly) instead of
    being penalised: rows the page really repeats are accepted at once; the same rows repeated past
    what the page holds are a loop, asked once more with the same sampling, then the page fails."""
    rows = ["Amoxicillin 500 mg every 8 hours"] * 14
    table = "\n".join(f"| {row} |" for row in rows)
    pdf = write(tmp_path, "doses.pdf", pdf_factory.text_pdf(rows, pages=1))
    loop = write(tmp_path, "loop.pdf", pdf_factory.text_pdf(rows[:3], pages=1))
    (doses_id, loop_id) = register_files(storage, instance, [pdf, loop])

    with VllmDouble(model=MODEL, answer=lambda png, body: table) as server:
        kept = run_chain(instance, storage, vllm_for(server.url), doses_id)
        calls_for_kept = server.requests
        looped = run_chain(instance, storage, vllm_for(server.url), loop_id)

    assert kept.success and calls_for_kept == 1
    [page] = storage.read_model(storage_keys.page_parses(doses_id), PageParses).pages
    assert page.status is PageStatus.ok and page.markdown.count("500 mg") == 14
    assert not looped.success and server.requests == calls_for_kept + 2
    record = storage.read_model(storage_keys.quarantine(loop_id), QuarantineRecord)
    assert "repetition" in record.message and not record.retryable
