"""CPU OCR of page images, and the layout heuristics that turn OCR lines into page markdown.

RapidOCR finds and reads text lines but knows nothing of columns, paragraphs, headings, lists or
tables. `lines_to_markdown` rebuilds that structure from geometry alone, so the embedded engine answers
in the same shape as a vision-language model would. The heuristics are deliberately simple; each one
says why it is made where it is made.
"""

from __future__ import annotations

import math
import re
import statistics
import struct
import threading
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from medkg_pdf.chat_contract import PNG_SIGNATURE, ChatContractError, png_size

__all__ = [
    "MAX_IMAGE_PIXELS",
    "ImageDecodeError",
    "OcrEngine",
    "OcrLine",
    "OcrPage",
    "decode_image",
    "image_size",
    "lines_to_markdown",
]

MAX_IMAGE_PIXELS = 50_000_000
"""Refuse larger images before decoding: a small PNG of one flat colour can claim billions of pixels."""

# Detector padding around each text line. RapidOCR's default (1.6) hugs the glyphs so tightly that its
# recogniser drops word spaces on 8-11 pt text at 150 DPI ("DischargeSummary"); 2.0 keeps them.
_UNCLIP_RATIO = 2.0
# RapidOCR's default scales the detector input up until its *shorter* side is 736 px: right for photos,
# but a 900x160 strip becomes 4140x736 and takes seconds. Page renders need no upscaling; only shrink
# images whose longer side exceeds 2000 px (RapidOCR shrinks those anyway).
_DETECTOR_LIMIT = {"det_limit_type": "max", "det_limit_side_len": 2000}
_BOX_THRESH = 0.5  # RapidOCR's default


class ImageDecodeError(ValueError):
    """The bytes are not an image this engine can read."""


@dataclass(frozen=True)
class OcrLine:
    text: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels
    score: float

    @property
    def x0(self) -> float:
        return self.box[0]

    @property
    def y0(self) -> float:
        return self.box[1]

    @property
    def x1(self) -> float:
        return self.box[2]

    @property
    def y1(self) -> float:
        return self.box[3]

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


@dataclass(frozen=True)
class OcrPage:
    markdown: str
    lines: list[OcrLine]
    width: int
    height: int


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from the PNG or JPEG header, without decoding any pixel."""
    if data.startswith(PNG_SIGNATURE):
        try:
            width, height = png_size(data)
        except ChatContractError:
            raise ImageDecodeError("truncated PNG header") from None
    elif data.startswith(b"\xff\xd8"):
        width, height = _jpeg_size(data)
    else:
        raise ImageDecodeError("not a PNG or JPEG image")
    if width == 0 or height == 0:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the JPEG marker segments to the first frame header (SOFn), which holds the size."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageDecodeError("corrupt JPEG header")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    raise ImageDecodeError("truncated JPEG header")


def decode_image(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG bytes to an 8-bit BGR array, as OpenCV and RapidOCR expect."""
    width, height = image_size(data)
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(f"image too large: {width}x{height} pixels (limit {MAX_IMAGE_PIXELS:,})")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageDecodeError("could not decode the image data")
    return _to_bgr8(image)


