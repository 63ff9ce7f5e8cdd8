"""The automation on a running Dagster, driven the way an operator drives it from the UI.

A real `dagster-webserver` and `dagster-daemon` (the project's dagster.yaml: run queue, pools,
run retries) on SQLite or on a throwaway PostgreSQL, the inbox on moto (S3 over HTTP), the
model server a fast vLLM double. The test:

1. uploads PDFs to the inbox and turns the S3 arrival sensor on (GraphQL `startSensor`): the
   daemon ticks, registers each PDF and launches one run per document, `parse_quality` ends up
   materialized for each;
2. registers an archive of 9 more documents and launches a partition backfill of all 12 over
   the whole chain (GraphQL `launchPartitionBackfill`, as the UI's "Materialize" dialog does):
   under the BackfillPolicy (10 partitions a run) it runs as 2 multi-partition runs;
3. registers one document that never gets a run, turns the reconciliation schedule on and
   evaluates it (GraphQL `scheduleDryRun`, the UI's "Test schedule"): it requests exactly that one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import boto3
import httpx
import pytest

from medkg_pdf.jobs import DOCUMENT_CHAIN
from medkg_pdf.resources.storage import LocalStorage
from medkg_pdf.sources import register, s3_ref
from medkg_pdf_tests.live_dagster import (
    LOCATION,
    REPOSITORY,
    live_dagster,
    postgres_bin_dir,
    postgres_cluster,
    postgres_storage_yaml,
    wait_for,
    write_instance,
)
from medkg_pdf_tests.pdf_factory import text_pdf
from medkg_pdf_tests.vllm_double import VllmDouble

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

BUCKET, INBOX = "medkg-inbox", "incoming/"
MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
SENSOR = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": "s3_arrival_sensor"}
SCHEDULE = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "scheduleName": "reconciliation_schedule"}
WAIT_S = 180
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
# Every page of every test PDF carries these lines and the double answers with them, so the
# parses are faithful and the blocking quality checks on parse_quality pass.
LINES = ["Discharge medication", "Amoxicillin 500 mg every 8 hours for 7 days", "Ibuprofen 400 mg twice daily"]


def pdf(pages: int = 1) -> bytes:
    return text_pdf(LINES, pages=pages)


def faithful_answer(png: bytes, request: dict) -> str:
    return "\n\n".join(LINES)


@pytest.fixture(params=["sqlite", "postgres"])
def instance_storage(request):
    """The storage section of the instance's dagster.yaml (None: SQLite files under DAGSTER_HOME)."""
    if request.param == "sqlite":
        yield None
        return
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    with postgres_cluster(bin_dir) as pg:
        yield postgres_storage_yaml(pg)


@pytest.fixture
def inbox(moto_server):
    httpx.post(f"{moto_server}/moto-api/reset", timeout=10).raise_for_status()
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


# -- what the UI asks the webserver -----------------------------------------------------------

PARTITION_STATUS = """
query ($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode { assetPartitionStatuses { ... on DefaultPartitionStatuses {
      materializedPartitions failedPartitions materializingPartitions } } }
  }
}"""

RUNS = """
query ($filter: RunsFilter) {
  runsOrError(filter: $filter, limit: 100) {
    ... on Runs { results { runId status creationTime startTime endTime tags { key value } } }
  }
}"""


def partition_status(dagster, asset: str = "parse_quality") -> dict[str, set[str]]:
    data = dagster.graphql(PARTITION_STATUS, assetKey={"path": [asset]})
    statuses = data["assetNodeOrError"]["assetPartitionStatuses"]
    names = ("materializedPartitions", "failedPartitions", "materializingPartitions")
    return {name: set(statuses[name]) for name in names}


def runs_tagged(dagster, key: str, value: str) -> list[dict]:
    runs = dagster.graphql(RUNS, filter={"tags": [{"key": key, "value": value}]})["runsOrError"]["results"]
    for run in runs:
        run["tags"] = {tag["key"]: tag["value"] for tag in run["tags"]}
    return runs


def partition_keys(dagster, asset: str = "parse_quality") -> list[str]:
    data = dagster.graphql(
        "query ($assetKey: AssetKeyInput!) { assetNodeOrError(assetKey: $assetKey) { "
        "... on AssetNode { partitionKeys } } }",
        assetKey={"path": [asset]},
    )
    return data["assetNodeOrError"]["partitionKeys"]


