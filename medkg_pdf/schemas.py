"""Typed records that flow between the assets; this module is the one owner of each shape.

Every record is stored as JSON (never pickled), so a human, `jq` or another service can read
what the pipeline wrote, and a record read back is validated before it is trusted.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


# Bumped when a stored shape changes incompatibly; readers then know which shape a file follows.
SCHEMA_VERSION = "1"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Stored(BaseModel):
    """A record written to storage as a file of its own: it names the version of the shapes it follows."""

    schema_version: str = SCHEMA_VERSION


class SourceRef(Stored, Record):
    """Where a document came from; written when the document is registered as a partition."""

    document_id: str
    uri: str  # file:///abs/path.pdf or s3://bucket/key (never used to build a storage path)
    name: str  # original file name, for people
    etag: str | None = None
    arrived_at: datetime = Field(default_factory=utc_now)
    pages: list[int] | None = None  # 1-based pages of the source this document is made of (`--pages`); None: all


class QuarantineRecord(Stored):
    """Why a document's current source version stopped, and whether and when it is tried again.

    `retryable` is False for permanent failures (invalid, encrypted, non-PDF, context overflow, the
    same bad answer twice at temperature 0): only a new source version or an operator runs it again.
    A transient failure is retried at `next_attempt_at` until `failed_attempts` reaches the cap; then it
    is a dead letter, left for an operator.
    """

    document_id: str
    stage: str
    reason: str
    message: str
    retryable: bool
    at: str
    registered_at: datetime | None = None  # SourceRef.arrived_at of the version that failed
    failed_attempts: int = 1  # failed step attempts of this source version (each run makes up to 3)
    next_attempt_at: datetime | None = None  # when reconciliation may run it again (transient only)
    dead_letter: bool = False  # transient, but out of automatic attempts
    run_id: str | None = None

    @property
    def permanent(self) -> bool:
        return not self.retryable


class SourceInfo(Stored, Record):
    """What `source_pdf` learned about a valid PDF."""

    document_id: str
    source: SourceRef
    sha256: str
    bytes: int
    page_count: int
    pages_with_text: list[bool]
    repaired: bool = False
    warnings: list[str] = []
    stored_at: str  # storage key of the stored copy


class PageImage(Record):
    index: int  # 0-based
    key: str  # storage key of the PNG
    width: int
    height: int
    dpi: float  # the scale drawn at, in pixels per inch (from the render target, then any shrink to fit the caps)
    render_target: str | None = None  # the profile's image budget it was drawn for ("long-2000"); None: drawn at a fixed DPI
    png_bytes: int
    png_sha256: str | None = None  # content hash of the PNG (None in manifests written before it was recorded)
    width_pt: float | None = None  # the page's size in PDF points (1/72 in), as boxes are given
    height_pt: float | None = None
    blank: bool  # white paper (raw ink share under BLANK_INK_RATIO): not sent to the model
    ink_ratio: float  # share of pixels darker than gray 200
    near_blank: bool = False  # nothing but scan noise (specks, bleed-through, a grey cast): an empty answer is `blank`
    content_ratio: float | None = None  # share of pixels that are content once scan noise is set aside
    content_components: int | None = None  # marks left once specks are dropped
    rotation: int = 0


class PageImages(Stored, Record):
    document_id: str
    sha256: str
    dpi: int | None = None  # manifests drawn at a fixed DPI (before render targets)
    render_target: str | None = None  # the image budget every page was drawn for (`RenderTarget.label`)
    pages: list[PageImage]


class PageStatus(str, Enum):
    ok = "ok"
    blank = "blank"  # an empty answer on a page without ink is a legitimate result
    truncated = "truncated"
    repetition = "repetition"
    empty = "empty"
    invalid_response = "invalid_response"
    http_error = "http_error"
    timeout = "timeout"
    breaker_open = "breaker_open"
    context_overflow = "context_overflow"

    @property
    def usable(self) -> bool:
        return self in (PageStatus.ok, PageStatus.blank)


class SamplingParams(Record):
    temperature: float = 0.0
    seed: int = 42
    max_tokens: int = 4096
    top_p: float = 1.0
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None


class Region(Record):
    """A piece of a page the model located: its kind, text and box (fractions 0..1 of the image)."""

    label: str
    kind: str
    text: str
    bbox: tuple[float, float, float, float]
    confidence: float | None = None  # exp(mean token log-probability) of its text, when the server gives them


class PageParse(Stored, Record):
    """One page's answer from the model server, stored as its own JSON file when it arrives."""

    document_id: str
    page_index: int
    cache_key: str
    status: PageStatus
    markdown: str = ""
    # the model's confidence in each line of `markdown` (exp of the mean token log-probability, 0..1; None for
    # blank lines), when the server returned log-probabilities
    line_confidence: list[float | None] | None = None
    error: str | None = None
    model: str
    profile: str = "qwen2.5-vl"
    prompt_version: str
    sampling: SamplingParams
    regions: list[Region] = []
    rotation_applied: int = 0  # degrees clockwise the image was turned before the final answer
    image_width: int = 0
    image_height: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    queue_wait_s: float = 0.0
    attempts: int = 0
    finish_reason: str | None = None
    finished_at: datetime = Field(default_factory=utc_now)


