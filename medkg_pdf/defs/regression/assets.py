"""Regression baseline: pin today's structured documents, then show which ones a model or prompt change made worse.

`accepted_baseline` (run on purpose, via the `accept_baseline` job, for the documents a person
has reviewed) copies `structured.json` to `baselines/<model>/<prompt version>/<id>.json` and
points `documents/<id>/accepted-baseline.json` at it. `regression_quality` compares the current
structured document with the pinned one using the metrics of `medkg_pdf.metrics`: word F1 and
numeric recall (the pinned text is the reference), table-cell agreement of the tables in order
on each page, and the change of the text-layer match score.

Neither asset quarantines a document: a refused acceptance or a missing baseline says nothing
about whether the document was processed, so it must not count against the error-rate SLO.
"""

from collections import Counter
from typing import Any, Callable

from dagster import AssetExecutionContext, Config, Failure, MaterializeResult, MetadataValue
from pydantic import Field

from medkg_pdf import storage_keys, metrics
from medkg_pdf.defs.partitions import document_asset
from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import (
    AcceptedBaseline,
    Block,
    DocumentQuality,
    RegressionPage,
    RegressionQuality,
    StructuredDocument,
)


class RefusedError(Exception):
    pass


def _per_document(context: AssetExecutionContext, work: Callable[[str], dict[str, Any]]) -> MaterializeResult:
    done: dict[str, dict[str, Any]] = {}
    refused: dict[str, str] = {}
    for document_id in context.partition_keys:
        try:
            done[document_id] = work(document_id)
        except RefusedError as error:
            context.log.warning(f"{document_id}: {error}")
            refused[document_id] = str(error)
    if len(context.partition_keys) == 1:
        if refused:
            raise Failure(description=next(iter(refused.values())), metadata={"document_id": context.partition_keys[0]})
        return MaterializeResult(metadata=done[context.partition_keys[0]])
    return MaterializeResult(
        metadata={
            "documents": len(context.partition_keys),
            "documents_done": len(done),
            "documents_refused": len(refused),
            "refused": MetadataValue.md("\n".join(f"- `{d}`: {why}" for d, why in refused.items()) or "none"),
        }
    )


class AcceptConfig(Config):
    allow_failed_pages: bool = Field(
        default=False, description="Accept a document some of whose pages failed (they stay empty in the baseline)."
    )


@document_asset(
    group_name="regression",
    deps=["structured_document", "parse_quality"],
    kinds={"json"},
    description="The current structured document, accepted by a person as the reference for later "
    "model or prompt versions (pinned per model and prompt version).",
)
def accepted_baseline(context: AssetExecutionContext, config: AcceptConfig, storage: DocumentStorage) -> MaterializeResult:
    def accept(document_id: str) -> dict[str, Any]:
        key = storage_keys.structured_json(document_id)
        try:
            raw = storage.read_bytes(key)
        except FileNotFoundError:
            raise RefusedError(f"no structured document to accept ({storage.uri(key)})") from None
        document = StructuredDocument.model_validate_json(raw)
        if document.failed_pages and not config.allow_failed_pages:
            raise RefusedError(
                f"pages {document.failed_pages[:10]} failed to parse: re-run them, or accept with allow_failed_pages"
            )
        pinned = storage_keys.pinned_structured(document.model, document.prompt_version, document_id)
        storage.write_bytes(pinned, raw)  # the exact bytes, so the pin is what the reviewer saw
        quality = storage.read_model_or_none(storage_keys.quality(document_id), DocumentQuality)
        pinned_quality = None
        if quality is not None:
            pinned_quality = storage_keys.pinned_quality(document.model, document.prompt_version, document_id)
            storage.write_model(pinned_quality, quality)
        pointer = AcceptedBaseline(
            document_id=document_id,
            model=document.model,
            prompt_version=document.prompt_version,
            sha256=document.sha256,
            structured_key=pinned,
            quality_key=pinned_quality,
            match_score=quality.match_score if quality else None,
        )
        storage.write_model(storage_keys.accepted_baseline(document_id), pointer)
        return {
            "model": document.model,
            "prompt_version": document.prompt_version,
            "pinned": storage.uri(pinned),
            "match_score": quality.match_score if quality and quality.match_score is not None else "no baseline",
        }

    return _per_document(context, accept)


def _tables(document: StructuredDocument) -> dict[int, list[Block]]:
    tables: dict[int, list[Block]] = {}
    for block in document.blocks():
        if block.kind == "table" and block.rows:
            tables.setdefault(block.page, []).append(block)
    return tables


