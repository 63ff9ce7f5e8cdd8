"""Check of `vlm_page_parses`: the share of pages without a usable answer stays within budget (blocking)."""

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetKey, asset_check

from medkg_pdf import layout
from medkg_pdf.checks.common import CHECK_PARTITIONS, Finding, missing, run_documents, summarize
from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import PageImages, PageParses


def judge_pages(storage: DocumentStorage, document_id: str, max_share: float) -> Finding:
    parses = storage.read_model_or_none(layout.page_parses(document_id), PageParses)
    if parses is None:
        return missing(storage, document_id, "vlm_page_parses", "the page parses record")
    manifest = storage.read_model_or_none(layout.page_images(document_id), PageImages)
    expected = len(manifest.pages) if manifest is not None else len(parses.pages)
    bad = [p for p in parses.pages if not p.status.usable]
    absent = max(0, expected - len(parses.pages))  # a page with no answer at all is not usable either
    share = (len(bad) + absent) / expected if expected else 0.0
    note = "; ".join(f"page {p.page_index + 1}: {p.status.value}" for p in bad[:5])
    if absent:
        note = f"{absent} pages without an answer" + (f"; {note}" if note else "")
    if share > max_share:
        return Finding(document_id, "fail", share, note)
    return Finding(document_id, "pass", share, note or f"{expected} pages usable")


@asset_check(
    asset=AssetKey("vlm_page_parses"),
    partitions_def=CHECK_PARTITIONS,
    blocking=True,
    description="Per document, the share of pages whose answer is not usable (HTTP error, timeout, empty, "
    "truncated, repetition...) is at most the budget (default 0.5 %). Blocking: a document over budget "
    "is not assembled into a structured document.",
)
def vlm_page_parses_failed_page_share(
    context: AssetCheckExecutionContext, storage: DocumentStorage, quality_targets: QualityTargets
) -> AssetCheckResult:
    budget = quality_targets.max_failed_page_share
    findings = [judge_pages(storage, document_id, budget) for document_id in run_documents(context)]
    return summarize(
        findings, metric="failed_page_share", target=budget, rule=f"<= {budget:.2%} per document", worst=max, percent=True
    )
