"""S3 reads are pinned to the version that was registered: a replacement uploaded between the HEAD and
the GET fails the read (412, a new source version for the sensor), and never yields mixed or oversized bytes."""

import boto3
import pytest

from medkg_pdf.sources import SourceReadError, read_source, s3_ref
from medkg_pdf.validation import InvalidPdfError

BUCKET, KEY = "incoming", "labels/aspirin.pdf"
ORIGINAL = b"%PDF-1.7 original " + b"a" * 100
REPLACEMENT = b"%PDF-1.7 replacement " + b"b" * 5000


@pytest.fixture
def s3(moto_server):
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    etag = client.put_object(Bucket=BUCKET, Key=KEY, Body=ORIGINAL)["ETag"].strip('"')
    return client, etag


def replace_before_the_get(client) -> None:
    """A real upload, made by another client just after the HEAD and before the GET is sent."""
    other = boto3.client("s3", endpoint_url=client.meta.endpoint_url, region_name="us-east-1")

    def replace(**_) -> None:  # returning None: botocore then sends the GET as usual
        other.put_object(Bucket=BUCKET, Key=KEY, Body=REPLACEMENT)

    client.meta.events.register("before-call.s3.GetObject", replace)


def test_the_registered_version_is_read_when_nothing_changed(s3):
    client, etag = s3
    assert read_source(s3_ref(BUCKET, KEY, etag=etag), client) == ORIGINAL


def test_an_object_replaced_between_head_and_get_fails_the_read_as_source_changed(s3):
    client, etag = s3
    replace_before_the_get(client)
    with pytest.raises(SourceReadError) as caught:
        read_source(s3_ref(BUCKET, KEY, etag=etag), client)
    assert caught.value.reason == "source_changed" and not caught.value.retryable
    assert "replaced after it was registered" in str(caught.value) and "PreconditionFailed" in str(caught.value)


def test_the_size_limit_applies_to_the_bytes_read_not_to_what_head_said(s3):
    client, _ = s3
    replace_before_the_get(client)  # no ETag recorded: nothing to pin, the GET gets the larger object
    with pytest.raises(InvalidPdfError, match="limit"):
        read_source(s3_ref(BUCKET, KEY), client, max_bytes=1000)
