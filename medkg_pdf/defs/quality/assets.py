"""Stage 5: the structured document compared with the text-layer baseline, page by page."""


from collections import Counter

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue

from medkg_pdf import storage_keys, metrics
from medkg_pdf.text_layer_judge import USABLE, judge_text
from medkg_pdf.defs.document_steps import current_source, require_version, run_document
from medkg_pdf.defs.partitions import document_asset
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import BaselinePage, BaselineParse, DocumentQuality, PageQuality, StructuredDocument


def _verdict(base: BaselinePage) -> tuple[str, str]:
    """The page's stored verdict; a baseline written before judging gets the text-only garble test."""
    if base.verdict is not None:
        return base.verdict, base.reason
    judged = judge_text(base.text)
    return judged.verdict, judged.reason


def no_baseline_reason(pages: list[PageQuality]) -> str:
    """Why nothing was scored, e.g. "no usable baseline (2 pages garbled: ...; 1 page none)"."""
    first: dict[str, str] = {}
    for page in pages:
        first.setdefault(page.verdict or "none", page.reason)
    counts = Counter(page.verdict or "none" for page in pages)
    parts = [f"{n} page{'s' * (n != 1)} {v}" + (f": {first[v]}" if first[v] and v != "none" else "") for v, n in counts.most_common()]
    return f"no usable baseline ({'; '.join(parts) or 'no pages'})"


def compare(document: StructuredDocument, baseline: BaselineParse) -> DocumentQuality:
    """Scores pooled over the pages whose text layer is usable; the others say why they are not scored."""
    pages: list[PageQuality] = []
    parsed_words: Counter = Counter()
    baseline_words: Counter = Counter()
    numbers_wanted = numbers_missing = 0
    weighted_edit = weight = 0.0
    texts = document.page_texts()
    for base in baseline.pages:
        number = base.index + 1
        verdict, reason = _verdict(base)
        if verdict != USABLE:
            pages.append(PageQuality(page=number, has_baseline=False, verdict=verdict, reason=reason))
            continue
        parsed = texts.get(number, "")
        recall, missing = metrics.numeric_recall(parsed, base.text)
        pages.append(
            PageQuality(
                page=number,
                has_baseline=True,
                verdict=verdict,
                reason=reason,
                edit_similarity=round(metrics.edit_similarity(parsed, base.text), 4),
                word_f1=round(metrics.word_f1(parsed, base.text), 4),
                numeric_recall=round(recall, 4),
                numeric_missing=missing[:50],
            )
        )
        parsed_words.update(metrics.words(parsed))
        base_words = metrics.words(base.text)
        baseline_words.update(base_words)
        weighted_edit += pages[-1].edit_similarity * len(base_words)
        weight += len(base_words)
        numbers_wanted += len(metrics.numeric_tokens(base.text))
        numbers_missing += len(missing)
    compared = [p for p in pages if p.has_baseline]
    f1 = round(metrics.f1_from_counts(parsed_words, baseline_words), 4) if compared else None
    return DocumentQuality(
        document_id=document.document_id,
        pages=pages,
        pages_compared=len(compared),
        match_score=f1,
        edit_similarity=round(weighted_edit / weight, 4) if weight else None,
        word_f1=f1,
        numeric_recall=round(1 - numbers_missing / numbers_wanted, 4) if numbers_wanted else (1.0 if compared else None),
        no_baseline_reason="" if compared else no_baseline_reason(pages),
    )


def _page_row(page: PageQuality) -> str:
    if not page.has_baseline:
        return f"| {page.page} | {page.verdict or 'no baseline'} | | | {page.reason.replace('|', '/')} |"
    return (f"| {page.page} | {page.edit_similarity:.3f} | {page.word_f1:.3f} | {page.numeric_recall:.3f} | "
            f"{', '.join(page.numeric_missing[:8])} |")  # fmt: skip


def _page_table(quality: DocumentQuality) -> str:
    header = ["| page | edit sim | word F1 | numeric recall | missing numbers |", "|---|---|---|---|---|"]
    return "\n".join(header + [_page_row(page) for page in quality.pages])


@document_asset(
    group_name="documents",
    deps=["structured_document", "baseline_parse"],
    kinds={"json"},
    description="Match score vs the text-layer baseline: edit similarity, word F1, numeric-token recall per page, "
    "over the pages whose text layer is judged usable (not garbled, invisible OCR over a scan, or partial).",
)
def parse_quality(context: AssetExecutionContext, storage: DocumentStorage) -> MaterializeResult:
    def score(document_id: str) -> dict:
        sha256 = current_source(storage, document_id).sha256
        document = require_version(storage, storage_keys.structured_json(document_id), StructuredDocument, "the structured document", sha256)
        baseline = require_version(storage, storage_keys.baseline(document_id), BaselineParse, "the text-layer baseline", sha256)
        quality = compare(document, baseline)
        storage.write_model(storage_keys.quality(document_id), quality)
        return {
            "match_score": quality.match_score if quality.match_score is not None else quality.no_baseline_reason,
            "edit_similarity": quality.edit_similarity if quality.edit_similarity is not None else "no baseline",
            "word_f1": quality.word_f1 if quality.word_f1 is not None else "no baseline",
            "numeric_recall": quality.numeric_recall if quality.numeric_recall is not None else "no baseline",
            "pages_compared": quality.pages_compared,
            "pages_without_baseline": len(quality.pages) - quality.pages_compared,
            **{f"text_layer_{v}": n for v, n in sorted(Counter(p.verdict or "none" for p in quality.pages).items())},
            "pages": MetadataValue.md(_page_table(quality)),
        }

    return run_document(context, storage, "parse_quality", score)
