"""Stage 4: page parses assembled into one typed document, written as JSON and as markdown."""


import base64

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue

from medkg_pdf import storage_keys
from medkg_pdf.defs.document_steps import current_source, require_version, run_document
from medkg_pdf.furniture import mark_furniture, typed_kind
from medkg_pdf.markdown_blocks import markdown_to_blocks
from medkg_pdf.page_selection import pages_label
from medkg_pdf.defs.partitions import document_asset
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import FURNITURE_KINDS, Block, PageImage, PageImages, PageParse, PageParses, Section, StructuredDocument

PREVIEW_PAGES = 2
_HEADING_LEVEL = {"title": 1, "sub_title": 2}


def page_blocks(parse: PageParse, page_size_pt: tuple[float, float] | None) -> list[Block]:
    """Blocks of one page; where the model located regions, each block carries its box in PDF points
    (when the page's size is known) and a region typed as a page header or footer stays one, as furniture."""
    number = parse.page_index + 1
    if not parse.regions:
        return markdown_to_blocks(parse.markdown, page=number, line_confidence=parse.line_confidence)
    blocks = []
    for region in parse.regions:
        if not region.text.strip():
            continue
        bbox = None
        if page_size_pt is not None:
            width, height = page_size_pt
            x0, y0, x1, y1 = region.bbox
            bbox = (round(x0 * width, 2), round(y0 * height, 2), round(x1 * width, 2), round(y1 * height, 2))
        read = markdown_to_blocks(region.text, page=number)
        if region.kind in FURNITURE_KINDS:
            text = " ".join(block.text for block in read) or " ".join(region.text.split())
            blocks.append(Block(kind=typed_kind(region.kind, text), page=number, text=text, bbox=bbox, confidence=region.confidence))
            continue
        for block in read:
            update: dict = {"bbox": bbox, "confidence": region.confidence}
            if region.label in _HEADING_LEVEL and block.kind == "paragraph":
                update.update(kind="heading", level=_HEADING_LEVEL[region.label])
            blocks.append(block.model_copy(update=update))
    return blocks


def _sections(blocks: list[Block]) -> list[Section]:
    """A section per heading; furniture never opens one (a running head above the title joins the first)."""
    sections: list[Section] = []
    waiting: list[Block] = []  # furniture before the first body block
    for block in blocks:
        if block.furniture and not sections:
            waiting.append(block)
            continue
        if block.kind == "heading" or not sections:
            heading = block.text if block.kind == "heading" else None
            sections.append(Section(heading=heading, page=block.page, blocks=waiting))
            waiting = []
        sections[-1].blocks.append(block)
    if waiting:  # a document of furniture alone
        sections.append(Section(heading=None, page=waiting[0].page, blocks=waiting))
    return sections


def page_size_pt(image: PageImage) -> tuple[float, float]:
    """The page's own size as recorded when it was drawn; from the image and its (rounded) scale for older manifests."""
    if image.width_pt and image.height_pt:
        return image.width_pt, image.height_pt
    return image.width * 72 / image.dpi, image.height * 72 / image.dpi


def build_document(parses: PageParses, images: PageImages | None = None) -> StructuredDocument:
    sizes = {i.index: page_size_pt(i) for i in images.pages} if images else {}
    ordered = sorted(parses.pages, key=lambda p: p.page_index)
    pages = [page_blocks(parse, sizes.get(parse.page_index)) for parse in ordered]
    heights = {index + 1: size[1] for index, size in sizes.items()}
    blocks = [block for page in mark_furniture(pages, heights) for block in page]
    headings = [b for b in blocks if b.kind == "heading"]
    top = min((b.level or 9 for b in headings), default=None)
    title = next((b.text for b in headings if b.level == top), None)
    return StructuredDocument(
        document_id=parses.document_id,
        sha256=parses.sha256,
        title=title,
        page_count=len(parses.pages),
        model=parses.model,
        prompt_version=parses.prompt_version,
        sections=_sections(blocks),
        failed_pages=[p.page_index + 1 for p in parses.pages if not p.status.usable],
    )


