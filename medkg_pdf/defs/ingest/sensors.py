"""`s3_arrival_sensor`: PDFs landing in the S3 inbox become `documents` partitions and runs.

Each tick lists the inbox (paginated `list_objects_v2`, 1 000 keys a page) and takes in the
objects it has not seen, oldest first, at most `InboxConfig.max_per_tick` of them: each is
registered (its `SourceRef`, with ETag and LastModified as arrival time, written to storage),
added as a partition, and gets a run of the document chain whose run key is
`<document id>:<ETag>`, so Dagster starts one run per version of an object, never two.

The cursor (JSON) remembers what was taken in, so each object version is seen once:

* `floor_ms`: objects whose LastModified is older are not looked at again;
* `seen`: `{LastModified ms - base_ms: [fingerprint of (key, ETag), ...]}` for the objects taken
  in at or after the floor. Two objects with the same LastModified are told apart by fingerprint, and a
  re-upload (new ETag, new LastModified) has a new fingerprint, so it is taken in again;
* `failures`: objects whose registration raised, with their attempt count (retried on the next
  ticks, given up after `MAX_ATTEMPTS`).

After a tick the floor moves to (newest object taken in) - `lookback_seconds`: S3 stamps
LastModified when an upload *starts*, so a slow upload can appear after newer objects, and the
lookback window still catches it. The cursor therefore holds the arrivals of one lookback
window (about 20 bytes each), capped at `max_remembered`; 10 000 objects sitting in the bucket
cost nothing once they are below the floor.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster_aws.s3 import S3Resource

from medkg_pdf import storage_keys
from medkg_pdf.defs.documents.jobs import DOCUMENT_CHAIN, document_chain_job
from medkg_pdf.defs.partitions import documents
from medkg_pdf.resources.inbox import InboxConfig
from medkg_pdf.resources.storage import DocumentStorage, S3Storage
from medkg_pdf.sources import register, s3_ref

CURSOR_VERSION = 1
MAX_ATTEMPTS = 3  # registrations of one object that may raise before the sensor gives it up
MAX_SKIP_LINES = 20  # skipped objects named one by one in a tick's log; the rest are counted


@dataclass(frozen=True)
class InboxObject:
    """One entry of the listing."""

    key: str
    etag: str  # without the quotes S3 puts around it
    last_modified: datetime
    size: int

    @property
    def modified_ms(self) -> int:
        return int(self.last_modified.timestamp() * 1000)

    @property
    def fingerprint(self) -> str:
        return hashlib.blake2b(f"{self.key}\0{self.etag}".encode(), digest_size=8).hexdigest()


def list_inbox(client: Any, bucket: str, prefix: str) -> Iterator[InboxObject]:
    """Every object under the prefix, page by page (a listing never loads the bucket at once)."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            modified: datetime = item["LastModified"]
            # S3 always sends an ETag; some S3-compatible stores do not: then size + time is the version
            etag = (item.get("ETag") or "").strip('"') or f"{item.get('Size', 0)}-{int(modified.timestamp() * 1000)}"
            yield InboxObject(key=item["Key"], etag=etag, last_modified=modified, size=int(item.get("Size", 0)))


