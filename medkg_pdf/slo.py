"""The service level objectives, computed once: used by the SLO checks, the report and the Prometheus export.

Pure functions over one pandas frame with a row per document (see `medkg_pdf.fleet`), so the
same numbers come out wherever they are shown. Columns used here:

- `arrived_at`   when the document was registered (SourceRef.arrived_at), tz-aware UTC
- `completed_at` when its parse_quality record was written (DocumentQuality.completed_at), or NaT
- `failed_at`    when it was last quarantined (QuarantineRecord.at), or NaT

Definitions (targets from docs/quality.md and the operations SLOs):

- window: documents that *arrived* in the last `window` (default 24 h), so a backfill that
  re-runs old documents after a model change does not count as a latency breach
- status: `failed` when quarantined after its last completion or under a blocking quality gate,
  `completed` when it has a quality record, otherwise `pending` (the backlog); only records
  newer than the document's registration count (after a re-upload it is pending again)
- latency: completed_at - arrived_at, end to end (queueing included); nearest-rank percentiles.
  A pending document older than the P99 target is a breach we already know of, so it joins the
  sample with its current age instead of hiding until it finishes
- throughput: completed documents per hour *while there was a backlog*, i.e. over the union of
  the [arrived, finished) intervals; quiet hours without work do not count against it
- error rate: failed / (completed + failed)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from medkg_pdf.metrics import nearest_rank
from medkg_pdf.quality_gates import BLOCKING_GATES

QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}


@dataclass(frozen=True)
class SloTargets:
    latency_p50_s: float = 45.0
    latency_p95_s: float = 90.0
    latency_p99_s: float = 120.0
    throughput_per_h: float = 60.0
    max_error_rate: float = 0.02
    window: timedelta = timedelta(hours=24)
    # the blocking quality gates: a document under one is an error, not a completion (None: not judged here)
    min_match_score: float | None = None
    min_numeric_recall: float | None = None

    def latency_target(self, name: str) -> float:
        return {"p50": self.latency_p50_s, "p95": self.latency_p95_s, "p99": self.latency_p99_s}[name]


@dataclass
class SloReport:
    window_start: datetime
    window_end: datetime
    targets: SloTargets
    documents: int = 0
    completed: int = 0
    failed: int = 0
    pending: int = 0
    latency_samples: int = 0
    overdue_pending: int = 0  # pending documents already older than the P99 target
    latency_s: dict[str, float | None] = field(default_factory=lambda: {name: None for name in QUANTILES})
    busy_h: float = 0.0
    throughput_per_h: float | None = None
    error_rate: float | None = None
    failures_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def latency_ok(self) -> dict[str, bool]:
        return {
            name: value is None or value <= self.targets.latency_target(name) for name, value in self.latency_s.items()
        }

    @property
    def throughput_ok(self) -> bool:
        return self.throughput_per_h is None or self.throughput_per_h >= self.targets.throughput_per_h

    @property
    def error_rate_ok(self) -> bool:
        return self.error_rate is None or self.error_rate < self.targets.max_error_rate

    def as_dict(self) -> dict:
        out = asdict(self)
        out["targets"] = {**asdict(self.targets), "window": self.targets.window.total_seconds()}
        out["window_start"], out["window_end"] = self.window_start.isoformat(), self.window_end.isoformat()
        out.update(latency_ok=self.latency_ok, throughput_ok=self.throughput_ok, error_rate_ok=self.error_rate_ok)
        return out


def _utc(value) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def classify(frame: pd.DataFrame, targets: SloTargets | None = None) -> pd.DataFrame:
    """Add `status`, `finished_at` and `latency_s` (NaN unless completed).

    Only records of the current source version count: a quality record or a failure older than the
    registration (a re-upload) belongs to the version before, so the document is pending again.
    With `targets`, a completed document under a quality gate is `failed` (reason `quality_gate`).
    """
    out = frame.copy()
    for column in ("arrived_at", "completed_at", "failed_at"):
        if column in out:
            out[column] = pd.to_datetime(out[column], utc=True)
        else:
            out[column] = pd.Series(pd.NaT, index=out.index, dtype="datetime64[ns, UTC]")
    for column in ("completed_at", "failed_at"):
        out[column] = out[column].where(~(out[column] < out["arrived_at"]))
    failed = out["failed_at"].notna() & (out["completed_at"].isna() | (out["failed_at"] > out["completed_at"]))
    completed = out["completed_at"].notna() & ~failed
    under_gate = completed & _under_a_gate(out, targets)
    if under_gate.any():
        # permanent: the same parse is judged the same; a new model, prompt or source version is what changes it
        for column, value in (("failure_stage", "parse_quality"), ("failure_reason", "quality_gate"), ("failure_class", "permanent")):
            out[column] = (out[column] if column in out else pd.Series(None, index=out.index, dtype=object)).astype(object)
            out.loc[under_gate, column] = value
    failed, completed = failed | under_gate, completed & ~under_gate
    out["status"] = np.select([failed, completed], ["failed", "completed"], default="pending")
    out["finished_at"] = out["completed_at"].where(completed | under_gate, out["failed_at"].where(failed))
    out["latency_s"] = (out["completed_at"] - out["arrived_at"]).dt.total_seconds().where(completed)
    return out


def _under_a_gate(frame: pd.DataFrame, targets: SloTargets | None) -> pd.Series:
    under = pd.Series(False, index=frame.index)
    if targets is None:
        return under
    for _, column, target in BLOCKING_GATES:
        minimum = getattr(targets, target)
        if minimum is not None and column in frame:
            under |= pd.to_numeric(frame[column], errors="coerce") < minimum  # NaN (no baseline): not under
    return under


def in_window(frame: pd.DataFrame, now, window: timedelta, targets: SloTargets | None = None) -> pd.DataFrame:
    """The documents that arrived in (now - window, now], classified (re-derived, so a frame read back
    from CSV, with its times as text, works the same)."""
    now = _utc(now)
    classified = classify(frame, targets)
    arrived = classified["arrived_at"]
    return classified[(arrived > now - window) & (arrived <= now)]


def busy_hours(starts: pd.Series, ends: pd.Series) -> float:
    """Length of the union of [start, end) intervals: the time during which something was waiting."""
    intervals = sorted((s, e) for s, e in zip(starts, ends) if pd.notna(s) and pd.notna(e) and e > s)
    total = pd.Timedelta(0)
    current_start = current_end = None
    for start, end in intervals:
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total.total_seconds() / 3600


def evaluate(frame: pd.DataFrame, now, targets: SloTargets = SloTargets()) -> SloReport:
    now = _utc(now)
    cohort = in_window(frame, now, targets.window, targets)
    report = SloReport(window_start=(now - targets.window).to_pydatetime(), window_end=now.to_pydatetime(), targets=targets)
    report.documents = len(cohort)
    counts = cohort["status"].value_counts()
    report.completed, report.failed, report.pending = (int(counts.get(s, 0)) for s in ("completed", "failed", "pending"))

    latencies = cohort.loc[cohort["status"] == "completed", "latency_s"].dropna().tolist()
    pending_age = (now - cohort.loc[cohort["status"] == "pending", "arrived_at"]).dt.total_seconds()
    overdue = pending_age[pending_age > targets.latency_p99_s].tolist()
    report.overdue_pending = len(overdue)
    sample = latencies + overdue
    report.latency_samples = len(sample)
    report.latency_s = {name: nearest_rank(sample, q) for name, q in QUANTILES.items()}

    ends = cohort["finished_at"].fillna(now)
    report.busy_h = busy_hours(cohort["arrived_at"], ends)
    if report.busy_h > 0:
        report.throughput_per_h = report.completed / report.busy_h
    finished = report.completed + report.failed
    report.error_rate = report.failed / finished if finished else None
    if "failure_reason" in cohort:
        reasons = cohort.loc[cohort["status"] == "failed", "failure_reason"].fillna("unknown").value_counts()
        report.failures_by_reason = {str(k): int(v) for k, v in reasons.items()}
    return report


def latency_over_time(frame: pd.DataFrame, now, window: timedelta, freq: str = "1h", targets: SloTargets | None = None) -> pd.DataFrame:
    """Nearest-rank P50/P95/P99 of the documents completed in each `freq` bucket of the window."""
    cohort = in_window(frame, now, window, targets)
    done = cohort[cohort["status"] == "completed"]
    columns = ["count", *QUANTILES]
    if done.empty:
        return pd.DataFrame(columns=columns)
    grouped = done.groupby(done["completed_at"].dt.floor(freq))["latency_s"]
    rows = {
        bucket: {"count": len(values), **{name: nearest_rank(values, q) for name, q in QUANTILES.items()}}
        for bucket, values in grouped
    }
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).sort_index()
