"""Where the pipeline keeps its files: one small interface, a local-filesystem and an S3 backend.

Everything stored is a plain file (PDF, PNG, JSON, markdown) under a key such as
`documents/<id>/structured.json`; keys are checked so that nothing can escape the root.
"""

from __future__ import annotations

import os
import re
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from datetime import datetime, timezone
from typing import Iterable, NamedTuple, TypeVar

from botocore.exceptions import ClientError
from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import BaseModel

ModelT = TypeVar("ModelT", bound=BaseModel)

_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


class UnsafeKeyError(ValueError):
    """A storage key that could walk out of the storage root or is not in the safe alphabet."""


def check_key(key: str) -> str:
    segments = key.split("/")
    if not key or any(not _SEGMENT.match(s) or s in (".", "..") for s in segments):
        raise UnsafeKeyError(f"unsafe storage key {key[:200]!r}: segments must match {_SEGMENT.pattern}")
    return key


class StoredEntry(NamedTuple):
    key: str
    size: int
    modified: datetime  # tz-aware UTC


class DocumentStorage(ConfigurableResource, ABC):
    """The interface every asset writes through; backends only move bytes."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> str:
        """Store `data` atomically (a reader sees the old file or the whole new one); return its URI."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def list_entries(self, prefix: str) -> list[StoredEntry]:
        """The keys under `prefix` with their size and last modification (for retention)."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def uri(self, key: str) -> str: ...

    def write_chunks(self, key: str, chunks: Iterable[bytes]) -> str:
        """Store the concatenation of `chunks`, atomically; a backend that can stream them holds one at a time."""
        return self.write_bytes(key, b"".join(chunks))

    def write_text(self, key: str, text: str) -> str:
        return self.write_bytes(key, text.encode("utf-8"))

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_model(self, key: str, record: BaseModel) -> str:
        return self.write_text(key, record.model_dump_json(indent=2))

    def read_model(self, key: str, model: type[ModelT]) -> ModelT:
        return model.model_validate_json(self.read_bytes(key))

    def read_model_or_none(self, key: str, model: type[ModelT]) -> ModelT | None:
        """A missing or unreadable record counts as absent, so a torn cache entry is redone."""
        try:
            return self.read_model(key, model)
        except (FileNotFoundError, ValueError):
            return None


class LocalStorage(DocumentStorage):
    """Files under a directory; writes go to a temp file that is renamed into place."""

    root: str

    def _path(self, key: str) -> Path:
        return Path(self.root) / check_key(key)

    def write_bytes(self, key: str, data: bytes) -> str:
        return self.write_chunks(key, (data,))

    def write_chunks(self, key: str, chunks: Iterable[bytes]) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path.as_uri()

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        root = Path(self.root)
        return sorted(
            p.relative_to(root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def list_entries(self, prefix: str) -> list[StoredEntry]:
        entries = []
        for key in self.list_keys(prefix):
            stat = self._path(key).stat()
            entries.append(StoredEntry(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, timezone.utc)))
        return entries

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return self._path(key).resolve().as_uri()

    def local_path(self, key: str) -> Path:
        return self._path(key)


class S3Storage(DocumentStorage):
    """Objects under `s3://bucket/prefix/`; a PUT is atomic, so no reader sees half an object."""

    s3: S3Resource
    bucket: str
    prefix: str = "medkg-pdf"

    def _object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix.strip('/')}/{key}" if self.prefix.strip("/") else key

    def write_bytes(self, key: str, data: bytes) -> str:
        self.s3.get_client().put_object(Bucket=self.bucket, Key=self._object_key(key), Body=data)
        return self.uri(key)

    def read_bytes(self, key: str) -> bytes:
        try:
            response = self.s3.get_client().get_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.uri(key)) from error
            raise
        return response["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            self.s3.get_client().head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise
        return True

    def list_keys(self, prefix: str) -> list[str]:
        return [entry.key for entry in self.list_entries(prefix)]

    def list_entries(self, prefix: str) -> list[StoredEntry]:
        full_prefix = self._object_key(prefix.rstrip("/")) + "/"
        strip = len(self._object_key("x")) - 1
        paginator = self.s3.get_client().get_paginator("list_objects_v2")
        return sorted(
            StoredEntry(item["Key"][strip:], int(item["Size"]), item["LastModified"].astimezone(timezone.utc))
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix)
            for item in page.get("Contents", [])
        )

    def delete(self, key: str) -> None:
        self.s3.get_client().delete_object(Bucket=self.bucket, Key=self._object_key(key))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"
