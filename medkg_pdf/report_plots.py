"""The quality report's plots, as matplotlib figures (the object API: no pyplot state, thread-safe).

Made to be read at a glance in the Dagster UI and in the report folder: every document is its own
mark with its name (the worst ones when there are many), counts are whole numbers, and one page is
drawn with the boxes its blocks came from, so a reader sees what the model located where.
"""

from __future__ import annotations

import io

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from medkg_pdf import slo
from medkg_pdf.page_preview import KIND_COLORS
from medkg_pdf.schemas import StructuredDocument

PLOT_DPI = 110
LABELLED_DOCUMENTS = 40  # beyond this the lowest-scoring are drawn, the rest summed up in the title


def to_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PLOT_DPI, bbox_inches="tight")
    return buffer.getvalue()


def score_figure(cohort: pd.DataFrame, gates: dict[str, float]) -> Figure:
    """One row per document (lowest first), its match score and numeric recall against their gates."""
    scored = cohort.dropna(subset=["match_score"]) if len(cohort) else cohort
    scored = scored.assign(label=scored["name"].fillna(scored["document_id"]).astype(str).str.slice(0, 40))
    scored = scored.sort_values(["match_score", "numeric_recall", "label"], na_position="first")
    shown = scored.head(LABELLED_DOCUMENTS)
    figure = Figure(figsize=(11, 1.6 + 0.3 * max(len(shown), 3)))
    axes = figure.subplots(1, 2, sharey=True)
    y = np.arange(len(shown))
    for ax, (column, title) in zip(axes, (("match_score", "match score (word F1 vs text layer)"), ("numeric_recall", "numeric-token recall"))):
        gate = gates[column]
        values = shown[column].astype(float)
        ax.scatter(values, y, c=np.where(values < gate, "#c44e52", "#4c72b0"), s=36, zorder=3)
        ax.axvline(gate, color="#c44e52", linestyle="--", linewidth=1, label=f"gate {gate:g}")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("score", fontsize=9)
        ax.legend(fontsize=8, loc="lower left")
    axes[0].set_yticks(y, shown["label"].tolist(), fontsize=8)
    axes[0].set_ylim(-0.7, max(len(shown), 1) - 0.3)
    if not len(shown):
        axes[0].text(0.5, 0.5, "no documents with a baseline", ha="center", va="center", transform=axes[0].transAxes)
    hidden = len(scored) - len(shown)
    figure.suptitle(
        f"{len(scored)} documents with a text-layer baseline"
        + (f" (the {len(shown)} lowest shown; {hidden} more score higher)" if hidden else "")
        + f", {len(cohort) - len(scored)} without one",
        fontsize=10,
    )
    figure.tight_layout()
    return figure


def latency_figure(over_time: pd.DataFrame, report: slo.SloReport) -> Figure:
    targets = report.targets
    figure = Figure(figsize=(11, 3.6))
    ax = figure.subplots()
    colors = {"p50": "#4c72b0", "p95": "#dd8452", "p99": "#c44e52"}
    if len(over_time):
        for name in slo.QUANTILES:
            ax.plot(over_time.index, over_time[name], marker="o", color=colors[name], label=f"{name} measured")
    else:
        ax.text(0.5, 0.5, "no completed documents in the window", ha="center", va="center", transform=ax.transAxes)
    for name in slo.QUANTILES:
        ax.axhline(targets.latency_target(name), color=colors[name], linestyle="--", linewidth=0.8, label=f"{name} target")
    ax.set_xlim(report.window_start, report.window_end)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    ax.set_ylim(bottom=0)
    ax.set_ylabel("upload to quality record, s")
    ax.set_title("latency percentiles per hour of completion", fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    figure.autofmt_xdate()
    figure.tight_layout()
    return figure


def provenance_figure(document: StructuredDocument, page: int, page_png: bytes, dpi: float, name: str) -> Figure | None:
    """The page as the model saw it, each block's box drawn in its kind's colour; None without boxes."""
    import matplotlib.image

    blocks = [block for block in document.blocks() if block.page == page and block.bbox is not None]
    if not blocks:
        return None
    image = matplotlib.image.imread(io.BytesIO(page_png), format="png")
    height, width = image.shape[:2]
    figure = Figure(figsize=(7, 7 * height / width + 0.6))
    ax = figure.subplots()
    ax.imshow(image)
    scale = dpi / 72  # bbox in PDF points (origin top-left), the image at `dpi`
    for block in blocks:
        x0, y0, x1, y1 = (value * scale for value in block.bbox)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, linewidth=1.2, edgecolor=KIND_COLORS.get(block.kind, "black")))
    kinds = sorted({block.kind for block in blocks})
    ax.legend(handles=[Rectangle((0, 0), 1, 1, fill=False, edgecolor=KIND_COLORS.get(kind, "black"), label=kind) for kind in kinds],
              fontsize=8, loc="upper right", framealpha=0.8)  # fmt: skip
    ax.set_axis_off()
    ax.set_title(f"{name}, page {page}: {len(blocks)} blocks and where the model found them", fontsize=10)
    figure.tight_layout()
    return figure
