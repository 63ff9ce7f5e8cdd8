"""Text comparison metrics, defined once and used by the quality asset, its checks and the report.

- edit similarity: 1 - normalized Levenshtein distance of the normalized texts (order-sensitive)
- word F1: harmonic mean of word precision and recall over bags of words (order-free, so a
  different but valid reading order of two columns is not punished)
- numeric recall: share of the baseline's numeric tokens (doses, units, percentages) found in
  the parse; a missed "500" in "500 mg" is worse than a missed word
- table cell agreement: share of baseline table cells found at the same row/column
The document's match score is word F1 pooled over the pages that have a usable baseline (a text
layer judged usable by `medkg_pdf.text_layer_judge`).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import numpy as np
from rapidfuzz.distance import Levenshtein


_MARKUP = re.compile(r"[#*_`|>~\[\]]+|^\s*[-+]\s+|^\s*\d+\.\s+|-{3,}", re.MULTILINE)
_WORD = re.compile(r"\w+", re.UNICODE)
# 500, 2.5, 1,000, 0.3%, 25 mg/kg -> "25"; keeps % attached because 5 and 5% differ in meaning
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?:\s?%)?")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = _MARKUP.sub(" ", text)
    return " ".join(text.lower().split())


def words(text: str) -> list[str]:
    return _WORD.findall(normalize(text))


def numeric_tokens(text: str) -> list[str]:
    return [token.replace(" ", "").replace(",", "") for token in _NUMBER.findall(unicodedata.normalize("NFKC", text))]


def edit_similarity(candidate: str, reference: str) -> float:
    a, b = normalize(candidate), normalize(reference)
    if not a and not b:
        return 1.0
    return Levenshtein.normalized_similarity(a, b)


def f1_from_counts(candidate: Counter, reference: Counter) -> float:
    overlap = sum((candidate & reference).values())
    if not candidate and not reference:
        return 1.0
    if overlap == 0:
        return 0.0
    precision = overlap / sum(candidate.values())
    recall = overlap / sum(reference.values())
    return 2 * precision * recall / (precision + recall)


def word_f1(candidate: str, reference: str) -> float:
    return f1_from_counts(Counter(words(candidate)), Counter(words(reference)))


def numeric_recall(candidate: str, reference: str) -> tuple[float, list[str]]:
    """Recall of the reference's numbers, and the ones the candidate missed (with multiplicity)."""
    wanted = Counter(numeric_tokens(reference))
    if not wanted:
        return 1.0, []
    found = Counter(numeric_tokens(candidate))
    missing = wanted - found
    return 1 - sum(missing.values()) / sum(wanted.values()), sorted(missing.elements())


def table_cell_agreement(candidate: list[list[str]], reference: list[list[str]]) -> float:
    """Share of reference cells whose normalized text matches the candidate's cell at the same place."""
    cells = [(r, c, normalize(cell)) for r, row in enumerate(reference) for c, cell in enumerate(row)]
    if not cells:
        return 1.0
    matched = sum(
        1 for r, c, text in cells if r < len(candidate) and c < len(candidate[r]) and normalize(candidate[r][c]) == text
    )
    return matched / len(cells)


def nearest_rank(values, q: float) -> float | None:
    """The smallest sample with at least q of the samples at or below it: a real sample, never an interpolation."""
    samples = np.asarray(list(values), dtype=float)
    return float(np.percentile(samples, q * 100, method="inverted_cdf")) if samples.size else None
