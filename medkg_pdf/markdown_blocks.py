"""Turn a page's markdown (as a VLM writes it) into typed blocks, with a real markdown parser.

VLMs mix GitHub tables and raw HTML tables (Qwen2.5-VL and olmOCR both emit `<table>`), so HTML
blocks are read with the standard library's HTML parser into rows; no HTML is passed through.
Tables become a rectangular grid: a spanning cell's text is repeated into every position it covers
(so each value stays under its header, for readers and for `table_cell_agreement`) and the span is
recorded in `Block.spans`; ragged rows are padded with empty cells so nothing shifts left.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from markdown_it import MarkdownIt
from markdown_it.token import Token

from medkg_pdf.schemas import Block

_md = MarkdownIt("commonmark", {"html": True}).enable("table")
_CAPTION = re.compile(r"^(figure|fig\.|table|chart|exhibit)\s*\d+[a-z]?\b", re.IGNORECASE)


class _HtmlText(HTMLParser):
    """Text and table cells of an HTML fragment; tags and scripts are dropped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[tuple[str, int, int]]] = []  # (text, rowspan, colspan) as written
        self.header_rows: set[int] = set()  # rows in <thead> or made only of <th>
        self.parts: list[str] = []
        self._cell: list[str] | None = None
        self._span = (1, 1)
        self._th = False
        self._row_th: list[bool] = []
        self._thead = 0
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "thead":
            self._thead += 1
        elif tag == "tr":
            self._new_row()
        elif tag in ("td", "th"):
            self._cell = []
            self._th = tag == "th"
            self._span = (_span(attrs, "rowspan"), _span(attrs, "colspan"))
        elif tag in ("br", "p", "div", "li"):
            self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag == "thead":
            self._thead = max(0, self._thead - 1)
        elif tag in ("td", "th") and self._cell is not None:
            if not self.rows:
                self._new_row()
            self.rows[-1].append((" ".join("".join(self._cell).split()), *self._span))
            self._row_th[-1] = self._row_th[-1] and self._th
            self._cell = None

    def _new_row(self) -> None:
        if self._thead:
            self.header_rows.add(len(self.rows))
        self.rows.append([])
        self._row_th.append(True)

    def header_count(self, kept: list[int]) -> int:
        """Leading kept rows that are header rows (<thead>, or all <th>)."""
        count = 0
        for index in kept:
            if index not in self.header_rows and not (self._row_th[index] and self.rows[index]):
                break
            count += 1
        return count

    def handle_data(self, data):
        if self._skip:
            return
        (self._cell if self._cell is not None else self.parts).append(data)
        if self._cell is not None:
            self.parts.append(data)


def _span(attrs, name: str) -> int:
    """A rowspan/colspan attribute, clamped: VLMs sometimes write 0, junk or absurd spans."""
    value = dict(attrs).get(name) or "1"
    digits = re.match(r"\s*(\d+)", value)
    return min(max(int(digits.group(1)), 1), 100) if digits else 1


def table_grid(
    rows: list[list[tuple[str, int, int]]],
) -> tuple[list[list[str]], list[list[int]]]:
    """Lay cells out on a grid: spans expanded (text repeated), ragged rows padded; spans as [row, col, rs, cs]."""
    grid: dict[tuple[int, int], str] = {}
    spans: list[list[int]] = []
    for r, row in enumerate(rows):
        c = 0
        for text, rowspan, colspan in row:
            while (r, c) in grid:
                c += 1
            rowspan = min(rowspan, len(rows) - r)  # a span cannot invent rows
            for dr in range(rowspan):
                for dc in range(colspan):
                    grid[(r + dr, c + dc)] = text
            if rowspan > 1 or colspan > 1:
                spans.append([r, c, rowspan, colspan])
            c += colspan
    width = max((c + 1 for _, c in grid), default=0)
    return [[grid.get((r, c), "") for c in range(width)] for r in range(len(rows))], spans


