"""Registering documents and reading their bytes from where they arrived (a local file or S3)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from medkg_pdf import storage_keys
from medkg_pdf.document_ids import document_id
from medkg_pdf.page_selection import pages_label
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import SourceRef
from medkg_pdf.validation import MAX_PDF_BYTES, check_size


def file_ref(path: Path, pages: tuple[int, ...] | None = None) -> SourceRef:
    """A local file is identified by its content, so the same bytes always get the same id.

    A file over the size limit is not read at all (it will be refused): its path and size stand in.
    A page selection is a document of its own: the range is part of its name and identity.
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
    return SourceRef(document_id=document_id(*_selected(path.name, identity, pages)), uri=path.as_uri(), name=path.name, pages=_listed(pages))


def _selected(name: str, identity: str, pages: tuple[int, ...] | None) -> tuple[str, str]:
    if not pages:
        return name, identity
    label = pages_label(pages)
    return f"{re.sub(r'(?i)[.]pdf$', '', name)} pages {label}", f"{identity}:pages={label}"


def _listed(pages: tuple[int, ...] | None) -> list[int] | None:
    return list(pages) if pages else None


def s3_ref(bucket: str, key: str, etag: str | None = None, arrived_at=None, pages: tuple[int, ...] | None = None) -> SourceRef:
    """An S3 object is identified by bucket and key: a re-upload is the same document, updated."""
    extra = {"arrived_at": arrived_at} if arrived_at is not None else {}
    return SourceRef(
        document_id=document_id(*_selected(key, f"s3://{bucket}/{key}", pages)),
        pages=_listed(pages),
        uri=f"s3://{bucket}/{quote(key, safe='/')}",  # quoted: keys may hold spaces, ? or #
        name=key.rsplit("/", 1)[-1][:255],
        etag=etag,
        **extra,
    )


def register(storage: DocumentStorage, ref: SourceRef) -> None:
    storage.write_model(storage_keys.source_ref(ref.document_id), ref)


class SourceReadError(Exception):
    """The source could not be read: `retryable` when trying again later can help (throttling, outage)."""

    def __init__(self, message: str, *, reason: str, retryable: bool):
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable


# S3 error codes that say "this object, as registered, will not be readable by trying again"
_S3_PERMANENT = {
    "NoSuchKey": ("source_missing", "the object is gone (deleted or renamed after it was registered)"),
    "404": ("source_missing", "the object is gone (deleted or renamed after it was registered)"),
    "NotFound": ("source_missing", "the object is gone (deleted or renamed after it was registered)"),
    "NoSuchBucket": ("source_missing", "the bucket does not exist"),
    "AccessDenied": ("source_forbidden", "access denied: the run's role needs s3:GetObject on the object (and s3:ListBucket on the bucket, so a missing key is a 404)"),
    "403": ("source_forbidden", "access denied: the run's role needs s3:GetObject on the object (and s3:ListBucket on the bucket, so a missing key is a 404)"),
    "PreconditionFailed": ("source_changed", "the object was replaced after it was registered; its new version is registered on the next sensor tick"),
    "412": ("source_changed", "the object was replaced after it was registered; its new version is registered on the next sensor tick"),
}


_S3_ETAG = re.compile(r"^[0-9a-f]{32}(-[0-9]+)?$")  # a real S3 ETag (single or multipart upload)


def _s3_error(uri: str, error: Exception) -> SourceReadError:
    from botocore.exceptions import ClientError

    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        reason, what = _S3_PERMANENT.get(code) or _S3_PERMANENT.get(str(status)) or (None, None)
        if reason is not None:
            return SourceReadError(f"cannot read {uri}: {what} (S3 {code or status})", reason=reason, retryable=False)
        return SourceReadError(f"cannot read {uri} now: S3 {code or status} (throttled or unavailable; retried later)", reason="source_unavailable", retryable=True)
    return SourceReadError(f"cannot read {uri} now: {type(error).__name__}: {error} (retried later)", reason="source_unavailable", retryable=True)


def read_source(ref: SourceRef, s3_client=None, max_bytes: int = MAX_PDF_BYTES) -> bytes:
    """Size is checked from stat / HEAD before a byte is read, so a 10 GB upload costs nothing.

    S3 reads are pinned to the registered ETag (`IfMatch` on HEAD and GET), so the bytes validated are
    the version that was registered, never a replacement uploaded in between (that is a 412,
    `source_changed`: the sensor registers the new ETag as a new source version). The GET reads at
    most `max_bytes + 1`, and the size check is repeated on what was read.
    """
    parsed = urlparse(ref.uri)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
        try:
            check_size(path.stat().st_size, max_bytes)
            return path.read_bytes()
        except FileNotFoundError:
            raise SourceReadError(f"cannot read {ref.uri}: no such file", reason="source_missing", retryable=False) from None
        except PermissionError:
            raise SourceReadError(f"cannot read {ref.uri}: permission denied", reason="source_forbidden", retryable=False) from None
        except OSError as error:
            raise SourceReadError(f"cannot read {ref.uri} now: {error}", reason="source_unavailable", retryable=True) from None
    if parsed.scheme == "s3":
        from botocore.exceptions import BotoCoreError, ClientError

        if s3_client is None:
            raise SourceReadError(f"{ref.uri} is on S3 but no S3 client is configured", reason="source_unreadable", retryable=False)
        bucket, key = parsed.netloc, unquote(parsed.path.lstrip("/"))
        pinned = {"IfMatch": f'"{ref.etag}"'} if ref.etag and _S3_ETAG.match(ref.etag) else {}
        try:
            head = s3_client.head_object(Bucket=bucket, Key=key, **pinned)
            check_size(int(head["ContentLength"]), max_bytes)
            body = s3_client.get_object(Bucket=bucket, Key=key, **pinned)["Body"].read(max_bytes + 1)
        except (ClientError, BotoCoreError) as error:
            raise _s3_error(ref.uri, error) from None
        check_size(len(body), max_bytes)  # the bytes actually read: HEAD described what was there then
        return body
    raise SourceReadError(f"unsupported source URI scheme {parsed.scheme!r}", reason="source_unreadable", retryable=False)

