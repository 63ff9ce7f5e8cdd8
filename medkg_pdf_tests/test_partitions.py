"""Partition keys are readable, stable, and safe for the UI, storage paths and backfills."""

import pytest

from medkg_pdf import storage_keys
from medkg_pdf.document_ids import document_id, is_document_id, slugify
from medkg_pdf.sources import s3_ref

HOSTILE = [
    "../../etc/passwd.pdf",
    "inbox/My Report (final), v2.pdf",
    "inbox/Ünïcödé résumé — 患者.pdf",
    "inbox/" + "a" * 1000 + ".pdf",
    "inbox/.pdf",
    "inbox/,,,.pdf",
    "inbox/a?b#c.pdf",
]


def test_readable_slug_with_short_hash():
    key = document_id("Amoxicillin Label.pdf", "some-identity")
    assert key.startswith("amoxicillin-label-")
    assert is_document_id(key)


def test_same_identity_same_key_different_identity_different_key():
    assert document_id("a.pdf", "x") == document_id("a.pdf", "x")
    assert document_id("a.pdf", "x") != document_id("a.pdf", "y")


@pytest.mark.parametrize("key", HOSTILE)
def test_hostile_s3_keys_become_safe_stable_keys(key):
    ref = s3_ref("bucket", key)
    assert is_document_id(ref.document_id)
    assert "," not in ref.document_id and "/" not in ref.document_id and ".." not in ref.document_id
    assert len(ref.document_id) <= 75
    assert s3_ref("bucket", key).document_id == ref.document_id
    assert storage_keys.source_pdf(ref.document_id).startswith("documents/")


def test_slug_never_empty():
    assert slugify("///.pdf") == "document"
    assert slugify("患者.pdf") == "document"


def test_layout_refuses_non_document_ids():
    with pytest.raises(ValueError):
        storage_keys.source_pdf("../x")
