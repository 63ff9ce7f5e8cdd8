"""Hostile inputs, crashes and outages: every bad document gets a clear reason, nothing is lost.

Each bad-input class runs in one backfill-style run (a partition range) next to a good document:
the bad one is quarantined with a reason a person understands, the good one completes.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pymupdf
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, materialize
from dagster._core.instance.ref import InstanceRef
from dagster_aws.s3 import S3Resource

from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf import storage_keys
from medkg_pdf.defs.documents import document_assets
from medkg_pdf.schemas import QuarantineRecord
from medkg_pdf.schemas import PageImages, PageParse, PageStatus, SourceInfo
from medkg_pdf.cli import threaded_instance
from medkg_pdf_tests.support import pdf_factory
from medkg_pdf_tests.support.chain import register_files, vllm_for
from medkg_pdf_tests.support.vllm_double import Faults, VllmDouble

MODEL = "medkg-embedded-ocr"


@pytest.fixture
def double():
    with VllmDouble(model=MODEL) as server:
        yield server


def run_one(instance, storage, vllm, document_id):
    return materialize(
        document_assets,
        instance=instance,
        resources={"storage": storage, "vllm": vllm, "inbox_s3": S3Resource(), "quality_targets": QualityTargets()},
        partition_key=document_id,
        raise_on_error=False,
    )


BAD_INPUTS = {
    # class: (writer(path), expected quarantine reason, words in the message)
    "zero_byte": (lambda p: p.write_bytes(pdf_factory.zero_byte()), "empty_file", "empty"),
    "html_renamed": (lambda p: p.write_bytes(pdf_factory.html_renamed()), "not_pdf", "HTML"),
    "png_renamed": (lambda p: p.write_bytes(pdf_factory.png_renamed()), "not_pdf", "PNG"),
    "truncated": (lambda p: p.write_bytes(pdf_factory.truncated_pdf()), "truncated", "cut off"),
    "encrypted": (lambda p: p.write_bytes(pdf_factory.encrypted_pdf()), "encrypted", "password"),
    "zero_pages": (lambda p: p.write_bytes(pdf_factory.zero_page_pdf()), "no_pages", "no pages"),
    "oversized": (lambda p: pdf_factory.oversized_file(p), "too_large", "100 MiB limit"),
    "beyond_page_cap": (lambda p: p.write_bytes(pdf_factory.many_pages_pdf(5000)), "too_many_pages", "5000 pages"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_quarantined_and_the_rest_of_the_backfill_succeeds(case, tmp_path, storage, instance, double):
    write, reason, words = BAD_INPUTS[case]
    bad = tmp_path / f"{case}.pdf"
    write(bad)
    good = tmp_path / "good.pdf"
    good.write_bytes(pdf_factory.text_pdf(["Lisinopril 10 mg once daily"], pages=2))
    ids = register_files(storage, instance, [bad, good])
    bad_run, good_run = (run_one(instance, storage, vllm_for(double.url), doc_id) for doc_id in ids)  # as a backfill launches them
    assert good_run.success and not bad_run.success
    record = storage.read_model(storage_keys.quarantine(ids[0]), QuarantineRecord)
    assert record.stage == "source_pdf" and record.reason == reason and words in record.message and record.permanent
    assert storage.exists(storage_keys.quality(ids[1])) and not storage.exists(storage_keys.quarantine(ids[1]))
    assert bad_run.get_asset_materialization_events() == []
    failure = next(e for e in bad_run.all_events if e.is_step_failure)
    assert words in failure.event_specific_data.error.message  # what the UI shows for that document


def test_broken_xref_is_repaired_with_a_warning_and_goes_on(tmp_path, storage, instance, double):
    path = tmp_path / "xref.pdf"
    path.write_bytes(pdf_factory.broken_xref_pdf())
    (doc_id,) = register_files(storage, instance, [path])
    assert run_one(instance, storage, vllm_for(double.url), doc_id).success
    info = storage.read_model(storage_keys.source_info(doc_id), SourceInfo)
    assert info.repaired and "repaired" in info.warnings[0]


def test_a_page_too_large_for_10_mb_is_downscaled(tmp_path, storage, instance, double):
    path = tmp_path / "poster.pdf"
    path.write_bytes(pdf_factory.huge_page_pdf())
    (doc_id,) = register_files(storage, instance, [path])
    assert run_one(instance, storage, vllm_for(double.url), doc_id).success
    (image,) = storage.read_model(storage_keys.page_images(doc_id), PageImages).pages
    assert image.png_bytes <= 10 * 1024 * 1024 and image.dpi < 150


def test_decompression_bomb_renders_bounded(tmp_path, storage, instance, double):
    path = tmp_path / "bomb.pdf"
    path.write_bytes(pdf_factory.decompression_bomb_pdf())
    (doc_id,) = register_files(storage, instance, [path])
    assert run_one(instance, storage, vllm_for(double.url), doc_id).success
    (image,) = storage.read_model(storage_keys.page_images(doc_id), PageImages).pages
    # the letter page at the model's render target (longest side 2000 px); the 900 MB image inside it
    assert max(image.width, image.height) == vllm_for(double.url).render_target().longest_side == 2000
    # decoded downsampled (the memory bound itself: test_render.py draws it in a process capped at 1 200 MB)


def _cli(args, env, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "medkg_pdf.cli", *args], env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, **kwargs,
    )  # fmt: skip


def test_sigkill_halfway_loses_nothing_and_the_rerun_parses_only_missing_pages(tmp_path):
    pdf = tmp_path / "long-guideline.pdf"
    doc = pymupdf.open()
    for number in range(1, 41):  # distinct pages, so the server can tell them apart
        doc.new_page().insert_text((72, 72), f"Guideline page {number}: dose {number * 5} mg", fontsize=12)
    doc.save(pdf)
    data_dir = tmp_path / "data"
    with VllmDouble(model=MODEL, faults=Faults(latency_s=0.15)) as double:
        env = dict(os.environ, MEDKG_VLLM_BASE_URL=double.url, MEDKG_VLLM_MODEL=MODEL, MEDKG_VLLM_MAX_CONCURRENCY="2",
                   DAGSTER_HOME=str(tmp_path / "home"))  # fmt: skip
        (tmp_path / "home").mkdir()
        process = _cli(["run", str(pdf), "--data-dir", str(data_dir), "--json"], env)
        deadline = time.monotonic() + 120
        while double.completions_ok < 12 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        first = double.completions_ok
        assert 12 <= first < 40, "the kill must land halfway through"
        parses = sorted((data_dir / "cache").rglob("page-*.json"))
        stored_ok = sum(PageParse.model_validate_json(path.read_bytes()).status.usable for path in parses)  # no torn file is ever visible
        assert not list((data_dir / "cache").rglob("*.part"))

        rerun = _cli(["run", str(pdf), "--data-dir", str(data_dir), "--json"], env)
        out, _ = rerun.communicate(timeout=240)
        result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["status"] == "ok" and result["pages_ok"] == 40
    assert double.completions_ok - first == 40 - stored_ok, "the rerun sends exactly the pages with no stored answer"
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path / "home"))) as instance:
        killed, rerun_record = sorted(instance.get_run_records(), key=lambda record: record.create_timestamp)
        assert killed.dagster_run.status == DagsterRunStatus.FAILURE  # not left "started" for ever
        assert rerun_record.dagster_run.status == DagsterRunStatus.SUCCESS
        failure = instance.get_records_for_run(killed.dagster_run.run_id, of_type=DagsterEventType.RUN_FAILURE).records
        assert "died before the run ended" in failure[0].event_log_entry.dagster_event.message
    # What the design guarantees (MEDKG_VLLM_MAX_CONCURRENCY=2): a page stored before the kill is never
    # requested again (the rerun asked for exactly the unstored ones, above); only the pages in flight
    # at the kill, answered but not yet stored, are answered twice; the output holds each page once.
    assert 0 <= first - stored_ok <= 2, "answered but not stored at the kill: at most the two in flight"
    assert double.completions_ok - 40 == first - stored_ok
    final = [PageParse.model_validate_json(path.read_bytes()) for path in (data_dir / "cache").rglob("page-*.json")]
    assert sorted(parse.page_index for parse in final) == list(range(40)), "each page stored once"


def test_api_key_and_aws_secret_never_written_anywhere(tmp_path, caplog, moto_server, monkeypatch):
    """The document is read from S3 (moto, real signed requests) with the canary secret as the AWS
    credentials, and parsed by a server that wants the canary key: neither is found anywhere after."""
    key = "sk-MEDKG-canary-4b1d7e2f9a"
    aws_secret = "AWS-canary-secret-8c2e1f"
    monkeypatch.setenv("MEDKG_VLLM_API_KEY", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_secret)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACANARY")
    caplog.set_level(logging.DEBUG)  # botocore's and httpx's own logs included
    import boto3
    from dagster import DagsterInstance, EnvVar

    from medkg_pdf.resources.storage import LocalStorage
    from medkg_pdf.resources.vllm import VLLMResource
    from medkg_pdf.sources import register, s3_ref

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    storage = LocalStorage(root=str(tmp_path / "data"))
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="inbox")
    put = s3.put_object(Bucket="inbox", Key="labels/digoxin.pdf", Body=pdf_factory.text_pdf(["Digoxin 0.125 mg daily"], pages=2))
    ref = s3_ref("inbox", "labels/digoxin.pdf", etag=put["ETag"].strip('"'))
    inbox_s3 = S3Resource(endpoint_url=moto_server, region_name="us-east-1")
    with DagsterInstance.local_temp(str(home)) as instance, VllmDouble(model=MODEL, api_key=key, faults=Faults(script=["503"] * 3)) as double:
        register(storage, ref)
        instance.add_dynamic_partitions("documents", [ref.document_id])
        vllm = VLLMResource(base_url=double.url, model=MODEL, api_key=EnvVar("MEDKG_VLLM_API_KEY"),
                             backoff_initial_s=0.01, max_concurrency=1)  # fmt: skip
        resources = {"storage": storage, "vllm": vllm, "inbox_s3": inbox_s3, "quality_targets": QualityTargets()}
        failed = materialize(document_assets, partition_key=ref.document_id, instance=instance, raise_on_error=False, resources=resources)
        ok = materialize(document_assets, partition_key=ref.document_id, instance=instance, resources=resources)
        assert not failed.success and ok.success
        assert all(h["authorization"] == f"Bearer {key}" for h in double.last_headers)
        assert storage.read_model(storage_keys.source_info(ref.document_id), SourceInfo).source.uri == "s3://inbox/labels/digoxin.pdf"
        for run_id in (failed.run_id, ok.run_id):
            run = instance.get_run_by_id(run_id)
            assert key not in json.dumps(run.run_config) and key not in str(run.tags)
            logs = "".join(str(entry) for entry in instance.all_logs(run_id))
            assert key not in logs and aws_secret not in logs
    assert "s3.amazonaws.com" in caplog.text or "/inbox/labels/digoxin.pdf" in caplog.text  # the S3 path really ran, logged
    written = [p for root in (tmp_path / "data", home) for p in root.rglob("*") if p.is_file()]
    assert written
    for path in written:
        blob = path.read_bytes()
        assert key.encode() not in blob and aws_secret.encode() not in blob, path
    assert key not in caplog.text and aws_secret not in caplog.text


def test_model_output_is_capped_and_cannot_inject_html_into_the_ui(tmp_path, storage, instance):
    """A page really sent (real text on it: a near-blank page might not be) and answered with 300 000
    characters that are no loop (each word differs), led by a script tag."""
    evil = "<script>alert('x')</script>\n\n# Title\n\n" + " ".join(f"dose{i}" for i in range(40_000))
    assert len(evil) > 300_000
    with VllmDouble(model=MODEL, answer=lambda png, body: evil, max_model_len=400_000) as double:
        pdf = tmp_path / "x.pdf"
        pdf.write_bytes(pdf_factory.text_pdf(["Amoxicillin 500 mg every 8 hours"], pages=1))
        (doc_id,) = register_files(storage, instance, [pdf])
        result = materialize(document_assets, partition_key=doc_id, instance=instance, raise_on_error=False,
                             resources={"storage": storage, "vllm": vllm_for(double.url, max_tokens=200_000, max_model_len=400_000), "inbox_s3": S3Resource(), "quality_targets": QualityTargets()})  # fmt: skip
    (parse_path,) = [k for k in storage.list_keys("cache") if "/parses/" in k]
    stored = storage.read_model(parse_path, PageParse)
    assert stored.status is PageStatus.ok
    assert 100_000 < len(stored.markdown) <= 200_000
    previews = [
        e.event_specific_data.materialization.metadata["first_page_preview"].value
        for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key.path == ["vlm_page_parses"]
    ]
    assert previews and previews[0].startswith("```text\n")
    assert "<script>" not in storage.read_text(storage_keys.structured_markdown(doc_id))


class FlakyS3Proxy:
    """A loopback proxy in front of moto that answers 503 SlowDown or drops the connection at random.

    Written by hand: moto has no switch for transient 5xx or resets, and a proxy is the honest
    way to put a bad network between botocore and the store.
    """

    def __init__(self, upstream: str, slow_down: float, drop: float, seed: int = 1):
        import http.client
        import random
        import socket
        import struct
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlparse

        target = urlparse(upstream)
        rng = random.Random(seed)
        lock = threading.Lock()
        self.injected = {"slow_down": 0, "drop": 0}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _relay(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    draw = rng.random()
                if draw < drop:
                    with lock:
                        proxy.injected["drop"] += 1
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if draw < drop + slow_down:
                    with lock:
                        proxy.injected["slow_down"] += 1
                    payload = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream_conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream_conn.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream_conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("content-length", "connection", "transfer-encoding", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream_conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_s3_throttling_and_dropped_connections_are_retried_and_nothing_half_written_counts(moto_server, monkeypatch):
    import boto3

    from medkg_pdf.resources.storage import S3Storage

    monkeypatch.setenv("AWS_RETRY_MODE", "standard")  # botocore's retry mode: 5xx, throttling, resets
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket="docs")
    proxy = FlakyS3Proxy(moto_server, slow_down=0.15, drop=0.05)
    try:
        storage = S3Storage(s3=S3Resource(endpoint_url=proxy.url, region_name="us-east-1", max_attempts=8), bucket="docs")
        payloads = {f"cache/doc/page-{i:05d}.json": json.dumps({"page": i, "text": "x" * (i * 997)}).encode() for i in range(40)}
        for key, data in payloads.items():
            storage.write_bytes(key, data)
        for key, data in payloads.items():
            assert storage.read_bytes(key) == data
        assert sorted(storage.list_keys("cache/doc")) == sorted(payloads)
    finally:
        proxy.close()
    assert proxy.injected["slow_down"] > 5 and proxy.injected["drop"] > 1


@pytest.mark.soak
def test_soak_200_documents_through_a_flaky_server(tmp_path, storage):
    """80 documents (120 pages), one run each, four at a time; 5 % 5xx, 2 % resets, 1 % stalls: every document ends ok or with a recorded reason."""
    paths = []
    for n in range(80):
        doc = pymupdf.open()
        for page in range(1 + n % 2):
            doc.new_page().insert_text((72, 72), f"Document {n} page {page}: give {n + page} mg", fontsize=11)
        path = tmp_path / f"soak-{n:03d}.pdf"
        doc.save(path)
        paths.append(path)
    (tmp_path / "home").mkdir()
    instance = threaded_instance(str(tmp_path / "home"), workers=4)  # on disk, as `medkg-pdf run` uses it
    ids = register_files(storage, instance, paths)
    faults = Faults(error_500=0.025, error_503=0.025, reset=0.02, stall=0.01, stall_s=2.5, seed=11)
    started = time.monotonic()
    with VllmDouble(model=MODEL, faults=faults) as double:
        vllm = vllm_for(double.url, read_timeout_s=1.0, max_concurrency=2)
        with ThreadPoolExecutor(max_workers=4) as pool:  # one run per document, four at a time, as `medkg-pdf run` does
            list(pool.map(lambda doc_id: run_one(instance, storage, vllm, doc_id), ids))
        assert time.monotonic() - started < 600
    ok = [i for i in ids if storage.exists(storage_keys.quality(i))]
    failed = {i: storage.read_model(storage_keys.quarantine(i), QuarantineRecord) for i in ids if i not in ok}
    print(
        f"\nsoak: {len(ids)} documents, {len(ok)} ok, {len(failed)} failed; requests {double.requests}, "
        f"faults {dict(double.faults_injected)}, ok answers {double.completions_ok}, "
        f"{time.monotonic() - started:.1f} s"
    )
    assert len(ok) + len(failed) == len(ids)
    assert all(record.message for record in failed.values())
    assert len(failed) / len(ids) < 0.02
    assert max(double.ok_by_image.values()) == 1
