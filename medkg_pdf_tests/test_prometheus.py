"""The SLO figures in Prometheus text format, pushed to a (stdlib) Pushgateway stand-in on 127.0.0.1."""

import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from dagster import materialize

from medkg_pdf import storage_keys, prometheus, slo
from medkg_pdf.defs.reporting.assets import quality_report
from medkg_pdf.engine.process import free_port
from medkg_pdf.resources import resources_for
from medkg_pdf.resources.pushgateway import PushgatewayResource
from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf.schemas import DocumentQuality, SourceRef
from medkg_pdf.sources import register

NOW = datetime.now(timezone.utc)


class Receiver:
    """Records every request (method, path, headers, body) and answers 200, as a Pushgateway does."""

    def __init__(self):
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self):
                length = int(self.headers.get("Content-Length") or 0)
                receiver.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": self.rfile.read(length).decode()}
                )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_POST = do_DELETE = _record

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def record_document(storage, name: str, arrived_ago_s: float, latency_s: float | None, match_score: float = 0.99) -> str:
    """A document as the chain leaves it: its registration and, when done, its quality record."""
    doc_id = f"{name}-0123456789"
    arrived = NOW - timedelta(seconds=arrived_ago_s)
    register(storage, SourceRef(document_id=doc_id, uri=f"file:///inbox/{name}.pdf", name=f"{name}.pdf", arrived_at=arrived))
    if latency_s is not None:
        quality = DocumentQuality(
            document_id=doc_id, pages=[], pages_compared=1, match_score=match_score, edit_similarity=match_score,
            word_f1=match_score, numeric_recall=1.0, completed_at=arrived + timedelta(seconds=latency_s),
        )  # fmt: skip
        storage.write_model(storage_keys.quality(doc_id), quality)
    return doc_id


@pytest.fixture
def two_documents(storage):
    record_document(storage, "fast", arrived_ago_s=3600, latency_s=30)
    record_document(storage, "slow", arrived_ago_s=1800, latency_s=100, match_score=0.96)  # above the 0.95 gate
    return storage


def exposition_of(storage) -> str:
    from medkg_pdf import fleet

    frame = fleet.load_documents(storage)
    report = slo.evaluate(frame, NOW, QualityTargets().slo())
    return prometheus.exposition(prometheus.registry_for(frame, report, NOW))


def test_the_exposition_names_the_slo_figures_like_the_dashboards(two_documents):
    text = exposition_of(two_documents)
    assert "medkg_pdfs_processed_total 2.0" in text
    assert "medkg_pdfs_failed_total 0.0" in text
    assert "# TYPE medkg_pdf_processing_duration_seconds histogram" in text
    assert 'medkg_pdf_processing_duration_seconds_bucket{le="45.0"} 1.0' in text  # the 30 s document
    assert 'medkg_pdf_processing_duration_seconds_bucket{le="120.0"} 2.0' in text  # and the 100 s one
    assert "medkg_pdf_processing_duration_seconds_sum 130.0" in text
    assert 'medkg_pdf_slo_latency_seconds{quantile="0.5"} 30.0' in text
    assert 'medkg_pdf_slo_latency_target_seconds{quantile="0.95"} 90.0' in text
    assert 'medkg_pdf_slo_met{slo="latency_p95"} 0.0' in text  # P95 is the 100 s document: over 90 s
    assert 'medkg_pdf_slo_met{slo="error_rate"} 1.0' in text
    assert 'medkg_pdf_match_score_bucket{le="0.95"} 0.0' in text and 'medkg_pdf_match_score_bucket{le="0.98"} 1.0' in text


def test_push_puts_the_registry_to_the_gateway_group(two_documents):
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    Gauge("medkg_pdf_probe", "probe", registry=registry).set(7)
    with Receiver() as gateway:
        where = PushgatewayResource(url=gateway.url, job="medkg_pdf").push(registry)
    (request,) = gateway.requests
    assert request["method"] == "PUT"  # replaces the group: yesterday's window does not linger
    assert request["path"] == "/metrics/job/medkg_pdf" and where == f"{gateway.url}/metrics/job/medkg_pdf"
    assert request["headers"]["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "medkg_pdf_probe 7.0" in request["body"]


def test_the_report_pushes_its_figures_when_a_gateway_is_configured(two_documents, instance):
    with Receiver() as gateway:
        result = materialize(
            [quality_report],
            instance=instance,
            resources={
                "storage": two_documents,
                "quality_targets": QualityTargets(),
                "pushgateway": PushgatewayResource(url=gateway.url),
            },
        )
    assert result.success
    (request,) = gateway.requests
    assert request["method"] == "PUT" and request["path"] == "/metrics/job/medkg_pdf"
    assert "medkg_pdfs_processed_total 2.0" in request["body"]
    assert 'medkg_pdf_slo_latency_seconds{quantile="0.95"} 100.0' in request["body"]
    metadata = result.asset_materializations_for_node("quality_report")[0].metadata
    assert metadata["pushgateway"].value == f"{gateway.url}/metrics/job/medkg_pdf"


def test_a_gateway_that_is_down_does_not_lose_the_report(two_documents, instance):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = materialize(
        [quality_report],
        instance=instance,
        resources={"storage": two_documents, "quality_targets": QualityTargets(), "pushgateway": PushgatewayResource(url=down, timeout_s=2)},
    )
    assert result.success
    metadata = result.asset_materializations_for_node("quality_report")[0].metadata
    assert metadata["pushgateway"].value == "push failed"
    assert "medkg_pdfs_processed_total 2.0" in two_documents.read_text(f"reports/quality/{NOW.date().isoformat()}/metrics.prom")


def test_the_gateway_url_comes_from_the_environment():
    assert resources_for({"MEDKG_PUSHGATEWAY_URL": "http://pushgateway:9091"})["pushgateway"].url == "http://pushgateway:9091"
    assert resources_for({})["pushgateway"].url is None