class PageParses(Stored, Record):
    document_id: str
    sha256: str
    model: str
    prompt_version: str
    pages: list[PageParse]
    model_calls: int  # requests actually sent in this materialization (0 when fully cached)
    cached_pages: int


BlockKind = Literal[
    "heading", "paragraph", "list", "table", "caption", "code", "figure", "page_header", "page_footer", "page_number"
]
# Page furniture: printed on the page (so the text layer has it) but not part of the body's reading text.
FURNITURE_KINDS = frozenset({"page_header", "page_footer", "page_number"})


class Block(Record):
    kind: BlockKind
    page: int = Field(description="1-based page number: the provenance a reader jumps to.")
    text: str
    level: int | None = None  # heading level
    items: list[str] | None = None  # list items
    rows: list[list[str]] | None = Field(
        default=None,
        description="Table cells as a rectangular grid: a spanning cell's text is repeated in every position it "
        "covers, so each value sits under its header; short rows are padded with empty cells.",
    )
    spans: list[list[int]] | None = Field(
        default=None,
        description="Table cells that span several grid positions, as [row, col, rowspan, colspan] (0-based, "
        "the top-left position); absent when no cell spans.",
    )
    header_rows: int | None = Field(
        default=None, description="How many leading table rows are header rows (<thead>, <th> rows, markdown header)."
    )
    bbox: tuple[float, float, float, float] | None = Field(
        default=None,
        description="(x0, y0, x1, y1) in PDF points, origin at the page's top-left corner, y downwards (PyMuPDF's "
        "page coordinates); present when the model gives boxes.",
    )
    confidence: float | None = Field(
        default=None,
        description="The model's confidence in the block's text: exp(mean token log-probability) over its lines, 0..1; "
        "present when the model server returns log-probabilities (vLLM does; the embedded engine gives its OCR score).",
    )

    @property
    def furniture(self) -> bool:
        """A running head or foot or a page number: kept with its page and box, left out of the body."""
        return self.kind in FURNITURE_KINDS


class Section(Record):
    heading: str | None
    page: int
    blocks: list[Block]


class StructuredDocument(Stored, Record):
    document_id: str
    sha256: str
    title: str | None
    page_count: int
    model: str
    prompt_version: str
    sections: list[Section]
    failed_pages: list[int] = []  # 1-based pages whose parse was not usable
    # page n of this document is page source_pages[n-1] of the source PDF; None: the whole PDF, in order
    source_pages: list[int] | None = None

    def blocks(self) -> list[Block]:
        return [block for section in self.sections for block in section.blocks]

    def page_texts(self, *, furniture: bool = True) -> dict[int, str]:
        """Every page's text in one pass over the blocks ("" for a page with none): with furniture, everything
        read on the page, as its PDF text layer holds it too; without, its reading text (no running heads,
        feet or page numbers)."""
        texts: dict[int, list[str]] = {page: [] for page in range(1, self.page_count + 1)}
        for block in self.blocks():
            if furniture or not block.furniture:
                texts.setdefault(block.page, []).append(block.text)
        return {page: "\n".join(parts) for page, parts in texts.items()}

    def page_text(self, page: int) -> str:
        return self.page_texts().get(page, "")

    def body_text(self, page: int) -> str:
        return self.page_texts(furniture=False).get(page, "")


