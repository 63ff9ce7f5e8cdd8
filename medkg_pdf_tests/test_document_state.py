"""A document is the unit of truth: what the instance records for each document is what was done
for its current source version, whatever else was in the batch.

Each batch holds a good document, a permanently bad one and one whose first requests fail
transiently; the instance is then queried as the UI would query it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from dagster import AssetKey, AssetPartitionStatus, DagsterEventType, DagsterInstance, materialize

from medkg_pdf import storage_keys
from medkg_pdf.defs.documents import document_assets
from medkg_pdf.defs.documents.jobs import DOCUMENT_CHAIN
from medkg_pdf.defs.partitions import documents
from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf.resources.storage import LocalStorage
from medkg_pdf.defs.documents.schedules import reconcile
from medkg_pdf.schemas import QuarantineRecord, SourceRef, utc_now
from medkg_pdf.sources import file_ref, register
from medkg_pdf_tests.support import pdf_factory
from medkg_pdf_tests.support.chain import page_hashes, register_files, vllm_for
from medkg_pdf_tests.support.vllm_double import VllmDouble, _RequestError, default_answer

MODEL = "medkg-embedded-ocr"


class FlakyFor:
    """Answers every page, except that the first `failures` requests for `pages` get HTTP 503."""

    def __init__(self, pdf: bytes, failures: int):
        self.pages = page_hashes(pdf)
        self.failures_left = failures
        self.lock = threading.Lock()

    def __call__(self, png: bytes, body: dict):
        if hashlib.sha256(png).hexdigest() in self.pages:
            with self.lock:
                if self.failures_left > 0:
                    self.failures_left -= 1
                    raise _RequestError(503, "engine warming up (injected)", "ServiceUnavailableError")
        return default_answer(png, body)


def statuses(instance: DagsterInstance, document_id: str) -> dict[str, AssetPartitionStatus | None]:
    """What the UI's partition view shows for one document, asset by asset."""
    return {
        key.path[-1]: (instance.get_status_by_partition(key, [document_id], documents) or {}).get(document_id)
        for key in DOCUMENT_CHAIN
    }


