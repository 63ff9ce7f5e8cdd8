"""Retention of the content-keyed page cache (`cache/`): page PNGs and answers that only re-runs reuse.

Removing an entry never loses a result: a document's outputs live under `documents/`, and a page
whose PNG or answer is gone is rendered or asked again when it is next needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from medkg_pdf import storage_keys
from medkg_pdf.resources.storage import DocumentStorage

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """`30d`, `12h`, `2w`, `90m`, `45s`."""
    match = _AGE.match(text.strip())
    if not match:
        raise ValueError(f"not an age: {text!r} (use a number and s, m, h, d or w, e.g. 30d)")
    return timedelta(**{_UNIT[match.group(2)]: float(match.group(1))})


@dataclass
class Collected:
    removed: list[str] = field(default_factory=list)
    kept: int = 0
    bytes_freed: int = 0


def collect(storage: DocumentStorage, older_than: timedelta, now: datetime, *, dry_run: bool = False) -> Collected:
    """Remove the cache entries last written before `now - older_than` (with `dry_run`, only say which)."""
    cutoff = now - older_than
    result = Collected()
    for entry in storage.list_entries(storage_keys.CACHE_PREFIX):
        if entry.modified >= cutoff:
            result.kept += 1
            continue
        if not dry_run:
            storage.delete(entry.key)
        result.removed.append(entry.key)
        result.bytes_freed += entry.size
    return result