def compare_documents(
    current: StructuredDocument,
    pinned: StructuredDocument,
    targets: QualityTargets,
    *,
    pointer: AcceptedBaseline | None = None,
    current_score: float | None = None,
) -> RegressionQuality:
    """The current document judged against the pinned one (the reference)."""
    pages: list[RegressionPage] = []
    current_words: Counter = Counter()
    pinned_words: Counter = Counter()
    numbers_wanted = 0
    numbers_missing: list[str] = []
    now_texts, then_texts = current.page_texts(), pinned.page_texts()
    for page in range(1, max(current.page_count, pinned.page_count) + 1):
        now_text, then_text = now_texts.get(page, ""), then_texts.get(page, "")
        recall, lost = metrics.numeric_recall(now_text, then_text)
        pages.append(
            RegressionPage(
                page=page,
                word_f1=round(metrics.word_f1(now_text, then_text), 4),
                numeric_recall=round(recall, 4),
                numeric_missing=lost[:20],
            )
        )
        current_words.update(metrics.words(now_text))
        pinned_words.update(metrics.words(then_text))
        numbers_wanted += len(metrics.numeric_tokens(then_text))
        numbers_missing.extend(lost)
    word_f1 = round(metrics.f1_from_counts(current_words, pinned_words), 4)
    numeric = round(1 - len(numbers_missing) / numbers_wanted, 4) if numbers_wanted else 1.0

    now_tables, then_tables = _tables(current), _tables(pinned)
    cells = matched = 0.0
    compared = 0
    for page, reference_tables in then_tables.items():
        for index, reference in enumerate(reference_tables):
            candidate = now_tables.get(page, [])
            rows = candidate[index].rows if index < len(candidate) else []
            size = sum(len(row) for row in reference.rows or [])
            cells += size
            matched += metrics.table_cell_agreement(rows or [], reference.rows or []) * size
            compared += 1
    tables = round(matched / cells, 4) if cells else None

    pinned_score = pointer.match_score if pointer else None
    reasons = []
    if word_f1 < targets.regression_min_word_f1:
        reasons.append(f"word F1 vs the baseline {word_f1:.3f} < {targets.regression_min_word_f1}")
    if numeric < targets.regression_min_numeric_recall:
        reasons.append(f"numbers lost: recall {numeric:.3f} < {targets.regression_min_numeric_recall} ({', '.join(numbers_missing[:8])})")
    if tables is not None and tables < targets.regression_min_table_agreement:
        reasons.append(f"table cells agree {tables:.3f} < {targets.regression_min_table_agreement}")
    if pinned_score is not None and current_score is not None and pinned_score - current_score > targets.regression_max_score_drop:
        reasons.append(f"match score fell {pinned_score:.3f} -> {current_score:.3f}")
    if current.sha256 != pinned.sha256:
        verdict = "source_changed"
        reasons.insert(0, "the PDF changed since the baseline was accepted: accept again after review")
    elif reasons:
        verdict = "worse"
    elif word_f1 == 1.0 and numeric == 1.0 and tables in (None, 1.0):
        verdict = "unchanged"
    else:
        verdict = "changed"
    return RegressionQuality(
        document_id=current.document_id,
        verdict=verdict,
        reasons=reasons,
        baseline_model=pinned.model,
        baseline_prompt_version=pinned.prompt_version,
        current_model=current.model,
        current_prompt_version=current.prompt_version,
        word_f1=word_f1,
        numeric_recall=numeric,
        numeric_missing=numbers_missing[:50],
        table_cell_agreement=tables,
        tables_compared=compared,
        pages=pages,
        match_score_baseline=pinned_score,
        match_score_current=current_score,
    )


@document_asset(
    group_name="regression",
    deps=["structured_document", "parse_quality", "accepted_baseline"],
    kinds={"json"},
    description="The current structured document vs its accepted baseline: word F1, numeric recall, "
    "table-cell agreement and match-score change, with a verdict (unchanged / changed / worse).",
)
def regression_quality(
    context: AssetExecutionContext, storage: DocumentStorage, quality_targets: QualityTargets
) -> MaterializeResult:
    def compare(document_id: str) -> dict[str, Any]:
        current = storage.read_model_or_none(storage_keys.structured_json(document_id), StructuredDocument)
        if current is None:
            raise RefusedError("no current structured document: materialize the document chain first")
        pointer = storage.read_model_or_none(storage_keys.accepted_baseline(document_id), AcceptedBaseline)
        pinned = storage.read_model_or_none(pointer.structured_key, StructuredDocument) if pointer else None
        if pointer is None or pinned is None:
            result = RegressionQuality(
                document_id=document_id,
                verdict="no_baseline",
                reasons=["no accepted baseline: run the accept_baseline job for this document"],
                current_model=current.model,
                current_prompt_version=current.prompt_version,
            )
        else:
            quality = storage.read_model_or_none(storage_keys.quality(document_id), DocumentQuality)
            result = compare_documents(
                current, pinned, quality_targets, pointer=pointer, current_score=quality.match_score if quality else None
            )
        storage.write_model(storage_keys.regression(document_id), result)
        worst_pages = sorted(result.pages, key=lambda p: p.word_f1)[:5]
        return {
            "verdict": result.verdict,
            "reasons": MetadataValue.md("\n".join(f"- {r}" for r in result.reasons) or "none"),
            "baseline": f"{result.baseline_model} / {result.baseline_prompt_version}" if pinned else "none",
            "current": f"{result.current_model} / {result.current_prompt_version}",
            "word_f1": result.word_f1 if result.word_f1 is not None else "n/a",
            "numeric_recall": result.numeric_recall if result.numeric_recall is not None else "n/a",
            "table_cell_agreement": result.table_cell_agreement if result.table_cell_agreement is not None else "no tables",
            "worst_pages": MetadataValue.md(
                "\n".join(f"- page {p.page}: word F1 {p.word_f1:.3f}, numeric recall {p.numeric_recall:.3f}" for p in worst_pages)
                or "none"
            ),
        }

    return _per_document(context, compare)