@dataclass
class InboxCursor:
    floor_ms: int | None = None
    seen: dict[int, set[str]] = field(default_factory=dict)
    failures: dict[str, tuple[int, int]] = field(default_factory=dict)  # fingerprint -> (modified ms, attempts)

    @classmethod
    def parse(cls, raw: str | None) -> InboxCursor:
        if not raw:
            return cls()
        data = json.loads(raw)
        if data.get("v") != CURSOR_VERSION:
            raise ValueError(f"unknown cursor version {data.get('v')!r}")
        base = int(data["base_ms"])
        return cls(
            floor_ms=data["floor_ms"],
            seen={base + int(offset): set(fingerprints) for offset, fingerprints in data["seen"].items()},
            failures={fp: (int(ms), int(n)) for fp, (ms, n) in data.get("failures", {}).items()},
        )

    def dumps(self) -> str:
        base = min(self.seen, default=0)  # timestamps are stored as offsets from the oldest: shorter
        return json.dumps(
            {
                "v": CURSOR_VERSION,
                "floor_ms": self.floor_ms,
                "base_ms": base,
                "seen": {str(ms - base): sorted(self.seen[ms]) for ms in sorted(self.seen)},
                "failures": {fp: list(value) for fp, value in sorted(self.failures.items())},
            },
            separators=(",", ":"),
        )

    @property
    def remembered(self) -> int:
        return sum(len(fingerprints) for fingerprints in self.seen.values())

    def is_new(self, obj: InboxObject) -> bool:
        if self.floor_ms is not None and obj.modified_ms < self.floor_ms:
            return False
        return obj.fingerprint not in self.seen.get(obj.modified_ms, ())

    def remember(self, obj: InboxObject) -> None:
        self.seen.setdefault(obj.modified_ms, set()).add(obj.fingerprint)
        self.failures.pop(obj.fingerprint, None)

    def record_failure(self, obj: InboxObject) -> int:
        attempts = self.failures.get(obj.fingerprint, (obj.modified_ms, 0))[1] + 1
        self.failures[obj.fingerprint] = (obj.modified_ms, attempts)
        return attempts

    def advance(self, newest_taken_ms: int | None, lookback_ms: int, max_remembered: int) -> int:
        """Move the floor up and forget what lies below it; returns how many fingerprints were
        dropped early to respect `max_remembered` (their lookback is lost, nothing else)."""
        if newest_taken_ms is not None:
            floor = newest_taken_ms - lookback_ms
            self.floor_ms = floor if self.floor_ms is None else max(self.floor_ms, floor)
        if self.failures and self.floor_ms is not None:
            # an object to retry keeps the floor at or below its own LastModified
            self.floor_ms = min(self.floor_ms, min(ms for ms, _ in self.failures.values()))
        if self.floor_ms is not None:
            for ms in [ms for ms in self.seen if ms < self.floor_ms]:
                del self.seen[ms]
        # over the bound: drop the oldest timestamps (whole, so ties stay together) and raise the floor
        dropped, remembered = 0, self.remembered
        while remembered > max_remembered and len(self.seen) > 1:
            oldest = self.seen.pop(min(self.seen))
            dropped, remembered = dropped + len(oldest), remembered - len(oldest)
            self.floor_ms = min(self.seen)
        if self.floor_ms is not None:
            self.failures = {fp: v for fp, v in self.failures.items() if v[0] >= self.floor_ms}
        return dropped


def skip_reason(obj: InboxObject, own_prefix: str | None) -> str | None:
    """Why an object is not a document to take in, or None."""
    if obj.key.endswith("/"):
        return "folder marker, not a file"
    if own_prefix and obj.key.startswith(own_prefix):
        return f"inside the pipeline's own storage prefix {own_prefix!r}"
    if not obj.key.lower().endswith(".pdf"):
        name = obj.key.rsplit("/", 1)[-1]
        suffix = name.rsplit(".", 1)[-1][:16] if "." in name else ""
        return f"not a PDF (extension {suffix!r}, expected 'pdf')" if suffix else "not a PDF (no .pdf extension)"
    return None


def _own_storage_prefix(storage: DocumentStorage, bucket: str) -> str | None:
    """When documents are stored in the inbox bucket, the stored copies (`.../source.pdf`) must
    not be taken for arrivals: that would feed the pipeline its own output."""
    if isinstance(storage, S3Storage) and storage.bucket == bucket:
        return storage.uri(storage_keys.DOCUMENTS_PREFIX).removeprefix(f"s3://{bucket}/") + "/"
    return None


def _short(key: str) -> str:
    return repr(key if len(key) <= 120 else key[:100] + "..." + key[-16:])


