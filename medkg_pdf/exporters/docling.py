"""A `DoclingDocument` (docling-core) built from a structured document, with page sizes and provenance.

Every block becomes the matching Docling item, carrying a `ProvenanceItem` with its 1-based page,
its box in PDF points with a top-left origin (medkg's own convention, so no flipping) and the
character span of its text. A block without a box gets the whole page as its box: Docling requires
one, and the page number is the provenance a reader needs most. Page furniture goes where Docling's
own converters put it: page headers and footers in the furniture content layer (a page number as the
header or footer it is printed in, by its box; without a box, a footer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medkg_pdf.schemas import Block, StructuredDocument

if TYPE_CHECKING:
    from docling_core.types.doc import DoclingDocument

EXTRA_HINT = "the Docling export needs docling-core: pip install 'medkg-pdf[docling]'"


def require_docling() -> Any:
    """docling-core's document types, or an ImportError that names the extra to install."""
    try:
        from docling_core.types import doc
    except ImportError as error:  # an optional extra: say which one
        raise ImportError(EXTRA_HINT) from error
    return doc


def pdf_page_sizes(pdf: bytes) -> dict[int, tuple[float, float]]:
    """Page number (1-based) -> (width, height) in points as PyMuPDF shows the page (rotation applied),
    the frame the blocks' boxes are in."""
    import pymupdf

    with pymupdf.open(stream=pdf, filetype="pdf") as opened:
        return {page.number + 1: (page.rect.width, page.rect.height) for page in opened}


def docling_document(document: StructuredDocument, page_sizes: dict[int, tuple[float, float]], name: str | None = None) -> DoclingDocument:
    """`document` as a `DoclingDocument`; `page_sizes` maps every page number to its size in points."""
    doc = require_docling()
    result = doc.DoclingDocument(name=name or document.document_id)
    for page_no in range(1, document.page_count + 1):
        width, height = page_sizes[page_no]
        result.add_page(page_no=page_no, size=doc.Size(width=width, height=height))

    def prov(block: Block, text: str) -> Any:
        width, height = page_sizes[block.page]
        x0, y0, x1, y1 = block.bbox or (0.0, 0.0, width, height)
        box = doc.BoundingBox(l=x0, t=y0, r=x1, b=y1, coord_origin=doc.CoordOrigin.TOPLEFT)
        return doc.ProvenanceItem(page_no=block.page, bbox=box, charspan=(0, len(text)))

    for block in document.blocks():
        if block.furniture:
            result.add_text(label=_furniture_label(doc, block, page_sizes[block.page][1]), text=block.text,
                            prov=prov(block, block.text), content_layer=doc.ContentLayer.FURNITURE)
        elif block.kind == "heading":
            result.add_heading(text=block.text, level=block.level or 1, prov=prov(block, block.text))
        elif block.kind == "list":
            group = result.add_list_group()
            for item in block.items or [block.text]:
                result.add_list_item(text=item, parent=group, prov=prov(block, item))
        elif block.kind == "table" and block.rows:
            result.add_table(data=_table_data(doc, block.rows), prov=prov(block, block.text))
        elif block.kind == "code":
            result.add_code(text=block.text, prov=prov(block, block.text))
        elif block.kind == "figure":
            picture = result.add_picture(prov=prov(block, block.text))
            if block.text:
                result.add_text(label=doc.DocItemLabel.CAPTION, text=block.text, parent=picture, prov=prov(block, block.text))
        else:
            label = doc.DocItemLabel.CAPTION if block.kind == "caption" else doc.DocItemLabel.TEXT  # body text, as Docling's converters label it
            result.add_text(label=label, text=block.text, prov=prov(block, block.text))
    return result


def _furniture_label(doc: Any, block: Block, page_height: float) -> Any:
    top = block.kind == "page_header" or (block.kind == "page_number" and block.bbox is not None and block.bbox[3] < page_height / 2)
    return doc.DocItemLabel.PAGE_HEADER if top else doc.DocItemLabel.PAGE_FOOTER


def _table_data(doc: Any, rows: list[list[str]]) -> Any:
    """Docling's grid of cells; medkg's first row is the header."""
    width = max(len(row) for row in rows)
    cells = [
        doc.TableCell(text=text, start_row_offset_idx=r, end_row_offset_idx=r + 1, start_col_offset_idx=c,
                      end_col_offset_idx=c + 1, column_header=r == 0)
        for r, row in enumerate(rows) for c, text in enumerate(row)
    ]  # fmt: skip
    return doc.TableData(num_rows=len(rows), num_cols=width, table_cells=cells)
