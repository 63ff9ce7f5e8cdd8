"""The automation on a running Dagster, driven the way an operator drives it from the UI.

A real `dagster-webserver` and `dagster-daemon` (the project's dagster.yaml: run queue, pools,
run retries) on SQLite or on a throwaway PostgreSQL, the inbox on moto (S3 over HTTP), the
model server a fast vLLM double. The test:

1. uploads good PDFs, a truncated one and one whose first requests the server refuses (503) to
   the inbox and turns the S3 arrival sensor on (GraphQL `startSensor`): the daemon ticks,
   registers each PDF and launches one run per document; the good and the flaky ones end
   materialized at every stage (the flaky one after a step retry), the truncated one failed with
   its reason and never run again (no run retry: its failure is permanent);
2. registers an archive of more documents, among them an encrypted one and another flaky one,
   and launches a partition backfill of every document over the whole chain (GraphQL
   `launchPartitionBackfill`, as the UI's "Materialize" dialog does): one run per document
   (BackfillPolicy.multi_run(1)), the same outcomes per document, and the backfill says it failed;
3. registers one document that never gets a run, turns the reconciliation schedule on and
   evaluates it (GraphQL `scheduleDryRun`, the UI's "Test schedule"): it requests exactly that
   one, never the permanently failed ones.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import hashlib
import threading

import boto3
import httpx
import pytest

from medkg_pdf.resources.storage import LocalStorage
from medkg_pdf.sources import register, s3_ref
from medkg_pdf_tests.support.live_dagster import (
    LOCATION,
    REPOSITORY,
    SENSOR,
    add_partition,
    launch_backfill,
    live_dagster,
    partition_status,
    postgres_bin_dir_or_skip,
    postgres_cluster,
    postgres_storage_yaml,
    runs_tagged,
    wait_for,
    write_instance,
)
from medkg_pdf_tests.support.chain import page_hashes
from medkg_pdf_tests.support.pdf_factory import encrypted_pdf, text_pdf, truncated_pdf
from medkg_pdf_tests.support.vllm_double import VllmDouble, _RequestError

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

BUCKET, INBOX = "medkg-inbox", "incoming/"
MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
SCHEDULE = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "scheduleName": "reconciliation_schedule"}
WAIT_S = 240
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
# Every page of every test PDF carries these lines and the double answers with them, so the
# parses are faithful and the blocking quality checks on parse_quality pass.
LINES = ["Discharge medication", "Amoxicillin 500 mg every 8 hours for 7 days", "Ibuprofen 400 mg twice daily"]


def pdf(pages: int = 1) -> bytes:
    return text_pdf(LINES, pages=pages)


FLAKY_LINES = ["Vancomycin dosing", "Vancomycin 15 mg/kg every 12 hours, trough before the 4th dose"]


def flaky_pdf(n: int) -> bytes:
    """A document of its own: the double refuses its page's first requests."""
    return text_pdf([*FLAKY_LINES, f"Ward {n}"], pages=1)


class Answers:
    """Faithful answers; the first three requests for each flaky page get HTTP 503 (its first step attempt fails)."""

    def __init__(self, flaky: dict[bytes, str]):
        self.flaky = {digest: lines for pdf_bytes, lines in flaky.items() for digest in page_hashes(pdf_bytes, MODEL)}
        self.refused: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, png: bytes, request: dict) -> str:
        digest = hashlib.sha256(png).hexdigest()
        if digest in self.flaky:
            with self.lock:
                self.refused[digest] = self.refused.get(digest, 0) + 1
                if self.refused[digest] <= 3:
                    raise _RequestError(503, "engine warming up (injected)", "ServiceUnavailableError")
            return self.flaky[digest]
        return "\n\n".join(LINES)


@pytest.fixture(params=["sqlite", "postgres"])
def instance_storage(request):
    """The storage section of the instance's dagster.yaml (None: SQLite files under DAGSTER_HOME)."""
    if request.param == "sqlite":
        yield None
        return
    with postgres_cluster(postgres_bin_dir_or_skip()) as pg:
        yield postgres_storage_yaml(pg)


@pytest.fixture
def inbox(moto_server):
    httpx.post(f"{moto_server}/moto-api/reset", timeout=10).raise_for_status()
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


# -- what the UI asks the webserver -----------------------------------------------------------

def partition_keys(dagster, asset: str = "parse_quality") -> list[str]:
    data = dagster.graphql(
        "query ($assetKey: AssetKeyInput!) { assetNodeOrError(assetKey: $assetKey) { "
        "... on AssetNode { partitionKeys } } }",
        assetKey={"path": [asset]},
    )
    return data["assetNodeOrError"]["partitionKeys"]