def _to_bgr8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    channels = image.shape[2]
    if channels == 2:  # grey + alpha
        return cv2.cvtColor(_flatten_alpha(image[:, :, :1], image[:, :, 1])[:, :, 0], cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return _flatten_alpha(image[:, :, :3], image[:, :, 3])
    return image


def _flatten_alpha(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite over white: transparent PNG pixels are usually black underneath, and a page is paper."""
    weight = alpha.astype(np.float32)[:, :, None] / 255.0
    return (color.astype(np.float32) * weight + 255.0 * (1.0 - weight)).round().astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# The OCR model
# --------------------------------------------------------------------------------------------------

# The recogniser was trained on Chinese as well as Latin text and sometimes answers full-width
# punctuation ("，") for ASCII; map the full-width block back to ASCII.
_FULLWIDTH_TO_ASCII = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


# A number run such as "10o0" with the letter o among at least two digits: the recogniser's commonest
# confusion on doses. "O2", "CO2" and "H2O" are left alone (a single digit, or a letter next to it).
_NUMBER_WITH_O = re.compile(r"(?<![^\W\d_])[\doO][\doO.,]*(?![^\W\d_])")


def _clean_text(text: str) -> str:
    text = " ".join(text.translate(_FULLWIDTH_TO_ASCII).split())
    return _NUMBER_WITH_O.sub(_zero_for_o, text)


def _zero_for_o(match: re.Match[str]) -> str:
    run = match.group(0)
    if sum(ch.isdigit() for ch in run) < 2:
        return run
    return run.replace("o", "0").replace("O", "0")


class OcrEngine:
    """RapidOCR, loaded once on first use and shared by worker threads.

    Loading takes a second or two, so it happens lazily under a lock (two first requests must not load
    two models). Recognition itself is safe to run from several threads: ONNX Runtime sessions are
    thread-safe and RapidOCR keeps no per-call state beyond an equivalent preprocessor it rebuilds.
    The direction classifier is off: it flips upright Latin lines to 180 degrees and garbles them, and
    pages rendered from PDFs are upright.
    """

    def __init__(self, *, num_threads: int | None = None, min_score: float = 0.5) -> None:
        self._num_threads = num_threads
        self._min_score = min_score
        self._model: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the model now (servers do this before they answer /health)."""
        self._ensure_model()

    def _ensure_model(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from rapidocr_onnxruntime import RapidOCR

                    self._model = RapidOCR(
                        use_cls=False,
                        text_score=self._min_score,
                        det_unclip_ratio=_UNCLIP_RATIO,
                        intra_op_num_threads=self._num_threads or -1,
                        **_DETECTOR_LIMIT,
                    )
        return self._model

    def recognize(self, png_bytes: bytes) -> list[OcrLine]:
        return self._read(decode_image(png_bytes))

    def to_markdown(self, png_bytes: bytes) -> OcrPage:
        image = decode_image(png_bytes)
        height, width = image.shape[:2]
        lines = self._read(image)
        return OcrPage(markdown=lines_to_markdown(lines, width, height), lines=lines, width=width, height=height)

    def to_grounded(self, png_bytes: bytes) -> list[tuple[str, float]]:
        """The page as DeepSeek-OCR-style regions (boxes as provenance), in pieces with the log of their
        recognition score (see `grounded_pieces`)."""
        image = decode_image(png_bytes)
        height, width = image.shape[:2]
        return grounded_pieces(self._read(image), width, height)

    def _read(self, image: np.ndarray) -> list[OcrLine]:
        # Any keyword makes RapidOCR 1.4 reset unclip_ratio, box_thresh and text_score to its defaults,
        # so all three are passed again with the one we need: the recogniser's character positions.
        result, _elapsed = self._ensure_model()(
            _pad_to_sane_aspect(image),
            return_word_box=True,
            unclip_ratio=_UNCLIP_RATIO,
            box_thresh=_BOX_THRESH,
            text_score=self._min_score,
        )
        if not result:
            return []
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        lines = []
        for polygon, text, score, char_boxes, chars, *_ in result:
            xs = [point[0] for point in polygon]
            ys = [point[1] for point in polygon]
            box = _ink_box(gray, (min(xs), min(ys), max(xs), max(ys)))
            text = _clean_text(_respace(text, chars, char_boxes, gray, box))
            if text:
                lines.append(OcrLine(text=text, box=box, score=float(score)))
        return lines


# ----- word spaces ----------------------------------------------------------------------------------

# The recogniser (trained mostly on Chinese, which has no word spaces) often runs words together in
# bold and large lines ("DISCHARGESUMMARY"). The ink does not: `_respace` puts a space back where the
# blank gap between two characters it read is wider than any gap inside a word. Gaps are measured in
# em (`_nominal_height`). Measured on the rendered samples (Helvetica, Times, Courier, 8-18 pt, 150
# DPI and the embedded render target): gaps between letters of one word stay under 0.24 em, dropped
# word spaces measure 0.24-0.45 em. Digits and punctuation have wider side bearings, so a pair with one
# needs 0.30 em; the digit 1 the widest ("11" in Helvetica measures 0.29-0.31 em, a space between two
# digits 0.31-0.36 em), so two digits with a 1 need 0.40 em.
_LETTER_GAP_EM = 0.24
_OTHER_GAP_EM = 0.30
_DIGIT_ONE_GAP_EM = 0.40
# In a line where the recogniser did read spaces, a new one must also be nearly as wide as those:
# monospaced fonts have wide gaps inside words too ("i" and "l" sit in a full-width cell).
_READ_SPACE_SHARE = 0.75
_NO_SPACE_AFTER = set("([{/^'\"$#")
_NO_SPACE_BEFORE = set(".,:;)]}%/^'\"!?")


def _respace(text: str, chars: Sequence[str], char_boxes: Sequence[Any], gray: np.ndarray, box: tuple[float, float, float, float]) -> str:
    """`text` with a space between consecutive characters that a word-wide blank gap separates.

    `chars` and `char_boxes` are the recogniser's characters (spaces included) and their boxes, centred
    on the CTC column that emitted each one; the widest ink-free run of pixel columns between two
    centres is the gap between the characters. Lines the positions don't match are left as read."""
    text, chars = text.translate(_FULLWIDTH_TO_ASCII), [ch.translate(_FULLWIDTH_TO_ASCII) for ch in chars]
    x0, y0, x1, y1 = (int(v) for v in box)
    if "".join(chars) != text or len(char_boxes) != len(chars) or y1 - y0 < 4 or x1 - x0 < y1 - y0:
        return text
    band = gray[y0:y1, x0:x1]
    paper = np.percentile(band, 90)  # not the median, which a bold line's ink outweighs
    blank = (band > paper - 60).all(axis=0)
    em = _nominal_height(OcrLine(text=text, box=box, score=0.0))
    centres = [(char_box[0][0] + char_box[1][0]) / 2 - x0 for char_box in char_boxes]
    read = [(ch, centre, i > 0 and chars[i - 1] == " ") for i, (ch, centre) in enumerate(zip(chars, centres)) if ch != " "]
    gaps = [_widest_run(blank, a[1], b[1]) / em for a, b in zip(read, read[1:])]
    read_spaces = [gap for gap, (_ch, _x, spaced) in zip(gaps, read[1:]) if spaced]
    floor = _READ_SPACE_SHARE * statistics.median(read_spaces) if read_spaces else 0.0
    out = [read[0][0]] if read else []
    for i, (gap, (ch, _x, spaced)) in enumerate(zip(gaps, read[1:]), start=1):
        earlier = read[i - 2][0] if i >= 2 else ""
        if spaced or gap >= max(floor, _gap_needed(earlier, read[i - 1][0], ch)):
            out.append(" ")
        out.append(ch)
    return "".join(out)


def _gap_needed(earlier: str, before: str, ch: str) -> float:
    """The gap (em) that makes a word space between `before` and `ch`; infinite where none belongs
    (before closing punctuation, after opening, inside "1.73" or "14:32")."""
    if before in _NO_SPACE_AFTER or ch in _NO_SPACE_BEFORE:
        return math.inf
    if before in ".:" and earlier.isdigit() and ch.isdigit():
        return math.inf
    if before.isalpha() and ch.isalpha():
        return _LETTER_GAP_EM
    return _DIGIT_ONE_GAP_EM if before.isdigit() and ch.isdigit() and "1" in (before, ch) else _OTHER_GAP_EM


def _widest_run(blank: np.ndarray, start: float, stop: float) -> int:
    """Length of the longest run of True in blank[start:stop]."""
    segment = blank[max(int(start), 0) : max(int(math.ceil(stop)), 0) + 1]
    if not segment.any():
        return 0
    edges = np.flatnonzero(np.diff(np.concatenate(([0], segment.astype(np.int8), [0]))))
    return int((edges[1::2] - edges[::2]).max())


def _pad_to_sane_aspect(image: np.ndarray) -> np.ndarray:
    """Pad a very thin strip with white (below or to the right, so coordinates hold). RapidOCR shrinks
    the longer side to 2000 px and rounds sides to multiples of 32; a 20x4000 strip would round to
    nothing and fail."""
    height, width = image.shape[:2]
    target_h, target_w = max(height, width // 16, 32), max(width, height // 16, 32)
    if (target_h, target_w) == (height, width):
        return image
    return cv2.copyMakeBorder(image, 0, target_h - height, 0, target_w - width, cv2.BORDER_CONSTANT, value=(255, 255, 255))


def _ink_box(gray: np.ndarray, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """Shrink a detector box to the ink of its own text line.

    The detector pads every box by an amount that grows slower than the font size: padded boxes of
    11 pt and 16 pt text differ by under 20 % in height, while their ink differs by about 40 %. Headings and
    gaps are judged on ink. Neighbouring lines may poke into the padding, so only the band of ink rows
    around the densest row counts.
    """
    height, width = gray.shape
    x0, y0 = max(int(box[0]), 0), max(int(box[1]), 0)
    x1, y1 = min(int(np.ceil(box[2])), width), min(int(np.ceil(box[3])), height)
    crop = gray[y0:y1, x0:x1]
    if crop.size == 0:
        return (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
    ink = np.abs(crop.astype(np.int16) - int(np.median(crop))) > 60
    row_ink = ink.sum(axis=1)
    if not row_ink.any():
        return (float(x0), float(y0), float(x1), float(y1))
    top = bottom = int(row_ink.argmax())
    bridge = 2  # tolerate thin blank rows inside a line (the dot of an i over a line without ascenders)
    while top > 0 and row_ink[max(top - 1 - bridge, 0) : top].any():
        top -= 1
    while bottom < len(row_ink) - 1 and row_ink[bottom + 1 : bottom + 2 + bridge].any():
        bottom += 1
    columns = np.flatnonzero(ink[top : bottom + 1].any(axis=0))
    return (float(x0 + columns[0]), float(y0 + top), float(x0 + columns[-1] + 1), float(y0 + bottom + 1))


# --------------------------------------------------------------------------------------------------
# Layout: OCR lines to markdown
# --------------------------------------------------------------------------------------------------

HEADING_RATIO = 1.3
"""A line this much taller than body text is a heading. Any lower and measurement noise (a pixel or
two on a 22-pixel line) starts turning body lines into headings."""

_BULLET_GLYPHS = "•·▪●◦‣∙■►"
# Bullets are glyphs, dashes or stars followed by a space; a small round bullet is often read as "." or
# ":", which never starts a line of prose when a letter follows.
_BULLET = re.compile(rf"^(?:[{_BULLET_GLYPHS}]\s*|[-*–]\s+|[.:]\s*(?=[^\W\d_]))(\S.*)$")
_NUMBERED = re.compile(r"^(\d{1,2})[.)]\s+(\S.*)$")


def grounded_pieces(lines: Sequence[OcrLine], width: float, height: float) -> list[tuple[str, float]]:
    """Like `lines_to_markdown`, each block preceded by `<|ref|>kind<|/ref|><|det|>[[x0, y0, x1, y1]]<|/det|>`
    with coordinates scaled to 0..999, the grounding format of DeepSeek-OCR; as (text, log-probability)
    pieces that spell the answer: each block's text carries the
    log of its lines' mean recognition score, what the engine has for a model's token log-probabilities;
    the tags and separators are certain (0.0)."""
    pieces: list[tuple[str, float]] = []
    for text, rows in _located_blocks(lines, width, height):
        x0 = min(row.x0 for row in rows)
        x1 = max(row.x1 for row in rows)
        y0 = min(row.top for row in rows)
        y1 = max(row.bottom for row in rows)
        box = [
            min(998, int(x0 / width * 999)), min(998, int(y0 / height * 999)),
            max(min(999, math.ceil(x1 / width * 999)), min(998, int(x0 / width * 999)) + 1),
            max(min(999, math.ceil(y1 / height * 999)), min(998, int(y0 / height * 999)) + 1),
        ]  # fmt: skip
        kind = "title" if text.startswith("# ") else "sub_title" if text.startswith("#") else "table" if text.startswith("|") else "text"
        scores = [cell.score for row in rows for cell in row.cells]
        score = min(max(sum(scores) / len(scores), 1e-6), 1.0) if scores else 1.0
        tag = ("\n\n" if pieces else "") + f"<|ref|>{kind}<|/ref|><|det|>[{box}]<|/det|>\n"
        pieces += [(tag, 0.0), (text, math.log(score))]
    return pieces


def lines_to_markdown(lines: Sequence[OcrLine], width: float, height: float) -> str:
    """Markdown for one page, from its OCR lines (any order) and the page size in pixels.

    Steps: split the page into reading-order segments (columns), group boxes into visual rows, measure
    the page's body line height and line spacing, then cut each segment's rows into headings, tables,
    lists and paragraphs.
    """
    return "\n\n".join(text for text, _rows in _located_blocks(lines, width, height))


def _located_blocks(lines: Sequence[OcrLine], width: float, height: float) -> list[tuple[str, list["_Row"]]]:
    """Each markdown block of the page with the rows it was made from."""
    lines = [_clamped(line, width, height) for line in lines if line.text.strip()]
    if not lines:
        return []
    gutter = _find_gutter(lines, width)
    segments = [_group_rows(segment) for segment in _reading_order(lines, gutter)]
    style = _PageStyle.measure(segments)
    page_width = width if gutter is None else None  # margins mirror only across a one-column page
    return [block for rows in segments for block in _blocks(rows, style, _right_margin(rows, page_width))]


def _clamped(line: OcrLine, width: float, height: float) -> OcrLine:
    x0, y0, x1, y1 = line.box
    box = (min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height))
    return OcrLine(text=line.text.strip(), box=box, score=line.score)


# ----- columns --------------------------------------------------------------------------------------


def _reading_order(lines: list[OcrLine], gutter: float | None) -> list[list[OcrLine]]:
    """Segments of lines in reading order.

    One column: the whole page is one segment. Two columns: walking down the page, lines that cross
    the gutter (a title, a full-width table caption) are segments of their own, and each stretch of
    column text between them becomes its left half followed by its right half. So a title stays above
    the columns and the left column is read to its end before the right one starts.
    """
    if gutter is None:
        return [lines]
    segments: list[list[OcrLine]] = []
    run: list[OcrLine] = []
    run_spans = False
    for line in sorted(lines, key=lambda item: item.y0):
        spans = line.x0 < gutter < line.x1
        if run and spans != run_spans:
            segments.extend(_split_run(run, run_spans, gutter))
            run = []
        run.append(line)
        run_spans = spans
    segments.extend(_split_run(run, run_spans, gutter))
    return segments


def _split_run(run: list[OcrLine], spans: bool, gutter: float) -> list[list[OcrLine]]:
    if spans:
        return [run]
    halves = ([line for line in run if line.x1 <= gutter], [line for line in run if line.x0 >= gutter])
    return [half for half in halves if half]


def _find_gutter(lines: list[OcrLine], width: float) -> float | None:
    """x of the white gap between two text columns, or None for a one-column page.

    A two-column layout puts its gutter in the middle band (30-70 % of the width). The best candidate
    is crossed by the fewest lines: a title may cross it, column text may not. `_looks_like_columns`
    then decides whether the lines beside it really are columns.
    """
    xs = np.arange(int(width * 0.3), int(width * 0.7) + 1)
    if len(xs) == 0:
        return None
    x0 = np.array([line.x0 for line in lines])[:, None]
    x1 = np.array([line.x1 for line in lines])[:, None]
    crossing = ((x0 < xs) & (xs < x1)).sum(axis=0)
    gutter = _widest_run_centre(xs[crossing == crossing.min()], width / 2)
    left = [line for line in lines if line.x1 <= gutter]
    right = [line for line in lines if line.x0 >= gutter]
    return gutter if _looks_like_columns(left, right, len(lines), gutter) else None


def _widest_run_centre(xs: np.ndarray, middle: float) -> float:
    """Centre of the widest run of consecutive x positions; ties go to the run nearest the middle."""
    runs = np.split(xs, np.flatnonzero(np.diff(xs) > 1) + 1)
    best = max(runs, key=lambda run: (len(run), -abs((run[0] + run[-1]) / 2 - middle)))
    return float(best[0] + best[-1]) / 2


def _looks_like_columns(left: list[OcrLine], right: list[OcrLine], total: int, gutter: float) -> bool:
    """Two columns need: most lines on one side or the other, both sides holding text side by side,
    and the lines of each side filling their column. The last test keeps tables whole: the cells of a
    two-column table also sit either side of a gap, but they are short."""
    if len(left) < 2 or len(right) < 2 or len(left) + len(right) < 0.5 * total:
        return False
    left_top, left_bottom = min(line.y0 for line in left), max(line.y1 for line in left)
    right_top, right_bottom = min(line.y0 for line in right), max(line.y1 for line in right)
    side_by_side = min(left_bottom, right_bottom) - max(left_top, right_top)
    if side_by_side < 0.5 * min(left_bottom - left_top, right_bottom - right_top):
        return False
    left_fill = statistics.median(line.width for line in left) / max(gutter - min(line.x0 for line in left), 1.0)
    right_fill = statistics.median(line.width for line in right) / max(max(line.x1 for line in right) - gutter, 1.0)
    return left_fill >= 0.6 and right_fill >= 0.6


# ----- rows -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    """The boxes of one visual line, left to right. Boxes far apart are separate cells."""

    cells: tuple[OcrLine, ...]

    @property
    def x0(self) -> float:
        return self.cells[0].x0

    @property
    def x1(self) -> float:
        return max(cell.x1 for cell in self.cells)

    @property
    def top(self) -> float:
        return min(cell.y0 for cell in self.cells)

    @property
    def bottom(self) -> float:
        return max(cell.y1 for cell in self.cells)

    @property
    def height(self) -> float:
        return max(cell.height for cell in self.cells)

    @property
    def size(self) -> float:
        return max(_nominal_height(cell) for cell in self.cells)

    @property
    def text(self) -> str:
        return " ".join(cell.text for cell in self.cells)


_ASCENDING = set("bdfhijklt0123456789!?%&#'\"()[]{}/\\|@$")
_DESCENDING = set("gjpqy,;()[]{}|@$µ")


def _nominal_height(line: OcrLine) -> float:
    """The height the line's box would have if its text had both ascenders and descenders.

    A box spans the ink from the tallest ascender to the deepest descender, so "Medications" is a fifth
    shorter than "Frequency" at the same font size, and comparing raw heights would miss headings
    without descenders. In font units, ascenders and capitals
    reach about 0.75 em, lowercase letters 0.53 em, descenders 0.21 em below the baseline.
    """
    text = line.text
    top = 0.75 if any(ch.isupper() or ch in _ASCENDING for ch in text) else 0.53
    bottom = 0.21 if any(ch in _DESCENDING for ch in text) else 0.0
    return line.height * 0.96 / (top + bottom)


def _group_rows(lines: list[OcrLine]) -> list[_Row]:
    """Boxes that overlap vertically by half the smaller height share a visual line: the detector cuts
    a line at wide gaps (table cells, tab stops), and this puts the pieces side by side again."""
    groups: list[list[OcrLine]] = []
    for line in sorted(lines, key=lambda item: (item.y0 + item.y1) / 2):
        if groups and _same_row(groups[-1], line):
            groups[-1].append(line)
        else:
            groups.append([line])
    return [_make_row(group) for group in groups]


def _same_row(group: list[OcrLine], line: OcrLine) -> bool:
    top, bottom = min(item.y0 for item in group), max(item.y1 for item in group)
    overlap = min(bottom, line.y1) - max(top, line.y0)
    return overlap >= 0.5 * min(line.height, statistics.median(item.height for item in group))


def _make_row(group: list[OcrLine]) -> _Row:
    """Merge pieces closer than one line height (a word space the detector split on) and a lone bullet
    with the text after it; what stays apart is a cell."""
    pieces = sorted(group, key=lambda item: item.x0)
    cells = [pieces[0]]
    for piece in pieces[1:]:
        last = cells[-1]
        lone_bullet = len(last.text) == 1 and last.text in _BULLET_GLYPHS + "-*–"
        if lone_bullet or piece.x0 - last.x1 < max(last.height, piece.height):
            cells[-1] = _merge(last, piece)
        else:
            cells.append(piece)
    return _Row(tuple(cells))


def _merge(a: OcrLine, b: OcrLine) -> OcrLine:
    box = (min(a.x0, b.x0), min(a.y0, b.y0), max(a.x1, b.x1), max(a.y1, b.y1))
    return OcrLine(text=f"{a.text} {b.text}", box=box, score=min(a.score, b.score))


# ----- page style -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PageStyle:
    """Page-wide yardsticks: the body line height, the tallest heading, the gap that ends a paragraph."""

    body_height: float
    top_heading_height: float
    paragraph_gap: float

    @classmethod
    def measure(cls, segments: list[list[_Row]]) -> _PageStyle:
        """Body text is the size most characters are set in (a median weighted by characters, so a few
        headings on a short page don't pull it up). The usual gap between rows is line spacing inside
        a paragraph; a gap clearly wider (by almost half a line) separates paragraphs. Measuring the
        usual gap rather than fixing it keeps double-spaced documents from becoming one paragraph per
        line."""
        rows = [row for segment in segments for row in segment]
        body = _weighted_median([(row.size, len(row.text)) for row in rows]) or 1.0
        headings = [row.size for row in rows if row.size >= HEADING_RATIO * body and len(row.text) <= 150]
        gaps = [
            below.top - above.bottom
            for segment in segments
            for above, below in zip(segment, segment[1:])
            if 0 <= below.top - above.bottom <= 2 * body
        ]
        usual_gap = statistics.median(gaps) if gaps else 0.3 * body
        return cls(
            body_height=body,
            top_heading_height=max(headings, default=0.0),
            paragraph_gap=max(0.6 * body, usual_gap + 0.45 * body),
        )

    def heading_level(self, row: _Row) -> int:
        """0 for body text; 1 for the page's largest heading size (within 15 %), 2 for smaller ones."""
        if row.size < HEADING_RATIO * self.body_height or len(row.text) > 150:
            return 0
        return 1 if row.size >= self.top_heading_height / 1.15 else 2


def _weighted_median(values: list[tuple[float, int]]) -> float:
    ordered = sorted(values)
    half = sum(weight for _, weight in ordered) / 2
    seen = 0
    for value, weight in ordered:
        seen += weight
        if seen >= half:
            return value
    return ordered[-1][0]


# ----- blocks ---------------------------------------------------------------------------------------


def _right_margin(rows: list[_Row], page_width: float | None) -> float:
    """Where a full line of this segment would end: at the right end of its longest line. On a
    one-column page where no line comes near the mirror image of the left margin, nothing wraps (a
    list, a form, short entries), and the mirrored margin is the better guess."""
    longest = max(row.x1 for row in rows)
    if page_width is None:
        return longest
    left = min(row.x0 for row in rows)
    mirrored = page_width - left
    return longest if longest - left >= 0.75 * (mirrored - left) else mirrored


def _blocks(rows: list[_Row], style: _PageStyle, right_edge: float) -> list[tuple[str, list[_Row]]]:
    """Cut one segment's rows into markdown blocks (headings, tables, lists, paragraphs) and their rows."""
    blocks: list[tuple[str, list[_Row]]] = []
    i = 0
    while i < len(rows):
        start = i
        level = style.heading_level(rows[i])
        table = _take_table(rows, i, style) if not level and len(rows[i].cells) >= 2 else None
        if level:
            block, i = _take_heading(rows, i, level, style)
        elif table:
            block, i = table
        elif _list_marker(rows[i].text):
            block, i = _take_list(rows, i, style, right_edge)
        else:
            block, i = _take_paragraph(rows, i, style, right_edge)
        blocks.append((block, rows[start:i]))
    return blocks


def _take_heading(rows: list[_Row], i: int, level: int, style: _PageStyle) -> tuple[str, int]:
    """A heading wrapped over several lines is one heading."""
    parts = [rows[i].text]
    j = i + 1
    while j < len(rows) and style.heading_level(rows[j]) == level and rows[j].top - rows[j - 1].bottom <= 0.6 * rows[j].height:
        parts.append(rows[j].text)
        j += 1
    return "#" * level + " " + " ".join(parts), j


def _take_paragraph(rows: list[_Row], i: int, style: _PageStyle, right_edge: float) -> tuple[str, int]:
    parts = [rows[i].text]
    j = i + 1
    while j < len(rows) and _continues_paragraph(rows[j - 1], rows[j], style, right_edge):
        parts.append(rows[j].text)
        j += 1
    return _escape_block_start(_join_lines(parts)), j


def _continues_paragraph(above: _Row, row: _Row, style: _PageStyle, right_edge: float) -> bool:
    if row.top - above.bottom > style.paragraph_gap:
        return False
    if style.heading_level(row) or len(row.cells) >= 2 or _list_marker(row.text):
        return False
    return not _ends_early(above, row, right_edge)


def _ends_early(above: _Row, row: _Row, right_edge: float) -> bool:
    """A line that stops while the next line's first word would still have fit was broken on purpose
    (end of a paragraph, an address line, a form field), so the next line starts a new block."""
    char_width = (above.x1 - above.x0) / max(len(above.text), 1)
    first_word = row.text.split()[0]
    return right_edge - above.x1 > (len(first_word) + 2) * char_width


def _join_lines(parts: list[str]) -> str:
    """Join wrapped lines; a word hyphenated across the break ("treat-" / "ment") is mended."""
    text = parts[0]
    for part in parts[1:]:
        if len(text) > 1 and text.endswith("-") and text[-2].isalpha() and part[:1].islower():
            text = text[:-1] + part
        else:
            text = f"{text} {part}"
    return text


def _list_marker(text: str) -> tuple[str, str] | None:
    """("- ", rest) for a bulleted line, ("3. ", rest) for a numbered one, else None."""
    if match := _BULLET.match(text):
        return "- ", match.group(1)
    if match := _NUMBERED.match(text):
        return f"{match.group(1)}. ", match.group(2)
    return None


def _take_list(rows: list[_Row], i: int, style: _PageStyle, right_edge: float) -> tuple[str, int]:
    """Consecutive items of one kind (bulleted or numbered) make one list.

    A line indented past the item's marker (a hanging indent) continues the item when the line above
    ran to the margin. When the line above stopped early, the indented line is the next item and OCR
    lost its bullet, which small bullets often suffer.
    """
    bulleted = _list_marker(rows[i].text)[0] == "- "  # type: ignore[index]  # the caller checked
    items: list[str] = []
    j = i
    while j < len(rows):
        marker = _list_marker(rows[j].text)
        if j > i:
            if rows[j].top - rows[j - 1].bottom > 2 * style.body_height or style.heading_level(rows[j]):
                break
            if marker is None and bulleted and _hangs_under(rows[i], rows[j], style) and _ends_early(rows[j - 1], rows[j], right_edge):
                marker = ("- ", rows[j].text)
            if marker is None or (marker[0] == "- ") != bulleted:
                break
        parts = [marker[1]]  # type: ignore[index]  # the first row is an item, later ones checked above
        j += 1
        while j < len(rows) and _continues_item(rows[i], rows[j - 1], rows[j], style, right_edge):
            parts.append(rows[j].text)
            j += 1
        items.append(marker[0] + _join_lines(parts))  # type: ignore[index]
    return "\n".join(items), j


def _hangs_under(first_item: _Row, row: _Row, style: _PageStyle) -> bool:
    return row.x0 >= first_item.x0 + 0.5 * style.body_height


def _continues_item(first_item: _Row, above: _Row, row: _Row, style: _PageStyle, right_edge: float) -> bool:
    return (
        _list_marker(row.text) is None
        and not style.heading_level(row)
        and len(row.cells) == 1
        and _hangs_under(first_item, row, style)
        and row.top - above.bottom <= style.paragraph_gap
        and not _ends_early(above, row, right_edge)
    )


# ----- tables ---------------------------------------------------------------------------------------


def _take_table(rows: list[_Row], i: int, style: _PageStyle) -> tuple[str, int] | None:
    """Consecutive rows of two or more cells whose cells line up in columns; at least two rows.

    The first row sets the columns; each later row must fit into them (see `_fit_columns`), and the
    columns widen to the cells they take. A row that does not fit, has a single cell, or sits more
    than two lines below ends the table.
    """
    columns = [[cell.x0, cell.x1] for cell in rows[i].cells]
    grid = [[cell.text for cell in rows[i].cells]]
    spanning: dict[int, str] = {}  # a cell spanning down into the next row: its slot and text
    j = i + 1
    while j < len(rows) and rows[j].top - rows[j - 1].bottom <= 2 * style.body_height:
        if len(rows[j].cells) == 1 and len(grid) >= 2:
            spanned = _spanning_cell(rows, j, columns, grid[-1])
            if spanned is None:
                break
            slot, text = spanned
            grid[-1][slot] = spanning[slot] = text  # its text fills every row it covers, as HTML spans are expanded
            j += 1
            continue
        slots = _fit_columns(rows[j].cells, columns) if len(rows[j].cells) >= 2 else None
        if slots is None:
            break
        record = [""] * len(columns)
        for cell, slot in zip(rows[j].cells, slots):
            record[slot] = cell.text
            columns[slot] = [min(columns[slot][0], cell.x0), max(columns[slot][1], cell.x1)]
        for slot, text in spanning.items():
            record[slot] = record[slot] or text
        spanning = {}
        grid.append(record)
        j += 1
    if len(grid) < 2:
        return None
    return _pipe_table(grid), j


def _spanning_cell(rows: list[_Row], j: int, columns: list[list[float]], above: list[str]) -> tuple[int, str] | None:
    """A lone cell between two table rows, in a column both leave empty: a cell spanning them (rowspan),
    drawn vertically centred, so OCR sees it as a line of its own. None when it is anything else."""
    (cell,) = rows[j].cells
    slots = _fit_columns([cell], columns)
    if slots is None or above[slots[0]] or j + 1 >= len(rows) or len(rows[j + 1].cells) < 2:
        return None
    below = _fit_columns(rows[j + 1].cells, columns)
    if below is None or slots[0] in below:
        return None
    return slots[0], cell.text


def _fit_columns(cells: Sequence[OcrLine], columns: list[list[float]]) -> list[int] | None:
    """Column slots for the cells, or None when they don't line up.

    Each column owns the x-range up to the middle of the white gap to its neighbours, so left-, right-
    and centre-aligned cells all land in their column. A cell reaching across a gap's middle, or two
    cells in one column, means the row is laid out differently: not part of this table.
    """
    boundaries = [(left[1] + right[0]) / 2 for left, right in zip(columns, columns[1:])]
    slots = []
    for cell in cells:
        if any(cell.x0 < boundary < cell.x1 for boundary in boundaries):
            return None
        slots.append(bisect_left(boundaries, (cell.x0 + cell.x1) / 2))
    return slots if all(a < b for a, b in zip(slots, slots[1:])) else None


def _pipe_table(grid: list[list[str]]) -> str:
    width = max(len(record) for record in grid)
    lines = ["| " + " | ".join(cell.replace("|", "\\|") for cell in record + [""] * (width - len(record))) + " |" for record in grid]
    lines.insert(1, "|" + "---|" * width)
    return "\n".join(lines)


def _escape_block_start(text: str) -> str:
    """OCR text that happens to start like markdown syntax ("# 3 of 5", "> 5 mg") stays text."""
    return "\\" + text if text[:1] in ("#", ">", "|") else text
