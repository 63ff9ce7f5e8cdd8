"""The blocking per-document quality gates, stated once: which score is held to which minimum.

The command line reports them, the SLO report counts a document under one as an error and the
report's score plot draws them, all from this table; the asset checks (one per gate, each with its
own notes) fail a daemon's run on the same targets.
"""

from __future__ import annotations

from typing import Any

# (what people call it, the score's field in DocumentQuality, the minimum's field in the targets)
BLOCKING_GATES = (
    ("match score", "match_score", "min_match_score"),
    ("numeric recall", "numeric_recall", "min_numeric_recall"),
)


def gates_missed(quality: Any, targets: Any) -> list[str]:
    """The gates a scored document is under, e.g. 'numeric recall 0.974 < 0.99'; a score of None
    (no usable baseline) is under none."""
    missed = []
    for name, score, minimum in BLOCKING_GATES:
        value, floor = getattr(quality, score), getattr(targets, minimum)
        if value is not None and floor is not None and value < floor:
            missed.append(f"{name} {value:.3f} < {floor:g}")
    return missed
