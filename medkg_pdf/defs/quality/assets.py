"""Stage 5: the structured document compared with the text-layer baseline, page by page."""


from collections import Counter

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue

from medkg_pdf import storage_keys, metrics
from medkg_pdf.defs.document_steps import current_source, require_version, run_document
from medkg_pdf.defs.partitions import document_asset
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import BaselineParse, DocumentQuality, PageQuality, StructuredDocument


def compare(document: StructuredDocument, baseline: BaselineParse) -> DocumentQuality:
    pages: list[PageQuality] = []
    parsed_words: Counter = Counter()
    baseline_words: Counter = Counter()
    numbers_wanted = numbers_missing = 0
    weighted_edit = weight = 0.0
    for base in baseline.pages:
        number = base.index + 1
        if not base.has_text_layer or not metrics.baseline_usable(base.text):
            pages.append(PageQuality(page=number, has_baseline=False))
            continue
        parsed = document.page_text(number)
        recall, missing = metrics.numeric_recall(parsed, base.text)
        pages.append(
            PageQuality(
                page=number,
                has_baseline=True,
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
    )


def _page_row(page: PageQuality) -> str:
    if not page.has_baseline:
        return f"| {page.page} | no baseline | no baseline | no baseline | |"
    return (f"| {page.page} | {page.edit_similarity:.3f} | {page.word_f1:.3f} | {page.numeric_recall:.3f} | "
            f"{', '.join(page.numeric_missing[:8])} |")  # fmt: skip


def _page_table(quality: DocumentQuality) -> str:
    header = ["| page | edit sim | word F1 | numeric recall | missing numbers |", "|---|---|---|---|---|"]
    return "\n".join(header + [_page_row(page) for page in quality.pages])


@document_asset(
    group_name="documents",
    deps=["structured_document", "baseline_parse"],
    kinds={"json"},
    description="Match score vs the text-layer baseline: edit similarity, word F1, numeric-token recall per page.",
)
def parse_quality(context: AssetExecutionContext, storage: DocumentStorage) -> MaterializeResult:
    def score(document_id: str) -> dict:
        sha256 = current_source(storage, document_id).sha256
        document = require_version(storage, storage_keys.structured_json(document_id), StructuredDocument, "the structured document", sha256)
        baseline = require_version(storage, storage_keys.baseline(document_id), BaselineParse, "the text-layer baseline", sha256)
        quality = compare(document, baseline)
        storage.write_model(storage_keys.quality(document_id), quality)
        return {
            "match_score": quality.match_score if quality.match_score is not None else "no baseline",
            "edit_similarity": quality.edit_similarity if quality.edit_similarity is not None else "no baseline",
            "word_f1": quality.word_f1 if quality.word_f1 is not None else "no baseline",
            "numeric_recall": quality.numeric_recall if quality.numeric_recall is not None else "no baseline",
            "pages_compared": quality.pages_compared,
            "pages_without_baseline": len(quality.pages) - quality.pages_compared,
            "pages": MetadataValue.md(_page_table(quality)),
        }

    return run_document(context, storage, "parse_quality", score)
