"""Checks of `parse_quality`: the parse agrees with the PDF's own text layer (both blocking).

A scanned document has no text layer, so there is nothing to compare: it gets a WARN (a person
or the ground-truth set must judge it), never a silent pass. A document whose text layers were
all judged unusable (garbled, invisible OCR over a scan, partial) takes the same path, with the
reason: a broken baseline must not fail a correct parse.
"""

from dagster import AssetCheckExecutionContext, AssetCheckResult, asset_check

from medkg_pdf import storage_keys
from medkg_pdf.defs.quality.assets import parse_quality
from medkg_pdf.defs.check_support import CHECK_PARTITIONS, Finding, missing, run_documents, summarize
from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import DocumentQuality

NO_BASELINE = "no baseline: no page has a usable text layer (scanned?)"


def _no_baseline(quality: DocumentQuality) -> str:
    return quality.no_baseline_reason or NO_BASELINE


def judge_match(storage: DocumentStorage, document_id: str, minimum: float) -> Finding:
    quality = storage.read_model_or_none(storage_keys.quality(document_id), DocumentQuality)
    if quality is None:
        return missing(storage, document_id, "parse_quality", "quality.json")
    if quality.match_score is None:
        return Finding(document_id, "warn", None, _no_baseline(quality))
    worst = sorted((p for p in quality.pages if p.word_f1 is not None), key=lambda p: p.word_f1)[:3]
    note = ", ".join(f"page {p.page}: {p.word_f1:.3f}" for p in worst)
    verdict = "pass" if quality.match_score >= minimum else "fail"
    return Finding(document_id, verdict, quality.match_score, f"{quality.pages_compared} pages compared; lowest {note}")


def judge_numbers(storage: DocumentStorage, document_id: str, minimum: float) -> Finding:
    quality = storage.read_model_or_none(storage_keys.quality(document_id), DocumentQuality)
    if quality is None:
        return missing(storage, document_id, "parse_quality", "quality.json")
    if quality.numeric_recall is None:
        return Finding(document_id, "warn", None, _no_baseline(quality))
    lost = [p for p in quality.pages if p.numeric_missing]
    note = "; ".join(f"page {p.page} missing {', '.join(p.numeric_missing[:6])}" for p in lost[:3])
    verdict = "pass" if quality.numeric_recall >= minimum else "fail"
    return Finding(document_id, verdict, quality.numeric_recall, note or "every number found")


@asset_check(
    asset=parse_quality,
    partitions_def=CHECK_PARTITIONS,
    blocking=True,
    description="Match score (word F1 vs the text-layer baseline, pooled over pages) is at least the "
    "gate (default 0.95). WARN for documents without a usable baseline (scanned, or text layer judged unusable).",
)
def parse_quality_match_score(
    context: AssetCheckExecutionContext, storage: DocumentStorage, quality_targets: QualityTargets
) -> AssetCheckResult:
    minimum = quality_targets.min_match_score
    findings = [judge_match(storage, document_id, minimum) for document_id in run_documents(context)]
    return summarize(findings, metric="match_score", target=minimum, rule=f">= {minimum}", warn_phrase="have no baseline")


@asset_check(
    asset=parse_quality,
    partitions_def=CHECK_PARTITIONS,
    blocking=True,
    description="Numeric-token recall (doses, units, percentages of the text layer found in the parse) is "
    "at least the gate (default 0.99): a lost '500' in '500 mg' matters more than a lost word. "
    "WARN for documents without a baseline (scanned).",
)
def parse_quality_numeric_recall(
    context: AssetCheckExecutionContext, storage: DocumentStorage, quality_targets: QualityTargets
) -> AssetCheckResult:
    minimum = quality_targets.min_numeric_recall
    findings = [judge_numbers(storage, document_id, minimum) for document_id in run_documents(context)]
    return summarize(findings, metric="numeric_recall", target=minimum, rule=f">= {minimum}", warn_phrase="have no baseline")
