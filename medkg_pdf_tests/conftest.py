"""Servers and instances the tests run against: all real, all on 127.0.0.1, all torn down."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from dagster import DagsterInstance

from medkg_pdf.engine.process import EmbeddedEngine, free_port
from medkg_pdf.resources.storage import LocalStorage
from medkg_pdf.resources.vllm import EMBEDDED_MODEL

warnings.filterwarnings("ignore", module="dagster")


@pytest.fixture(scope="session")
def embedded_engine():
    """The real embedded OCR engine, as `medkg-pdf serve-local` runs it, once per test session."""
    with EmbeddedEngine(model_name=EMBEDDED_MODEL) as engine:
        yield engine


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(root=str(tmp_path / "data"))


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as dagster_instance:
        yield dagster_instance


@pytest.fixture
def moto_server():
    """moto in server mode: real HTTP, real boto3 signing and listing, on a loopback port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(autouse=True)
def no_step_retries(request, monkeypatch):
    """A transient failure is retried in its step after 5 s and 10 s; tests not marked `step_retries`
    run with those retries off, so a failure is the run's last word at once (runs in other processes,
    the live daemon's, keep them)."""
    if request.node.get_closest_marker("step_retries") is None:
        from medkg_pdf.defs import document_steps

        monkeypatch.setattr(document_steps, "MAX_STEP_RETRIES", 0)



@pytest.fixture(autouse=True)
def fresh_breakers():
    """The model-server breaker is shared by the process, per URL; a test's loopback port may be the last test's."""
    from medkg_pdf.model_client.breaker import forget_shared_breakers

    forget_shared_breakers()
    yield
    forget_shared_breakers()
