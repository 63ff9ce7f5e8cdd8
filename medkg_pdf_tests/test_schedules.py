"""The reconciliation schedule, on a real instance where the chain ran (or not) for each document.

Documents, in registration order, and what the schedule must do with them an hour later:

* `done`: materialized                                                    -> nothing
* `broken`: an HTML page named .pdf, failed permanently                   -> nothing
* `never`: registered, no run ever started (a lost sensor tick)            -> a run, first
* `gone`: its file was deleted before its run (source missing, permanent)  -> nothing
* `outage`: its run met a model server that was down (transient)          -> a run, once due
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from dagster import RunRequest, SkipReason, build_schedule_context, instance_for_test, materialize
from dagster_aws.s3 import S3Resource

from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf import storage_keys
from medkg_pdf.defs.documents import document_assets
from medkg_pdf.defs.documents.jobs import DOCUMENT_CHAIN
from medkg_pdf.defs.partitions import documents
from medkg_pdf.defs.documents.schedules import build_reconciliation_schedule, reconciliation_schedule
from medkg_pdf.schemas import SourceRef
from medkg_pdf.sources import file_ref, register
from medkg_pdf_tests.support import pdf_factory
from medkg_pdf_tests.support.chain import vllm_for
from medkg_pdf_tests.support.vllm_double import VllmDouble

TICK = (datetime.now(timezone.utc) + timedelta(hours=1)).replace(second=0, microsecond=0)  # the outage's retry is due


@pytest.fixture
def persistent_instance():
    """Schedules read run and asset history, so the instance must be a persistent one."""
    with instance_for_test() as dagster_instance:
        yield dagster_instance


@pytest.fixture
def history(tmp_path, storage, persistent_instance):
    """Registers the documents and runs the chain the way each one's story says."""
    instance = persistent_instance
    files = {
        "done": pdf_factory.text_pdf(["Amoxicillin 500 mg every 8 hours"]),
        "broken": pdf_factory.html_renamed(),
        "never": pdf_factory.text_pdf(["Registered, then the daemon went down"]),
        "gone": pdf_factory.text_pdf(["Deleted before its run"]),
        "outage": pdf_factory.text_pdf(["Parsed while the model server was down"]),
    }
    ids = {}
    for name, data in files.items():
        path = tmp_path / f"{name}.pdf"
        path.write_bytes(data)
        ref = file_ref(path)
        register(storage, ref)
        instance.add_dynamic_partitions(documents.name, [ref.document_id])
        ids[name] = ref.document_id
    (tmp_path / "gone.pdf").unlink()

    with VllmDouble(model="medkg-embedded-ocr") as double:
        url = double.url
        resources = {"storage": storage, "vllm": vllm_for(url), "inbox_s3": S3Resource(region_name="us-east-1"), "quality_targets": QualityTargets()}

        def run(document_id, **changes):
            return materialize(document_assets, instance=instance, resources={**resources, **changes}, raise_on_error=False, partition_key=document_id)

        assert run(ids["done"]).success
        assert not run(ids["broken"]).success
        assert not run(ids["gone"]).success
    assert not run(ids["outage"], vllm=vllm_for(url)).success  # the double is gone now
    return ids


def tick(instance, storage, schedule=reconciliation_schedule):
    # a context manager: it opens resources and instance state that must be closed again
    resources = {"storage": storage}
    with build_schedule_context(instance=instance, resources=resources, scheduled_execution_time=TICK) as context:
        return schedule(context)


def test_requests_only_documents_whose_chain_is_missing_or_failed_transiently(history, persistent_instance, storage):
    requests = tick(persistent_instance, storage)

    assert [r.partition_key for r in requests] == [history["never"], history["outage"]]
    for request in requests:
        assert isinstance(request, RunRequest)
        assert request.asset_selection == DOCUMENT_CHAIN and request.tags["medkg/trigger"] == "reconcile"
        assert request.run_key == f"reconcile:{request.partition_key}:{TICK.strftime('%Y%m%dT%H%M')}"


def test_a_transient_failure_waits_for_its_next_attempt(history, persistent_instance, storage):
    with build_schedule_context(instance=persistent_instance, resources={"storage": storage}, scheduled_execution_time=datetime.now(timezone.utc)) as context:
        requests = reconciliation_schedule(context)

    assert [r.partition_key for r in requests] == [history["never"]]


def test_the_cap_takes_the_most_overdue_first_and_leaves_the_rest_for_later(history, persistent_instance, storage):
    capped = build_reconciliation_schedule(max_runs_per_tick=1)

    requests = tick(persistent_instance, storage, capped)

    assert [r.partition_key for r in requests] == [history["never"]]


def test_a_reupload_of_a_broken_document_is_retried(history, persistent_instance, storage):
    ref = storage.read_model(storage_keys.source_ref(history["broken"]), SourceRef)
    register(storage, ref.model_copy(update={"arrived_at": datetime.now(timezone.utc)}))  # registered again, later

    requests = tick(persistent_instance, storage)

    assert history["broken"] in [r.partition_key for r in requests]


def test_nothing_to_do_is_a_skip_with_the_counts(tmp_path, storage, persistent_instance):
    path = tmp_path / "label.pdf"
    path.write_bytes(pdf_factory.text_pdf(["Paracetamol 1 g"]))
    ref = file_ref(path)
    register(storage, ref)
    persistent_instance.add_dynamic_partitions(documents.name, [ref.document_id])
    with VllmDouble(model="medkg-embedded-ocr") as double:
        resources = {"storage": storage, "vllm": vllm_for(double.url), "inbox_s3": S3Resource(region_name="us-east-1"), "quality_targets": QualityTargets()}
        run = materialize(
            document_assets, partition_key=ref.document_id, instance=persistent_instance, resources=resources
        )
        assert run.success

    result = tick(persistent_instance, storage)

    assert isinstance(result, SkipReason)
    assert result.skip_message.startswith("1 done, 0 in progress, 0 never materialized, 0 failed")
