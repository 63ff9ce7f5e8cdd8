"""Both storage backends keep the same promises: files in, same files out, nothing outside the root."""

import json
import re
from pathlib import Path

import boto3
import pytest
from dagster_aws.s3 import S3Resource

from medkg_pdf import storage_keys
from medkg_pdf.resources.storage import LocalStorage, S3Storage, UnsafeKeyError
from medkg_pdf.schemas import BaselinePage


@pytest.fixture(params=["local", "s3"])
def any_storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(root=str(tmp_path / "root"))
    endpoint = request.getfixturevalue("moto_server")
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="medkg")
    return S3Storage(s3=S3Resource(endpoint_url=endpoint, region_name="us-east-1"), bucket="medkg", prefix="pipeline")


def test_bytes_text_and_records_round_trip(any_storage):
    any_storage.write_bytes("documents/a/source.pdf", b"%PDF-1.7 data")
    any_storage.write_text("documents/a/structured.md", "# Title\n\n500 mg")
    any_storage.write_model("documents/a/page.json", BaselinePage(index=0, has_text_layer=True, text="x"))
    assert any_storage.read_bytes("documents/a/source.pdf") == b"%PDF-1.7 data"
    assert any_storage.read_text("documents/a/structured.md").endswith("500 mg")
    assert any_storage.read_model("documents/a/page.json", BaselinePage).text == "x"
    assert any_storage.exists("documents/a/source.pdf")
    assert not any_storage.exists("documents/a/missing.json")
    assert any_storage.list_keys("documents/a") == [
        "documents/a/page.json",
        "documents/a/source.pdf",
        "documents/a/structured.md",
    ]


def test_entries_are_listed_with_their_size_and_when_they_were_written(any_storage):
    from datetime import datetime, timedelta, timezone

    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    any_storage.write_bytes("cache/abc/parses/page-00001-k.json", b"{}")
    any_storage.write_bytes("cache/abc/images/dpi-150/page-00001.png", b"x" * 100)
    any_storage.write_bytes("documents/d/structured.json", b"{}")
    entries = any_storage.list_entries("cache")
    assert [(entry.key, entry.size) for entry in entries] == [("cache/abc/images/dpi-150/page-00001.png", 100), ("cache/abc/parses/page-00001-k.json", 2)]
    assert all(before <= entry.modified <= datetime.now(timezone.utc) + timedelta(seconds=5) for entry in entries)
    assert any_storage.list_keys("cache") == [entry.key for entry in entries]


def test_missing_or_torn_records_read_as_absent(any_storage):
    assert any_storage.read_model_or_none("documents/none.json", BaselinePage) is None
    any_storage.write_bytes("documents/torn.json", b'{"index": 0, "has_text')
    assert any_storage.read_model_or_none("documents/torn.json", BaselinePage) is None
    with pytest.raises(FileNotFoundError):
        any_storage.read_bytes("documents/none.json")


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a/../../b", "a//b", "", "a/./b", "docs/x y.pdf", "a\\b"])
def test_keys_cannot_escape_the_root(any_storage, key):
    with pytest.raises(UnsafeKeyError):
        any_storage.write_bytes(key, b"x")


def test_s3_objects_live_under_the_prefix(moto_server):
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket="medkg")
    storage = S3Storage(s3=S3Resource(endpoint_url=moto_server, region_name="us-east-1"), bucket="medkg", prefix="p/q")
    uri = storage.write_bytes("cache/abc/page-00001.png", b"png")
    assert uri == "s3://medkg/p/q/cache/abc/page-00001.png"
    assert client.get_object(Bucket="medkg", Key="p/q/cache/abc/page-00001.png")["Body"].read() == b"png"


def test_local_writes_leave_no_partial_files(tmp_path):
    storage = LocalStorage(root=str(tmp_path))
    storage.write_bytes("documents/a/big.bin", b"x" * 1_000_000)
    storage.write_bytes("documents/a/big.bin", b"y" * 10)
    assert storage.read_bytes("documents/a/big.bin") == b"y" * 10
    assert [p.name for p in (tmp_path / "documents" / "a").iterdir()] == ["big.bin"]


def test_a_listing_is_read_back_into_document_ids_by_the_keys_module_alone():
    document_id = "label-0123456789"
    assert storage_keys.registered_document_id(storage_keys.source_ref(document_id)) == document_id
    for other in (storage_keys.source_info(document_id), storage_keys.quarantine(document_id), "documents/../source-ref.json", "documents/x/y/source-ref.json"):
        assert storage_keys.registered_document_id(other) is None


# ----- what deploy/aws grants and expires ---------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
S3_CALLS = {  # boto3 call in the package -> the IAM action it needs
    "get_object": "s3:GetObject", "head_object": "s3:GetObject", "put_object": "s3:PutObject",
    "delete_object": "s3:DeleteObject", 'get_paginator("list_objects_v2")': "s3:ListBucket",
}  # fmt: skip
NOT_S3 = {"update_object"}  # PyMuPDF's Document.update_object (samples.py): a PDF object, not an S3 one


def test_the_iam_policy_allows_every_s3_call_the_package_makes():
    source = "".join(path.read_text(encoding="utf-8") for path in (REPO / "medkg_pdf").rglob("*.py"))
    made = {call for call in S3_CALLS if re.search(rf"\.{re.escape(call)}[(\s]" if "(" not in call else re.escape(call), source)}
    unknown = set(re.findall(r"\.(\w+_object\w*|\w+_objects\w*)\(", source)) - {call for call in S3_CALLS if "(" not in call} - NOT_S3
    policy = json.loads((REPO / "deploy/aws/medkg-pdf-iam-policy.json").read_text())
    allowed = {action for statement in policy["Statement"] if statement["Effect"] == "Allow" for action in statement["Action"]}

    assert {"get_object", "put_object", "head_object", 'get_paginator("list_objects_v2")'} <= made  # the scan sees the calls
    assert unknown == set(), f"S3 calls without a known IAM action: {unknown}"
    assert {S3_CALLS[call] for call in made} <= allowed


def test_the_lifecycle_rule_expires_the_page_cache_and_nothing_else():
    rules = json.loads((REPO / "deploy/aws/store-lifecycle.json").read_text())["Rules"]
    (rule,) = rules
    storage = S3Storage(s3=S3Resource(region_name="us-east-1"), bucket="store", prefix="STORE_PREFIX")
    cached = [storage._object_key(storage_keys.page_png("a" * 64, "long-2000", 0)), storage._object_key(storage_keys.page_parse("a" * 64, 0, "k"))]
    kept = [storage._object_key(storage_keys.structured_json("doc-0123456789")), storage._object_key(storage_keys.source_ref("doc-0123456789"))]
    assert rule["Status"] == "Enabled" and all(key.startswith(rule["Filter"]["Prefix"]) for key in cached)
    assert not any(key.startswith(rule["Filter"]["Prefix"]) for key in kept)
