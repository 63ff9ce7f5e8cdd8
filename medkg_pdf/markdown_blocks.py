"""Turn a page's markdown (as a VLM writes it) into typed blocks, with a real markdown parser.

VLMs mix GitHub tables and raw HTML tables (Qwen2.5-VL and olmOCR both emit `<table>`), so HTML
blocks are read with the standard library's HTML parser into rows; no HTML is passed through.
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
        self.rows: list[list[str]] = []
        self.parts: list[str] = []
        self._cell: list[str] | None = None
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("br", "p", "div", "li"):
            self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in ("td", "th") and self._cell is not None:
            if not self.rows:
                self.rows.append([])
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._skip:
            return
        (self._cell if self._cell is not None else self.parts).append(data)
        if self._cell is not None:
            self.parts.append(data)


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
    rows = [row for row in parser.rows if any(cell for cell in row)]
    if rows:
        return Block(kind="table", page=page, text="\n".join(" ".join(row) for row in rows), rows=rows)
    text = " ".join("".join(parser.parts).split())
    return Block(kind="paragraph", page=page, text=text) if text else None


def markdown_to_blocks(markdown: str, page: int) -> list[Block]:
    tokens = _md.parse(markdown)
    blocks: list[Block] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
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
            depth, items, j = 0, [], i
            while j < len(tokens):
                if tokens[j].type == token.type:
                    depth += 1
                elif tokens[j].type == close:
                    depth -= 1
                    if depth == 0:
                        break
                elif tokens[j].type == "inline":
                    items.append(_inline_text(tokens[j]))
                j += 1
            items = [item for item in items if item]
            if items:
                blocks.append(Block(kind="list", page=page, text="\n".join(items), items=items))
            i = j + 1
        elif token.type == "table_open":
            rows: list[list[str]] = []
            j = i
            while tokens[j].type != "table_close":
                if tokens[j].type == "tr_open":
                    rows.append([])
                elif tokens[j].type == "inline" and rows:
                    rows[-1].append(_inline_text(tokens[j]))
                j += 1
            blocks.append(Block(kind="table", page=page, text="\n".join(" ".join(r) for r in rows), rows=rows))
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
    return blocks
