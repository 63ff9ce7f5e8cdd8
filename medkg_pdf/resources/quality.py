"""The quality gates and SLO targets, as one resource the checks, the report and the export share.

Defaults are the targets in docs/quality.md; tests pass tiny latency targets instead of waiting
minutes, and an operator can tighten or relax a gate in the resource config without a deploy.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from dagster import ConfigurableResource
from pydantic import Field

if TYPE_CHECKING:
    from medkg_pdf.slo import SloTargets


class QualityTargets(ConfigurableResource):
    # per-document gates (asset checks)
    max_failed_page_share: float = Field(default=0.005, description="Non-usable pages per document, at most (0.5 %).")
    min_match_score: float = Field(default=0.95, description="Word F1 vs the text-layer baseline, at least.")
    min_numeric_recall: float = Field(default=0.99, description="Share of the baseline's numbers found, at least.")
    # regression against the accepted baseline
    regression_min_word_f1: float = Field(default=0.98, description="Word F1 of the current vs the pinned document.")
    regression_min_numeric_recall: float = Field(default=0.99, description="Pinned numbers still found.")
    regression_min_table_agreement: float = Field(default=0.95, description="Pinned table cells at the same place.")
    regression_max_score_drop: float = Field(default=0.01, description="Allowed drop of the match score.")
    # service level objectives (rolling window)
    latency_p50_s: float = 45.0
    latency_p95_s: float = 90.0
    latency_p99_s: float = 120.0
    throughput_per_h: float = Field(default=60.0, description="PDFs per hour while there is a backlog, at least.")
    max_error_rate: float = Field(default=0.02, description="failed / finished documents, below this.")
    window_h: float = Field(default=24.0, gt=0, description="The rolling SLO window, by arrival time.")

    def slo(self) -> SloTargets:
        from medkg_pdf.slo import SloTargets  # pandas loads only where SLOs are computed

        return SloTargets(
            latency_p50_s=self.latency_p50_s,
            latency_p95_s=self.latency_p95_s,
            latency_p99_s=self.latency_p99_s,
            throughput_per_h=self.throughput_per_h,
            max_error_rate=self.max_error_rate,
            window=timedelta(hours=self.window_h),
            min_match_score=self.min_match_score,
            min_numeric_recall=self.min_numeric_recall,
        )
