"""What every per-document check shares: the documents of the run, and one result for all of them.

A run covers one document (sensor, CLI) or a range of them (backfill policy: up to 10). Dagster
1.13 records one evaluation per check per step: with one partition it is attributed to that
partition (`partitions_def=documents` on the check), with several it covers the whole range. So
each check judges every document of the run and fails when any of them fails, naming them, with
a per-document table of the measured value next to the target.

A document that already failed an earlier stage (quarantined there) is *skipped*, not failed
again: its failure is on record where it happened, and a blocking check must not hold back the
healthy documents of a backfill run because of it.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue

from medkg_pdf import storage_keys
from medkg_pdf.schemas import QuarantineRecord
from medkg_pdf.defs.partitions import documents
from medkg_pdf.resources.storage import DocumentStorage

# With a partitions_def, Dagster 1.13 records a single-document run's evaluation against that
# document's partition (what the UI shows per document). That API is a preview ("may change in
# patch releases"): set this to None to fall back to unpartitioned checks (GA); the gating is the
# same, the UI then shows the latest evaluation across documents.
CHECK_PARTITIONS = documents

Verdict = Literal["pass", "warn", "fail", "skipped"]
MAX_TABLE_ROWS = 50  # keep per-run metadata small (dagster #18413: many partitions, heavy UI)
_ORDER = {"fail": 0, "warn": 1, "pass": 2, "skipped": 3}


@dataclass
class Finding:
    """One document's outcome for one check."""

    document_id: str
    verdict: Verdict
    measured: float | None = None
    note: str = ""


def run_documents(context: AssetCheckExecutionContext) -> list[str]:
    """Every partition key of the run (one, or the backfill range)."""
    op = context.op_execution_context
    if op.has_partition_key or op.has_partition_key_range:
        return list(op.partition_keys)
    return []


def failed_upstream(storage: DocumentStorage, document_id: str, stage: str) -> QuarantineRecord | None:
    """The quarantine record when the document failed before `stage` (so `stage` never saw it)."""
    record = storage.read_model_or_none(storage_keys.quarantine(document_id), QuarantineRecord)
    if record is None:
        return None
    if record.stage != stage or record.reason == "upstream_missing":
        return record
    return None


def missing(storage: DocumentStorage, document_id: str, stage: str, what: str) -> Finding:
    """A record this check needs is absent: skipped if an earlier stage failed, else a failure."""
    upstream = failed_upstream(storage, document_id, stage)
    if upstream is not None:
        return Finding(document_id, "skipped", note=f"failed upstream at {upstream.stage}: {upstream.reason}")
    return Finding(document_id, "fail", note=f"{what} is missing")


def _fmt(value: float | None, percent: bool) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2%}" if percent else f"{value:.4g}"


def summarize(
    findings: list[Finding],
    *,
    metric: str,
    target: float,
    rule: str,
    worst: Callable[[list[float]], float] = min,
    percent: bool = False,
    warn_phrase: str | None = None,
    extra: dict | None = None,
) -> AssetCheckResult:
    """One result for the run: ERROR if a document fails, WARN if one only warns, else passed.

    `metric` is the measured quantity (its worst value over the run's documents is in the
    metadata next to `target`); `rule` says how they compare, e.g. "<= 0.5 % per document".
    """
    failing = [f for f in findings if f.verdict == "fail"]
    warning = [f for f in findings if f.verdict == "warn"]
    skipped = [f for f in findings if f.verdict == "skipped"]
    values = [f.measured for f in findings if f.measured is not None and f.verdict != "skipped"]
    rows = sorted(findings, key=lambda f: (_ORDER[f.verdict], f.document_id))[:MAX_TABLE_ROWS]
    table = [f"| document | {metric} | target | verdict | note |", "|---|---|---|---|---|"]
    table += [
        f"| `{f.document_id}` | {_fmt(f.measured, percent)} | {rule} | {f.verdict} | {f.note.replace('|', '/')[:200]} |"
        for f in rows
    ]
    if len(findings) > MAX_TABLE_ROWS:
        table.append(f"| ... {len(findings) - MAX_TABLE_ROWS} more | | | | |")
    metadata = {
        metric: float(worst(values)) if values else None,
        f"{metric}_target": float(target),
        "target_rule": rule,
        "documents": len(findings),
        "documents_failing": len(failing),
        "documents_warning": len(warning),
        "documents_skipped": len(skipped),
        "per_document": MetadataValue.md("\n".join(table)),
        **(extra or {}),
    }
    metadata = {key: value for key, value in metadata.items() if value is not None}

    def named(group: list[Finding]) -> str:
        shown = "; ".join(f"{f.document_id} ({_fmt(f.measured, percent)}{': ' + f.note if f.note else ''})" for f in group[:5])
        return shown + (f"; and {len(group) - 5} more" if len(group) > 5 else "")

    if failing:
        return AssetCheckResult(
            passed=False,
            severity=AssetCheckSeverity.ERROR,
            metadata=metadata,
            description=f"{len(failing)} of {len(findings)} documents miss {metric} {rule}: {named(failing)}"[:2000],
        )
    if warning:
        return AssetCheckResult(
            passed=False,
            severity=AssetCheckSeverity.WARN,
            metadata=metadata,
            description=f"{len(warning)} of {len(findings)} documents {warn_phrase or 'cannot be judged on ' + metric}: "
            f"{named(warning)}"[:2000],
        )
    judged = len(findings) - len(skipped)
    return AssetCheckResult(
        passed=True,
        metadata=metadata,
        description=f"{judged} {'document meets' if judged == 1 else 'documents meet'} {metric} {rule}"
        + (f" ({len(skipped)} skipped: failed upstream)" if skipped else ""),
    )
