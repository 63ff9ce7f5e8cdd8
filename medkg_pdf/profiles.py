"""Model profiles: what each VLM family wants (prompt, image size, sampling) and how to read its answer.

An operator switches models by configuration alone (`MEDKG_VLLM_MODEL`, optionally
`MEDKG_VLLM_PROFILE`); the profile name and prompt version are part of every page's cache key,
so a switch re-parses and the quality comparison shows its effect.

| profile       | served model (e.g.)                 | image rule                          | answer format                          |
|---------------|-------------------------------------|-------------------------------------|----------------------------------------|
| qwen2.5-vl    | Qwen/Qwen2.5-VL-7B-Instruct         | drawn at 2.7k 28-px patches (≤ 3.6k), sides × 28 | markdown (HTML tables allowed) |
| deepseek-ocr  | deepseek-ai/DeepSeek-OCR            | longest side 1024 (Base mode)       | `<|ref|>kind<|/ref|><|det|>[[x1,y1,x2,y2]]<|/det|>` + text, 0–999 coords |
| olmocr-2      | allenai/olmOCR-2-7B-1025            | longest side 1288                   | YAML front matter + markdown           |
| embedded-ocr  | medkg-embedded-ocr                  | longest side 2000                   | grounded like DeepSeek-OCR             |

Every page is drawn to its profile's `render_target()`, scaled up or down whatever its size in
inches, so a 2.5x4-inch leaflet reaches the model as legible as a letter page.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from medkg_pdf.page_render import RenderTarget

import yaml

from medkg_pdf.chat_contract import EMBEDDED_MODEL, PATCH_PX, image_tokens
from medkg_pdf.schemas import Region


class InvalidAnswerError(ValueError):
    """The answer does not follow the profile's format; the page becomes `invalid_response`."""


