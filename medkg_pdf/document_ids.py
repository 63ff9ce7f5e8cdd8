"""The rule that turns a source name into a document id (the `documents` partition key)."""

from __future__ import annotations

import hashlib
import re
import unicodedata

# Keys stay in this alphabet: commas break UI backfills (dagster #15105), slashes and dots
# would let a key walk out of the storage root.
DOCUMENT_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}-[0-9a-f]{10}$")
_MAX_SLUG = 48


def slugify(name: str) -> str:
    """Readable, safe stem of a file name or S3 key: ascii, lowercase, dashes."""
    stem = name.replace("\\", "/").rsplit("/", 1)[-1]
    if stem.lower().endswith(".pdf"):
        stem = stem[:-4]
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_stem.lower()).strip("-")
    return slug[:_MAX_SLUG].strip("-") or "document"


def document_id(source_name: str, identity: str | None = None) -> str:
    """Stable partition key: a readable slug plus a short hash of the source's identity.

    The identity is what makes two sources different (the full S3 key, or the content hash of a
    local file); the same identity always maps to the same key, so re-registering is a no-op.
    """
    digest = hashlib.sha256((identity if identity is not None else source_name).encode()).hexdigest()
    return f"{slugify(source_name)}-{digest[:10]}"


def is_document_id(key: str) -> bool:
    return bool(DOCUMENT_ID_PATTERN.match(key))