def test_cli_batch_records_each_document_as_it_ended(tmp_path):
    good = pdf_factory.text_pdf(["Amoxicillin 500 mg every 8 hours"], pages=2)
    flaky = pdf_factory.text_pdf(["Vancomycin 15 mg/kg every 12 hours"], pages=1)
    paths = {}
    for name, data in {"good.pdf": good, "flaky.pdf": flaky, "locked.pdf": pdf_factory.encrypted_pdf()}.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    data_dir = tmp_path / "data"
    # 3 failed requests: the flaky page's first attempt and the client's two retries, so its first step attempt fails
    answer = FlakyFor(flaky, failures=3)
    with VllmDouble(model=MODEL, answer=answer) as double:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDKG_", "DAGSTER_"))}
        env.update(MEDKG_VLLM_BASE_URL=double.url, MEDKG_VLLM_MODEL=MODEL)
        done = subprocess.run(
            [sys.executable, "-m", "medkg_pdf.cli", "run", *map(str, paths.values()), "--workers", "3", "--json", "--data-dir", str(data_dir)],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    lines = {Path(r["source"]).name: r for r in map(json.loads, done.stdout.splitlines())}
    assert lines["good.pdf"]["status"] == "ok" and lines["flaky.pdf"]["status"] == "ok"
    assert lines["locked.pdf"]["status"] == "failed" and "password-protected" in lines["locked.pdf"]["error"]
    assert answer.failures_left == 0

    ids = {name: file_ref(path).document_id for name, path in paths.items()}
    storage = LocalStorage(root=str(data_dir))
    os.environ["DAGSTER_HOME"] = str(data_dir / "dagster_home")
    try:
        with DagsterInstance.get() as instance:
            assert set(statuses(instance, ids["good.pdf"]).values()) == {AssetPartitionStatus.MATERIALIZED}
            assert set(statuses(instance, ids["flaky.pdf"]).values()) == {AssetPartitionStatus.MATERIALIZED}
            assert statuses(instance, ids["locked.pdf"])["source_pdf"] == AssetPartitionStatus.FAILED
            assert AssetPartitionStatus.MATERIALIZED not in statuses(instance, ids["locked.pdf"]).values()
            flaky_run = instance.get_run_by_id(lines["flaky.pdf"]["run_id"])
            retried = instance.get_records_for_run(flaky_run.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY).records
            assert [r.event_log_entry.step_key for r in retried] == ["page_images_and_parses"]
            assert not storage.exists(storage_keys.quarantine(ids["flaky.pdf"]))  # the retry succeeded: nothing left over
            record = storage.read_model(storage_keys.quarantine(ids["locked.pdf"]), QuarantineRecord)
            assert record.permanent and record.reason == "encrypted" and record.next_attempt_at is None
            # neither the reconciliation schedule nor anything else asks for the locked one again
            found = reconcile(instance, storage, max_runs=100)
            assert found.to_run == [] and ids["locked.pdf"] in found.quarantined and found.done == 2
    finally:
        del os.environ["DAGSTER_HOME"]


def run_chain(instance, storage, double, document_id):
    return materialize(
        document_assets,
        partition_key=document_id,
        instance=instance,
        resources={"storage": storage, "vllm": vllm_for(double.url), "inbox_s3": _s3(), "quality_targets": QualityTargets()},
        raise_on_error=False,
    )


def _s3():
    from dagster_aws.s3 import S3Resource

    return S3Resource(region_name="us-east-1")


def test_a_bad_reupload_over_a_good_document_leaves_nothing_built_from_the_old_files(tmp_path, storage, instance):
    first = tmp_path / "label.pdf"
    first.write_bytes(pdf_factory.text_pdf(["Warfarin 5 mg once daily"], pages=2))
    (doc_id,) = register_files(storage, instance, [first])
    with VllmDouble(model=MODEL) as double:
        assert run_chain(instance, storage, double, doc_id).success
        assert set(statuses(instance, doc_id).values()) == {AssetPartitionStatus.MATERIALIZED}
        # the same document re-registered (as the sensor does for a re-upload) with a truncated file
        broken = tmp_path / "label-v2.pdf"
        broken.write_bytes(pdf_factory.truncated_pdf())
        register(storage, SourceRef(document_id=doc_id, uri=broken.as_uri(), name="label.pdf", etag="v2"))
        requests = double.requests
        result = run_chain(instance, storage, double, doc_id)
        assert not result.success and result.get_asset_materialization_events() == []
        assert double.requests == requests
        assert set(statuses(instance, doc_id).values()) == {AssetPartitionStatus.FAILED}
        assert not storage.exists(storage_keys.source_info(doc_id))  # no record of the old version to build on
        # a later stage asked for on its own refuses too, instead of rebuilding from the old version's files
        alone = materialize(
            document_assets, partition_key=doc_id, instance=instance, selection=[AssetKey("structured_document")],
            resources={"storage": storage, "vllm": vllm_for(double.url), "inbox_s3": _s3(), "quality_targets": QualityTargets()},
            raise_on_error=False,
        )  # fmt: skip
        assert not alone.success and alone.get_asset_materialization_events() == []
        failure = next(e for e in alone.all_events if e.is_step_failure)
        assert "source_pdf failed" in failure.event_specific_data.error.message  # the first stage's reason, for people
    record = storage.read_model(storage_keys.quarantine(doc_id), QuarantineRecord)
    assert record.stage == "source_pdf" and record.permanent and record.registered_at is not None


def test_one_document_over_its_page_budget_fails_alone_whatever_launched_it(tmp_path, storage, instance):
    bad = pdf_factory.text_pdf(["Heparin 5000 units"], pages=2)
    paths = [tmp_path / "ok.pdf", tmp_path / "bad.pdf"]
    paths[0].write_bytes(pdf_factory.text_pdf(["Insulin 10 units"], pages=2))
    paths[1].write_bytes(bad)
    ids = register_files(storage, instance, paths)
    answer = FlakyFor(bad, failures=10**6)  # the bad document's pages never get an answer
    with VllmDouble(model=MODEL, answer=answer) as double:
        results = {doc_id: run_chain(instance, storage, double, doc_id) for doc_id in ids}
    assert results[ids[0]].success and set(statuses(instance, ids[0]).values()) == {AssetPartitionStatus.MATERIALIZED}
    assert not results[ids[1]].success
    failure = next(e for e in results[ids[1]].all_events if e.is_step_failure)
    assert "2 of 2 pages failed (budget 0.50% of pages)" in failure.event_specific_data.error.message
    state = statuses(instance, ids[1])
    assert state["source_pdf"] == AssetPartitionStatus.MATERIALIZED and state["vlm_page_parses"] == AssetPartitionStatus.FAILED
    assert state["structured_document"] == AssetPartitionStatus.FAILED
    record = storage.read_model(storage_keys.quarantine(ids[1]), QuarantineRecord)
    assert record.retryable and record.reason == "pages_failed" and record.next_attempt_at is not None


def test_reconciliation_runs_the_most_overdue_first_and_never_permanent_or_dead_letters(tmp_path, storage, instance):
    ids = [f"doc-{i}-{i:010x}" for i in range(6)]
    instance.add_dynamic_partitions(documents.name, ids)
    now = utc_now()
    for doc_id in ids:
        register(storage, SourceRef(document_id=doc_id, uri=f"file:///nowhere/{doc_id}.pdf", name=f"{doc_id}.pdf", arrived_at=now - timedelta(days=1)))

    def failed(doc_id: str, *, retryable=True, next_at=None, dead=False):
        storage.write_model(storage_keys.quarantine(doc_id), QuarantineRecord(
            document_id=doc_id, stage="vlm_page_parses", reason="model_server" if retryable else "encrypted", message="x",
            retryable=retryable, at=now.isoformat(), registered_at=now - timedelta(days=1), next_attempt_at=next_at, dead_letter=dead,
        ))  # fmt: skip

    failed(ids[0], next_at=now - timedelta(minutes=5))  # due recently
    failed(ids[1], next_at=now - timedelta(hours=3))  # due for longest
    failed(ids[2], next_at=now + timedelta(hours=1))  # backing off
    failed(ids[3], retryable=False)  # permanent
    failed(ids[4], dead=True)  # out of attempts
    # ids[5]: registered, never run
    found = reconcile(instance, storage, max_runs=2, now=now)
    assert found.to_run == [ids[5], ids[1]] and found.left_for_later == 1
    assert found.waiting == 1 and set(found.quarantined) == {ids[3]} and set(found.dead_letters) == {ids[4]}
    # a re-upload of the permanently failed document is a new version: it gets its own run
    register(storage, SourceRef(document_id=ids[3], uri="file:///nowhere/new.pdf", name="new.pdf", arrived_at=now))
    assert ids[3] in reconcile(instance, storage, max_runs=10, now=now).to_run


@pytest.mark.step_retries
def test_a_transient_failure_is_retried_in_its_run_then_left_with_its_next_attempt(tmp_path, storage, instance):
    path = tmp_path / "x.pdf"
    path.write_bytes(pdf_factory.text_pdf(["Ceftriaxone 1 g"], pages=1))
    (doc_id,) = register_files(storage, instance, [path])
    with VllmDouble(model=MODEL) as gone:
        url = gone.url
    result = materialize(
        document_assets, partition_key=doc_id, instance=instance, raise_on_error=False,
        resources={"storage": storage, "vllm": vllm_for(url), "inbox_s3": _s3(), "quality_targets": QualityTargets()},
    )  # fmt: skip
    assert not result.success
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 2
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "unreachable" in failure.event_specific_data.error.message  # the reason itself, not "Exceeded max_retries"
    record = storage.read_model(storage_keys.quarantine(doc_id), QuarantineRecord)
    assert record.retryable and record.failed_attempts == 3 and not record.dead_letter
    assert record.next_attempt_at > utc_now() + timedelta(minutes=10)


def test_s3_sources_that_vanish_or_change_fail_only_their_own_document(tmp_path, storage, instance, moto_server):
    """Registered from a listing, then deleted or replaced before the run: each fails alone, permanently, saying why."""
    import boto3
    from dagster_aws.s3 import S3Resource

    from medkg_pdf.sources import s3_ref

    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket="inbox")
    refs = {}
    for name in ("kept", "deleted", "replaced"):
        etag = client.put_object(Bucket="inbox", Key=f"in/{name}.pdf", Body=pdf_factory.text_pdf([f"Label {name}: 5 mg"]))["ETag"]
        refs[name] = s3_ref("inbox", f"in/{name}.pdf", etag.strip('"'))
        register(storage, refs[name])
    instance.add_dynamic_partitions(documents.name, [ref.document_id for ref in refs.values()])
    client.delete_object(Bucket="inbox", Key="in/deleted.pdf")
    client.put_object(Bucket="inbox", Key="in/replaced.pdf", Body=pdf_factory.text_pdf(["A newer upload"]))

    inbox_s3 = S3Resource(endpoint_url=moto_server, region_name="us-east-1")
    with VllmDouble(model=MODEL) as double:
        resources = {"storage": storage, "vllm": vllm_for(double.url), "inbox_s3": inbox_s3, "quality_targets": QualityTargets()}
        results = {
            name: materialize(document_assets, partition_key=ref.document_id, instance=instance, resources=resources, raise_on_error=False)
            for name, ref in refs.items()
        }
    assert results["kept"].success
    for name, reason, words in (("deleted", "source_missing", "the object is gone"), ("replaced", "source_changed", "replaced after it was registered")):
        assert not results[name].success and results[name].get_asset_materialization_events() == []
        record = storage.read_model(storage_keys.quarantine(refs[name].document_id), QuarantineRecord)
        assert record.reason == reason and record.permanent and words in record.message, record
