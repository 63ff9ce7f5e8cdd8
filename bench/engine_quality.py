"""How well does the embedded engine read? One step: the OCR engine on pages rendered as the pipeline renders them.

Every sample PDF of `medkg_pdf.samples` (exact per-page text known) is rendered with the
pipeline's own `draw_page` to the embedded profile's render target, read by `OcrEngine.to_markdown`, and compared with the truth:

* word recall: share of the truth's words (bag of words, `metrics.words`) found in the output;
* numeric recall: `metrics.numeric_recall`, the measure the 0.99 quality gate uses;
* merged words: output words that are two consecutive truth words run together
  ("dischargesummary"), the engine's dropped-space failure, listed;
* seconds per page: wall time of `to_markdown` (decode, detect, recognise, layout), model loaded.

Blank pages are skipped. Run from the repository root:
`python -m bench.engine_quality [--threads N]`. Other engines can be measured with `measure(recognize)`.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pymupdf

from medkg_pdf import metrics
from medkg_pdf.page_render import draw_page
from medkg_pdf.profiles import PROFILES
from medkg_pdf.samples import sample_pdfs
from medkg_pdf.validation import MAX_IMAGE_BYTES

TARGET = PROFILES["embedded-ocr"].render_target()  # what the pipeline draws pages to for this engine


@dataclass
class DocumentScore:
    name: str
    pages: int = 0
    seconds: float = 0.0
    found: Counter = field(default_factory=Counter)
    wanted: Counter = field(default_factory=Counter)
    numbers_wanted: int = 0
    numbers_missing: list[str] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)

    @property
    def word_recall(self) -> float:
        return sum((self.found & self.wanted).values()) / max(sum(self.wanted.values()), 1)

    @property
    def numeric_recall(self) -> float:
        return 1 - len(self.numbers_missing) / self.numbers_wanted if self.numbers_wanted else 1.0

    def add(self, output: str, truth: str, seconds: float) -> None:
        self.pages += 1
        self.seconds += seconds
        self.found.update(metrics.words(output))
        self.wanted.update(metrics.words(truth))
        self.numbers_wanted += len(metrics.numeric_tokens(truth))
        self.numbers_missing += metrics.numeric_recall(output, truth)[1]
        self.merged += merged_words(output, truth)


def merged_words(output: str, truth: str) -> list[str]:
    """Output words that are two consecutive truth words concatenated (and not a truth word themselves)."""
    truth_words = metrics.words(truth)
    pairs = {a + b for a, b in zip(truth_words, truth_words[1:])} - set(truth_words)
    return [word for word in metrics.words(output) if word in pairs]


def rendered_samples() -> list[tuple[str, list[tuple[bytes, str]]]]:
    """(sample name, [(page PNG, page truth)]) for every sample, blank pages left out."""
    out = []
    for sample in sample_pdfs():
        with pymupdf.open(stream=sample.data, filetype="pdf") as doc:
            pages = [(draw_page(doc[i], TARGET, MAX_IMAGE_BYTES)[0], truth) for i, truth in enumerate(sample.pages) if truth]
        out.append((sample.name, pages))
    return out


def measure(recognize: Callable[[bytes], str]) -> list[DocumentScore]:
    scores = []
    for name, pages in rendered_samples():
        score = DocumentScore(name)
        for png, truth in pages:
            start = time.perf_counter()
            output = recognize(png)
            score.add(output, truth, time.perf_counter() - start)
        scores.append(score)
    return scores


def table(scores: list[DocumentScore]) -> str:
    rows = ["| document | pages | word recall | numeric recall | merged words | s/page | missed numbers |", "|---|---|---|---|---|---|---|"]
    total = DocumentScore("all samples")
    for s in scores:
        rows.append(
            f"| {s.name} | {s.pages} | {s.word_recall:.4f} | {s.numeric_recall:.4f} | {len(s.merged)} | "
            f"{s.seconds / max(s.pages, 1):.2f} | {', '.join(s.numbers_missing[:10])} |"
        )
        total.pages += s.pages
        total.seconds += s.seconds
        total.found += s.found
        total.wanted += s.wanted
        total.numbers_wanted += s.numbers_wanted
        total.numbers_missing += s.numbers_missing
        total.merged += s.merged
    rows.append(
        f"| **all** | {total.pages} | {total.word_recall:.4f} | {total.numeric_recall:.4f} | {len(total.merged)} | "
        f"{total.seconds / max(total.pages, 1):.2f} | |"
    )
    merged = ", ".join(sorted(set(total.merged)))
    return "\n".join(rows) + f"\n\nmerged: {merged or 'none'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    args = parser.parse_args()
    from medkg_pdf.engine.ocr import OcrEngine

    engine = OcrEngine(num_threads=args.threads)
    engine.load()
    print(table(measure(lambda png: engine.to_markdown(png).markdown)))


if __name__ == "__main__":
    main()