def to_markdown(document: StructuredDocument) -> str:
    """The body as markdown: running heads, feet and page numbers stay in the JSON only."""
    out: list[str] = []
    for block in document.blocks():
        if block.furniture:
            continue
        if block.kind == "heading":
            out.append(f"{'#' * (block.level or 1)} {block.text}")
        elif block.kind == "list":
            out.append("\n".join(f"- {item}" for item in block.items or []))
        elif block.kind == "table" and block.rows:
            width = max(len(row) for row in block.rows)
            rows = [row + [""] * (width - len(row)) for row in block.rows]
            lines = ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
            lines.insert(1, "|" + "---|" * width)
            out.append("\n".join(lines))
        elif block.kind == "code":
            out.append(f"```\n{block.text}\n```")
        elif block.kind == "caption":
            out.append(f"*{block.text}*")
        else:
            out.append(block.text)
    return "\n\n".join(out) + "\n"


def boxed_pages_preview(storage: DocumentStorage, document: StructuredDocument, images: PageImages | None) -> str | None:
    """The first pages as the model saw them, each block's box in its kind's colour, for the UI; None
    when the answers located nothing (plain markdown)."""
    from medkg_pdf.page_preview import KIND_COLORS, KIND_NAMES, boxed_page_jpeg

    if images is None:
        return None
    shown = []
    for image in images.pages[:PREVIEW_PAGES]:
        jpeg = boxed_page_jpeg(document, image.index + 1, storage.read_bytes(image.key), image.dpi)
        if jpeg is not None:
            shown.append(f"![page {image.index + 1} with its blocks' boxes](data:image/jpeg;base64,{base64.b64encode(jpeg).decode('ascii')})")
    if not shown:
        return None
    kinds = sorted({block.kind for block in document.blocks() if block.bbox is not None and block.page <= PREVIEW_PAGES})
    legend = ", ".join(f"{kind} {KIND_NAMES.get(KIND_COLORS.get(kind, ''), 'black')}" for kind in kinds)
    return "\n\n".join(shown) + f"\n\nBoxes by kind: {legend}"


@document_asset(
    group_name="documents",
    deps=["vlm_page_parses"],
    kinds={"json", "markdown"},
    description="Title, sections and typed blocks (heading/paragraph/list/table/caption; page header/footer/number "
    "as furniture, left out of the markdown) with page provenance.",
)
def structured_document(context: AssetExecutionContext, storage: DocumentStorage) -> MaterializeResult:
    def assemble(document_id: str) -> dict:
        info = current_source(storage, document_id)
        sha256 = info.sha256
        parses = require_version(storage, storage_keys.page_parses(document_id), PageParses, "the page parses", sha256)
        images = storage.read_model_or_none(storage_keys.page_images(document_id), PageImages)
        if images is not None and images.sha256 != sha256:
            images = None
        document = build_document(parses, images).model_copy(update={"source_pages": info.source.pages})
        storage.write_model(storage_keys.structured_json(document_id), document)
        storage.write_text(storage_keys.structured_markdown(document_id), to_markdown(document))
        preview = boxed_pages_preview(storage, document, images)
        kinds: dict[str, int] = {}
        for block in document.blocks():
            kinds[block.kind] = kinds.get(block.kind, 0) + 1
        return {
            "title": document.title or "",
            "pages": document.page_count,
            "source_pages": pages_label(info.source.pages) if info.source.pages else "all",
            "sections": len(document.sections),
            "blocks": kinds,
            "failed_pages": document.failed_pages,
            "json": storage.uri(storage_keys.structured_json(document_id)),
            "markdown": storage.uri(storage_keys.structured_markdown(document_id)),
            **({"boxed_pages": MetadataValue.md(preview)} if preview else {}),
        }

    return run_document(context, storage, "structured_document", assemble)