def _table_block(page: int, rows: list[list[str]], spans: list[list[int]] | None, header_rows: int) -> Block:
    return Block(
        kind="table",
        page=page,
        text="\n".join(" ".join(row) for row in rows),
        rows=rows,
        spans=spans or None,
        header_rows=header_rows,
    )


def _inline_text(token: Token) -> str:
    pieces = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            pieces.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            pieces.append(" ")
        elif child.type == "image":
            pieces.append(child.content)
    return " ".join("".join(pieces).split())


def _html_block(content: str, page: int) -> Block | None:
    parser = _HtmlText()
    parser.feed(content)
    parser.close()
    kept = [i for i, row in enumerate(parser.rows) if any(text for text, _, _ in row)]
    if kept:
        rows, spans = table_grid([parser.rows[i] for i in kept])
        return _table_block(page, rows, spans, parser.header_count(kept))
    text = " ".join("".join(parser.parts).split())
    return Block(kind="paragraph", page=page, text=text) if text else None


def markdown_to_blocks(markdown: str, page: int, line_confidence: list[float | None] | None = None) -> list[Block]:
    """The page's blocks; with `line_confidence` (one value per markdown line), each block gets the mean
    confidence of the lines it was parsed from (markdown-it's source map)."""
    tokens = _md.parse(markdown)
    blocks: list[Block] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        made = len(blocks)
        if token.type == "heading_open":
            text = _inline_text(tokens[i + 1])
            if text:
                blocks.append(Block(kind="heading", page=page, text=text, level=int(token.tag[1])))
            i += 3
        elif token.type == "paragraph_open":
            text = _inline_text(tokens[i + 1])
            if text:
                kind = "caption" if _CAPTION.match(text) else "paragraph"
                blocks.append(Block(kind=kind, page=page, text=text))
            i += 3
        elif token.type in ("bullet_list_open", "ordered_list_open"):
            close = token.type.replace("_open", "_close")
            depth, items, j, number = 0, [], i, ""
            while j < len(tokens):
                if tokens[j].type == token.type:
                    depth += 1
                elif tokens[j].type == close:
                    depth -= 1
                    if depth == 0:
                        break
                elif tokens[j].type == "list_item_open" and tokens[j].info:
                    # an ordered item keeps its number: "2. Methods", reference "1. Singer M" are content
                    number = f"{tokens[j].info}{tokens[j].markup} "
                elif tokens[j].type == "inline":
                    items.append(number + _inline_text(tokens[j]))
                    number = ""
                j += 1
            items = [item for item in items if item]
            if items:
                blocks.append(Block(kind="list", page=page, text="\n".join(items), items=items))
            i = j + 1
        elif token.type == "table_open":
            cells: list[list[tuple[str, int, int]]] = []
            header_rows = 0
            j = i
            while tokens[j].type != "table_close":
                if tokens[j].type == "tr_open":
                    cells.append([])
                elif tokens[j].type == "inline" and cells:
                    cells[-1].append((_inline_text(tokens[j]), 1, 1))
                elif tokens[j].type == "thead_close":
                    header_rows = len(cells)
                j += 1
            rows, _ = table_grid(cells)
            blocks.append(_table_block(page, rows, None, header_rows))
            i = j + 1
        elif token.type in ("fence", "code_block"):
            if token.content.strip():
                blocks.append(Block(kind="code", page=page, text=token.content.strip()))
            i += 1
        elif token.type == "html_block":
            block = _html_block(token.content, page)
            if block:
                blocks.append(block)
            i += 1
        else:
            i += 1
        if line_confidence and token.map and len(blocks) > made:
            blocks[made:] = _with_confidence(blocks[made:], line_confidence[token.map[0] : token.map[1]])
    return blocks


def _with_confidence(blocks: list[Block], lines: list[float | None]) -> list[Block]:
    scores = [score for score in lines if score is not None]
    if not scores:
        return blocks
    confidence = round(sum(scores) / len(scores), 4)
    return [block.model_copy(update={"confidence": confidence}) for block in blocks]