# -- the test ---------------------------------------------------------------------------------


def test_sensor_backfill_and_schedule_on_a_running_dagster(
    tmp_path: Path, inbox, moto_server, instance_storage, capsys
):
    home, data_dir = tmp_path / "dagster_home", tmp_path / "data"
    write_instance(home, instance_storage)
    storage = LocalStorage(root=str(data_dir))
    timings: dict[str, float] = {}

    flaky = {flaky_pdf(n): "\n\n".join([*FLAKY_LINES, f"Ward {n}"]) for n in (1, 2)}
    answers = Answers(flaky)
    with VllmDouble(model=MODEL, answer=answers) as double:
        env = {
            **os.environ,
            "MEDKG_ENV": "local",
            "MEDKG_DATA_DIR": str(data_dir),
            "MEDKG_INBOX_BUCKET": BUCKET,
            "MEDKG_INBOX_PREFIX": INBOX,
            "MEDKG_INBOX_INTERVAL_SECONDS": "5",
            "MEDKG_S3_ENDPOINT_URL": moto_server,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "MEDKG_VLLM_BASE_URL": double.url,
            "MEDKG_VLLM_MODEL": double.model,
        }
        started = time.monotonic()
        with live_dagster(home, env) as dagster:
            timings["startup"] = time.monotonic() - started
            try:
                _arrivals_become_runs(dagster, inbox, timings, list(flaky)[0])
                _backfill_runs_one_document_per_run(dagster, inbox, storage, timings, list(flaky)[1])
                _schedule_requests_what_is_missing(dagster, inbox, storage)
            except BaseException:
                print(dagster.logs())
                raise
    with capsys.disabled():
        print("\n" + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()))


def wait_runs_finished(dagster, key: str, value: str, count: int) -> list[dict]:
    def finished():
        dagster.check_alive()
        runs = runs_tagged(dagster, key, value)
        return runs if len(runs) >= count and all(run["status"] in FINISHED for run in runs) else None

    return wait_for(f"{count} runs tagged {key}={value} to finish", finished, WAIT_S, interval_s=1)


def assert_each_document_as_it_ended(dagster, good: set[str], bad: str) -> None:
    """What the UI shows per document: every stage materialized for the good ones, none for the bad one."""
    for asset in ("source_pdf", "page_images", "vlm_page_parses", "structured_document", "parse_quality"):
        status = partition_status(dagster, asset)
        assert good <= status["materializedPartitions"], (asset, good - status["materializedPartitions"])
        assert bad in status["failedPartitions"] and bad not in status["materializedPartitions"], asset


def _arrivals_become_runs(dagster, inbox, timings: dict[str, float], flaky: bytes) -> None:
    keys = [
        f"{INBOX}discharge summary — Ünïcode (final).pdf",
        f"{INBOX}labels/amoxicillin.pdf",
        f"{INBOX}dose table.pdf",
    ]
    for n, key in enumerate(keys):
        inbox.put_object(Bucket=BUCKET, Key=key, Body=pdf(pages=n + 1))
    inbox.put_object(Bucket=BUCKET, Key=f"{INBOX}vancomycin.pdf", Body=flaky)
    inbox.put_object(Bucket=BUCKET, Key=f"{INBOX}cut-off upload.pdf", Body=truncated_pdf())
    inbox.put_object(Bucket=BUCKET, Key=f"{INBOX}notes.txt", Body=b"not a PDF")
    good = {s3_ref(BUCKET, key).document_id for key in [*keys, f"{INBOX}vancomycin.pdf"]}
    bad = s3_ref(BUCKET, f"{INBOX}cut-off upload.pdf").document_id

    started = time.monotonic()
    data = dagster.graphql(
        """mutation ($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {
             __typename ... on Sensor { sensorState { status } } ... on PythonError { message } } }""",
        selector=SENSOR,
    )
    assert data["startSensor"]["sensorState"]["status"] == "RUNNING", data

    def all_ended():
        dagster.check_alive()
        status = partition_status(dagster)
        assert not good & status["failedPartitions"], f"failed: {good & status['failedPartitions']}"
        return good <= status["materializedPartitions"] and bad in partition_status(dagster, "source_pdf")["failedPartitions"]

    wait_for("parse_quality of every good PDF, source_pdf of the cut-off one failed", all_ended, WAIT_S, interval_s=1)
    timings["sensor_on_to_5_ended"] = time.monotonic() - started
    runs = wait_runs_finished(dagster, "dagster/sensor_name", "s3_arrival_sensor", 5)
    time.sleep(8)  # long enough for the daemon's run retries to have launched a retry, had there been one
    runs = runs_tagged(dagster, "dagster/sensor_name", "s3_arrival_sensor")
    assert sorted(run["tags"]["dagster/partition"] for run in runs) == sorted([*good, bad])  # one run each, no retry run
    assert {run["tags"]["dagster/partition"]: run["status"] for run in runs} == {**{doc: "SUCCESS" for doc in good}, bad: "FAILURE"}
    assert all(run["tags"]["dagster/run_key"].startswith(run["tags"]["dagster/partition"] + ":") for run in runs)
    assert_each_document_as_it_ended(dagster, good, bad)
    timings["sensor_run_longest"] = max(run["endTime"] - run["creationTime"] for run in runs)