def add_partition(dagster, document_id: str) -> None:
    data = dagster.graphql(
        """mutation ($repo: RepositorySelector!, $key: String!) {
          addDynamicPartition(repositorySelector: $repo, partitionsDefName: "documents", partitionKey: $key) {
            __typename ... on PythonError { message } } }""",
        repo={"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY},
        key=document_id,
    )
    assert data["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", data


# -- the test ---------------------------------------------------------------------------------


def test_sensor_backfill_and_schedule_on_a_running_dagster(
    tmp_path: Path, inbox, moto_server, instance_storage, capsys
):
    home, data_dir = tmp_path / "dagster_home", tmp_path / "data"
    write_instance(home, instance_storage)
    storage = LocalStorage(root=str(data_dir))
    timings: dict[str, float] = {}

    with VllmDouble(model=MODEL, answer=faithful_answer) as double:
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
                _arrivals_become_runs(dagster, inbox, timings)
                _backfill_runs_in_multi_partition_runs(dagster, inbox, storage, timings)
                _schedule_requests_what_is_missing(dagster, inbox, storage)
            except BaseException:
                print(dagster.logs())
                raise
    with capsys.disabled():
        print("\n" + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()))


def _arrivals_become_runs(dagster, inbox, timings: dict[str, float]) -> None:
    keys = [
        f"{INBOX}discharge summary — Ünïcode (final).pdf",
        f"{INBOX}labels/amoxicillin.pdf",
        f"{INBOX}dose table.pdf",
    ]
    for n, key in enumerate(keys):
        inbox.put_object(Bucket=BUCKET, Key=key, Body=pdf(pages=n + 1))
    inbox.put_object(Bucket=BUCKET, Key=f"{INBOX}notes.txt", Body=b"not a PDF")
    expected = {s3_ref(BUCKET, key).document_id for key in keys}

    started = time.monotonic()
    data = dagster.graphql(
        """mutation ($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {
             __typename ... on Sensor { sensorState { status } } ... on PythonError { message } } }""",
        selector=SENSOR,
    )
    assert data["startSensor"]["sensorState"]["status"] == "RUNNING", data

    def all_materialized():
        dagster.check_alive()
        status = partition_status(dagster)
        assert not expected & status["failedPartitions"], f"failed: {expected & status['failedPartitions']}"
        return expected <= status["materializedPartitions"]

    wait_for("parse_quality of every uploaded PDF", all_materialized, WAIT_S, interval_s=1)
    timings["sensor_on_to_3_materialized"] = time.monotonic() - started

    def runs_finished():  # the checks on parse_quality run after it, in the same run
        runs = runs_tagged(dagster, "dagster/sensor_name", "s3_arrival_sensor")
        return runs if all(run["status"] in FINISHED for run in runs) else None

    runs = wait_for("the sensor's runs to finish", runs_finished, WAIT_S, interval_s=1)
    assert {run["tags"]["dagster/partition"] for run in runs} == expected  # one run per document, no more
    assert all(run["status"] == "SUCCESS" for run in runs)
    assert all(run["tags"]["dagster/run_key"].startswith(run["tags"]["dagster/partition"] + ":") for run in runs)
    timings["sensor_run_longest"] = max(run["endTime"] - run["creationTime"] for run in runs)


def _backfill_runs_in_multi_partition_runs(dagster, inbox, storage, timings: dict[str, float]) -> None:
    # an archive outside the inbox prefix (the sensor ignores it), registered by hand
    archive = []
    for n in range(9):
        key = f"archive/2024/report-{n}.pdf"
        etag = inbox.put_object(Bucket=BUCKET, Key=key, Body=pdf(pages=1 + n % 3))["ETag"]
        ref = s3_ref(BUCKET, key, etag.strip('"'))
        register(storage, ref)
        add_partition(dagster, ref.document_id)
        archive.append(ref.document_id)
    everything = partition_keys(dagster)  # in the order they were added, as the UI lists them
    assert len(everything) == 12 and everything[-9:] == archive

    started = time.monotonic()
    data = dagster.graphql(
        """mutation ($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
             __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
        params={
            "partitionNames": everything,
            "assetSelection": [{"path": key.path} for key in DOCUMENT_CHAIN],
            "fromFailure": False,
            "tags": [],  # no run config: the code location's default executor is in-process
        },
    )
    backfill_id = data["launchPartitionBackfill"].get("backfillId")
    assert backfill_id, data

    def finished():
        dagster.check_alive()
        backfill = dagster.graphql(
            """query ($id: String!) { partitionBackfillOrError(backfillId: $id) {
                 ... on PartitionBackfill { status } ... on PythonError { message } } }""",
            id=backfill_id,
        )["partitionBackfillOrError"]
        assert backfill.get("status") not in ("FAILED", "CANCELED", "COMPLETED_FAILED"), backfill
        return backfill.get("status") in ("COMPLETED", "COMPLETED_SUCCESS")

    wait_for(f"backfill {backfill_id} to complete", finished, WAIT_S, interval_s=2)
    timings["backfill_12_documents"] = time.monotonic() - started

    runs = runs_tagged(dagster, "dagster/backfill", backfill_id)
    ranges = sorted(
        (
            everything.index(run["tags"]["dagster/asset_partition_range_start"]),
            everything.index(run["tags"]["dagster/asset_partition_range_end"]),
        )
        for run in runs
    )
    assert ranges == [(0, 9), (10, 11)]  # BackfillPolicy.multi_run(10): 12 documents in 2 runs of 10 and 2
    assert all(run["status"] == "SUCCESS" for run in runs)
    assert set(everything) <= partition_status(dagster)["materializedPartitions"]


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