@dataclass
class ParsedAnswer:
    markdown: str
    regions: list[Region] = field(default_factory=list)
    rotation_correction: int = 0  # degrees clockwise the image must turn to read upright (olmOCR)
    front_matter: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelProfile:
    """Everything model-specific, so that a new model family is a new profile and nothing else."""

    name: str
    prompt: str
    prompt_version: str
    max_tokens: int = 4096  # completion budget when the resource leaves `max_tokens` unset
    extra_body: dict[str, Any] = field(default_factory=dict)  # vLLM sampling extras for this family
    patch_px: int = PATCH_PX  # side of the image tile that costs one prompt token

    def render_target(self) -> RenderTarget:
        """The image this family reads best: what every page is drawn to (up or down), whatever its size."""
        return RenderTarget(pixels=DEFAULT_RENDER_PIXELS)

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The size to send; only ever smaller than the rendered page (we never upscale)."""
        return width, height

    def image_tokens(self, width: int, height: int) -> int:
        """What the image costs in the context window, which the client must fit before it sends."""
        return image_tokens(width, height, self.patch_px)

    def size_within(self, width: int, height: int, tokens: int) -> tuple[int, int]:
        """The largest size of the same shape that costs at most `tokens`, so the page is encoded once."""
        needed = self.image_tokens(width, height)
        if needed <= tokens:
            return width, height
        factor = math.sqrt(tokens / needed) * 0.98
        while True:
            new_w, new_h = max(1, int(width * factor)), max(1, int(height * factor))
            if self.image_tokens(new_w, new_h) <= tokens:
                return new_w, new_h
            factor *= 0.95

    def parse(self, raw: str) -> ParsedAnswer:
        return ParsedAnswer(markdown=strip_fences(raw))


_FENCE = re.compile(r"^\s*```(?:markdown|md)?\s*\n(.*?)\n```\s*$", re.DOTALL)


def strip_fences(text: str) -> str:
    """Chat models like to wrap the whole page in ```markdown fences."""
    match = _FENCE.match(text)
    return match.group(1) if match else text


def _fit_longest_side(width: int, height: int, longest: int) -> tuple[int, int]:
    scale = min(1.0, longest / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


# 2.7k 28-px patches: what a letter page at 150 DPI was (1275x1650), kept for every page size
DEFAULT_RENDER_PIXELS = 2700 * PATCH_PX * PATCH_PX


@dataclass(frozen=True)
class QwenProfile(ModelProfile):
    """Qwen2.5-VL reads images in 28x28 patches; sides are multiples of 28 within a pixel budget."""

    max_pixels: int = 3600 * PATCH_PX * PATCH_PX
    render_pixels: int = DEFAULT_RENDER_PIXELS  # pages are drawn at this area; max_pixels is the ceiling sent

    def render_target(self) -> RenderTarget:
        return RenderTarget(pixels=min(self.render_pixels, self.max_pixels))

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        if width * height <= self.max_pixels:
            return width, height  # vLLM's processor rounds to whole patches itself
        scale = math.sqrt(self.max_pixels / (width * height))
        patch = self.patch_px
        return (
            max(patch, math.floor(width * scale / patch) * patch),
            max(patch, math.floor(height * scale / patch) * patch),
        )


_GROUNDED = re.compile(r"<\|ref\|>(.*?)<\|/ref\|>\s*<\|det\|>(.*?)<\|/det\|>", re.DOTALL)
_TAG = re.compile(r"<\|/?(?:ref|det|grounding)\|>")
_KINDS = {
    "title": "heading", "sub_title": "heading", "text": "paragraph", "table": "table", "table_caption": "caption",
    "image_caption": "caption", "figure_caption": "caption", "image": "figure", "figure": "figure",
    "list": "list", "equation": "paragraph", "header": "page_header", "footer": "page_footer",
}  # fmt: skip


def parse_grounded(raw: str, coordinate_max: float = 999.0) -> ParsedAnswer:
    """DeepSeek-OCR grounding: each region is a ref (kind) and a det box, followed by its text."""
    if raw.count("<|ref|>") != raw.count("<|/ref|>") or raw.count("<|det|>") != raw.count("<|/det|>"):
        raise InvalidAnswerError("unbalanced grounding tags (<|ref|>/<|det|>)")
    matches = list(_GROUNDED.finditer(raw))
    if not matches:
        if _TAG.search(raw):
            raise InvalidAnswerError("grounding tags present but no <|ref|>…<|det|> pair parsed")
        return ParsedAnswer(markdown=strip_fences(raw).strip())
    regions = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(raw)
        text = raw[match.end() : end].strip()
        label = match.group(1).strip().lower()
        for box in _boxes(match.group(2), coordinate_max):
            regions.append(Region(label=label, kind=_KINDS.get(label, "paragraph"), text=text, bbox=box))
            text = ""  # several boxes for one ref: the text belongs to the first
    markdown = "\n\n".join(r.text for r in regions if r.text and r.kind not in ("page_header", "page_footer"))
    return ParsedAnswer(markdown=markdown, regions=regions)


def _boxes(det: str, coordinate_max: float) -> list[tuple[float, float, float, float]]:
    try:
        value = yaml.safe_load(det)
    except yaml.YAMLError:
        raise InvalidAnswerError(f"unreadable box {det[:60]!r}") from None
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidAnswerError(f"unreadable box {det[:60]!r}")
    boxes = []
    for box in value:
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise InvalidAnswerError(f"a box needs 4 numbers, got {box!r:.60}")
        x1, y1, x2, y2 = box
        if not (0 <= x1 < x2 <= coordinate_max and 0 <= y1 < y2 <= coordinate_max):
            raise InvalidAnswerError(f"box {box} out of range 0..{coordinate_max:g} or inverted")
        boxes.append((x1 / coordinate_max, y1 / coordinate_max, x2 / coordinate_max, y2 / coordinate_max))
    return boxes


@dataclass(frozen=True)
class DeepSeekOcrProfile(ModelProfile):
    """Base mode: the whole page at 1024 px, no multi-crop; tags kept (skip_special_tokens off)."""

    base_size: int = 1024

    def render_target(self) -> RenderTarget:
        return RenderTarget(longest_side=self.base_size)

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        return _fit_longest_side(width, height, self.base_size)

    def parse(self, raw: str) -> ParsedAnswer:
        return parse_grounded(raw)


_FRONT_MATTER = re.compile(r"^\s*---\s*\n(.*?)\n---\s*(?:\n|$)(.*)$", re.DOTALL)
_OLMOCR_KEYS = ("primary_language", "is_rotation_valid", "rotation_correction", "is_table", "is_diagram")


@dataclass(frozen=True)
class OlmOcrProfile(ModelProfile):
    """olmOCR-2 answers YAML front matter then the page text; pages go in at 1288 px longest side."""

    longest_side: int = 1288

    def render_target(self) -> RenderTarget:
        return RenderTarget(longest_side=self.longest_side)

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        return _fit_longest_side(width, height, self.longest_side)

    def parse(self, raw: str) -> ParsedAnswer:
        match = _FRONT_MATTER.match(strip_fences(raw))
        if not match:
            raise InvalidAnswerError("olmOCR answer has no YAML front matter (--- … ---)")
        try:
            meta = yaml.safe_load(match.group(1)) or {}
        except yaml.YAMLError as error:
            raise InvalidAnswerError(f"front matter is not YAML: {str(error)[:100]}") from None
        if not isinstance(meta, dict) or any(key not in meta for key in _OLMOCR_KEYS):
            raise InvalidAnswerError(f"front matter lacks one of {', '.join(_OLMOCR_KEYS)}")
        rotation = meta.get("rotation_correction")
        if rotation not in (0, 90, 180, 270):
            raise InvalidAnswerError(f"rotation_correction must be 0, 90, 180 or 270, got {rotation!r}")
        needs_turn = meta.get("is_rotation_valid") is False and rotation != 0
        return ParsedAnswer(markdown=match.group(2).strip(), rotation_correction=rotation if needs_turn else 0, front_matter=meta)


PROFILES: dict[str, ModelProfile] = {
    "qwen2.5-vl": QwenProfile(
        name="qwen2.5-vl",
        prompt=(
            "Convert this page of a medical document to markdown. Keep the reading order (left column before "
            "right column), headings as #, lists as -, tables as markdown tables, and copy every number, dose, "
            "unit and percentage exactly. Output only the markdown."
        ),
        prompt_version="qwen-page-markdown-v1",
    ),
    "deepseek-ocr": DeepSeekOcrProfile(
        name="deepseek-ocr",
        prompt="<|grounding|>Convert the document to markdown.",  # vLLM's chat template adds <image>\n
        prompt_version="deepseek-grounding-v1",
        max_tokens=4096,
        extra_body={"skip_special_tokens": False},
    ),
    "olmocr-2": OlmOcrProfile(
        name="olmocr-2",
        prompt=(
            "Attached is one page of a document that you must process. Just return the plain text representation "
            "of this document as if you were reading it naturally. Convert equations to LateX and tables to HTML.\n"
            "If there are any figures or charts, label them with the following markdown syntax "
            "![Alt text describing the contents of the figure](page_startx_starty_width_height.png)\n"
            "Return your output as markdown, with a front matter section on top specifying values for the "
            "primary_language, is_rotation_valid, rotation_correction, is_table, and is_diagram parameters."
        ),
        prompt_version="olmocr-v4-yaml",
        max_tokens=4096,
    ),
    "embedded-ocr": DeepSeekOcrProfile(
        name="embedded-ocr",
        prompt="<|grounding|>Convert the document to markdown.",
        prompt_version="embedded-grounding-v1",
        # RapidOCR's word recall, a 2.5x4-inch page vs the same text on a letter page (11 pt / 8 pt type),
        # by longest side: 1288 px 0.885/- vs 0.985/-, 1600 0.985/0.702 vs 1.000/1.000, 2000 0.992/0.954 vs
        # 1.000/0.985, 2400 0.985/0.924 vs 1.000/1.000 (its detector works at <= 2000 px anyway)
        base_size=2000,
    ),
}


def infer_profile(model: str) -> str:
    """The default profile from the served model's name."""
    name = model.lower()
    if "deepseek-ocr" in name or "deepseek_ocr" in name:
        return "deepseek-ocr"
    if "olmocr" in name:
        return "olmocr-2"
    if name == EMBEDDED_MODEL:
        return "embedded-ocr"
    return "qwen2.5-vl"


def get_profile(name: str | None, model: str) -> ModelProfile:
    key = name or infer_profile(model)
    if key not in PROFILES:
        raise ValueError(f"unknown model profile {key!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[key]