def _backfill_runs_one_document_per_run(dagster, inbox, storage, timings: dict[str, float], flaky: bytes) -> None:
    # an archive outside the inbox prefix (the sensor ignores it), registered by hand
    archive = []
    bodies = [pdf(pages=1 + n % 3) for n in range(2)] + [flaky, encrypted_pdf()]
    for n, body in enumerate(bodies):
        key = f"archive/2024/report-{n}.pdf"
        etag = inbox.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"]
        ref = s3_ref(BUCKET, key, etag.strip('"'))
        register(storage, ref)
        add_partition(dagster, ref.document_id)
        archive.append(ref.document_id)
    everything = partition_keys(dagster)  # in the order they were added, as the UI lists them
    assert len(everything) == 9 and everything[-4:] == archive
    encrypted = archive[-1]
    cut_off = partition_status(dagster, "source_pdf")["failedPartitions"]  # the sensor's truncated upload
    assert len(cut_off) == 1

    started = time.monotonic()
    backfill_id = launch_backfill(dagster, everything)

    def finished():
        dagster.check_alive()
        backfill = dagster.graphql(
            """query ($id: String!) { partitionBackfillOrError(backfillId: $id) {
                 ... on PartitionBackfill { status } ... on PythonError { message } } }""",
            id=backfill_id,
        )["partitionBackfillOrError"]
        assert backfill.get("status") not in ("CANCELED",), backfill
        return backfill.get("status") if backfill.get("status") in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED") else None

    status = wait_for(f"backfill {backfill_id} to complete", finished, WAIT_S, interval_s=2)
    timings["backfill_9_documents"] = time.monotonic() - started
    assert status in ("COMPLETED_FAILED", "FAILED")  # one document failed: the backfill does not say success

    runs = runs_tagged(dagster, "dagster/backfill", backfill_id)
    for run in runs:  # a backfill run names its range; under multi_run(1) it starts and ends at one document
        assert run["tags"]["dagster/asset_partition_range_start"] == run["tags"]["dagster/asset_partition_range_end"]
    document = {run["runId"]: run["tags"]["dagster/asset_partition_range_start"] for run in runs}
    assert sorted(document.values()) == sorted(everything)  # one run per document
    assert {document[run["runId"]] for run in runs if run["status"] != "SUCCESS"} == {encrypted, *cut_off}
    assert_each_document_as_it_ended(dagster, set(everything) - {encrypted, *cut_off}, encrypted)


def _schedule_requests_what_is_missing(dagster, inbox, storage) -> None:
    key = "archive/2024/registered-during-an-outage.pdf"
    etag = inbox.put_object(Bucket=BUCKET, Key=key, Body=pdf())["ETag"]
    forgotten = s3_ref(BUCKET, key, etag.strip('"'))
    register(storage, forgotten)
    add_partition(dagster, forgotten.document_id)

    data = dagster.graphql(
        """mutation ($selector: ScheduleSelector!) { startSchedule(scheduleSelector: $selector) {
             __typename ... on ScheduleStateResult { scheduleState { status } } ... on PythonError { message } } }""",
        selector=SCHEDULE,
    )
    assert data["startSchedule"]["scheduleState"]["status"] == "RUNNING", data

    data = dagster.graphql(
        """mutation ($selector: ScheduleSelector!, $at: Float) {
             scheduleDryRun(selectorData: $selector, timestamp: $at) {
             __typename ... on DryRunInstigationTick { evaluationResult {
               runRequests { runKey tags { key value } } skipReason error { message } } }
             ... on PythonError { message } } }""",
        selector=SCHEDULE,
        at=time.time(),
    )
    result = data["scheduleDryRun"]["evaluationResult"]
    assert result["error"] is None, result
    partitions = [
        {tag["key"]: tag["value"] for tag in request["tags"]}["dagster/partition"] for request in result["runRequests"]
    ]
    assert partitions == [forgotten.document_id]  # the 12 materialized documents are left alone