class BaselinePage(Record):
    index: int
    has_text_layer: bool
    text: str
    # the text layer judged before use (medkg_pdf.text_layer_judge): usable, none, garbled,
    # invisible_over_image or partial; only usable pages are scored. None: written before judging.
    verdict: str | None = None
    reason: str = ""


class BaselineParse(Stored, Record):
    document_id: str
    sha256: str
    pages: list[BaselinePage]


class PageQuality(Record):
    page: int  # 1-based
    has_baseline: bool
    # the text layer's verdict and why (see BaselinePage); has_baseline is verdict == "usable"
    verdict: str | None = None
    reason: str = ""
    edit_similarity: float | None = None
    word_f1: float | None = None
    numeric_recall: float | None = None
    numeric_missing: list[str] = []


class DocumentQuality(Stored, Record):
    document_id: str
    pages: list[PageQuality]
    pages_compared: int
    match_score: float | None  # None when no page has a text layer ("no baseline")
    edit_similarity: float | None
    word_f1: float | None
    numeric_recall: float | None
    baseline: str = "text_layer"
    # why match_score is None: "no usable baseline (...)" with the pages' verdicts; "" when scored
    no_baseline_reason: str = ""
    # when the document's chain finished; with SourceRef.arrived_at it gives the end-to-end latency
    completed_at: datetime = Field(default_factory=utc_now)


class AcceptedBaseline(Stored, Record):
    """Pointer to the structured document a person accepted as the regression baseline."""

    document_id: str
    model: str
    prompt_version: str
    sha256: str  # of the PDF the pinned output was made from
    structured_key: str  # storage key of the pinned structured.json copy
    quality_key: str | None = None  # pinned quality.json copy (its match score), when there was one
    match_score: float | None = None
    accepted_at: datetime = Field(default_factory=utc_now)


class RegressionPage(Record):
    page: int  # 1-based
    word_f1: float
    numeric_recall: float
    numeric_missing: list[str] = []


RegressionVerdict = Literal["unchanged", "changed", "worse", "no_baseline", "source_changed"]


class RegressionQuality(Stored, Record):
    """The current structured document compared with its accepted (pinned) one."""

    document_id: str
    verdict: RegressionVerdict
    reasons: list[str] = []
    baseline_model: str | None = None
    baseline_prompt_version: str | None = None
    current_model: str
    current_prompt_version: str
    word_f1: float | None = None
    numeric_recall: float | None = None
    numeric_missing: list[str] = []
    table_cell_agreement: float | None = None  # None when the pinned document has no table
    tables_compared: int = 0
    pages: list[RegressionPage] = []
    match_score_baseline: float | None = None
    match_score_current: float | None = None
    compared_at: datetime = Field(default_factory=utc_now)


class ReportPointer(Stored):
    """`reports/quality/latest.json`: what the SLO checks evaluate."""

    day: str
    evaluated_at: datetime
    documents_csv: str
    slo_json: str


# The shapes other tools read, published as JSON Schema under docs/schemas/ (a test keeps them in step).
PUBLISHED = {"structured_document": StructuredDocument, "document_quality": DocumentQuality, "page_parses": PageParses}


def published_json_schemas() -> dict[str, dict]:
    return {name: model.model_json_schema(mode="serialization") for name, model in PUBLISHED.items()}


if __name__ == "__main__":  # python -m medkg_pdf.schemas docs/schemas: rewrite the published schemas
    import json
    import sys
    from pathlib import Path

    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas")
    folder.mkdir(parents=True, exist_ok=True)
    for name, schema in published_json_schemas().items():
        (folder / f"{name}.schema.json").write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
