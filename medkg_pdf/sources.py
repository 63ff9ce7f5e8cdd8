"""Registering documents and reading their bytes from where they arrived (a local file or S3)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from medkg_pdf import layout
from medkg_pdf.partitions import document_id
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import SourceRef
from medkg_pdf.validation import MAX_PDF_BYTES, check_size


def file_ref(path: Path) -> SourceRef:
    """A local file is identified by its content, so the same bytes always get the same id.

    A file over the size limit is not read at all (it will be refused): its path and size stand in.
    """
    path = path.resolve()
    size = path.stat().st_size
    if size > MAX_PDF_BYTES:
        identity = f"{path}:{size}"
    else:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        identity = digest.hexdigest()
    return SourceRef(document_id=document_id(path.name, identity), uri=path.as_uri(), name=path.name)


def s3_ref(bucket: str, key: str, etag: str | None = None, arrived_at=None) -> SourceRef:
    """An S3 object is identified by bucket and key: a re-upload is the same document, updated."""
    extra = {"arrived_at": arrived_at} if arrived_at is not None else {}
    return SourceRef(
        document_id=document_id(key, f"s3://{bucket}/{key}"),
        uri=f"s3://{bucket}/{quote(key, safe='/')}",  # quoted: keys may hold spaces, ? or #
        name=key.rsplit("/", 1)[-1][:255],
        etag=etag,
        **extra,
    )


def register(storage: DocumentStorage, ref: SourceRef) -> None:
    storage.write_model(layout.source_ref(ref.document_id), ref)


def read_source(ref: SourceRef, s3_client=None, max_bytes: int = MAX_PDF_BYTES) -> bytes:
    """Size is checked from stat / HEAD before a byte is read, so a 10 GB upload costs nothing."""
    parsed = urlparse(ref.uri)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
        check_size(path.stat().st_size, max_bytes)
        return path.read_bytes()
    if parsed.scheme == "s3":
        if s3_client is None:
            raise ValueError(f"{ref.uri} is on S3 but no S3 client is configured")
        bucket, key = parsed.netloc, unquote(parsed.path.lstrip("/"))
        head = s3_client.head_object(Bucket=bucket, Key=key)
        check_size(int(head["ContentLength"]), max_bytes)
        return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    raise ValueError(f"unsupported source URI scheme {parsed.scheme!r}")


def register_files(storage: DocumentStorage, instance, paths: list[Path]) -> list[str]:
    """Register local files as `documents` partitions of a Dagster instance; returns their ids."""
    from medkg_pdf.partitions import documents

    ids = []
    for path in paths:
        ref = file_ref(path)
        register(storage, ref)
        ids.append(ref.document_id)
    instance.add_dynamic_partitions(documents.name, ids)
    return ids