def evaluate_inbox(
    context: SensorEvaluationContext, inbox: InboxConfig, inbox_s3: S3Resource, storage: DocumentStorage
) -> SensorResult | SkipReason:
    if not inbox.bucket:
        return SkipReason("no inbox bucket configured (set MEDKG_INBOX_BUCKET)")
    log = context.log
    try:
        cursor = InboxCursor.parse(context.cursor)
    except (ValueError, KeyError, TypeError) as error:
        # Starting over is safe: run keys are <document>:<ETag>, so Dagster launches no run twice.
        log.warning(f"unreadable sensor cursor ({error}); listing the inbox from the start")
        cursor = InboxCursor()

    own_prefix = _own_storage_prefix(storage, inbox.bucket)
    listed = 0
    candidates: list[InboxObject] = []
    for obj in list_inbox(inbox_s3.get_client(), inbox.bucket, inbox.prefix):
        listed += 1
        if cursor.is_new(obj):
            candidates.append(obj)
    candidates.sort(key=lambda o: (o.modified_ms, o.key))

    run_requests: list[RunRequest] = []
    new_partitions: dict[str, None] = {}
    newest_taken: int | None = None
    handled = skipped = 0
    for obj in candidates:
        if len(run_requests) >= inbox.max_per_tick:
            break
        handled += 1
        reason = skip_reason(obj, own_prefix)
        if reason is not None:
            if skipped < MAX_SKIP_LINES:
                log.info(f"skipped s3://{inbox.bucket}/{_short(obj.key)}: {reason}")
            cursor.remember(obj)
            newest_taken, skipped = obj.modified_ms, skipped + 1
            continue
        try:
            ref = s3_ref(inbox.bucket, obj.key, obj.etag, arrived_at=obj.last_modified)
            register(storage, ref)
        except Exception as error:  # one object must never sink the tick
            attempts = cursor.record_failure(obj)
            if attempts >= MAX_ATTEMPTS:
                log.error(f"gave up on s3://{inbox.bucket}/{_short(obj.key)} after {attempts} attempts: {error!r}")
                cursor.remember(obj)
                newest_taken = obj.modified_ms
            else:
                log.warning(
                    f"could not register s3://{inbox.bucket}/{_short(obj.key)} "
                    f"(attempt {attempts}, retried next tick): {error!r}"
                )
            continue
        cursor.remember(obj)
        newest_taken = obj.modified_ms
        new_partitions[ref.document_id] = None
        run_requests.append(
            RunRequest(
                partition_key=ref.document_id,
                run_key=f"{ref.document_id}:{obj.etag}",
                asset_selection=DOCUMENT_CHAIN,
                tags={"medkg/trigger": "s3-arrival"},
            )
        )

    if skipped > MAX_SKIP_LINES:
        log.info(f"... and {skipped - MAX_SKIP_LINES} more objects skipped (not PDFs or folder markers)")
    dropped = cursor.advance(newest_taken, inbox.lookback_seconds * 1000, inbox.max_remembered)
    if dropped:
        log.warning(
            f"cursor bound {inbox.max_remembered} reached: forgot {dropped} fingerprints early (lookback shortened)"
        )
    waiting = len(candidates) - handled
    summary = (
        f"listed {listed} objects under s3://{inbox.bucket}/{inbox.prefix}: {len(run_requests)} documents requested, "
        f"{skipped} skipped, {waiting} new objects left for the next ticks"
    )
    log.info(summary)
    if not run_requests:
        return SensorResult(skip_reason=SkipReason(summary), cursor=cursor.dumps())
    return SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[documents.build_add_request(list(new_partitions))],
        cursor=cursor.dumps(),
    )


def build_s3_arrival_sensor(
    *, minimum_interval_seconds: int = 15, default_status: DefaultSensorStatus = DefaultSensorStatus.STOPPED
) -> SensorDefinition:
    """Stopped by default: a new deployment does not start ingesting (and spending GPU time) until
    someone turns the sensor on in the UI; that choice is then kept in the instance database."""

    @sensor(
        name="s3_arrival_sensor",
        job=document_chain_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=(
            "Registers new PDFs under the inbox bucket/prefix (InboxConfig) as `documents` partitions and "
            "runs the document chain for each; a re-upload with new content runs again."
        ),
    )
    def s3_arrival_sensor(
        context: SensorEvaluationContext, inbox: InboxConfig, inbox_s3: S3Resource, storage: DocumentStorage
    ) -> SensorResult | SkipReason:
        return evaluate_inbox(context, inbox, inbox_s3, storage)

    return s3_arrival_sensor


s3_arrival_sensor = build_s3_arrival_sensor()
