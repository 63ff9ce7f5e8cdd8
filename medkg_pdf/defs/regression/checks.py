"""Check of `regression_quality`: no document got worse than its accepted baseline (WARN, not blocking).

A model or prompt change that makes some documents worse is a decision for a person, not an
outage: the check names them; documents without an accepted baseline are skipped.
"""

from dagster import AssetCheckExecutionContext, AssetCheckResult, asset_check

from medkg_pdf import storage_keys
from medkg_pdf.defs.regression.assets import regression_quality
from medkg_pdf.defs.check_support import CHECK_PARTITIONS, Finding, run_documents, summarize
from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import RegressionQuality


def judge_regression(storage: DocumentStorage, document_id: str) -> Finding:
    record = storage.read_model_or_none(storage_keys.regression(document_id), RegressionQuality)
    if record is None or record.verdict == "no_baseline":
        return Finding(document_id, "skipped", None, "no accepted baseline")
    note = "; ".join(record.reasons) or record.verdict
    verdict = "warn" if record.verdict in ("worse", "source_changed") else "pass"
    return Finding(document_id, verdict, record.word_f1, note)


@asset_check(
    asset=regression_quality,
    partitions_def=CHECK_PARTITIONS,
    description="No document got worse than its accepted baseline (word F1, numeric recall, table cells, "
    "match score); WARN naming the documents that did.",
)
def regression_quality_no_document_worse(
    context: AssetCheckExecutionContext, storage: DocumentStorage, quality_targets: QualityTargets
) -> AssetCheckResult:
    findings = [judge_regression(storage, document_id) for document_id in run_documents(context)]
    minimum = quality_targets.regression_min_word_f1
    return summarize(  # findings are never "fail" here, so a regression is at most a WARN
        findings, metric="word_f1_vs_baseline", target=minimum, rule=f">= {minimum} and no lost numbers",
        warn_phrase="got worse than their accepted baseline",
    )  # fmt: skip
