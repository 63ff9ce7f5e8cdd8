"""The S3 arrival sensor, tick by tick, against moto in server mode (real HTTP listing on 127.0.0.1).

Each test drives the sensor the way the daemon does: evaluate a tick with the previous tick's
cursor, look at what it registered and requested, feed its cursor to the next tick.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote

import boto3
import httpx
import pytest
from dagster import SensorResult, build_sensor_context
from dagster_aws.s3 import S3Resource

from medkg_pdf import storage_keys
from medkg_pdf.defs.documents.jobs import DOCUMENT_CHAIN
from medkg_pdf.document_ids import is_document_id
from medkg_pdf.resources.inbox import InboxConfig
from medkg_pdf.resources.storage import S3Storage
from medkg_pdf.schemas import SourceRef
from medkg_pdf.defs.ingest.sensors import InboxCursor, InboxObject, s3_arrival_sensor
from medkg_pdf.sources import s3_ref

BUCKET = "inbox"
PREFIX = "incoming/"
PDF = b"%PDF-1.7 stand-in bytes: the sensor never opens the file"


@pytest.fixture
def s3(moto_server):
    httpx.post(f"{moto_server}/moto-api/reset", timeout=10).raise_for_status()  # moto keeps buckets per process
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


class LogLines(logging.Handler):
    def __init__(self, lines: list[str]):
        super().__init__(level=logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class Inbox:
    """The sensor plus the cursor the daemon would carry from one tick to the next, and what it
    logged (in the daemon these lines show on the tick in the UI)."""

    def __init__(self, endpoint: str, storage, **settings):
        self.storage = storage
        self.resources = {
            "inbox": InboxConfig(bucket=BUCKET, prefix=PREFIX, **settings),
            "inbox_s3": S3Resource(endpoint_url=endpoint, region_name="us-east-1"),
            "storage": storage,
        }
        self.cursor: str | None = None
        self.log: list[str] = []

    def tick(self) -> SensorResult:
        with build_sensor_context(cursor=self.cursor, resources=self.resources) as context:
            context.log.addHandler(LogLines(self.log))
            result = s3_arrival_sensor(context)
        assert isinstance(result, SensorResult)
        self.cursor = result.cursor
        return result


@pytest.fixture
def inbox(s3, moto_server, storage):
    return Inbox(moto_server, storage)


def requested(result: SensorResult) -> list[str]:
    return [request.partition_key for request in result.run_requests]


def added(result: SensorResult) -> list[str]:
    return [key for request in result.dynamic_partitions_requests for key in request.partition_keys]


def put(s3, key: str, body: bytes = PDF) -> str:
    return s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"].strip('"')


def doc_id(key: str) -> str:
    return s3_ref(BUCKET, key).document_id


def test_first_tick_registers_pdfs_and_requests_one_chain_run_each(s3, inbox):
    etags = {key: put(s3, key, PDF + key.encode()) for key in (f"{PREFIX}a.pdf", f"{PREFIX}sub/b.PDF")}
    put(s3, "elsewhere/c.pdf")  # outside the prefix: not the sensor's business

    result = inbox.tick()

    assert sorted(requested(result)) == sorted(doc_id(key) for key in etags)
    assert sorted(added(result)) == sorted(requested(result))
    for request in result.run_requests:
        (key,) = [k for k in etags if doc_id(k) == request.partition_key]
        assert request.run_key == f"{request.partition_key}:{etags[key]}"
        assert request.asset_selection == DOCUMENT_CHAIN
        ref = inbox.storage.read_model(storage_keys.source_ref(request.partition_key), SourceRef)
        assert ref.uri == f"s3://{BUCKET}/{key}" and ref.etag == etags[key]
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert ref.arrived_at == head["LastModified"]  # arrival time is the object's LastModified


def test_second_tick_with_nothing_new_requests_nothing(s3, inbox):
    put(s3, f"{PREFIX}a.pdf")
    assert len(inbox.tick().run_requests) == 1

    again = inbox.tick()

    assert again.run_requests == [] and again.dynamic_partitions_requests == []
    assert "0 documents requested" in again.skip_reason.skip_message


def test_reupload_with_new_content_is_requested_again_under_the_same_partition(s3, inbox):
    key = f"{PREFIX}label.pdf"
    first_etag = put(s3, key, PDF + b" v1")
    (first,) = inbox.tick().run_requests
    assert inbox.tick().run_requests == []

    second_etag = put(s3, key, PDF + b" v2")
    (second,) = inbox.tick().run_requests

    assert second.partition_key == first.partition_key  # the same document, updated
    assert first.run_key == f"{first.partition_key}:{first_etag}"
    assert second.run_key == f"{first.partition_key}:{second_etag}"
    assert inbox.storage.read_model(storage_keys.source_ref(first.partition_key), SourceRef).etag == second_etag


def _put_within_one_second(s3, keys: list[str], attempts: int = 5) -> datetime:
    """Upload `keys` so that S3 stamps them all with the same LastModified (second precision)."""
    for _ in range(attempts):
        time.sleep(1 - time.time() % 1 + 0.01)  # start just after a second boundary
        for key in keys:
            put(s3, key, PDF + key.encode())
        stamps = {s3.head_object(Bucket=BUCKET, Key=key)["LastModified"] for key in keys}
        if len(stamps) == 1:
            return stamps.pop()
    pytest.fail(f"could not upload {len(keys)} objects within one second in {attempts} attempts")


def test_objects_sharing_one_last_modified_are_all_taken_in(s3, moto_server, storage):
    keys = [f"{PREFIX}tie-{n}.pdf" for n in range(3)]
    _put_within_one_second(s3, keys)
    inbox = Inbox(moto_server, storage, max_per_tick=1, lookback_seconds=0)

    ticks = [requested(inbox.tick()) for _ in range(4)]

    # a cursor of "newest LastModified seen" alone would lose the second and third object
    assert ticks == [[doc_id(keys[0])], [doc_id(keys[1])], [doc_id(keys[2])], []]


def test_per_tick_cap_turns_a_burst_into_a_steady_stream(s3, moto_server, storage):
    keys = [f"{PREFIX}burst/doc-{n:04d}.pdf" for n in range(120)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: put(s3, key), keys))
    inbox = Inbox(moto_server, storage, max_per_tick=50)

    ticks = [requested(inbox.tick()) for _ in range(4)]

    assert [len(t) for t in ticks] == [50, 50, 20, 0]
    assert sorted(sum(ticks, [])) == sorted(doc_id(key) for key in keys)  # each exactly once


def test_hostile_keys_get_safe_stable_partitions_and_non_pdfs_are_skipped_with_a_reason(s3, inbox):
    hostile = [
        f"{PREFIX}../../etc/passwd.pdf",
        f"{PREFIX}My Report (final), v2.pdf",
        f"{PREFIX}Ünïcödé résumé — 患者.pdf",
        f"{PREFIX}" + "a" * 1000 + ".pdf",
        f"{PREFIX}a?b#c&d=e.pdf",
    ]
    not_pdfs = {
        f"{PREFIX}notes.txt": "not a PDF (extension 'txt'",
        f"{PREFIX}scan.pdf.zip": "not a PDF (extension 'zip'",
        f"{PREFIX}README": "not a PDF (no .pdf extension)",
        f"{PREFIX}folder/": "folder marker",
    }
    for key in [*hostile, *not_pdfs]:
        put(s3, key)

    result = inbox.tick()

    keys = requested(result)
    assert sorted(keys) == sorted(doc_id(key) for key in hostile)
    assert all(is_document_id(key) and len(key) <= 75 for key in keys)
    for key in hostile:  # the original key survives, quoted, in the registration
        ref = inbox.storage.read_model(storage_keys.source_ref(doc_id(key)), SourceRef)
        assert unquote(ref.uri) == f"s3://{BUCKET}/{key}"
    for key, reason in not_pdfs.items():
        assert any(key in line and reason in line for line in inbox.log), (key, inbox.log)
    assert inbox.tick().run_requests == []  # skipped objects are not reconsidered every tick


def test_the_pipelines_own_copies_in_the_inbox_bucket_are_not_arrivals(s3, moto_server):
    s3_resource = S3Resource(endpoint_url=moto_server, region_name="us-east-1")
    storage = S3Storage(s3=s3_resource, bucket=BUCKET, prefix="pipeline")
    inbox = Inbox(moto_server, storage)
    inbox.resources["inbox"] = InboxConfig(bucket=BUCKET, prefix="")  # the whole bucket is the inbox
    put(s3, f"{PREFIX}a.pdf")
    storage.write_bytes(f"documents/{doc_id(f'{PREFIX}a.pdf')}/source.pdf", PDF)  # what source_pdf stores

    result = inbox.tick()

    assert requested(result) == [doc_id(f"{PREFIX}a.pdf")]  # not its stored copy: no feedback loop
    assert any("own storage prefix 'pipeline/documents/'" in line for line in inbox.log)


def test_one_object_that_cannot_be_registered_does_not_sink_the_tick(s3, inbox, storage):
    good, bad = f"{PREFIX}good.pdf", f"{PREFIX}bad.pdf"
    put(s3, good)
    put(s3, bad)
    # a real failure: a file sits where the bad document's directory must be created
    blocker = storage.local_path(storage_keys.source_ref(doc_id(bad))).parent
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")

    first = inbox.tick()
    assert requested(first) == [doc_id(good)]
    assert list(InboxCursor.parse(inbox.cursor).failures.values())[0][1] == 1  # remembered for a retry

    blocker.unlink()  # the problem goes away: the next tick registers it
    assert requested(inbox.tick()) == [doc_id(bad)]
    assert InboxCursor.parse(inbox.cursor).failures == {}


def test_an_object_that_keeps_failing_is_given_up_after_three_attempts(s3, inbox, storage):
    bad = f"{PREFIX}bad.pdf"
    put(s3, bad)
    blocker = storage.local_path(storage_keys.source_ref(doc_id(bad))).parent
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")

    ticks = [requested(inbox.tick()) for _ in range(4)]

    assert ticks == [[], [], [], []]
    assert sum("retried next tick" in line for line in inbox.log) == 2
    assert any("gave up on" in line and "after 3 attempts" in line for line in inbox.log)
    assert InboxCursor.parse(inbox.cursor).failures == {}


def test_an_unreadable_cursor_starts_over_without_duplicate_runs(s3, inbox):
    put(s3, f"{PREFIX}a.pdf")
    (first,) = inbox.tick().run_requests
    inbox.cursor = "{not json"

    (again,) = inbox.tick().run_requests

    # the same run key: the daemon drops a run request whose key this sensor already used
    assert again.run_key == first.run_key
    assert any("unreadable sensor cursor" in line for line in inbox.log)


def test_inbox_settings_come_from_the_environment_in_one_place():
    from medkg_pdf.resources import resources_for

    environ = {
        "MEDKG_DATA_DIR": "/tmp/unused",
        "MEDKG_INBOX_BUCKET": "hospital-uploads",
        "MEDKG_INBOX_PREFIX": "inbox/",
        "MEDKG_INBOX_MAX_PER_TICK": "25",
        "MEDKG_INBOX_LOOKBACK_SECONDS": "120",
        "MEDKG_INBOX_INTERVAL_SECONDS": "60",
    }
    inbox = resources_for(environ)["inbox"]
    assert (inbox.bucket, inbox.prefix, inbox.max_per_tick, inbox.lookback_seconds, inbox.minimum_interval_seconds) == (
        "hospital-uploads", "inbox/", 25, 120, 60
    )
    defaults = resources_for({"MEDKG_DATA_DIR": "/tmp/unused"})["inbox"]
    assert (defaults.bucket, defaults.max_per_tick, defaults.minimum_interval_seconds) == ("", 50, 15)


def test_no_bucket_configured_skips_with_a_reason(storage):
    resources = {"inbox": InboxConfig(), "inbox_s3": S3Resource(region_name="us-east-1"), "storage": storage}
    with build_sensor_context(resources=resources) as context:
        assert "MEDKG_INBOX_BUCKET" in s3_arrival_sensor(context).skip_message


def test_the_cursor_stays_bounded():
    """A burst of 5 000 arrivals, one millisecond apart, with an over-long lookback."""
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    objects = [InboxObject(f"k{n}.pdf", f"e{n}", start + timedelta(milliseconds=n), 1) for n in range(5000)]
    cursor = InboxCursor()
    for obj in objects:
        cursor.remember(obj)

    dropped = cursor.advance(objects[-1].modified_ms, lookback_ms=3_600_000, max_remembered=1000)

    assert cursor.remembered == 1000 and dropped == 4000
    assert cursor.floor_ms == objects[4000].modified_ms  # older objects are no longer looked at
    assert not cursor.is_new(objects[3999]) and not cursor.is_new(objects[4000]) and not cursor.is_new(objects[-1])
    assert len(cursor.dumps()) < 1000 * 30  # under 30 bytes a fingerprint, even with no two in the same ms
    assert InboxCursor.parse(cursor.dumps()) == cursor


def test_a_late_object_within_the_lookback_is_still_taken_in():
    """S3 stamps LastModified when an upload starts: a slow upload shows up after newer objects."""
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    slow = InboxObject("slow.pdf", "e1", start, 1)
    quick = InboxObject("quick.pdf", "e2", start + timedelta(seconds=30), 1)
    for lookback_ms, expected in ((600_000, True), (0, False)):
        cursor = InboxCursor()
        cursor.remember(quick)  # the quick upload was listed first
        cursor.advance(quick.modified_ms, lookback_ms=lookback_ms, max_remembered=1000)
        assert cursor.is_new(slow) is expected
        assert not cursor.is_new(quick)


def test_ten_thousand_objects_are_listed_page_by_page(s3, moto_server, storage):
    # 10 000 HTTP PUTs take about a minute on moto; put them straight into the store the server
    # serves (under a second). The sensor's listing still goes over HTTP, 10 pages of 1 000.
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    keys = [f"{PREFIX}bulk/{n:05d}.pdf" for n in range(10_000)]
    started = time.perf_counter()
    for key in keys:
        s3_backends[DEFAULT_ACCOUNT_ID]["aws"].put_object(BUCKET, key, b"%PDF")
    upload_s = time.perf_counter() - started
    inbox = Inbox(moto_server, storage, max_per_tick=50, lookback_seconds=0)

    started = time.perf_counter()
    first = inbox.tick()
    tick_s = time.perf_counter() - started
    second = inbox.tick()

    assert len(first.run_requests) == 50 and len(second.run_requests) == 50
    assert not set(requested(first)) & set(requested(second))
    assert any("listed 10000 objects" in line and "9950 new objects left" in line for line in inbox.log)
    assert len(inbox.cursor) < 10_000  # 100 taken in, lookback 0: only the newest second's fingerprints
    print(f"\n10 000 objects: upload {upload_s:.1f} s, one tick (10 pages listed, 50 registered) {tick_s:.2f} s")
